"""Ring 2: what the OpenAI-compatible routes ask of the real engine: token-id prompts, the returned
end-of-generation token, streaming and its cancellation."""
import time

import pytest

from app.engine import GenerationRequest, GenerationResult, StreamPiece
from app.engine.errors import TokenOutOfRange
from app.engine.sampling import SamplingParams

pytestmark = pytest.mark.engine

GREEDY = SamplingParams(temperature=0.0)
EOS_FIRST = "Question: What is the capital of France?\nAnswer:"  # SmolLM2 answers it with end-of-text at once


def test_token_id_prompts_are_used_as_given_and_echo_all_of_them(engine):
    text = "The quick brown fox jumps over the lazy dog."
    ids = engine.tokenize(text)
    by_text = engine.generate(GenerationRequest(prompt=text, max_new_tokens=0, echo_prompt=True)).completions[0]
    res = engine.generate(GenerationRequest(prompt=engine.decode(ids), prompt_ids=tuple(ids), max_new_tokens=0,
                                            echo_prompt=True))
    by_ids = res.completions[0]
    assert res.n_prompt_tokens == len(ids) and by_ids.text == text
    assert [t.text for t in by_ids.tokens] == [t.text for t in by_text.tokens]
    # The same ids computed the same way: the same bits (the first is scored after the start token
    # either way, since SmolLM2 adds no BOS).
    assert [(t.logprob, t.top_logprob) for t in by_ids.tokens] == [(t.logprob, t.top_logprob) for t in by_text.tokens]
    with pytest.raises(TokenOutOfRange):
        engine.generate(GenerationRequest(prompt="?", prompt_ids=(1, engine.info()["n_vocab"])))


def test_end_of_generation_token_is_returned_only_when_asked(engine):
    plain = engine.generate(GenerationRequest(prompt=EOS_FIRST, max_new_tokens=4, sampling=GREEDY)).completions[0]
    assert plain.finish_reason == "eos" and plain.tokens == [] and plain.text == ""
    res = engine.generate(GenerationRequest(prompt=EOS_FIRST, max_new_tokens=4, sampling=GREEDY, include_eog=True,
                                            top_k_per_token=3))
    (eog,) = res.completions[0].tokens
    assert res.completions[0].finish_reason == "eos" and eog.text == "" and res.completions[0].text == ""
    assert eog.logprob == max(eog.top_logprob.values())  # greedy: it was the most likely token


def test_stream_yields_each_token_then_the_result(engine):
    req = GenerationRequest(prompt="Once upon a time", max_new_tokens=12, sampling=GREEDY, top_k_per_token=2)
    items = list(engine.stream(req))
    pieces, result = items[:-1], items[-1]
    assert isinstance(result, GenerationResult) and all(isinstance(p, StreamPiece) for p in pieces)
    (c,) = result.completions
    assert "".join(p.text for p in pieces) == c.text
    assert [p.token.logprob for p in pieces] == [t.logprob for t in c.tokens]
    assert [p.token.top_logprob for p in pieces] == [t.top_logprob for t in c.tokens]


def test_streamed_text_runs_past_a_stop_the_result_cuts(engine):
    req = GenerationRequest(prompt="Once upon a time", max_new_tokens=40, sampling=GREEDY, stop_sequences=(",",))
    *pieces, result = engine.stream(req)
    raw = "".join(p.text for p in pieces)
    c = result.completions[0]
    assert c.finish_reason == "stop" and "," in raw and raw.startswith(c.text) and "," not in c.text


def test_closing_a_stream_cancels_its_request(engine):
    req = GenerationRequest(prompt="1, 2, 3, 4, 5,", max_new_tokens=1000, sampling=GREEDY)
    it = engine.stream(req)
    assert isinstance(next(it), StreamPiece)
    it.close()
    deadline = time.monotonic() + 60
    while engine.info()["running"]:
        assert time.monotonic() < deadline, "the closed stream's request still runs"
        time.sleep(0.05)
