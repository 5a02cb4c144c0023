"""Ring 1: the scheduler on a scripted llama stand-in: admission, reuse, eviction, zero-token prompts,
a failure at each stage, and a dead loop seen by /health. No sleeps: every wait is on an event."""
from __future__ import annotations

import threading

import pytest

from app import create_app
from app.config import Settings
from app.engine import Engine, GenerationRequest
from app.engine.errors import EmptyPrompt, EngineError
from app.engine.jobs import Job
from app.engine.outputs import build_result
from app.engine.sampling import SamplingParams
from app.engine.scheduler import Scheduler
from tests.unit.scripted_llama import ScriptedLlama

GREEDY = SamplingParams(temperature=1e-7)
CHUNK = 128


def settings(**kw) -> Settings:
    base = dict(n_parallel=2, prefix_cache_slots=2, chunk_tokens=CHUNK, n_batch=CHUNK, n_ctx=512, max_num_samples=2)
    return Settings.from_env({}, **{**base, **kw})


@pytest.fixture
def make():
    made = []

    def _make(**kw):
        s = settings(**kw)
        sched = Scheduler(ScriptedLlama(s.n_slots), s)
        made.append(sched)
        return sched

    yield _make
    for sched in made:
        assert sched.stop(timeout=10)


def job(prompt, *, n=1, max_new=3, echo=False, k=1, seed=7) -> Job:
    req = GenerationRequest(prompt="x", max_new_tokens=max_new, num_samples=n, echo_prompt=echo,
                            top_k_per_token=k, sampling=GREEDY if n == 1 else SamplingParams(temperature=1.0))
    return Job(req=req, prompt=list(prompt), n_hidden=0, rng_seed=seed)


def run(sched, *jobs, timeout=20):
    for j in jobs:
        sched.submit(j)
    for j in jobs:
        assert j.done.wait(timeout), "job did not finish"
    return [build_result(j, sched.model.pieces) if j.error is None else j.error for j in jobs]


def tokens_of(result):
    return [(t.text, t.logprob) for t in result.completions[0].tokens]


def all_idle(sched):
    return all(s.owner is None for s in sched.table.slots) and not sched.active and not sched.jobs


P = [5 + i % 50 for i in range(200)]  # a 200-token prefix: batches [0,128) [128,200)


def q(k):
    """A 70-token question: on its own a batch of 64+ rows, the kernels of the prefix's batches."""
    return [30 + k % 30] * 70


def test_jobs_beyond_n_parallel_wait_and_all_finish(make):
    sched = make()
    jobs = [job(P + [20 + i]) for i in range(6)]
    results = run(sched, *jobs)
    assert all(len(r.completions[0].tokens) == 3 for r in results)
    assert max(len(j.seqs) for j in jobs) == 1 and all_idle(sched)


def test_reuse_resumes_where_the_prefix_ends_and_changes_nothing(make):
    fresh = run(make(prefix_reuse=False), job(P + q(0)), job(P + q(1)))
    sched = make()
    reused = run(sched, job(P + q(0))) + run(sched, job(P + q(1)))
    assert [r.n_cached_tokens for r in reused] == [0, 200]  # the whole prefix, mid-batch
    assert [tokens_of(r) for r in reused] == [tokens_of(r) for r in fresh]
    assert all_idle(sched)


def test_echo_reuses_records_only_where_they_exist(make):
    sched = make()
    a, b, c = run(sched, job(P, max_new=2), job(P + q(0), max_new=0, echo=True, k=2),
                  job(P + q(1), max_new=0, echo=True, k=2))
    assert b.n_cached_tokens == 0  # the first job kept no records: echo recomputes
    assert c.n_cached_tokens == 196  # records 1..199 exist (the 200th scores a token it does not share)
    ref = run(make(prefix_reuse=False), job(P + q(1), max_new=0, echo=True, k=2))[0]
    assert tokens_of(c) == tokens_of(ref)


