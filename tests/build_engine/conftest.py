"""Fixtures for the build pipeline tests: a real HF checkpoint and engines built from it once per session."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.fixtures.hf_checkpoint import DEFAULT_GGUF, make_hf_checkpoint

# The three levels the issue asks for, cheap enough for CI (SmolLM2-135M: ~1 s each).
QUANTS = ["F16", "Q8_0", "Q4_K_M"]
EVAL = {"eval_ctx": 128, "eval_chunks": 3, "threads": 1}  # 3 x 63 scored tokens; 1 thread: no spin-waits on a busy box


@pytest.fixture(scope="session")
def hf_checkpoint() -> Path:
    """A bf16 safetensors checkpoint (with tokenizer) dequantized from the default SmolLM2 GGUF; read-only."""
    if not DEFAULT_GGUF.is_file():
        pytest.fail(f"{DEFAULT_GGUF} is missing: run `python -m build_engine.default_model` first")
    return make_hf_checkpoint()


@pytest.fixture
def checkpoint_copy(hf_checkpoint: Path, tmp_path: Path) -> Path:
    """A private copy of the checkpoint (270 MB) that a test may damage."""
    dest = tmp_path / "ckpt"
    shutil.copytree(hf_checkpoint, dest, ignore=shutil.ignore_patterns("DONE"))
    return dest


@pytest.fixture(scope="session")
def built(hf_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """Engines at F16, Q8_0 and Q4_K_M built (and evaluated) from the checkpoint: (models/NAME, manifest)."""
    from build_engine.build import build

    out = tmp_path_factory.mktemp("models") / "smol"
    manifest = build(model=str(hf_checkpoint), quants=QUANTS, out=out, **EVAL)
    return out, manifest
