"""The whole pipeline on a real checkpoint: engines at three levels, manifest, quality table, chart, reuse."""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest

from build_engine import build as build_mod
from build_engine.build import build
from build_engine.errors import BuildError
from build_engine.files import sha256_file
from tests.build_engine.conftest import EVAL, QUANTS

pytestmark = [pytest.mark.build, pytest.mark.slow]


def test_engines_are_named_for_what_they_hold(built: tuple[Path, dict]) -> None:
    out, manifest = built
    assert sorted(p.name for p in out.glob("*.gguf")) == sorted(
        ["smol-BF16.gguf", "smol-F16.gguf", "smol-Q8_0.gguf", "smol-Q4_K_M.gguf"])
    assert not list(out.glob("*.partial")), "no temporary file is left behind"
    sizes = [manifest["engines"][q]["size_bytes"] for q in QUANTS]
    assert sizes == sorted(sizes, reverse=True), f"F16 > Q8_0 > Q4_K_M in size: {sizes}"


def test_the_manifest_records_inputs_outputs_and_model_facts(built: tuple[Path, dict], hf_checkpoint: Path) -> None:
    out, manifest = built
    assert manifest["source"] == {"kind": "local", "id": str(hf_checkpoint), "revision": None}
    assert manifest["inputs"]["model.safetensors"] == sha256_file(hf_checkpoint / "model.safetensors")
    assert {"config.json", "tokenizer.json", "tokenizer_config.json"} <= set(manifest["inputs"])
    for q, engine in manifest["engines"].items():
        path = out / engine["file"]
        assert engine["sha256"] == sha256_file(path) and engine["size_bytes"] == path.stat().st_size, q
        assert engine["source_sha256"] == manifest["intermediate"]["sha256"]
    model = manifest["model"]
    assert (model["n_params"], model["n_vocab"], model["n_ctx_train"]) == (134_515_008, 49152, 8192)
    assert model["bos"] == {"id": 1, "text": "<|im_start|>"} and model["eos"] == {"id": 2, "text": "<|im_end|>"}
    assert model["chat_template"] is True
    assert manifest["converter"]["llama_cpp_python"] == manifest["versions"]["llama-cpp-python"]
    assert manifest["converter"]["llama_cpp_commit"]
    assert manifest["intermediate"]["type"] == "BF16", "a bf16 checkpoint converts to bf16 by default"
    assert manifest["build"]["seconds"] > 0 and manifest["disk"]["engines_dir_bytes"] > 0


def test_the_quality_table_orders_the_levels(built: tuple[Path, dict]) -> None:
    out, manifest = built
    quality = manifest["quality"]
    rows = quality["rows"]
    assert list(rows) == ["BF16", *QUANTS]
    assert rows["BF16"]["kl_mean"] == 0 and rows["BF16"]["top1"] == 1
    for q, r in rows.items():
        assert math.isfinite(r["ppl"]) and 1 < r["ppl"] < 1000, (q, r["ppl"])
        assert r["pp_tok_s"] > 0 and r["tg_tok_s"] > 0, q
    # F16 holds the bf16 weights exactly; only activation rounding differs.
    assert rows["F16"]["kl_mean"] < 1e-3 and rows["F16"]["top1"] > 0.97
    assert rows["F16"]["kl_mean"] < rows["Q8_0"]["kl_mean"] < rows["Q4_K_M"]["kl_mean"] < 0.5
    assert rows["Q8_0"]["top1"] >= rows["Q4_K_M"]["top1"]
    chart = out / quality["chart"]
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and chart.stat().st_size > 10_000


def _copy(built: tuple[Path, dict], tmp_path: Path) -> Path:
    out = tmp_path / "smol"
    shutil.copytree(built[0], out)
    return out


