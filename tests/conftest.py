"""Shared fixtures: the real default model, a real engine (ring 2), a fake engine (ring 1 only)."""
from __future__ import annotations

from pathlib import Path

import pytest

from app.config import DEFAULT_MODEL_PATH, Settings

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def model_path() -> Path:
    """The default GGUF; scripts/setup.sh puts it in place (python -m build_engine.default_model)."""
    assert DEFAULT_MODEL_PATH.is_file(), (
        f"{DEFAULT_MODEL_PATH} is missing: run scripts/setup.sh (or python -m build_engine.default_model)"
    )
    return DEFAULT_MODEL_PATH


@pytest.fixture(scope="session")
def engine_settings(model_path: Path) -> Settings:
    return Settings.from_env({}, model_path=model_path, n_threads=2, n_ctx=2048, n_parallel=8)


@pytest.fixture(scope="session")
def engine(engine_settings: Settings):
    """One real engine on the default model for the whole session (loading costs ~0.5 s, RAM more)."""
    from app.engine import Engine

    eng = Engine(engine_settings).start(background=False)
    yield eng
    eng.close()


SECOND_MODEL = ROOT / "models" / "gemma-3-270m" / "gemma-3-270m-Q4_K_M.gguf"


@pytest.fixture(scope="session")
def second_model_path() -> Path:
    """Gemma 3 270M Q4_K_M: adds BOS, 262k vocabulary, sliding-window attention; scripts/setup.sh --dev
    puts it in place (python -m build_engine.default_model --spec models/test-models/gemma-3-270m.json)."""
    assert SECOND_MODEL.is_file(), f"{SECOND_MODEL} is missing: run scripts/setup.sh --dev"
    return SECOND_MODEL
