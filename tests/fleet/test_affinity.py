"""Ring 3, fleet: prefix affinity on vs off. Three fresh replicas in the default (batched,
prefix-reusing) mode behind the shipped HAProxy policy, once with its body hash and once with round
robin in its place; an MMLU-shaped load of 8 subjects. Run with -s to see the numbers (the only
assert on them: affinity raises the hit rate, which follows from the hashing, not from timing).
"""
from __future__ import annotations

import collections

import pytest
import requests

from tests.fleet.fleet import Fleet, answer, run_load
from tests.fleet.loads import helm_body, mmlu_prompts

pytestmark = [pytest.mark.fleet, pytest.mark.server, pytest.mark.slow]

MMLU = mmlu_prompts(3)  # 8 subjects x 3 questions, one ~540-token 5-shot prefix per subject


def _metrics(url: str) -> dict | None:
    """Prefix-cache counters from /metrics (vLLM's names), or None where the server has no /metrics."""
    r = requests.get(url + "/metrics", timeout=10)
    if r.status_code == 404:
        return None
    assert r.status_code == 200
    from prometheus_client.parser import text_string_to_metric_families

    out = {"types": {}}
    for family in text_string_to_metric_families(r.text):
        out["types"][family.name] = family.type
        for s in family.samples:
            out[s.name] = out.get(s.name, 0.0) + s.value
    return out


def _run(model_path, log_dir, *, affinity: bool) -> dict:
    """The MMLU load through three fresh replicas; what it measured."""
    bodies = [helm_body(p, max_new_tokens=1, stop=()) for _, p in MMLU]
    with Fleet(model_path, log_dir, affinity=affinity) as f:
        cpu0 = sum(r.cpu() for r in f.replicas.values())
        wall, results = run_load(f.proxy.url, bodies, 8)
        cpu = sum(r.cpu() for r in f.replicas.values()) - cpu0  # the fleet's work, less noisy than wall time
        metrics = {name: _metrics(r.url) for name, r in f.replicas.items()}
    prompt = sum(b.get("prompt_tokens", 0) for _, b, _ in results)
    cached = sum(b.get("cached_tokens", 0) for _, b, _ in results)
    per_subject = collections.defaultdict(set)
    for (subject, _), (_, _, by) in zip(MMLU, results):
        per_subject[subject].add(by)
    return {
        "statuses": [s for s, _, _ in results], "wall": wall, "cpu": cpu, "hit_rate": cached / max(prompt, 1),
        "prompt": prompt, "cached": cached,
        "replicas_per_subject": sum(len(v) for v in per_subject.values()) / len(per_subject),
        "served": collections.Counter(by for _, _, by in results),
        "answers": [answer(b) for _, b, _ in results], "metrics": metrics,
    }


@pytest.fixture(scope="module")
def runs(model_path, tmp_path_factory) -> dict[str, dict]:
    """Round robin first, then the shipped body hash, each on fresh replicas (empty caches)."""
    return {mode: _run(model_path, tmp_path_factory.mktemp(f"affinity-{mode}"), affinity=mode == "on")
            for mode in ("off", "on")}


def test_every_request_answered_with_and_without_affinity(runs):
    for mode, run in runs.items():
        assert run["statuses"] == [200] * len(MMLU), mode
        print(f"\naffinity {mode:3}: {len(MMLU)} requests, 8 clients, wall {run['wall']:.1f} s, prefix-cache hit rate "
              f"{run['hit_rate']:.3f} ({run['cached']}/{run['prompt']} prompt tokens), "
              f"{run['replicas_per_subject']:.2f} replicas per subject, replicas' CPU {run['cpu']:.1f} s, "
              f"served {dict(run['served'])}")


def test_affinity_raises_the_hit_rate(runs):
    on, off = runs["on"], runs["off"]
    assert on["hit_rate"] > off["hit_rate"]
    assert on["replicas_per_subject"] < off["replicas_per_subject"]
    print(f"\naffinity on vs off: hit rate {on['hit_rate']:.3f} vs {off['hit_rate']:.3f}, wall {on['wall']:.1f} s "
          f"vs {off['wall']:.1f} s ({on['wall'] / off['wall']:.2f}x), replicas' CPU {on['cpu']:.1f} s vs {off['cpu']:.1f} s "
          f"({on['cpu'] / off['cpu']:.2f}x)")


def test_affinity_changes_no_answer(runs):
    """Different replicas, batches and cache states; the same answers, bit for bit (the default
    mode is bit-reproducible, prefix reuse included)."""
    on, off = runs["on"], runs["off"]
    differ = [i for i, (a, b) in enumerate(zip(on["answers"], off["answers"])) if a != b]
    assert not differ, f"{len(differ)} of {len(MMLU)} answers differ between the runs: {differ}"


def test_prefix_hit_rate_from_metrics(runs):
    if any(m is None for run in runs.values() for m in run["metrics"].values()):
        pytest.skip("the server has no /metrics route yet (issue 11 adds it)")
    rates = {}
    for mode, run in runs.items():
        ms = run["metrics"].values()
        # The endpoint picker's inputs (deploy/kubernetes/epp.yaml reads them under these names).
        for m in ms:
            for name in ("vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:kv_cache_usage_perc"):
                assert m["types"].get(name) == "gauge", f"{name}: {m['types'].get(name)}"
        hits = sum(m["vllm:prefix_cache_hits_total"] for m in ms)
        queries = sum(m["vllm:prefix_cache_queries_total"] for m in ms)
        rates[mode] = hits / queries
        print(f"\n/metrics, affinity {mode}: prefix_cache hits/queries = {hits:.0f}/{queries:.0f} = {rates[mode]:.3f} "
              f"(cached_tokens: {run['hit_rate']:.3f})")
    assert rates["on"] > rates["off"]
