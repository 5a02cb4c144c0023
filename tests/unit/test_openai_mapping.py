"""Ring 1: the pure mapping between OpenAI-style requests and the engine's records."""
import pytest
from hypothesis import given
from hypothesis import strategies as st

from app import openai_mapping as m
from app.config import Settings
from app.engine.types import Completion, TokenLogprob
from app.openai_errors import OpenAIError
from app.openai_schemas import ChatCompletionRequest, CompletionRequest

SETTINGS = Settings.from_env({}, n_ctx=128, max_num_samples=4, max_top_k_per_token=5)


def tok(text, lp, top=None):
    return TokenLogprob(text, lp, top if top is not None else {text: lp})


def requests_for(body: dict):
    b = CompletionRequest.model_validate(body)
    return m.completion_requests(b, m.prompts_of(b, 1000), SETTINGS, lambda ids: "".join(chr(97 + i % 26) for i in ids))


def test_lm_eval_loglikelihood_payload():
    (req,) = requests_for({"model": "x", "prompt": [[1, 2, 3]], "temperature": 0, "max_tokens": 1, "logprobs": 1,
                           "seed": 1234, "echo": True})
    assert req.prompt_ids == (1, 2, 3) and req.prompt == "bcd"
    assert req.echo_prompt and req.max_new_tokens == 1 and req.top_k_per_token == 1 and req.sampling.greedy
    assert req.include_eog and req.seed == 1234


def test_helm_vllm_client_payload():
    (req,) = requests_for({"model": "x", "prompt": "Hi", "temperature": 0.0, "n": 1, "max_tokens": 0, "best_of": 1,
                           "logprobs": 1, "stop": None, "top_p": 1, "presence_penalty": 0, "frequency_penalty": 0,
                           "echo": True})
    assert req.prompt == "Hi" and req.prompt_ids is None and req.max_new_tokens == 0 and req.parse_special


def test_logprobs_zero_asks_the_engine_for_one_alternative():
    (req,) = requests_for({"prompt": "a", "logprobs": 0})
    assert req.top_k_per_token == 1


@pytest.mark.parametrize("value, ok", [({}, True), (None, True), ({"5": 1.0}, False)])
def test_neutral_values(value, ok):
    if ok:
        m.check_extra({"logit_bias": value})
    else:
        with pytest.raises(OpenAIError, match="logit_bias"):
            m.check_extra({"logit_bias": value})


def test_neutral_values_are_json_typed():
    m.check_extra({"repetition_penalty": 1.0, "min_tokens": 0, "ignore_eos": False})
    with pytest.raises(OpenAIError):
        m.check_extra({"ignore_eos": 0})  # 0 is not false
    with pytest.raises(OpenAIError, match="best_of_n"):
        m.check_extra({"best_of_n": 1})


def test_top_dict_has_the_chosen_token_and_the_top_n():
    t = tok("b", -2.0, {"a": -0.5, "c": -1.0, "d": -3.0})
    assert m.top_dict(t, 2) == {"b": -2.0, "a": -0.5, "c": -1.0}
    assert m.top_dict(t, 0) == {"b": -2.0}


def test_top_dict_keeps_the_larger_logprob_of_a_shared_text():
    """Two tokens with one text: the key holds the larger, so max(values) is still the best."""
    t = tok("a", -2.0, {"a": -0.5})
    assert m.top_dict(t, 1) == {"a": -0.5}


def test_logprobs_are_floored_for_json():
    t = tok("a", float("-inf"), {"b": 0.0, "a": float("-inf")})
    out = m.completion_logprobs([t], 2, null_first=False)
    assert out["token_logprobs"] == [m.LOGPROB_FLOOR] and out["top_logprobs"][0]["a"] == m.LOGPROB_FLOOR


