"""Ring 2: the scheduler under load: prefix reuse, fairness, disconnects, failures in a batch."""
import concurrent.futures as cf
from dataclasses import replace

import pytest

from app.engine import Engine, GenerationRequest
from app.engine.errors import EmptyPrompt, EngineError, RequestCancelled
from app.engine.sampling import SamplingParams
from app.engine.types import StreamPiece

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
    eng = Engine(replace(engine_settings, prefix_reuse=False)).start(background=False)
    yield eng
    eng.close()


def answer(r):
    return [(c.text, [(t.text, t.logprob, t.top_logprob) for t in c.tokens]) for c in r.completions]


def test_prefix_reuse_changes_no_bit(engine, no_cache_engine):
    assert len(engine.tokenize(QUESTIONS[0])) > 300
    with_cache, without = [], []
    for q in QUESTIONS:
        for eng, out in ((engine, with_cache), (no_cache_engine, without)):
            out.append(run(eng, q, max_new_tokens=3, top_k_per_token=3))
    assert with_cache[-1].n_cached_tokens >= 256  # whole chunks of the shared few-shot prefix
    assert all(r.n_cached_tokens == 0 for r in without)
    assert [answer(r) for r in with_cache] == [answer(r) for r in without]


def test_echo_scoring_reuses_scored_prefixes_exactly(engine, no_cache_engine):
    a = run(engine, QUESTIONS[1], max_new_tokens=0, echo_prompt=True, top_k_per_token=2)
    b = run(engine, QUESTIONS[2], max_new_tokens=0, echo_prompt=True, top_k_per_token=2)
    ref = run(no_cache_engine, QUESTIONS[2], max_new_tokens=0, echo_prompt=True, top_k_per_token=2)
    assert b.n_cached_tokens >= 256
    assert answer(b) == answer(ref)  # stored records equal recomputed ones, bit for bit
    assert a.completions[0].text == QUESTIONS[1]


def test_concurrent_requests_share_a_prefix_being_computed(engine):
    prompts = [q.replace("Question: What", f"Question {i}: What") for i, q in enumerate(QUESTIONS)]
    with cf.ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda p: run(engine, "Fresh prefix. " + p, max_new_tokens=1), prompts))
    cached = sorted(r.n_cached_tokens for r in results)
    assert cached[0] == 0 and cached[1] >= 256, cached  # the first computes, the others share its whole chunks


def test_long_generation_does_not_starve_short_requests(engine):
    long = engine.stream(GenerationRequest(prompt="Count from 1 to 1000: 1, 2, 3, 4, 5,", max_new_tokens=300,
                                           sampling=GREEDY))
    assert isinstance(next(long), StreamPiece)  # the long one is generating
    short = run(engine, "Hi", max_new_tokens=2)
    assert short.completions[0].tokens
    pieces = sum(1 for x in long if isinstance(x, StreamPiece))
    assert pieces >= 250  # the long one was still going when the short one finished


def test_disconnected_client_frees_its_slots(engine):
    with pytest.raises(RequestCancelled):
        engine.generate(GenerationRequest(prompt="Count to a thousand:", max_new_tokens=1500, sampling=GREEDY),
                        is_disconnected=lambda: engine.info()["generating_sequences"] > 0)
    info = engine.info()
    assert info["running"] == 0 and info["kv_slots_in_use"] == 0


def test_closing_a_stream_early_cancels_the_request(engine):
    it = engine.stream(GenerationRequest(prompt="Count to a thousand:", max_new_tokens=1500, sampling=GREEDY))
    next(it)
    it.close()
    sched = engine._scheduler
    for _ in range(200):  # the scheduler drops it at its next step
        if sched.load()["running"] == 0:
            break
        sched._cv.acquire()
        sched._cv.wait(0.05)
        sched._cv.release()
    assert engine.info()["kv_slots_in_use"] == 0


def test_zero_token_prompt_is_refused(engine):
    assert engine.tokenize("\u0016") == []
    for echo in (False, True):
        with pytest.raises(EmptyPrompt):
            run(engine, "\u0016", max_new_tokens=0 if echo else 5, echo_prompt=echo)
    assert run(engine, "Still working?", max_new_tokens=2).completions[0].tokens


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
