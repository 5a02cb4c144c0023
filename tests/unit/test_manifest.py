"""Ring 1: /health's manifest facts come from the entry of the engine actually served."""
import json

from app.config import Settings
from app.engine.manifest import read_manifest as _read_manifest


def test_the_served_engine_is_picked_from_the_manifest(tmp_path):
    (tmp_path / "m-Q8_0.gguf").write_bytes(b"")
    (tmp_path / "model.gguf").symlink_to(tmp_path / "m-Q4_K_M.gguf")
    (tmp_path / "m-Q4_K_M.gguf").write_bytes(b"")
    manifest = {
        "name": "m", "source": {"id": "org/m", "revision": "abc123"}, "versions": {"llama-cpp-python": "0.3.36"},
        "engines": {"Q8_0": {"file": "m-Q8_0.gguf", "quant": "Q8_0"},
                    "Q4_K_M": {"file": "m-Q4_K_M.gguf", "quant": "Q4_K_M", "sha256": "f00"}},
        "quality": {"rows": {"Q4_K_M": {"ppl": 9.5}}},
    }
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    facts = _read_manifest(Settings.from_env({}, model_path=tmp_path / "model.gguf"))
    assert facts["quant"] == "Q4_K_M" and facts["revision"] == "abc123" and facts["sha256"] == "f00"
    assert facts["quality"] == {"ppl": 9.5} and facts["llama_cpp_python"] == "0.3.36"


def test_no_or_unrelated_manifest_gives_nothing(tmp_path):
    assert _read_manifest(Settings.from_env({}, model_path=tmp_path / "x.gguf")) == {}
    (tmp_path / "manifest.json").write_text("{not json")
    assert _read_manifest(Settings.from_env({}, model_path=tmp_path / "x.gguf")) == {}
