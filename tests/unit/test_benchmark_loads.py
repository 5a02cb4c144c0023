"""Ring 1: the benchmark's loads are what its table says, and no two draws share a prompt."""
from benchmarks import loads


def test_mmlu_prompts_share_one_few_shot_prefix_per_subject():
    prompts = loads.mmlu(0, subjects=4, n=40)
    assert len(prompts) == 40
    heads = {p[: p.index("Question:", p.index("Answer:"))] for p in prompts}
    assert len(heads) == 4  # one 5-shot prefix per subject, interleaved at random
    assert prompts[:4] != sorted(prompts[:4])


def test_draws_never_repeat_a_prompt():
    seen = set()
    for seed in range(6):
        for p in loads.mmlu(seed, subjects=4, n=12) + loads.unrelated(seed, 4):
            assert p not in seen
            seen.add(p)
    bodies = loads.helm_mix(3)
    assert {b.get("echo_prompt", False) for b in bodies} == {True, False}
    assert any(b.get("num_return_sequences") == 3 for b in bodies)
    assert any(b.get("stop_sequences") for b in bodies)


def test_prompt_lengths_are_mmlu_shaped():
    rnd = __import__("random").Random(0)
    head = loads.few_shot_prefix(rnd, "anatomy")
    q = loads.question(rnd, 6, None)
    assert 3000 < len(head) < 5600 and 400 < len(q) < 1100  # ~640-740 and ~100-180 tokens


def test_prefix_floor_counts_each_distinct_prefix_once_in_any_order():
    a, b, c = [1, 2, 3, 4], [1, 2, 9], [5]
    assert loads.prefix_floor([a, b, c]) == (8, 4 + 1 + 1)  # b shares 1, 2 with a
    assert loads.prefix_floor([c, b, a, a]) == (12, 6)  # a repeated costs nothing more
    assert loads.prefix_floor([[7, 7], [7]]) == (3, 2)  # a prompt that is another's prefix
    sent, distinct = loads.prefix_floor([list(range(n)) for n in (5, 3, 8)])
    assert (sent, distinct) == (16, 8)


def test_the_benchmark_reads_computed_tokens_off_our_metrics_page():
    from benchmarks.bench_vs_llama_server import metric_totals
    from tests.unit.test_api import make_client, post

    _, client = make_client()
    post(client, "/process", {"prompt": "hello", "max_new_tokens": 1})
    totals = metric_totals(client.get("/metrics").get_data(as_text=True))
    # the fake engine counts 7 prompt tokens and 2 prefix-cache hits per finished request
    assert totals["vllm:prompt_tokens_total"] == 7 and totals["vllm:prefix_cache_hits_total"] == 2