@given(st.lists(st.floats(-50, 0), min_size=1, max_size=5))
def test_greedy_token_equals_the_max_of_its_top_logprobs(lps):
    """lm-eval's is_greedy: exact float equality of the chosen logprob and max(top_logprobs)."""
    best = max(lps)
    top = {f"t{i}": v for i, v in sorted(enumerate(lps), key=lambda x: -x[1])}
    chosen = next(k for k, v in top.items() if v == best)
    entry = m.completion_logprobs([tok(chosen, best, top)], len(lps), null_first=False)
    assert entry["token_logprobs"][0] == max(entry["top_logprobs"][0].values())


def test_text_offsets_count_characters():
    out = m.completion_logprobs([tok("ab", -1), tok("日本", -1), tok("", -1), tok("c", -1)], 1, null_first=True,
                                offset=3)
    assert out["text_offset"] == [3, 5, 7, 7]
    assert out["token_logprobs"][0] is None and out["top_logprobs"][0] is None


def test_choice_and_generated_count():
    c = Completion(text="abX", tokens=[tok("a", -1), tok("b", -1), tok("X", -0.5), tok("", -0.1)], logprob=-2.6,
                   finish_reason="eos")
    shown = m.Shown(n_prompt=2, null_first=False)
    choice = m.completion_choice(3, c, echo=True, shown=shown, logprobs=None)
    assert choice == {"index": 3, "text": "abX", "logprobs": None, "finish_reason": "stop", "stop_reason": None}
    assert m.generated(c, echo=True, shown=shown) == 2
    assert m.generated(c, echo=False, shown=shown) == 4


def test_best_n_keeps_the_highest_total_logprobs_in_order():
    cs = [Completion(text=t, tokens=[], logprob=lp, finish_reason="length") for t, lp in
          (("a", -3.0), ("b", -1.0), ("c", -2.0), ("d", -1.0))]
    assert [c.text for c in m.best_n(cs, 2)] == ["b", "d"]
    assert [c.text for c in m.best_n(cs, 4)] == ["a", "b", "c", "d"]


def test_chat_request_room_and_names():
    b = ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "x"}], "n": 2})
    req = m.chat_request(b, list(range(100)), "x" * 100, SETTINGS)
    assert req.max_new_tokens == 28 and req.num_samples == 2 and not req.echo_prompt
    b = ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "x"}], "max_tokens": 5,
                                              "max_completion_tokens": 6})
    with pytest.raises(OpenAIError, match="disagree"):
        m.chat_request(b, [1], "x", SETTINGS)


class TestTokenStream:
    def test_without_stops_the_newest_token_waits(self):
        ts = m.TokenStream(())
        assert ts.feed(tok("a", -1)) == []
        assert [t.text for t in ts.feed(tok("b", -1))] == ["a"]
        final = [tok("a", -1), tok("b", -1), tok("", -0.1)]
        assert [t.text for t in ts.finish(final)] == ["b", ""]

    def test_text_a_stop_may_still_cut_is_held(self):
        ts = m.TokenStream(["\n\n", "END"])  # hold 2 characters
        sent = []
        for piece in ["He", "llo", " E", "N", "D"]:  # the engine stops at "D"
            sent += [t.text for t in ts.feed(tok(piece, -1))]
        # the engine cuts at "END": the text is "Hello " and the last kept token is " " (cut " E")
        final = [tok("He", -1), tok("llo", -1), tok(" ", -1)]
        rest = [t.text for t in ts.finish(final)]
        assert "".join(sent + rest) == "Hello "
        assert all("E" not in s for s in sent)

    @given(st.lists(st.text(alphabet="ab\n", max_size=3), max_size=12), st.sampled_from(["\n", "ab", "b\na", "aaa"]))
    def test_sent_text_is_always_a_prefix_of_the_cut_text(self, pieces, stop):
        text = ""
        cut_at = None
        fed = []
        for p in pieces:  # the engine: append, then look for the stop; stop there
            fed.append(p)
            before = len(text)
            text += p
            i = text.find(stop, max(0, before - len(stop) + 1))
            if i != -1:
                cut_at = i
                break
        final_text = text if cut_at is None else text[:cut_at]
        ts = m.TokenStream([stop])
        sent = ""
        for p in fed:
            sent += "".join(t.text for t in ts.feed(tok(p, -1)))
        assert final_text.startswith(sent)
