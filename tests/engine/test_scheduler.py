"""Ring 2: the scheduler under load: prefix reuse, fairness, disconnects, failures in a batch."""
import concurrent.futures as cf
import threading
import time
from dataclasses import replace

import numpy as np
import pytest

from app.engine import Engine, GenerationRequest
from app.engine.errors import EngineError, RequestCancelled
from app.engine.sampling import SamplingParams
from tests.engine.noise import NOISE_MAX, NOISE_MEAN, agree_unless_near_tie

pytestmark = pytest.mark.engine
GREEDY = SamplingParams(temperature=1e-7)
SHOTS = "".join(
    f"Question: Which planet is number {i} from the sun in our solar system, counting outwards?\n"
    f"A. Mercury\nB. Venus\nC. Earth\nD. Mars\nAnswer: {'ABCD'[i % 4]}\n\n"
    for i in range(1, 9)
)
QUESTIONS = [f"{SHOTS}Question: What is {a} plus {b}?\nA. {a + b}\nB. {a * b}\nC. 0\nD. 1\nAnswer:"
             for a, b in [(2, 3), (4, 5), (7, 1), (6, 6), (9, 2), (3, 8)]]


def run(engine, prompt, **kw):
    kw.setdefault("sampling", GREEDY)
    return engine.generate(GenerationRequest(prompt=prompt, **kw))


@pytest.fixture(scope="module")
def no_cache_engine(engine_settings):
    eng = Engine(replace(engine_settings, prefix_cache_tokens=0)).start(background=False)
    yield eng
    eng.close()


def test_prefix_reuse_changes_no_output(engine, no_cache_engine):
    assert len(engine.tokenize(QUESTIONS[0])) > 300
    with_cache, without = [], []
    for q in QUESTIONS:
        for eng, out in ((engine, with_cache), (no_cache_engine, without)):
            out.append(run(eng, q, max_new_tokens=3, top_k_per_token=3))
    assert with_cache[-1].n_cached_tokens > 300  # the shared few-shot prefix came from the cache
    assert all(r.n_cached_tokens == 0 for r in without)
    d = [x for a, b in zip(with_cache, without) for x in agree_unless_near_tie(a.completions[0], b.completions[0])]
    print(f"prefix reuse on vs off: logprob difference mean {np.mean(d):.4f} max {max(d):.4f} over {len(d)} tokens")
    assert len(d) >= 6 and np.mean(d) < NOISE_MEAN and max(d) < NOISE_MAX


def test_echo_scoring_reuses_scored_prefixes(engine, no_cache_engine):
    a = run(engine, QUESTIONS[1], max_new_tokens=0, echo_prompt=True, top_k_per_token=2)
    b = run(engine, QUESTIONS[2], max_new_tokens=0, echo_prompt=True, top_k_per_token=2)
    ref = run(no_cache_engine, QUESTIONS[2], max_new_tokens=0, echo_prompt=True, top_k_per_token=2)
    assert b.n_cached_tokens > 300
    got = np.array([t.logprob for t in b.completions[0].tokens])
    want = np.array([t.logprob for t in ref.completions[0].tokens])
    assert len(got) == len(want)
    # The prefix's logprobs are records kept from earlier requests (exact only if those computed it
    # in the same cells and chunks as a fresh run would), the suffix is recomputed: noise in both.
    d = np.abs(got - want)
    print(f"echo with a reused prefix vs without: mean {d.mean():.4f} max {d.max():.4f} over {len(d)} tokens")
    assert d.mean() < NOISE_MEAN and d.max() < NOISE_MAX
    assert a.completions[0].text == QUESTIONS[1]


def test_concurrent_requests_share_a_prefix_being_computed(engine):
    prompts = [q.replace("Question: What", f"Question {i}: What") for i, q in enumerate(QUESTIONS)]
    with cf.ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda p: run(engine, "Fresh prefix. " + p, max_new_tokens=1), prompts))
    cached = sorted(r.n_cached_tokens for r in results)
    assert cached[0] == 0 and cached[-1] > 300, cached  # the first computes, the others share


def test_long_generation_does_not_starve_short_requests(engine):
    done = {}

    def long():
        r = run(engine, "Count from 1 to 1000: 1, 2, 3, 4, 5,", max_new_tokens=300)
        done["long"] = time.monotonic()
        done["n_long"] = len(r.completions[0].tokens)

    t = threading.Thread(target=long)
    t.start()
    time.sleep(0.3)
    run(engine, "Hi", max_new_tokens=2)
    done["short"] = time.monotonic()
    t.join()
    assert done["n_long"] == 300 and done["short"] < done["long"]


def test_disconnected_client_frees_its_sequences(engine):
    t0 = time.monotonic()
    with pytest.raises(RequestCancelled):
        engine.generate(GenerationRequest(prompt="Count to a thousand:", max_new_tokens=1500, sampling=GREEDY),
                        is_disconnected=lambda: time.monotonic() - t0 > 0.3)
    assert time.monotonic() - t0 < 5
    assert engine.info()["running"] == 0


def test_a_failing_request_does_not_poison_the_batch(engine, monkeypatch):
    sched = engine._scheduler
    real = sched._sample

    def sample(s, row):
        if "POISON" in s.job.req.prompt:
            raise ValueError("boom")
        return real(s, row)

    monkeypatch.setattr(sched, "_sample", sample)
    prompts = ["POISON here", "The capital of France is", "Once upon a time", "POISON again", "def f(x):"]
    with cf.ThreadPoolExecutor(5) as pool:
        futs = [pool.submit(run, engine, p, max_new_tokens=8) for p in prompts]
    for p, f in zip(prompts, futs):
        if "POISON" in p:
            with pytest.raises(EngineError):
                f.result()
        else:
            assert f.result().completions[0].tokens
    monkeypatch.undo()
    assert run(engine, "Still working?", max_new_tokens=2).completions[0].tokens


def test_entries_of_an_ended_scenario_are_dropped(engine_settings):
    # N_PARALLEL 2: an entry nobody shares for 4 admissions is dropped (STALE_AFTER_ADMISSIONS).
    eng = Engine(replace(engine_settings, n_parallel=2, max_num_samples=2)).start(background=False)
    try:
        run(eng, QUESTIONS[0], max_new_tokens=1)
        for q in QUESTIONS[1:4]:  # the scenario runs: its prefix stays
            assert run(eng, q, max_new_tokens=1).n_cached_tokens > 300
        for i in range(4):  # another scenario, sharing only a short head ("Question: ")
            run(eng, f"Question: tell me story number {i}.", max_new_tokens=1)
        assert run(eng, QUESTIONS[4], max_new_tokens=1).n_cached_tokens > 300  # 4 admissions: kept
        for i in range(5):
            run(eng, f"Question: tell me story number {i + 10}.", max_new_tokens=1)
        assert run(eng, QUESTIONS[5], max_new_tokens=1).n_cached_tokens < 32  # 5: dropped
    finally:
        eng.close()
