"""Ring 1: `python -m build_engine` names its missing packages and the install command up front."""
import importlib.util
from pathlib import Path

import pytest

from build_engine import build, requirements


def test_a_missing_torch_names_the_install_command(monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    with pytest.raises(SystemExit) as exc:
        build.main(["--model", "smollm2-135m-instruct", "--quant", "Q8_0"])
    message = str(exc.value)
    assert "torch" in message and "pip install -r requirements-build.txt" in message
    assert "transformers" not in message  # only what is missing


def test_every_checked_module_is_pinned_in_requirements_build():
    text = (Path(requirements.__file__).parents[1] / "requirements-build.txt").read_text().lower().replace("-", "_")
    for module in requirements.MODULES:
        assert module.lower() in text, f"{module} is checked but not pinned in requirements-build.txt"