def test_eviction_of_a_shared_source_does_not_touch_the_copy(make):
    # 2 running + 1 cache slot. B copies its prefix from A's slot while A runs; A ends first, and its
    # slot is taken (its cached prefix dropped) by other jobs while B still decodes. B's numbers must
    # be those of a fresh run.
    sched = make(prefix_cache_slots=1)
    shared = P[:128]  # one batch: B reuses all of it, whether A has computed more or not yet
    a, b = job(shared + q(0), max_new=5), job(shared + q(1), max_new=40)
    # each spares more tokens than A's entry does net of the prefix B holds too (70): A's goes first
    others = [job([50 + i] + [51] * 99, max_new=2) for i in range(4)]
    got = run(sched, a, b, *others)
    assert got[1].n_cached_tokens == 128
    a_home = next(c[1][0] for c in sched.model.calls if c[0] == "decode" and len(c[1]) > 1)  # A's prompt's slot
    assert any(c[0] == "copy" and c[1][0] == a_home for c in sched.model.calls)  # B copied from a running job
    a_slot = sched.table.slots[a_home]
    assert a_slot.tokens[:128] != shared  # A's prefix was evicted
    ref = run(make(prefix_reuse=False), job(shared + q(1), max_new=40))[0]
    assert tokens_of(got[1]) == tokens_of(ref)
    assert all_idle(sched)


def test_n_samples_share_the_prompt_and_draw_their_own_streams(make):
    sched = make()
    r = run(sched, job(P, n=2, max_new=6, seed=3))[0]
    again = run(make(), job(P, n=2, max_new=6, seed=3))[0]
    assert [c.text for c in r.completions] == [c.text for c in again.completions]
    assert r.completions[0].text != r.completions[1].text  # each sample has its own random stream
    # The prompt was computed in the decode region (slots 0 and 1), since the job decodes: the first
    # sample decodes where the prompt is, the second beside it, a copy; the prompt stays cached.
    copies = [c[1] for c in sched.model.calls if c[0] == "copy"]
    assert copies == [(0, 1)] and sched.table.slots[0].tokens == P


def test_decoding_sequences_share_consecutive_slots_and_match_a_lone_run(make):
    # llama.cpp batches only consecutive sequence ids: every decode step stays in the region
    # (slots 0..3), one run of ids, whichever slots the prompts were computed in.
    sched = make(n_parallel=4, prefix_cache_slots=4, max_num_samples=2)
    run(sched, *[job([90 + i] * 80, max_new=2) for i in range(4)])  # entries all over the slots
    jobs = [job(P + q(i), max_new=16) for i in range(2)] + [job(P[:100], n=2, max_new=16, seed=5)]
    sched.model.calls.clear()
    got = run(sched, *jobs)
    calls = [c[1] for c in sched.model.calls if c[0] == "decode"]
    steps = [ids for ids in calls if len(set(ids)) == len(ids)]  # one token per sequence
    assert steps and all(set(ids) <= {0, 1, 2, 3} for ids in steps)
    # While a prompt is still computed in a region slot, a step may have a hole there; once every
    # prompt is in, each step is one run of consecutive ids.
    last_prompt = max(i for i, ids in enumerate(calls) if len(set(ids)) < len(ids))
    after = [ids for ids in calls[last_prompt + 1 :] if len(ids) > 1]
    assert len(after) >= 5 and all(max(ids) - min(ids) + 1 == len(ids) for ids in after), after
    alone = [run(make(prefix_reuse=False, n_parallel=4, prefix_cache_slots=4, max_num_samples=2), j)[0]
             for j in [job(P + q(i), max_new=16) for i in range(2)] + [job(P[:100], n=2, max_new=16, seed=5)]]
    assert [[c.text for c in r.completions] for r in got] == [[c.text for c in r.completions] for r in alone]
    assert [tokens_of(r) for r in got] == [tokens_of(r) for r in alone]
    assert all_idle(sched)


