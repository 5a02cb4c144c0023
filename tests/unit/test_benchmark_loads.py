"""Ring 1: the benchmark's loads are what its table says, and no row starts with another's prompts
cached (llama-server's host-RAM prompt cache restores a prompt it has seen whole)."""
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("bench", ROOT / "benchmarks" / "bench_vs_llama_server.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

ROWS = ("decode64", "decode128", "helm16", "mmlu4", "mmlu16", "gen4", "score", "prefill")


def _prompts(loads, row):
    return {job[0] for job in loads[row][1]}


def test_no_two_rows_or_repetitions_share_a_prompt():
    seen: dict[str, tuple[int, str]] = {}
    for rep in range(3):
        loads = bench.loads_for(rep, 8, len)
        assert set(loads) == set(ROWS)
        for row in ROWS:
            if row.startswith("decode"):  # a 4-token prompt: nothing worth caching
                continue
            for p in _prompts(loads, row):
                assert p not in seen, f"{row} rep {rep} repeats a prompt of {seen[p]}"
                seen[p] = (rep, row)


def test_mmlu_prompts_share_one_few_shot_prefix_per_subject():
    prompts = bench.mmlu_prompts(8, seed=0)
    assert len(prompts) == 32
    heads = {p[: p.index("Question:", p.index("Answer:"))] for p in prompts}
    assert len(heads) == 4  # one 5-shot prefix per subject
    assert all(sum(p.startswith(h) for p in prompts) == 8 for h in heads)


def test_loads_have_the_documented_shape():
    loads = bench.loads_for(0, 8, len)
    assert [len(loads[r][1]) for r in ("helm16", "mmlu4", "mmlu16", "gen4", "score", "prefill")] == [16, 32, 32, 16, 16, 16]
    assert {loads[r][2] for r in ("mmlu4", "gen4", "score", "prefill")} == {4} and loads["mmlu16"][2] == 16
    assert all(job[1:] == (64, ["\n\n"]) for job in loads["gen4"][1])
    assert all(job[1] == len(job[0]) for job in loads["prefill"][1])  # n_tokens was asked per text
