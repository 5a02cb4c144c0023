"""Ring 2: SPLIT_MODE / TENSOR_SPLIT / MAIN_GPU reach llama.cpp's model params and load the real model.

This machine has no GPU, so every mode must load and compute exactly what the defaults compute; on
a multi-GPU machine the same settings spread the layers (README, "Scaling out")."""
import llama_cpp
import numpy as np
import pytest

from app.config import Settings
from app.engine.errors import ModelLoadError
from app.engine.llama import LlamaModel

pytestmark = pytest.mark.engine


def _last_logits(settings: Settings) -> tuple[np.ndarray, LlamaModel]:
    m = LlamaModel(settings, n_slots=1)
    try:
        ids = np.array(m.tokenize("The capital of France is", add_special=True, parse_special=False), dtype=np.int32)
        n = len(ids)
        want = np.zeros(n, dtype=bool)
        want[-1] = True
        return m.decode(ids, np.arange(n, dtype=np.int32), np.zeros(n, dtype=np.int32), want).copy(), m
    finally:
        m.close()


@pytest.mark.parametrize("split_mode, tensor_split, main_gpu", [("none", (), 0), ("layer", (3.0, 1.0), 1), ("row", (1.0,), 0)])
def test_split_settings_load_and_compute_what_the_defaults_do(model_path, split_mode, tensor_split, main_gpu):
    base = dict(model_path=model_path, n_threads=1, n_ctx=256)
    want, _ = _last_logits(Settings.from_env({}, **base))
    got, m = _last_logits(Settings.from_env({}, **base, split_mode=split_mode, tensor_split=tensor_split, main_gpu=main_gpu))
    assert np.array_equal(got, want)
    if tensor_split:  # padded to the size llama.cpp reads, and kept alive on the model object
        assert len(m._tensor_split) == llama_cpp.llama_max_devices()
        assert list(m._tensor_split)[:len(tensor_split)] == list(tensor_split) and not any(m._tensor_split[len(tensor_split):])


def test_more_shares_than_llama_cpp_takes_fail_naming_the_setting(model_path):
    n = llama_cpp.llama_max_devices() + 1
    with pytest.raises(ModelLoadError, match=f"TENSOR_SPLIT has {n} shares"):
        LlamaModel(Settings.from_env({}, model_path=model_path, tensor_split=[1] * n), n_slots=1)
