"""Ring 1: what the Gateway API Inference Extension's endpoint picker reads from /metrics to size its
prefix index (vllm:cache_config_info: block_size x num_gpu_blocks = tokens a pod can hold)."""
from prometheus_client.parser import text_string_to_metric_families

from tests.unit.test_api import make_client


def test_cache_config_info_gives_a_chunk_as_the_block():
    app, client = make_client(chunk_tokens=128, n_batch=128, n_ctx=512, n_parallel=2, max_num_samples=2, prefix_cache_slots=2)
    settings = app.extensions["settings"]
    families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").get_data(as_text=True))}
    (sample,) = families["vllm:cache_config_info"].samples
    block, blocks = int(sample.labels["block_size"]), int(sample.labels["num_gpu_blocks"])
    # A block is one chunk of a prompt, never a single token (the picker would raise a block of 1
    # to its minimum of 64 and overstate the cache 64 times).
    assert block == settings.chunk_tokens == 128
    assert blocks * block == settings.kv_cells == 4 * 512
