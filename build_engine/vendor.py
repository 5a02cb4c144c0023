"""llama.cpp's own converter, taken from the llama-cpp-python sdist the engine was compiled from.

    python -m build_engine.vendor [--cache .cache/llama-cpp-sdist]

The sdist vendors llama.cpp at the exact revision the engine runs, so the converter, its
``conversion/`` package and ``gguf-py`` match the loader. pip downloads the sdist (its cache makes
that instant after the first time); only the files conversion needs are extracted and kept.
"""
from __future__ import annotations

import argparse
import ast
import importlib.metadata
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from build_engine.errors import BuildError
from build_engine.files import sha256_file

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = ROOT / ".cache" / "llama-cpp-sdist"
PACKAGE = "llama-cpp-python"
# What convert_hf_to_gguf.py imports, relative to the sdist's vendor/llama.cpp/.
NEEDED = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "LICENSE")


@dataclass(frozen=True)
class Converter:
    """An extracted converter tree and the versions it belongs to."""

    root: Path  # holds convert_hf_to_gguf.py, conversion/, gguf-py/
    package_version: str  # llama-cpp-python version, e.g. '0.3.36'
    llama_cpp_commit: str | None  # llama.cpp commit the sdist vendors (from its CHANGELOG), short hex
    sdist_sha256: str

    @property
    def script(self) -> Path:
        """The converter script."""
        return self.root / "convert_hf_to_gguf.py"

    def supported_architectures(self) -> list[str]:
        """HF architecture names (config.json 'architectures') this converter knows, read without importing it."""
        tree = ast.parse((self.root / "conversion" / "__init__.py").read_text())
        for node in tree.body:
            target = getattr(node, "target", None)
            if isinstance(node, ast.AnnAssign) and getattr(target, "id", "") == "TEXT_MODEL_MAP":
                return sorted(ast.literal_eval(node.value))
        raise BuildError(f"{self.root}/conversion/__init__.py has no TEXT_MODEL_MAP; unknown converter layout")


def installed_version() -> str:
    """The llama-cpp-python version installed in this environment (the engine's own)."""
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise BuildError(f"{PACKAGE} is not installed; `pip install -r requirements.txt` first") from None


def _changelog_commit(changelog: str, version: str) -> str | None:
    """The llama.cpp commit named under '## [version]' in llama-cpp-python's CHANGELOG."""
    section = re.search(rf"^## \[{re.escape(version)}\](.*?)(?=^## \[|\Z)", changelog, re.S | re.M)
    found = re.search(r"llama\.cpp@([0-9a-f]{7,40})", section.group(1)) if section else None
    return found.group(1) if found else None


def _download_sdist(*, version: str, dest: Path) -> Path:
    """pip-download the sdist of ``llama-cpp-python==version`` into ``dest``; return its path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet",
           "-d", str(dest), f"{PACKAGE}=={version}"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(dest.glob("llama_cpp_python-*.tar.gz"))
    if done.returncode != 0 or not found:
        raise BuildError(
            f"could not download the {PACKAGE}=={version} sdist, which holds llama.cpp's converter "
            f"(convert_hf_to_gguf.py, conversion/, gguf-py/). pip said:\n{done.stderr.strip()[-2000:]}\n"
            f"Fix: make the package index reachable, or put llama_cpp_python-{version}.tar.gz in {dest.parent}"
        )
    return found[0]


def ensure_converter(*, cache: Path = DEFAULT_CACHE, version: str | None = None) -> Converter:
    """Return the converter for ``version`` (default: the installed engine's), extracting it once."""
    version = version or installed_version()
    out = cache / version
    stamp = out / "COMPLETE"  # written last: a half-extracted tree is redone
    if not stamp.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        local = cache / f"llama_cpp_python-{version}.tar.gz"  # a hand-placed sdist wins over pip
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            sdist = local if local.is_file() else _download_sdist(version=version, dest=Path(tmp))
            _extract(sdist=sdist, out=out, version=version)
            (out / "COMPLETE").write_text(sha256_file(sdist) + "\n")
    root = out / "llama.cpp"
    missing = [name for name in NEEDED if not (root / name.rstrip("/")).exists()]
    if missing:
        raise BuildError(f"{root} lacks {', '.join(missing)}; delete {out} to extract the sdist again")
    changelog = out / "CHANGELOG.md"
    commit = _changelog_commit(changelog.read_text(), version) if changelog.is_file() else None
    return Converter(root, version, commit, stamp.read_text().strip())


def _extract(*, sdist: Path, out: Path, version: str) -> None:
    """Extract the converter files (and the CHANGELOG, for the llama.cpp commit) from ``sdist``."""
    prefix = f"llama_cpp_python-{version}/"
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    wanted = [prefix + "vendor/llama.cpp/" + name for name in NEEDED]
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if any(m.name == w or m.name.startswith(w) for w in wanted)]
        members += [m for m in tar.getmembers() if m.name == prefix + "CHANGELOG.md"]
        if not any(m.name.endswith("convert_hf_to_gguf.py") for m in members):
            raise BuildError(f"{sdist} has no vendor/llama.cpp/convert_hf_to_gguf.py; is it a llama-cpp-python sdist?")
        for member in members:
            member.name = member.name[len(prefix):].replace("vendor/", "", 1)
        tar.extractall(partial, members=members, filter="data")
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where extracted converters are kept")
    parser.add_argument("--version", help="llama-cpp-python version (default: the installed one)")
    args = parser.parse_args(argv)
    try:
        conv = ensure_converter(cache=args.cache, version=args.version)
    except BuildError as err:
        raise SystemExit(f"error: {err}") from None
    print(f"{conv.script}  (llama-cpp-python {conv.package_version}, llama.cpp {conv.llama_cpp_commit})")


if __name__ == "__main__":
    main()
