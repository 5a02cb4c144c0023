"""Ring 2: the engine facade's operations features on the real model: the queue limit, the
per-request deadline, a prompt of zero tokens, and the numbers /metrics reads."""
import threading
import time
from dataclasses import replace

import pytest

from app.engine import Engine, GenerationRequest
from app.engine.errors import EmptyPrompt, QueueFull, RequestCancelled, RequestTimedOut
from app.engine.sampling import SamplingParams

pytestmark = pytest.mark.engine
GREEDY = SamplingParams(temperature=1e-7)
LONG = GenerationRequest(prompt="Count to one thousand: 1, 2, 3,", max_new_tokens=1500, sampling=GREEDY)


def wait_for(predicate, what: str, timeout: float = 60.0) -> None:
    """Poll an observable state (never a fixed sleep standing in for it)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture()
def small_engine(engine_settings, request):
    """An engine with N_PARALLEL=1 and the settings a test asks for (indirect parametrisation)."""
    overrides = getattr(request, "param", {})
    eng = Engine(replace(engine_settings, n_parallel=1, max_num_samples=1, n_threads=1, **overrides)).start(background=False)
    yield eng
    eng.close()


def test_a_prompt_of_zero_tokens_is_refused_and_the_engine_goes_on(engine):
    # U+0016 is dropped by SmolLM2's tokenizer: no BOS, no token. It used to hang (plain) or leak
    # its sequence ids and wedge the scheduler (echo).
    assert engine.tokenize("\u0016") == []
    for kw in ({}, {"echo_prompt": True, "max_new_tokens": 0, "num_samples": 8},
               {"echo_prompt": True, "max_new_tokens": 0, "num_samples": 8}, {"echo_prompt": True, "max_new_tokens": 0}):
        with pytest.raises(EmptyPrompt, match="no tokens"):
            engine.generate(GenerationRequest(prompt="\u0016", sampling=SamplingParams(temperature=1.0), **kw))
    assert engine.generate(GenerationRequest(prompt="Hello", max_new_tokens=2, sampling=GREEDY)).completions[0].tokens
    assert engine.info()["running"] == 0 and engine.info()["queued"] == 0


@pytest.mark.parametrize("small_engine", [{"request_timeout": 1}], indirect=True)
def test_the_deadline_cancels_the_request_and_frees_its_sequence(small_engine):
    with pytest.raises(RequestTimedOut, match="REQUEST_TIMEOUT=1"):
        small_engine.generate(LONG)
    info = small_engine.info()
    assert (info["running"], info["queued"], info["in_flight"], info["timed_out"]) == (0, 0, 0, 1)
    stats = small_engine.stats()
    assert stats["timed_out_total"] == 1 and stats["requests_finished_total"]["abort"] == 1
    # The freed sequence serves the next request.
    assert small_engine.generate(GenerationRequest(prompt="Hi", max_new_tokens=2, sampling=GREEDY)).completions


@pytest.mark.parametrize("small_engine", [{"max_queued": 1}], indirect=True)
def test_past_the_queue_limit_requests_are_refused_and_the_others_are_unharmed(small_engine):
    gone = threading.Event()
    outcomes: list = []

    def long_request():
        try:
            outcomes.append(small_engine.generate(LONG, is_disconnected=gone.is_set))
        except RequestCancelled as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=long_request) for _ in range(2)]
    for t in threads:
        t.start()
    # N_PARALLEL=1 runs one, MAX_QUEUED=1 lets one wait: both are in flight, one queued.
    wait_for(lambda: small_engine.info()["in_flight"] == 2 and small_engine.info()["queued"] == 1, "one running, one queued")
    with pytest.raises(QueueFull) as exc:
        small_engine.generate(GenerationRequest(prompt="One more", max_new_tokens=2, sampling=GREEDY))
    assert exc.value.retry_after_s >= 1
    assert small_engine.stats()["rejected_queue_full_total"] == 1
    assert small_engine.info()["in_flight"] == 2  # the refused request took no place
    gone.set()  # their clients leave: both are cancelled and freed
    for t in threads:
        t.join(timeout=60)
    assert len(outcomes) == 2 and all(isinstance(o, RequestCancelled) for o in outcomes)
    info = small_engine.info()
    assert (info["running"], info["queued"], info["in_flight"]) == (0, 0, 0)
    assert small_engine.generate(GenerationRequest(prompt="Now", max_new_tokens=2, sampling=GREEDY)).completions


def test_results_carry_timings_and_the_totals_count_them(engine):
    before = engine.stats()
    req = GenerationRequest(prompt="The capital of France is", max_new_tokens=6, sampling=GREEDY, num_samples=2)
    result = engine.generate(req)
    after = engine.stats()
    assert result.queue_s >= 0 and result.first_token_s is not None and result.first_token_s >= result.queue_s
    assert result.n_generated_tokens == sum(len(c.tokens) for c in result.completions)
    assert after["prompt_tokens_total"] - before["prompt_tokens_total"] == result.n_prompt_tokens
    assert after["generation_tokens_total"] - before["generation_tokens_total"] == result.n_generated_tokens
    assert after["prefix_cache_queries_total"] - before["prefix_cache_queries_total"] == result.n_prompt_tokens
    assert after["prefix_cache_hits_total"] - before["prefix_cache_hits_total"] == result.n_cached_tokens
    finished = sum(after["requests_finished_total"].values()) - sum(before["requests_finished_total"].values())
    assert finished == 2
    assert 0.0 <= after["kv_cache_usage"] <= 1.0
    # Echo scoring: the prompt's tokens are not counted as generated.
    scored = engine.generate(GenerationRequest(prompt="The capital of France is", max_new_tokens=0, echo_prompt=True,
                                               sampling=GREEDY))
    assert scored.n_generated_tokens == 0 and scored.first_token_s is None
    assert engine.stats()["generation_tokens_total"] == after["generation_tokens_total"]


def test_a_load_error_names_the_file_not_the_directory(engine_settings, tmp_path):
    missing = tmp_path / "secret-dir" / "model.gguf"
    eng = Engine(replace(engine_settings, model_path=missing)).start()
    wait_for(lambda: eng.info()["status"] == "error", "the load to fail")
    info = eng.info()
    assert info["model_file"] == "model.gguf" and "model.gguf" in info["error"]
    assert str(tmp_path) not in str(info) and "secret-dir" not in str(info)
