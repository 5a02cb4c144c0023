"""Download a Hugging Face checkpoint at a pinned revision: only the files conversion needs.

    python -m build_engine.fetch --repo mistralai/Mistral-7B-v0.1 --revision <commit> [--token-file PATH]

The token comes from $HF_TOKEN, else from a token file (--token-file, default $HF_TOKEN_FILE or
/run/secrets/hf_token, where a Docker BuildKit secret lands), else from huggingface_hub's own login.
Downloads go to the hub cache ($HF_HOME), show progress bars, and resume where an interrupted run stopped.
"""
from __future__ import annotations

import argparse
import errno
import fnmatch
import os
from dataclasses import dataclass
from pathlib import Path

from build_engine.errors import BuildError

# $HF_TOKEN_FILE, else where a BuildKit secret with id=hf_token is mounted.
DEFAULT_TOKEN_FILE = Path(os.environ.get("HF_TOKEN_FILE") or "/run/secrets/hf_token")
# Everything convert_hf_to_gguf.py reads besides the weights.
META_PATTERNS = ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                 "tokenizer.model", "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt",
                 "chat_template.jinja", "chat_template.json", "LICENSE*"]
SAFETENSORS = ["*.safetensors", "model.safetensors.index.json"]
PYTORCH_BIN = ["pytorch_model*.bin", "pytorch_model.bin.index.json"]


@dataclass(frozen=True)
class Fetched:
    """A checkpoint folder in the hub cache and the commit it holds."""

    folder: Path
    commit: str  # 40-hex commit hash the revision resolved to


def resolve_token(*, token_file: Path | None = DEFAULT_TOKEN_FILE) -> str | None:
    """$HF_TOKEN, else the first line of ``token_file`` if it exists, else None (huggingface_hub's login)."""
    token = os.environ.get("HF_TOKEN", "").strip()
    if token:
        return token
    if token_file is not None and token_file.is_file():
        return token_file.read_text().strip() or None
    return None


def allow_patterns(repo_files: list[str] | None) -> list[str]:
    """The files to fetch: metadata plus safetensors weights, or .bin weights when there are no safetensors."""
    if repo_files is not None and not any(fnmatch.fnmatch(f, "*.safetensors") for f in repo_files):
        return META_PATTERNS + PYTORCH_BIN
    return META_PATTERNS + SAFETENSORS


def fetch(*, repo_id: str, revision: str = "main", token: str | None = None, cache_dir: Path | None = None) -> Fetched:
    """snapshot_download ``repo_id`` at ``revision`` (conversion files only); fail naming the repo."""
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub import errors as hf

    where = f"{repo_id}@{revision}"
    try:
        try:  # List the repo to choose safetensors or .bin weights; offline, assume safetensors.
            files = HfApi().list_repo_files(repo_id, revision=revision, token=token)
        except Exception as err:  # offline or unreachable: snapshot_download decides from the cache
            if isinstance(err, (hf.RepositoryNotFoundError, hf.RevisionNotFoundError)):
                raise
            files = None
        folder = snapshot_download(repo_id, revision=revision, token=token, cache_dir=cache_dir,
                                   allow_patterns=allow_patterns(files))
    except hf.GatedRepoError:
        raise BuildError(
            f"{repo_id} is a gated repo: accept its license on huggingface.co/{repo_id}, then pass a token "
            "that has access (HF_TOKEN, or a token file such as a BuildKit secret at /run/secrets/hf_token)"
        ) from None
    except hf.RevisionNotFoundError:
        raise BuildError(f"revision {revision!r} does not exist in {repo_id}") from None
    except hf.RepositoryNotFoundError:
        raise BuildError(f"hub repo {repo_id} does not exist, or is private and the token has no access") from None
    except hf.LocalEntryNotFoundError as err:
        raise BuildError(
            f"cannot fetch {where}: the hub is unreachable and the cache does not hold this revision "
            f"completely ({str(err).splitlines()[0]})"
        ) from None
    except Exception as err:  # connection reset mid-file, disk full, ...: one line, named
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            raise BuildError(f"disk full while downloading {where} into the hub cache ({err.filename})") from None
        first_line = str(err).splitlines()[0] if str(err) else ""
        raise BuildError(
            f"downloading {where} was interrupted ({type(err).__name__}: {first_line}); "
            "run the same command again to resume"
        ) from None
    folder = Path(folder)
    return Fetched(folder, folder.name)  # the snapshot folder is named by its commit hash


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", required=True, help="hub id, e.g. mistralai/Mistral-7B-v0.1")
    parser.add_argument("--revision", default="main", help="branch, tag or (best) a 40-hex commit hash")
    parser.add_argument("--token-file", type=Path, default=DEFAULT_TOKEN_FILE, help="read the token from this file")
    parser.add_argument("--cache-dir", type=Path, help="hub cache (default: $HF_HOME/hub)")
    args = parser.parse_args(argv)
    try:
        got = fetch(repo_id=args.repo, revision=args.revision, token=resolve_token(token_file=args.token_file),
                    cache_dir=args.cache_dir)
    except BuildError as err:
        raise SystemExit(f"error: {err}") from None
    except KeyboardInterrupt:
        raise SystemExit(f"error: downloading {args.repo} was interrupted; run again to resume") from None
    print(f"{got.folder}  (commit {got.commit})")


if __name__ == "__main__":
    main()
