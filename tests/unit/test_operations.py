"""Ring 1: the operations layer with a fake engine: API key, access log, /metrics, overload and
timeout errors, 405/OPTIONS, whole-number floats and non-finite numbers."""
import json
import logging

import pytest
from prometheus_client.parser import text_string_to_metric_families

from app import api
from app.access_log import JsonFormatter
from app.engine.errors import EmptyPrompt, QueueFull, RequestTimedOut
from tests.fake_engine import FakeEngine
from tests.unit.test_api import make_client, post

KEY = "s3cr3t-key-that-must-never-be-logged"


# ---- 405, OPTIONS


def test_405_names_the_allowed_methods_in_json():
    _, client = make_client()
    r = client.get("/process")
    assert r.status_code == 405 and r.json["error"]["type"] == "method_not_allowed"
    assert set(r.headers["Allow"].replace(" ", "").split(",")) >= {"POST", "OPTIONS"}


def test_options_is_204_with_allow_not_html():
    _, client = make_client()
    r = client.options("/process")
    assert r.status_code == 204 and r.data == b"" and "text/html" not in r.headers.get("Content-Type", "")
    assert "POST" in r.headers["Allow"]
    r = client.options("/nowhere")
    assert r.status_code == 404 and r.json["error"]["type"] == "not_found"


# ---- numbers


@pytest.mark.parametrize("field", ["max_new_tokens", "num_samples", "top_k", "top_k_per_token", "seed", "num_return_sequences"])
def test_whole_number_floats_are_integers(field):
    app, client = make_client()
    r = post(client, "/process", {"prompt": "hi", field: 2.0})
    assert r.status_code == 200, r.json
    req = app.extensions["engine"].requests[-1]
    value = {"max_new_tokens": req.max_new_tokens, "num_samples": req.num_samples, "top_k": req.sampling.top_k,
             "top_k_per_token": req.top_k_per_token, "seed": req.seed, "num_return_sequences": req.num_samples}[field]
    assert value == 2 and type(value) is int


@pytest.mark.parametrize("value", ["2", 2.5, True, None])
def test_integer_fields_still_reject_strings_fractions_and_booleans(value):
    _, client = make_client()
    r = post(client, "/process", {"prompt": "hi", "max_new_tokens": value})
    assert r.status_code == 422 and r.json["detail"][0]["loc"] == ["body", "max_new_tokens"]


def test_tokenize_and_decode_take_whole_number_floats():
    _, client = make_client()
    assert post(client, "/tokenize", {"text": "abc", "max_length": 2.0}).json["tokens"] == [97, 98]
    assert post(client, "/decode", {"tokens": [104.0, 105]}).json["text"] == "hi"


@pytest.mark.parametrize("raw", [b'{"prompt": "x", "temperature": Infinity}', b'{"prompt": "x", "temperature": NaN}',
                                 b'{"prompt": "x", "temperature": 1e400}', b'{"prompt": "x", "temperature": -Infinity}'])
def test_non_finite_temperatures_are_422(raw):
    _, client = make_client()
    r = post(client, "/process", raw)
    assert r.status_code == 422, r.json


# ---- engine errors of the operations features


@pytest.mark.parametrize("error, status, type_", [(QueueFull(32, 7), 503, "queue_full"),
                                                  (RequestTimedOut(30), 504, "request_timeout")])
def test_overload_and_deadline_errors(error, status, type_):
    _, client = make_client(factory=lambda s: FakeEngine(s, fail_with=error))
    r = post(client, "/process", {"prompt": "x"})
    assert r.status_code == status and r.json["error"]["type"] == type_
    if isinstance(error, QueueFull):
        assert r.headers["Retry-After"] == "7"


def test_a_prompt_of_no_tokens_is_a_422_naming_the_cause():
    _, client = make_client(factory=lambda s: FakeEngine(s, fail_with=EmptyPrompt(1)))
    r = post(client, "/process", {"prompt": "\u0016"})
    assert r.status_code == 422
    assert r.json["detail"][0]["loc"] == ["body", "prompt"] and "no tokens" in r.json["detail"][0]["msg"]


# ---- API key


def test_no_key_by_default():
    _, client = make_client()
    assert post(client, "/process", {"prompt": "x"}).status_code == 200


@pytest.mark.parametrize("headers, status", [
    ({}, 401),
    ({"Authorization": "Bearer wrong"}, 401),
    ({"X-Api-Key": "wrong"}, 401),
    ({"Authorization": f"Basic {KEY}"}, 401),
    ({"Authorization": f"Bearer {KEY}"}, 200),
    ({"Authorization": f"bearer {KEY}"}, 200),
    ({"X-Api-Key": KEY}, 200),
])
def test_api_key(headers, status, caplog):
    caplog.set_level(logging.DEBUG)
    _, client = make_client(api_key=KEY)
    r = client.post("/process", data=json.dumps({"prompt": "x", "max_new_tokens": 1}), headers=headers,
                    content_type="application/json")
    assert r.status_code == status
    if status == 401:
        assert r.json["error"]["type"] == "unauthorized" and r.headers["WWW-Authenticate"].startswith("Bearer")
    assert KEY not in caplog.text and KEY not in r.get_data(as_text=True)


def test_health_is_open_and_metrics_open_unless_configured():
    _, client = make_client(api_key=KEY)
    assert client.get("/health").status_code == 200
    assert client.get("/metrics").status_code == 200
    assert client.get("/openapi.json").status_code == 401
    _, client = make_client(api_key=KEY, metrics_require_key=True)
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"X-Api-Key": KEY}).status_code == 200


