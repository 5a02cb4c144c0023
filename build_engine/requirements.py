"""The build pipeline's own packages (requirements-build.txt), checked before any step runs.

The serving setup (scripts/setup.sh, requirements.txt) does not install them: torch alone is
hundreds of MB. Without this check the first missing one surfaced deep in the converter as
"No module named torch".
"""
from __future__ import annotations

import importlib.util

# Import names of what the steps import: the converter (torch, transformers' tokenizers,
# sentencepiece, safetensors), fetch (huggingface_hub) and the quality chart (matplotlib).
MODULES = ("torch", "transformers", "sentencepiece", "safetensors", "huggingface_hub", "matplotlib")

INSTALL = (
    "pip install -r requirements-build.txt  (torch's CPU build is enough: "
    "PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu; or scripts/setup.sh --dev)"
)


def missing_modules() -> list[str]:
    """The pipeline's modules that cannot be imported here."""
    return [m for m in MODULES if importlib.util.find_spec(m) is None]


def check() -> None:
    """Exit naming the missing packages and the install command, before anything is fetched."""
    missing = missing_modules()
    if missing:
        raise SystemExit(f"error: the build pipeline needs {', '.join(missing)}, not installed here: {INSTALL}")
