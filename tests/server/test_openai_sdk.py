"""Ring 3: the OpenAI Python SDK, and plain HTTP, against the OpenAI-compatible routes under gunicorn."""
import json
import time

import openai
import pytest
import requests
from openai import OpenAI

from tests.server.conftest import start_server

pytestmark = [pytest.mark.server, pytest.mark.slow]

PROMPT = "The capital of France is"


def sdk(server) -> OpenAI:
    return OpenAI(base_url=server.url + "/v1", api_key="EMPTY", max_retries=0, timeout=120)


def model_id(server) -> str:
    return sdk(server).models.list().data[0].id


def test_models_lists_the_served_engine_by_its_manifest_name(server):
    (card,) = sdk(server).models.list().data
    assert card.id == "smollm2-135m-instruct" and card.object == "model"
    assert card.model_extra["max_model_len"] == 2048


def test_completion_with_logprobs(deterministic_server):
    client = sdk(deterministic_server)
    out = client.completions.create(model=model_id(deterministic_server), prompt=PROMPT, max_tokens=12,
                                    temperature=0, logprobs=3, stop=["\n"])
    (choice,) = out.choices
    assert out.object == "text_completion" and out.id.startswith("cmpl-")
    assert choice.text and "\n" not in choice.text and choice.finish_reason in ("stop", "length")
    lp = choice.logprobs
    assert "".join(lp.tokens) == choice.text
    assert len(lp.token_logprobs) == out.usage.completion_tokens
    assert all(len(top) <= 4 and tok == max(top.values()) for tok, top in zip(lp.token_logprobs, lp.top_logprobs))
    # The same request through /process (HELM's route) gives the same greedy tokens and logprobs.
    ref = requests.post(deterministic_server.url + "/process", json={
        "prompt": PROMPT, "max_new_tokens": 12, "temperature": 1e-7, "stop_sequences": ["\n"]}, timeout=120).json()
    assert ref["text"] == choice.text
    assert [t["logprob"] for t in ref["tokens"]] == lp.token_logprobs[: len(ref["tokens"])]


def test_streamed_completion_is_the_unstreamed_one(deterministic_server):
    client = sdk(deterministic_server)
    args = dict(model=model_id(deterministic_server), prompt=[PROMPT, "Once upon a time"], max_tokens=16,
                temperature=0, stop=[".", "\n"], logprobs=1)
    whole = client.completions.create(**args)
    texts, lps, finish = {}, {}, {}
    for chunk in client.completions.create(**args, stream=True, stream_options={"include_usage": True}):
        if chunk.usage is not None:
            usage = chunk.usage
            continue
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + c.text
            lps.setdefault(c.index, []).extend(c.logprobs.token_logprobs)
            if c.finish_reason:
                finish[c.index] = c.finish_reason
    assert texts == {c.index: c.text for c in whole.choices}
    assert lps == {c.index: c.logprobs.token_logprobs for c in whole.choices}
    assert finish == {c.index: c.finish_reason for c in whole.choices}
    assert usage == whole.usage


def test_chat_and_streamed_chat(deterministic_server):
    client = sdk(deterministic_server)
    messages = [{"role": "user", "content": "Name one colour of the rainbow. Answer with one word."}]
    args = dict(model=model_id(deterministic_server), messages=messages, max_tokens=10, temperature=0)
    whole = client.chat.completions.create(**args, logprobs=True, top_logprobs=2)
    msg = whole.choices[0].message
    assert msg.role == "assistant" and msg.content
    assert "".join(t.token for t in whole.choices[0].logprobs.content) == msg.content
    content, roles = "", []
    for chunk in client.chat.completions.create(**args, stream=True):
        delta = chunk.choices[0].delta
        roles += [delta.role] if delta.role else []
        content += delta.content or ""
    assert roles == ["assistant"] and content == msg.content


def test_chat_prompt_is_the_models_template(deterministic_server):
    """The chat route renders SmolLM2's own template: the same text sent to /v1/completions (as token
    ids from vLLM's /tokenize, specials parsed) gives the same answer."""
    url = deterministic_server.url
    messages = [{"role": "user", "content": "What is 2 plus 2?"}]
    chat = requests.post(url + "/v1/chat/completions", json={"messages": messages, "max_tokens": 8,
                                                             "temperature": 0}, timeout=120).json()
    rendered = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
                "<|im_start|>user\nWhat is 2 plus 2?<|im_end|>\n<|im_start|>assistant\n")
    ids = requests.post(url + "/tokenize", json={"prompt": rendered, "add_special_tokens": False}, timeout=30).json()
    assert ids["count"] == chat["usage"]["prompt_tokens"]
    plain = requests.post(url + "/v1/completions", json={"prompt": ids["tokens"], "max_tokens": 8, "temperature": 0},
                          timeout=120).json()
    assert plain["choices"][0]["text"] == chat["choices"][0]["message"]["content"]