def test_api_key_file(tmp_path):
    path = tmp_path / "key"
    path.write_text(KEY + "\n")
    app, client = make_client(api_key_file=str(path))
    assert app.extensions["settings"].api_key == KEY and KEY not in repr(app.extensions["settings"])
    assert post(client, "/process", {"prompt": "x"}).status_code == 401


# ---- access log


def test_one_access_line_per_request_with_the_engine_numbers(caplog):
    caplog.set_level(logging.INFO, logger="app.access")
    _, client = make_client()
    post(client, "/process", {"prompt": "hello", "max_new_tokens": 3})
    client.get("/nowhere")
    lines = [r for r in caplog.records if r.name == "app.access"]
    assert len(lines) == 2
    first = lines[0].access
    assert first["route"] == "/process" and first["status"] == 200 and first["method"] == "POST"
    assert (first["prompt_tokens"], first["new_tokens"], first["cached_tokens"], first["queue_ms"]) == (5, 3, 0, 500.0)
    assert first["total_ms"] >= 0
    assert "prompt_tokens=5 new_tokens=3 cached_tokens=0 queue_ms=500.0" in lines[0].getMessage()
    assert lines[1].access["route"] == "unmatched" and lines[1].access["status"] == 404
    out = json.loads(JsonFormatter().format(lines[0]))
    assert out["route"] == "/process" and out["new_tokens"] == 3 and out["logger"] == "app.access"


# ---- /metrics


def _families(client) -> dict:
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return {f.name: f for f in text_string_to_metric_families(r.get_data(as_text=True))}


def _value(family, **labels) -> float:
    return next(s.value for s in family.samples if all(s.labels.get(k) == v for k, v in labels.items())
                and not s.name.endswith("_created"))


def test_metrics_use_vllms_names_types_and_labels():
    _, client = make_client()
    post(client, "/process", {"prompt": "hello", "max_new_tokens": 3})
    post(client, "/process", {"prompt": "x", "max_new_tokens": 10**6})  # 422
    fams = _families(client)
    for name, kind in [("vllm:num_requests_running", "gauge"), ("vllm:num_requests_waiting", "gauge"),
                       ("vllm:kv_cache_usage_perc", "gauge"), ("vllm:gpu_cache_usage_perc", "gauge"),
                       ("vllm:prompt_tokens", "counter"), ("vllm:generation_tokens", "counter"),
                       ("vllm:prefix_cache_queries", "counter"), ("vllm:prefix_cache_hits", "counter"),
                       ("vllm:request_success", "counter"), ("vllm:request_queue_time_seconds", "histogram"),
                       ("vllm:time_to_first_token_seconds", "histogram"), ("vllm:e2e_request_latency_seconds", "histogram"),
                       ("http_requests", "counter"), ("llm_server_queue_full", "counter"),
                       ("llm_server_request_timeouts", "counter"), ("process_resident_memory_bytes", "gauge")]:
        assert fams[name].type == kind, name
    assert _value(fams["vllm:kv_cache_usage_perc"], model_name="fake", engine="0") == 0.25
    assert _value(fams["vllm:prompt_tokens"], model_name="fake") == 7
    assert _value(fams["vllm:request_success"], finished_reason="length") == 1
    assert _value(fams["vllm:request_success"], finished_reason="abort") == 0
    queue = [s for s in fams["vllm:request_queue_time_seconds"].samples if s.name.endswith("_sum")]
    assert queue[0].value == 0.5 and queue[0].labels == {"model_name": "fake", "engine": "0"}
    assert _value(fams["http_requests"], route="/process", status="200") == 1
    assert _value(fams["http_requests"], route="/process", status="422") == 1
    text = client.get("/metrics").get_data(as_text=True)
    assert "vllm:prompt_tokens_total{" in text and "vllm:request_success_total{" in text


def test_each_app_has_its_own_registry():
    _, a = make_client()
    _, b = make_client()
    post(a, "/process", {"prompt": "x", "max_new_tokens": 1})
    assert _value(_families(a)["http_requests"], route="/process") == 1
    assert not [s for s in _families(b)["http_requests"].samples if s.labels.get("route") == "/process"]


# ---- memory: large bodies take turns


def test_large_bodies_take_turns(monkeypatch):
    monkeypatch.setattr(api, "LARGE_BODY_WAIT_S", 0.2)
    app, client = make_client(large_body_concurrency=1)
    big = {"text": "a" * (api.LARGE_BODY_BYTES + 10)}
    turns = app.extensions["large_bodies"]
    assert turns.acquire(timeout=1)  # another large request holds the only turn
    try:
        r = post(client, "/tokenize", big)
        assert r.status_code == 503 and r.json["error"]["type"] == "overloaded"
        assert post(client, "/tokenize", {"text": "small"}).status_code == 200  # small ones never wait
    finally:
        turns.release()
    assert post(client, "/tokenize", big).status_code == 200


def test_bodies_over_the_limit_are_413_and_the_default_limit_is_2_mib():
    _, client = make_client()
    assert client.application.extensions["settings"].max_body_bytes == 2 * 1024 * 1024
    r = post(client, "/tokenize", {"text": "a" * (2 * 1024 * 1024)})
    assert r.status_code == 413


def test_large_body_turns_are_released_on_errors():
    app, client = make_client(large_body_concurrency=1)
    bad = json.dumps({"text": 5, "pad": "a" * (api.LARGE_BODY_BYTES + 10)})
    assert post(client, "/tokenize", bad).status_code == 422
    turns = app.extensions["large_bodies"]
    assert turns.acquire(blocking=False), "the 422 kept the only turn"
    turns.release()
