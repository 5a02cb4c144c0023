"""Ring 1: settings come from defaults, then the environment, then overrides."""
from pathlib import Path

import pytest

from app.config import DEFAULT_MODEL_PATH, Settings


def test_defaults_serve_the_default_model():
    s = Settings.from_env({})
    assert s.model_path == DEFAULT_MODEL_PATH and s.n_gpu_layers == -1
    assert s.n_slots == 2 * s.n_parallel and s.kv_cells == s.n_slots * s.n_ctx  # 4096: a multiple of 256


def test_environment_then_overrides():
    env = {"MODEL_PATH": "/m.gguf", "N_CTX": "1024", "N_GPU_LAYERS": "0", "PARSE_SPECIAL": "yes", "SEED": "7"}
    s = Settings.from_env(env, n_ctx=512)
    assert s.model_path == Path("/m.gguf") and s.n_ctx == 512 and s.n_gpu_layers == 0
    assert s.parse_special is True and s.default_seed == 7


@pytest.mark.parametrize("env, message", [({"N_CTX": "lots"}, "N_CTX"), ({"N_CTX": "4"}, "N_CTX"),
                                          ({"FLASH_ATTN": "maybe"}, "FLASH_ATTN"), ({"PARSE_SPECIAL": "2"}, "PARSE_SPECIAL"),
                                          ({"KV_CACHE_TOKENS": "100"}, "KV_CACHE_TOKENS"),
                                          ({"PREFIX_CACHE_TOKENS": "0"}, "PREFIX_CACHE_SLOTS"),
                                          ({"CHUNK_TOKENS": "30"}, "CHUNK_TOKENS"), ({"CHUNK_TOKENS": "64"}, "CHUNK_TOKENS"),
                                          ({"CHUNK_TOKENS": "256", "N_BATCH": "128"}, "N_BATCH"),
                                          ({"N_PARALLEL": "2", "MAX_NUM_SAMPLES": "4"}, "MAX_NUM_SAMPLES")])
def test_bad_settings_name_the_variable(env, message):
    with pytest.raises((ValueError, AssertionError), match=message):
        Settings.from_env(env)


def test_multi_gpu_settings_parse():
    s = Settings.from_env({"SPLIT_MODE": "row", "TENSOR_SPLIT": "3, 1", "MAIN_GPU": "1"})
    assert (s.split_mode, s.tensor_split, s.main_gpu) == ("row", (3.0, 1.0), 1)
    d = Settings.from_env({})
    assert (d.split_mode, d.tensor_split, d.main_gpu) == ("layer", (), 0)  # llama.cpp's own defaults
    assert Settings.from_env({}, tensor_split=[1, 1]).tensor_split == (1.0, 1.0)


@pytest.mark.parametrize("env, message", [
    ({"SPLIT_MODE": "tensor"}, "SPLIT_MODE must be one of none/layer/row"),
    ({"TENSOR_SPLIT": "3,x"}, "TENSOR_SPLIT='3,x' is not a valid comma-separated list of numbers"),
    ({"TENSOR_SPLIT": "1,nan"}, "TENSOR_SPLIT"),
    ({"TENSOR_SPLIT": "1,-1"}, "TENSOR_SPLIT must be non-negative"),
    ({"TENSOR_SPLIT": "0,0"}, "positive sum"),
    ({"MAIN_GPU": "-1"}, "MAIN_GPU must be a GPU index"),
    ({"MAIN_GPU": "2", "TENSOR_SPLIT": "1,1"}, "MAIN_GPU=2 is not one of the 2 GPUs"),
])
def test_bad_multi_gpu_settings_name_the_variable(env, message):
    with pytest.raises((ValueError, AssertionError), match=message):
        Settings.from_env(env)


def test_operations_defaults():
    s = Settings.from_env({})
    assert s.queue_limit == 4 * s.n_parallel and s.http_threads == s.n_parallel + s.queue_limit + 16
    assert s.request_timeout == 600 and s.drain_timeout == 60 and s.api_key == "" and not s.metrics_require_key
    assert Settings.from_env({"MAX_QUEUED": "0"}).queue_limit == 0


def test_api_key_file_and_secrecy(tmp_path):
    (tmp_path / "key").write_text("k3y-from-file\n")
    s = Settings.from_env({"API_KEY_FILE": str(tmp_path / "key")})
    assert s.api_key == "k3y-from-file" and "k3y" not in repr(s)
    assert Settings.from_env({"API_KEY": "direct"}).api_key == "direct"
    (tmp_path / "empty").write_text("")
    with pytest.raises(ValueError, match="API_KEY_FILE.*empty"):
        Settings.from_env({"API_KEY_FILE": str(tmp_path / "empty")})
    with pytest.raises(ValueError, match="API_KEY_FILE.*cannot be read"):
        Settings.from_env({"API_KEY_FILE": str(tmp_path / "missing")})


@pytest.mark.parametrize("env, message", [({"LOG_FORMAT": "xml"}, "LOG_FORMAT"), ({"MAX_QUEUED": "-2"}, "MAX_QUEUED"),
                                          ({"REQUEST_TIMEOUT": "-1"}, "REQUEST_TIMEOUT"),
                                          ({"LARGE_BODY_CONCURRENCY": "0"}, "LARGE_BODY_CONCURRENCY")])
def test_bad_operations_settings_name_the_variable(env, message):
    with pytest.raises((ValueError, AssertionError), match=message):
        Settings.from_env(env)