def test_a_rerun_reuses_finished_steps_and_adds_one_level(built: tuple[Path, dict], hf_checkpoint: Path,
                                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = _copy(built, tmp_path)
    quantized, evaluated = [], []

    def no_convert(**kw):
        raise AssertionError("the 16-bit engine was reconverted although its inputs did not change")

    real_quantize, real_evaluate = build_mod.quantize.quantize, build_mod.evaluate.evaluate
    monkeypatch.setattr(build_mod, "convert", no_convert)
    monkeypatch.setattr(build_mod.quantize, "quantize",
                        lambda **kw: quantized.append(kw["qtype"]) or real_quantize(**kw))
    monkeypatch.setattr(build_mod.evaluate, "evaluate",
                        lambda **kw: evaluated.append([p.name for p in kw["engines"]]) or real_evaluate(**kw))
    manifest = build(model=str(hf_checkpoint), quants=[*QUANTS, "Q5_K_M"], out=out, **EVAL)
    assert quantized == ["Q5_K_M"], "only the new level is quantized"
    assert evaluated == [["smol-Q5_K_M.gguf"]], "only the new level is evaluated (against the reference)"
    assert list(manifest["quality"]["rows"]) == ["BF16", *QUANTS, "Q5_K_M"]
    assert manifest["quality"]["rows"]["Q8_0"] == built[1]["quality"]["rows"]["Q8_0"]


def test_a_damaged_output_is_rebuilt(built: tuple[Path, dict], hf_checkpoint: Path, tmp_path: Path) -> None:
    out = _copy(built, tmp_path)
    target = out / "smol-Q8_0.gguf"
    with open(target, "r+b") as fh:
        fh.seek(-16, 2)
        fh.write(b"\0" * 16)
    manifest = build(model=str(hf_checkpoint), quants=["Q8_0"], out=out, run_eval=False)
    assert sha256_file(target) == manifest["engines"]["Q8_0"]["sha256"] == built[1]["engines"]["Q8_0"]["sha256"]


def test_intermediate_files_can_be_removed(built: tuple[Path, dict], hf_checkpoint: Path, tmp_path: Path) -> None:
    out = _copy(built, tmp_path)
    manifest = build(model=str(hf_checkpoint), quants=["Q4_K_M"], out=out, run_eval=False, keep_intermediate=False)
    assert not (out / "smol-BF16.gguf").exists() and manifest["intermediate"]["kept"] is False
    assert (out / "smol-Q4_K_M.gguf").is_file()


def test_a_full_disk_is_refused_before_writing(hf_checkpoint: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    one_mib_free = shutil._ntuple_diskusage(10**12, 10**12 - 2**20, 2**20)  # total, used, free bytes
    monkeypatch.setattr("build_engine.files.shutil.disk_usage", lambda path: one_mib_free)
    out = tmp_path / "smol"
    expected = f"not enough disk space in {out} for smol-BF16.gguf: need .* MiB, 1.0 MiB free"
    with pytest.raises(BuildError, match=expected):
        build(model=str(hf_checkpoint), quants=["Q8_0"], out=out, run_eval=False)
    assert not list(out.glob("*.gguf*"))


def test_an_importance_matrix_drives_the_low_bit_levels(built: tuple[Path, dict], hf_checkpoint: Path,
                                                        tmp_path: Path) -> None:
    import numpy as np

    from build_engine import imatrix
    from build_engine.evaluate import DATA

    out = _copy(built, tmp_path)
    manifest = build(model=str(hf_checkpoint), quants=["Q8_0", "IQ4_XS"], out=out, run_eval=False,
                     imatrix_text=DATA / "calibration.txt", imatrix_ctx=128, threads=1)
    record = manifest["imatrix"]
    assert record["n_tensors"] == 30 * 7, "q, k, v, o, gate, up, down of each of the 30 blocks"
    assert manifest["engines"]["IQ4_XS"]["imatrix_sha256"] == record["sha256"]
    assert manifest["engines"]["Q8_0"].get("imatrix_sha256") is None, "8-bit levels do not use it"
    matrix = imatrix.load(out / record["file"])
    for name, values in matrix.items():
        assert values.shape == (1536,) if "ffn_down" in name else values.shape == (576,), name
        assert np.isfinite(values).all() and (values >= 0).all(), name
    for layer in (0, 29):  # matrices fed the same activations must get the same statistics
        q, k, v = (matrix[f"blk.{layer}.attn_{x}.weight"] for x in "qkv")
        assert np.array_equal(q, k) and np.array_equal(q, v)
        assert np.array_equal(matrix[f"blk.{layer}.ffn_gate.weight"], matrix[f"blk.{layer}.ffn_up.weight"])
