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