def test_token_prompts_score_as_process_does(deterministic_server):
    """A batch of token-id prompts with echo: every token's logprob is /process's, the first is null."""
    url = deterministic_server.url
    texts = ["The quick brown fox jumps over the lazy dog.", "Water boils at 100 degrees Celsius.", "Hello"]
    ids = [requests.post(url + "/tokenize", json={"prompt": t, "add_special_tokens": False}, timeout=30).json()["tokens"]
           for t in texts]
    out = requests.post(url + "/v1/completions", json={"prompt": ids, "max_tokens": 0, "echo": True, "logprobs": 1},
                        timeout=120).json()
    for text, choice in zip(texts, out["choices"]):
        ref = requests.post(url + "/process", json={"prompt": text, "max_new_tokens": 0, "echo_prompt": True,
                                                    "temperature": 1e-7}, timeout=120).json()
        assert choice["text"] == text and choice["logprobs"]["tokens"] == [t["text"] for t in ref["tokens"]]
        assert choice["logprobs"]["token_logprobs"] == [None] + [t["logprob"] for t in ref["tokens"][1:]]
    assert out["usage"]["prompt_tokens"] == sum(map(len, ids)) and out["usage"]["completion_tokens"] == 0


BAD = [
    ({"prompt": [1, "a"]}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"prompt": [[1, 2], [49152]]}, "prompt"),
    ({"prompt": [-3]}, "prompt"),
    ({"prompt": "x", "logprobs": 101}, "logprobs"),
    ({"prompt": "x", "n": 9}, "n"),
    ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "x", "max_tokens": 5000}, "max_tokens"),
    ({"prompt": "x", "model": "gpt-4o"}, "model"),
    ({"prompt": "x", "logit_bias": {"5": 10}}, "logit_bias"),
]
BAD_CHAT = [
    ({"messages": {"role": "user"}}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "user"}]}, "messages[0].content"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content"),
]


@pytest.mark.parametrize("path, body, param", [("/v1/completions", b, p) for b, p in BAD]
                         + [("/v1/chat/completions", b, p) for b, p in BAD_CHAT])
def test_bad_input_is_a_4xx_in_openai_shape_and_the_server_stays_healthy(server, path, body, param):
    r = requests.post(server.url + path, json=body, timeout=60)
    assert 400 <= r.status_code < 500, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["param"] == param, err
    assert requests.get(server.url + "/health", timeout=10).status_code == 200


def test_sdk_raises_its_own_errors(server):
    client = sdk(server)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="no-such-model", prompt="x", max_tokens=1)
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.completions.create(model=model_id(server), prompt="x", max_tokens=0)


@pytest.fixture()
def fresh_server(tmp_path_factory, model_path):
    """A server of its own: nothing else in its scheduler or prefix cache."""
    s = start_server(tmp_path_factory, model_path)
    yield s
    s.stop()


def test_a_client_that_leaves_a_stream_frees_its_sequence(fresh_server):
    """A finished request leaves its sequence in the prefix cache; a cancelled one frees it. So after
    the client goes, the scheduler must be empty and the prefix cache too."""
    url = fresh_server.url
    body = {"prompt": "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,", "max_tokens": 1500, "temperature": 0, "stream": True}
    with requests.post(url + "/v1/completions", json=body, stream=True, timeout=60) as r:
        lines = (line for line in r.iter_lines() if line)
        assert json.loads(next(lines)[6:])["choices"][0]["text"] is not None
        assert requests.get(url + "/health", timeout=10).json()["running"] == 1
    deadline = time.monotonic() + 120
    while (health := requests.get(url + "/health", timeout=10).json())["running"] != 0:
        assert time.monotonic() < deadline, "the abandoned stream still runs"
        time.sleep(0.2)
    assert health["prefix_cache_entries"] == 0, "the stream ran to its end instead of being cancelled"