@pytest.mark.parametrize("stage", ["place", "start", "decode", "chunk"])
def test_a_failure_at_each_stage_fails_that_job_alone(make, stage):
    sched = make()
    bad, good = job([77] + P), job([78] + P)
    model = sched.model
    if stage == "place":
        real = sched.table.place
        sched.table.place = lambda j, **kw: (_ for _ in ()).throw(ValueError("boom")) if j is bad else real(j, **kw)
    elif stage == "start":
        real_rm = model.seq_rm
        state = {"n": 0}

        def rm(seq, p0=-1, p1=-1):  # the first slot clearing during bad's start raises
            if sched.table.slots[seq].owner is bad and state["n"] == 0:
                state["n"] += 1
                raise ValueError("boom")
            return real_rm(seq, p0, p1)

        model.seq_rm = rm
    elif stage == "decode":
        model.fail_decode_when = lambda slots: any(sched.table.slots[s].owner is bad for s in slots) and len(slots) == 1
    else:
        real_decode = model.decode

        def decode(tokens, pos, seq, want):
            if len(tokens) > 1 and sched.table.slots[int(seq[0])].owner is bad:
                raise ValueError("boom")
            return real_decode(tokens, pos, seq, want)

        model.decode = decode
    got = run(sched, bad, good)
    assert isinstance(got[0], EngineError)
    assert len(got[1].completions[0].tokens) == 3
    assert all_idle(sched)
    assert len(run(sched, job(P, max_new=2))[0].completions[0].tokens) == 2  # still serving


def test_result_failure_is_the_requests_alone():
    s = settings()
    eng = _scripted_engine(s)
    bad = GenerationRequest(prompt="a b c", max_new_tokens=2, echo_prompt=True, sampling=GREEDY)
    job = eng._submit(bad, progress=None)
    assert job.done.wait(20)
    job.records[1] = None  # a lost record: the result cannot be built
    with pytest.raises(AssertionError):
        eng._answer(job, 0.0, False)
    assert eng.generate(GenerationRequest(prompt="a b", max_new_tokens=2, sampling=GREEDY)).completions[0].tokens
    eng.close()


def test_zero_token_prompt_is_refused_before_it_queues():
    eng = _scripted_engine(settings())
    with pytest.raises(EmptyPrompt):
        eng.generate(GenerationRequest(prompt="\u0016", max_new_tokens=5))
    assert eng._scheduler.load()["queued"] == 0
    eng.close()


class _Fatal(BaseException):
    """What kills a thread outright (not an Exception the loop absorbs)."""


def test_a_dead_loop_is_reported_by_health_as_503():
    eng = _scripted_engine(settings())
    sched = eng._scheduler
    entered = threading.Event()
    real = sched._admit

    def admit():
        entered.set()
        raise _Fatal("simulated fatal error")

    sched._admit = admit
    app = create_app({"ENGINE_FACTORY": lambda _s: _Started(eng)})
    client = app.test_client()
    assert client.get("/health").status_code == 200
    threading.excepthook, old = (lambda args: None), threading.excepthook
    try:
        with pytest.raises(EngineError):
            eng.generate(GenerationRequest(prompt="a b", max_new_tokens=2))  # the job that hits the bug fails
        sched._thread.join(10)
    finally:
        threading.excepthook = old
    assert entered.is_set() and not sched.alive
    r = client.get("/health")
    assert r.status_code == 503 and "simulated fatal error" in r.get_json()["error"]
    assert client.post("/process", json={"prompt": "a b"}).status_code == 503
    sched._admit = real


class _Started:
    def __init__(self, eng):
        self.eng = eng

    def start(self):
        return self.eng


class _Tokenizer(ScriptedLlama):
    def tokenize(self, text, *, add_special, parse_special):
        return [5 + (ord(w[0]) % 50) for w in text.split() if w.isprintable()]


def _scripted_engine(s: Settings) -> Engine:
    eng = Engine(s)
    eng._model = _Tokenizer(s.n_slots)
    eng._scheduler = Scheduler(eng._model, s)
    eng._ready.set()
    return eng
