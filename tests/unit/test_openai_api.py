"""Ring 1: the OpenAI-compatible routes with the fake engine injected through ENGINE_FACTORY."""
import json

import pytest

from tests.fake_engine import FakeEngine
from tests.unit.test_api import make_client, post


@pytest.fixture()
def app_client():
    return make_client(n_ctx=256, max_num_samples=4, max_top_k_per_token=5)


@pytest.fixture()
def client(app_client):
    return app_client[1]


def engine_of(client) -> FakeEngine:
    return client.application.extensions["engine"]


def assert_openai_error(r, status: int, param: str | None):
    assert r.status_code == status, r.get_data(as_text=True)
    err = r.json["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert err["param"] == param, err


@pytest.mark.parametrize(
    "prompt, sent",
    [
        ("hi", [("hi", None)]),
        (["ab", "cd"], [("ab", None), ("cd", None)]),
        ([104, 105], [("hi", (104, 105))]),
        ([[104, 105], [106]], [("hi", (104, 105)), ("j", (106,))]),
    ],
)
def test_every_prompt_shape_becomes_one_engine_request_per_prompt(client, prompt, sent):
    r = post(client, "/v1/completions", {"prompt": prompt, "max_tokens": 2, "temperature": 0})
    assert r.status_code == 200, r.json
    reqs = engine_of(client).requests
    assert [(q.prompt, q.prompt_ids) for q in reqs] == sent
    q = reqs[0]
    assert q.max_new_tokens == 2 and q.sampling.greedy and q.include_eog and q.sampling.top_k == 0
    assert [c["index"] for c in r.json["choices"]] == list(range(len(sent)))


def test_defaults_are_openais(client):
    post(client, "/v1/completions", {"prompt": "x"})
    q = engine_of(client).requests[-1]
    assert (q.max_new_tokens, q.num_samples, q.sampling.temperature, q.sampling.top_p) == (16, 1, 1.0, 1.0)
    assert (q.echo_prompt, q.stop_sequences, q.seed) == (False, (), None)


def test_response_matches_vllms_shape(client):
    r = post(client, "/v1/completions", {"prompt": ["ab", "cd"], "n": 2, "max_tokens": 3, "seed": 7,
                                          "stop": "\n", "logprobs": 2})
    body = r.json
    assert body["id"].startswith("cmpl-") and body["object"] == "text_completion" and isinstance(body["created"], int)
    assert body["model"] == "fake"
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    assert [c["text"] for c in body["choices"]] == ["bbb", "bbb", "ddd", "ddd"]
    assert all(c["finish_reason"] == "length" for c in body["choices"])
    assert body["usage"] == {"prompt_tokens": 4, "completion_tokens": 12, "total_tokens": 16}
    lp = body["choices"][0]["logprobs"]
    assert lp["tokens"] == ["b", "b", "b"] and lp["token_logprobs"] == [-0.5] * 3
    assert lp["text_offset"] == [0, 1, 2]
    assert lp["top_logprobs"][0] == {"b": -0.5, "~": -3.0}  # the chosen token and the top 2
    q = engine_of(client).requests[-1]
    assert q.seed == 7 and q.stop_sequences == ("\n",) and q.num_samples == 2 and q.top_k_per_token == 2


def test_echo_scoring_as_lm_eval_reads_it(client):
    """lm-eval sends [[ids]], max_tokens 1, echo, logprobs 1; it sums token_logprobs[ctxlen:-1] and calls
    a continuation greedy when every token's logprob equals the max of its top_logprobs."""
    ids = [ord(c) for c in "Paris"]
    r = post(client, "/v1/completions", {"prompt": [ids], "max_tokens": 1, "echo": True, "logprobs": 1,
                                          "temperature": 0, "seed": 1234})
    choice = r.json["choices"][0]
    lp = choice["logprobs"]
    assert choice["text"] == "Pariss"
    assert lp["tokens"] == list("Pariss")
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None  # no context before it
    ctxlen = 2
    assert sum(lp["token_logprobs"][ctxlen:-1]) == -3.0
    assert all(t == max(top.values()) for t, top in zip(lp["token_logprobs"][ctxlen:-1], lp["top_logprobs"][ctxlen:-1]))
    last = lp["token_logprobs"][-1]
    assert last == max(lp["top_logprobs"][-1].values())  # the greedy generated token
    assert r.json["usage"] == {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}


def test_end_of_generation_is_returned_as_a_token(client):
    """A sample ending on EOS still returns max_tokens=1 token, so lm-eval's [ctxlen:-1] drops the right one."""
    r = post(client, "/v1/completions", {"prompt": [[ord(c) for c in "ab$"]], "max_tokens": 1, "echo": True,
                                          "logprobs": 1})
    choice = r.json["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["text"] == "ab$$"
    r = post(client, "/v1/completions", {"prompt": "ab$", "max_tokens": 5, "logprobs": 0})
    choice = r.json["choices"][0]
    assert choice["text"] == "$" and choice["logprobs"]["tokens"] == ["$", ""]
    assert choice["logprobs"]["token_logprobs"] == [-0.5, -0.25] and choice["finish_reason"] == "stop"
    assert choice["logprobs"]["top_logprobs"][1] == {"": -0.25}  # logprobs=0: the chosen token alone


def test_max_tokens_zero_with_echo_scores_the_prompt(client):
    r = post(client, "/v1/completions", {"prompt": "abc", "max_tokens": 0, "echo": True, "logprobs": 1})
    choice = r.json["choices"][0]
    assert choice["text"] == "abc" and choice["logprobs"]["tokens"] == ["a", "b", "c"]
    assert choice["logprobs"]["token_logprobs"] == [None, -1.0, -1.0]
    assert r.json["usage"]["completion_tokens"] == 0


@pytest.mark.parametrize(
    "body, status, param",
    [
        ({"prompt": [1, "a"]}, 400, "prompt"),
        ({"prompt": [[1], "a"]}, 400, "prompt"),
        ({"prompt": []}, 400, "prompt"),
        ({"prompt": [[]]}, 400, "prompt"),
        ({"prompt": ""}, 400, "prompt"),
        ({"prompt": [True]}, 400, "prompt"),
        ({"prompt": {"a": 1}}, 400, "prompt"),
        ({"prompt": [0x110000]}, 400, "prompt"),
        ({"prompt": [[5], [-1]]}, 400, "prompt"),
        ({}, 400, "prompt"),
        ({"prompt": "x", "logprobs": 6}, 400, "logprobs"),
        ({"prompt": "x", "n": 5}, 400, "n"),
        ({"prompt": "x", "n": 0}, 400, "n"),
        ({"prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
        ({"prompt": "x", "max_tokens": -1}, 400, "max_tokens"),
        ({"prompt": "x", "max_tokens": "5"}, 400, "max_tokens"),
        ({"prompt": "x", "max_tokens": 10_000}, 400, "max_tokens"),
        ({"prompt": "x", "model": "gpt-4"}, 404, "model"),
        ({"prompt": "x", "temperature": -1}, 400, "temperature"),
        ({"prompt": "x", "top_p": 0}, 400, "top_p"),
        ({"prompt": "x", "best_of": 2, "n": 3}, 400, "best_of"),
        ({"prompt": "x", "best_of": 5}, 400, "best_of"),
        ({"prompt": "x", "best_of": 3, "stream": True}, 400, "best_of"),
        ({"prompt": "x", "presence_penalty": 0.5}, 400, "presence_penalty"),
        ({"prompt": "x", "frequency_penalty": 1}, 400, "frequency_penalty"),
        ({"prompt": "x", "logit_bias": {"1": 5}}, 400, "logit_bias"),
        ({"prompt": "x", "suffix": "end"}, 400, "suffix"),
        ({"prompt": "x", "mirostat": 2}, 400, "mirostat"),
        ({"prompt": "x", "stop": [""]}, 400, "stop"),
        ({"prompt": "x", "stop": ["a"] * 17}, 400, "stop"),
        ({"prompt": "x" * 200, "max_tokens": 100}, 400, "max_tokens"),
        ({"prompt": "x", "stream_options": {"include_usage": 1}}, 400, "stream_options.include_usage"),
    ],
)
def test_bad_completion_requests_are_4xx_naming_the_field(client, body, status, param):
    assert_openai_error(post(client, "/v1/completions", body), status, param)
    assert client.get("/health").status_code == 200


@pytest.mark.parametrize("raw", [b"not json", b"", b"[1]", b"null"])
def test_malformed_bodies_are_400_in_openai_shape(client, raw):
    r = post(client, "/v1/completions", raw)
    assert_openai_error(r, 400, None)


def test_best_of_draws_more_and_returns_n(client):
    r = post(client, "/v1/completions", {"prompt": ["ab", "cd"], "best_of": 3, "n": 2, "max_tokens": 2})
    assert engine_of(client).requests[-1].num_samples == 3
    assert [c["index"] for c in r.json["choices"]] == [0, 1, 2, 3]
    assert r.json["usage"]["completion_tokens"] == 8
    post(client, "/v1/completions", {"prompt": "ab", "best_of": 1, "n": 2, "max_tokens": 1})  # HELM sends this
    assert engine_of(client).requests[-1].num_samples == 2


def test_neutral_values_of_unsupported_fields_are_accepted(client):
    body = {"prompt": "x", "max_tokens": 1, "logit_bias": {}, "presence_penalty": 0, "frequency_penalty": 0.0,
            "best_of": 1, "user": "u", "suffix": None, "request_id": "abc", "repetition_penalty": 1.0, "top_k": -1}
    assert post(client, "/v1/completions", body).status_code == 200


def test_model_names_accepted(client):
    for name in ("fake", None):
        assert post(client, "/v1/completions", {"prompt": "x", "max_tokens": 1, "model": name}).status_code == 200
    assert client.get("/v1/models").json["data"][0]["id"] == "fake"


def sse(r) -> list:
    assert r.status_code == 200 and r.mimetype == "text/event-stream"
    events = [e for e in r.get_data(as_text=True).split("\n\n") if e]
    assert events[-1] == "data: [DONE]" and all(e.startswith("data: ") for e in events)
    return [json.loads(e[6:]) for e in events[:-1]]


def test_streamed_completion_joins_to_the_unstreamed_one(client):
    body = {"prompt": ["ab", "cd"], "n": 2, "max_tokens": 3, "logprobs": 1}
    whole = post(client, "/v1/completions", body).json
    chunks = sse(post(client, "/v1/completions", {**body, "stream": True, "stream_options": {"include_usage": True}}))
    texts: dict[int, str] = {}
    finish = {}
    for ch in chunks[:-1]:
        assert ch["object"] == "text_completion" and ch["id"].startswith("cmpl-")
        (c,) = ch["choices"]
        texts[c["index"]] = texts.get(c["index"], "") + c["text"]
        if c["finish_reason"]:
            finish[c["index"]] = c["finish_reason"]
    assert texts == {c["index"]: c["text"] for c in whole["choices"]}
    assert finish == {c["index"]: c["finish_reason"] for c in whole["choices"]}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]


def test_streamed_echo_sends_the_prompt_first(client):
    chunks = sse(post(client, "/v1/completions", {"prompt": "ab", "max_tokens": 2, "echo": True, "logprobs": 1,
                                                   "stream": True}))
    texts = [ch["choices"][0]["text"] for ch in chunks]
    assert texts == ["ab", "b", "b"]
    assert chunks[0]["choices"][0]["logprobs"]["token_logprobs"] == [None, -1.0]
    assert chunks[2]["choices"][0]["logprobs"]["text_offset"] == [3]


def test_chat_renders_the_models_template(client):
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    r = post(client, "/v1/chat/completions", {"messages": msgs, "max_tokens": 2, "logprobs": True, "top_logprobs": 1})
    assert r.status_code == 200, r.json
    q = engine_of(client).requests[-1]
    assert q.prompt == "<system>be brief</s>\n<user>hi</s>\n<assistant>"
    assert q.prompt_ids == tuple(ord(c) for c in q.prompt)
    body = r.json
    assert body["id"].startswith("chatcmpl-") and body["object"] == "chat.completion"
    choice = body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": ">>"}
    tok = choice["logprobs"]["content"][0]
    assert tok == {"token": ">", "logprob": -0.5, "bytes": [62], "top_logprobs": [{"token": ">", "logprob": -0.5,
                                                                                    "bytes": [62]}]}
    assert body["usage"]["prompt_tokens"] == len(q.prompt)


def test_chat_default_max_tokens_is_the_rest_of_the_context(client):
    post(client, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})
    q = engine_of(client).requests[-1]
    assert q.max_new_tokens == 256 - len(q.prompt)


@pytest.mark.parametrize(
    "body, param",
    [
        ({"messages": []}, "messages"),
        ({"messages": "hi"}, "messages"),
        ({"messages": [{"content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]}, "messages[0].content"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages"),  # the template's raise_exception
        ({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}, "tools"),
        ({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, "top_logprobs"),
        ({"messages": [{"role": "user", "content": "x"}], "logprobs": True, "top_logprobs": 9}, "top_logprobs"),
        ({"messages": [{"role": "user", "content": "x"}], "n": 9}, "n"),
        ({"messages": [{"role": "user", "content": "x"}], "model": "nope"}, "model"),
    ],
)
def test_bad_chat_requests_are_4xx_naming_the_field(client, body, param):
    r = post(client, "/v1/chat/completions", body)
    assert_openai_error(r, 404 if param == "model" else 400, param)


def test_chat_without_a_template_is_a_400_saying_so():
    _, client = make_client(factory=lambda s: FakeEngine(s, template=None))
    r = post(client, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})
    assert_openai_error(r, 400, "messages")
    assert "chat template" in r.json["error"]["message"]


def test_streamed_chat(client):
    msgs = [{"role": "user", "content": "hi"}]
    whole = post(client, "/v1/chat/completions", {"messages": msgs, "max_tokens": 3}).json
    chunks = sse(post(client, "/v1/chat/completions", {"messages": msgs, "max_tokens": 3, "stream": True,
                                                        "logprobs": True}))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(ch["object"] == "chat.completion.chunk" for ch in chunks)
    text = "".join(ch["choices"][0]["delta"].get("content", "") for ch in chunks)
    assert text == whole["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length" and chunks[-1]["choices"][0]["delta"] == {}
    assert chunks[1]["choices"][0]["logprobs"]["content"][0]["logprob"] == -0.5


def test_remote_tokenizer_routes(client):
    info = client.get("/tokenizer_info").json
    assert info["eos_token"] == "</s>" and info["chat_template"] and info["model_max_length"] == 256
    r = post(client, "/tokenize", {"prompt": "abc", "add_special_tokens": False})
    assert r.json == {"count": 3, "max_model_len": 256, "tokens": [97, 98, 99]}
    assert post(client, "/detokenize", {"tokens": [97, 98]}).json == {"prompt": "ab"}
    assert_openai_error(post(client, "/detokenize", {"tokens": [97, -1]}), 400, "tokens")
    # HELM's form is answered as before
    r = post(client, "/tokenize", {"text": "abc", "truncation": True, "max_length": 2})
    assert r.json["tokens"] == [97, 98] and "request_time" in r.json
    assert post(client, "/tokenize", {"text": 5}).status_code == 422


def test_engine_errors_keep_the_openai_shape():
    from app.engine.errors import EngineOverloaded

    _, client = make_client(factory=lambda s: FakeEngine(s, fail_with=EngineOverloaded("busy")))
    assert_openai_error(post(client, "/v1/completions", {"prompt": "x"}), 503, None)
    _, client = make_client(factory=lambda s: FakeEngine(s, ready=False))
    assert_openai_error(post(client, "/v1/completions", {"prompt": "x"}), 503, None)
    assert client.get("/v1/models").status_code == 503


def test_oversized_body_is_413_in_openai_shape():
    _, client = make_client(max_body_bytes=2048)
    r = post(client, "/v1/completions", {"prompt": "x" * 5000})
    assert_openai_error(r, 413, None)
