"""Bad input ends with one clear message naming the culprit, a non-zero exit, and no half-written GGUF."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from build_engine import quantize
from build_engine.build import main
from build_engine.errors import BuildError

pytestmark = pytest.mark.build


def run_main(*args: str) -> str:
    """Run the CLI in-process; return its error message (it must exit non-zero)."""
    with pytest.raises(SystemExit) as exit_:
        main(list(args))
    assert isinstance(exit_.value.code, str) and exit_.value.code.startswith("error: "), exit_.value.code
    return exit_.value.code  # SystemExit(str) prints it on stderr and exits 1


def no_gguf_left(out: Path) -> bool:
    return not out.exists() or not [p for p in out.iterdir() if ".gguf" in p.name]


def test_missing_folder(tmp_path: Path) -> None:
    msg = run_main("--model", str(tmp_path / "nope"), "--quant", "Q8_0", "--out", str(tmp_path / "out"))
    assert f"checkpoint folder {tmp_path / 'nope'} does not exist" in msg


def test_folder_without_config(tmp_path: Path) -> None:
    (tmp_path / "ckpt").mkdir()
    msg = run_main("--model", str(tmp_path / "ckpt"), "--quant", "Q8_0", "--out", str(tmp_path / "out"))
    assert f"{tmp_path / 'ckpt'} has no config.json" in msg


@pytest.mark.slow
def test_unknown_architecture(checkpoint_copy: Path, tmp_path: Path) -> None:
    config = json.loads((checkpoint_copy / "config.json").read_text())
    config["architectures"] = ["FrobnicatorForCausalLM"]
    (checkpoint_copy / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    msg = run_main("--model", str(checkpoint_copy), "--quant", "Q8_0", "--out", str(out), "--no-eval")
    assert "architecture 'FrobnicatorForCausalLM'" in msg and "not known to the vendored llama.cpp converter" in msg
    assert no_gguf_left(out)


@pytest.mark.slow
def test_corrupt_safetensors(checkpoint_copy: Path, tmp_path: Path) -> None:
    weights = checkpoint_copy / "model.safetensors"
    with open(weights, "r+b") as fh:
        fh.truncate(weights.stat().st_size // 2)  # what an interrupted copy leaves
    out = tmp_path / "out"
    msg = run_main("--model", str(checkpoint_copy), "--quant", "Q8_0", "--out", str(out), "--no-eval")
    assert f"{weights} is corrupt or truncated" in msg
    assert no_gguf_left(out)


@pytest.mark.slow
def test_garbage_safetensors_header(checkpoint_copy: Path, tmp_path: Path) -> None:
    weights = checkpoint_copy / "model.safetensors"
    weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all" + b"\0" * 64)
    msg = run_main("--model", str(checkpoint_copy), "--quant", "Q8_0", "--out", str(tmp_path / "out"), "--no-eval")
    assert f"{weights} is corrupt: its header is not JSON" in msg


@pytest.mark.slow
def test_a_converter_failure_leaves_no_gguf(checkpoint_copy: Path, tmp_path: Path) -> None:
    (checkpoint_copy / "tokenizer.json").write_text("{ this is not a tokenizer")
    out = tmp_path / "out"
    msg = run_main("--model", str(checkpoint_copy), "--quant", "Q8_0", "--out", str(out), "--no-eval")
    log = out / "out-BF16.convert.log"
    assert msg.startswith(f"error: converting {checkpoint_copy} failed (exit 1); full log {log}")
    assert no_gguf_left(out), sorted(p.name for p in out.iterdir())
    assert (out / "out-BF16.convert.log").is_file(), "the full converter log is kept for the user"


def test_a_failed_quantization_leaves_no_gguf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import llama_cpp

    src = tmp_path / "m-F16.gguf"
    src.write_bytes(b"GGUF" + b"\0" * 1024)
    out = tmp_path / "m-Q4_K_M.gguf"

    def half_written(inp: bytes, dst: bytes, params) -> int:
        Path(dst.decode()).write_bytes(b"GGUF-half")  # llama.cpp died mid-write
        return 1

    monkeypatch.setattr(llama_cpp, "llama_model_quantize", half_written)
    with pytest.raises(BuildError, match="Q4_K_M"):
        quantize.quantize(src=src, out=out, qtype="Q4_K_M")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m-F16.gguf"]


def test_low_bit_types_without_an_importance_matrix_are_refused(tmp_path: Path) -> None:
    src = tmp_path / "m-F16.gguf"
    src.write_bytes(b"GGUF")
    with pytest.raises(BuildError, match="IQ2_XXS needs an importance matrix"):
        quantize.quantize(src=src, out=tmp_path / "m-IQ2_XXS.gguf", qtype="IQ2_XXS")
