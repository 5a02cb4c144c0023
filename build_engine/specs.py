"""Model specs: small JSON files in models/specs/ that name a checkpoint, so `--model mistral-7b` works."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from build_engine.errors import BuildError

ROOT = Path(__file__).resolve().parent.parent
SPECS_DIR = ROOT / "models" / "specs"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # owner/name, as the hub spells repo ids
COMMIT = re.compile(r"^[0-9a-f]{40}$")  # a full git commit hash


@dataclass(frozen=True)
class Source:
    """Where a build's weights come from: a local folder, or a hub repo pinned to a revision."""

    name: str  # models/<name>/ and the engine file prefix
    local_dir: Path | None  # set for a local checkpoint folder
    hub_id: str | None  # set for a hub checkpoint
    revision: str | None  # branch, tag or commit for a hub checkpoint; None for a local folder
    spec: dict | None  # the models/specs/<name>.json that named it, if any


def load_spec(name: str, *, specs_dir: Path = SPECS_DIR) -> dict | None:
    """The spec called ``name`` (file stem), or None when there is none."""
    path = specs_dir / f"{name}.json"
    if not path.is_file():
        return None
    spec = json.loads(path.read_text())
    for key in ("name", "hub_id", "revision", "recommended_quant", "n_ctx"):
        assert key in spec, f"{path}: missing field {key!r}"
    assert COMMIT.match(spec["revision"]), f"{path}: revision {spec['revision']!r} is not a 40-hex commit"
    return spec


def list_specs(*, specs_dir: Path = SPECS_DIR) -> list[str]:
    """Names of every spec in ``specs_dir``."""
    return sorted(p.stem for p in specs_dir.glob("*.json"))


def slug(text: str) -> str:
    """A file-name-safe model name: 'mistralai/Mistral-7B-v0.1' -> 'mistral-7b-v0.1'."""
    return re.sub(r"[^a-z0-9._-]+", "-", text.rsplit("/", 1)[-1].lower()).strip("-.")


def resolve_source(model: str, *, revision: str | None = None, specs_dir: Path = SPECS_DIR) -> Source:
    """Turn ``--model`` (spec name, local folder or hub id) into a Source; fail naming what is wrong."""
    spec = load_spec(model, specs_dir=specs_dir)
    if spec is not None:
        return Source(spec["name"], None, spec["hub_id"], revision or spec["revision"], spec)
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise BuildError(f"checkpoint {path} is a file; pass the folder that holds config.json")
        if revision is not None:
            raise BuildError(f"--revision {revision} applies to hub checkpoints, not the local folder {path}")
        return Source(slug(str(path.resolve())), path.resolve(), None, None, None)
    if HUB_ID.match(model) and not model.startswith("."):
        return Source(slug(model), None, model, revision or "main", None)
    raise BuildError(
        f"checkpoint folder {path} does not exist, and {model!r} is neither a hub id (owner/name) "
        f"nor a spec name ({', '.join(list_specs(specs_dir=specs_dir))})"
    )
