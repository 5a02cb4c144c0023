"""Ring 1: the HTTP layer with a fake engine injected through ENGINE_FACTORY (as the real one is)."""
import json

import pytest

from app import create_app
from tests.fake_engine import BrokenEngine, FakeEngine


def make_client(factory=FakeEngine, **config):
    app = create_app({"ENGINE_FACTORY": factory, "n_ctx": 256, **config})
    app.testing = False  # errors go through the handlers, as in production
    return app, app.test_client()


@pytest.fixture()
def client():
    return make_client()[1]


def post(client, path, body):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return client.post(path, data=data, content_type="application/json")


def test_prompt_only_body_uses_the_challenge_defaults(client):
    app_engine = client.application.extensions["engine"]
    r = post(client, "/process", {"prompt": "hi"})
    assert r.status_code == 200, r.json
    req = app_engine.requests[-1]
    assert (req.max_new_tokens, req.num_samples, req.sampling.top_k, req.sampling.temperature) == (50, 1, 200, 0.8)
    assert (req.echo_prompt, req.top_k_per_token, req.stop_sequences, req.seed) == (False, 1, (), None)
    body = r.json
    assert set(body) >= {"text", "tokens", "logprob", "request_time"}
    assert body["tokens"][0].keys() == {"text", "logprob", "top_logprob"}
    assert body["completions"] is None


def test_helm_keys_are_honoured(client):
    helm = {"prompt": "Q: 1+1?\nA:", "temperature": 1e-7, "num_return_sequences": 3, "max_new_tokens": 2,
            "top_p": 1, "echo_prompt": False, "top_k_per_token": 5, "stop_sequences": ["\n"]}
    r = post(client, "/process", helm)
    assert r.status_code == 200, r.json
    req = client.application.extensions["engine"].requests[-1]
    assert req.num_samples == 3 and req.top_k_per_token == 5 and req.stop_sequences == ("\n",)
    assert req.sampling.greedy
    assert len(r.json["completions"]) == 3 and r.json["text"] == r.json["completions"][0]["text"]


@pytest.mark.parametrize(
    "body, field",
    [
        ({}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": 5}, "prompt"),
        ({"prompt": "x", "max_new_tokens": -1}, "max_new_tokens"),
        ({"prompt": "x", "max_new_tokens": 10**9}, "max_new_tokens"),
        ({"prompt": "x", "max_new_tokens": "5"}, "max_new_tokens"),
        ({"prompt": "x", "max_new_tokens": 2.5}, "max_new_tokens"),
        ({"prompt": "x", "temperature": -0.1}, "temperature"),
        ({"prompt": "x", "top_p": 0}, "top_p"),
        ({"prompt": "x", "top_p": 1.5}, "top_p"),
        ({"prompt": "x", "num_samples": 0}, "num_samples"),
        ({"prompt": "x", "num_samples": 1000}, "num_samples"),
        ({"prompt": "x", "num_samples": 2, "num_return_sequences": 3}, "num_return_sequences"),
        ({"prompt": "x", "top_k_per_token": 0}, "top_k_per_token"),
        ({"prompt": "x", "top_k_per_token": 10**6}, "top_k_per_token"),
        ({"prompt": "x", "stop_sequences": "\n"}, "stop_sequences"),
        ({"prompt": "x", "stop_sequences": [""]}, "stop_sequences"),
        ({"prompt": "x", "echo_prompt": "yes"}, "echo_prompt"),
        ({"prompt": "x", "seed": "1"}, "seed"),
    ],
)
def test_bad_process_input_is_a_422_naming_the_field(client, body, field):
    r = post(client, "/process", body)
    assert r.status_code == 422, r.json
    assert any(d["loc"][:2] == ["body", field] for d in r.json["detail"]), r.json
    assert all({"loc", "msg", "type"} <= d.keys() for d in r.json["detail"])


@pytest.mark.parametrize(
    "raw",
    [b'{"prompt": "x"', b"not json", b"", b'["prompt"]', b'{"prompt": "\\ud800"}', b'{"prompt": "\xff\xfe"}', b"null"],
)
def test_malformed_bodies_are_422(client, raw):
    r = post(client, "/process", raw)
    assert r.status_code == 422
    assert r.json["detail"][0]["loc"][0] == "body"


def test_unusual_unicode_is_accepted(client):
    r = post(client, "/process", {"prompt": "naïve 🤖 日本語 \u200b\u0000 end", "max_new_tokens": 1})
    assert r.status_code == 200


def test_context_overflow_is_a_400_naming_both_numbers(client):
    r = post(client, "/process", {"prompt": "x" * 200, "max_new_tokens": 100})
    assert r.status_code == 400
    err = r.json["error"]
    assert err["type"] == "context_length_exceeded" and "200" in err["message"] and "100" in err["message"]


def test_oversized_body_is_413():
    _, client = make_client(max_body_bytes=2048)
    r = post(client, "/process", {"prompt": "x" * 5000})
    assert r.status_code == 413 and r.json["error"]["type"] == "request_entity_too_large"


def test_internal_errors_hide_the_traceback(caplog):
    _, client = make_client(factory=BrokenEngine)
    r = post(client, "/process", {"prompt": "x"})
    assert r.status_code == 500
    assert r.json == {"error": {"type": "internal_error", "message": "internal error", "param": None}}
    assert "SECRET" not in r.get_data(as_text=True)
    assert "SECRET-INTERNAL-DETAIL" in caplog.text  # but the log has it


def test_health_is_503_until_the_model_is_loaded():
    _, client = make_client(factory=lambda s: FakeEngine(s, ready=False))
    assert client.get("/health").status_code == 503
    r = post(client, "/process", {"prompt": "x"})
    assert r.status_code == 503 and r.json["error"]["type"] == "model_not_ready"


def test_tokenize_defaults_and_truncation(client):
    assert post(client, "/tokenize", {"text": "abc"}).json["tokens"] == [97, 98, 99]
    r = post(client, "/tokenize", {"text": "abcdef", "truncation": True, "max_length": 2})
    assert r.json["tokens"] == [97, 98]
    r = post(client, "/tokenize", {"text": "abcdef", "truncation": False, "max_length": 2})
    assert len(r.json["tokens"]) == 6
    assert post(client, "/tokenize", {"text": "a", "max_length": 0}).status_code == 422
    assert post(client, "/tokenize", {}).status_code == 422


def test_decode_out_of_vocabulary_is_422(client):
    r = post(client, "/decode", {"tokens": [97, -1]})
    assert r.status_code == 422 and r.json["detail"][0]["loc"] == ["body", "tokens", 1]
    assert post(client, "/decode", {"tokens": ["a"]}).status_code == 422
    assert post(client, "/decode", {"tokens": [104, 105]}).json["text"] == "hi"


def test_unknown_route_and_method_are_json(client):
    r = client.get("/nope")
    assert r.status_code == 404 and r.json["error"]["type"] == "not_found"
    r = client.get("/process")
    assert r.status_code == 405 and "error" in r.json
