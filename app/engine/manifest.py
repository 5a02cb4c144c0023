"""What build_engine wrote about the engine being served: models/<name>/manifest.json beside the GGUF."""
from __future__ import annotations

import json
import logging
from typing import Any

from app.config import Settings

log = logging.getLogger(__name__)


def read_manifest(settings: Settings) -> dict[str, Any]:
    """Key facts of the engine being served, from models/<name>/manifest.json beside the GGUF
    (written by build_engine; its "engines" hold one entry per quant level)."""
    path = settings.model_path.parent / "manifest.json"
    if not path.is_file():
        return {}
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        log.warning("could not read %s", path)
        return {}
    served = settings.model_path.resolve().name  # Docker serves model.gguf, a link to NAME-QUANT.gguf
    engine = next((e for e in manifest.get("engines", {}).values() if e.get("file") == served), None)
    if engine is None:
        return {}
    source = manifest.get("source", {})
    return {
        "name": manifest.get("name"),
        "source": source.get("id"),
        "revision": source.get("revision"),
        "quant": engine.get("quant"),
        "sha256": engine.get("sha256"),
        "size_bytes": engine.get("size_bytes"),
        "llama_cpp_python": manifest.get("versions", {}).get("llama-cpp-python"),
        "llama_cpp_commit": manifest.get("converter", {}).get("llama_cpp_commit"),
        "built_at": engine.get("built_at"),
        "quality": manifest.get("quality", {}).get("rows", {}).get(engine.get("quant")),
    }
