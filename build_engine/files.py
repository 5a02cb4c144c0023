"""File helpers shared by the build steps: hashing, atomic writes, disk space."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from build_engine.errors import BuildError


def sha256_file(path: Path, *, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def partial_path(path: Path) -> Path:
    """The temporary name a file is written under before the final rename."""
    return path.with_name(path.name + ".partial")


def write_json_atomic(path: Path, data: object) -> None:
    """Write JSON to ``path`` through a temporary file and a rename."""
    tmp = partial_path(path)
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def ensure_free_space(*, folder: Path, need_bytes: int, what: str) -> None:
    """Fail early, naming the folder, when it has less than ``need_bytes`` free."""
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free  # bytes
    if free < need_bytes:
        raise BuildError(
            f"not enough disk space in {folder} for {what}: need {gib(need_bytes)}, {gib(free)} free"
        )


def gib(n_bytes: int) -> str:
    """Human-readable size: '1.23 GiB' or '456.7 MiB'."""
    return f"{n_bytes / 2**30:.2f} GiB" if n_bytes >= 2**30 else f"{n_bytes / 2**20:.1f} MiB"
