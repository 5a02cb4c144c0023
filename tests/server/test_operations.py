"""Ring 3: the operations surface of the server as deployed (nginx + gunicorn): /metrics read by
prometheus_client's own parser, /health, the API key, 405/OPTIONS through the proxy."""
import os
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.server.conftest import start_server

pytestmark = [pytest.mark.server, pytest.mark.slow]

KEY = "k-5f1e-never-logged"


def test_metrics_carry_vllms_names_for_the_served_model(server):
    r = requests.post(server.url + "/process", json={"prompt": "The capital of France is", "max_new_tokens": 4,
                                                     "temperature": 1e-7}, timeout=60)
    assert r.status_code == 200
    m = requests.get(server.url + "/metrics", timeout=10)
    assert m.status_code == 200 and m.headers["Content-Type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(m.text)}
    model = requests.get(server.url + "/health", timeout=10).json()["model"]
    for name, kind in [("vllm:num_requests_running", "gauge"), ("vllm:num_requests_waiting", "gauge"),
                       ("vllm:kv_cache_usage_perc", "gauge"), ("vllm:prompt_tokens", "counter"),
                       ("vllm:generation_tokens", "counter"), ("vllm:e2e_request_latency_seconds", "histogram"),
                       ("vllm:time_to_first_token_seconds", "histogram"), ("vllm:request_queue_time_seconds", "histogram")]:
        assert families[name].type == kind, name
        assert families[name].samples[0].labels["model_name"] == model, name
    generated = next(s.value for s in families["vllm:generation_tokens"].samples)
    assert generated >= 4
    usage = families["vllm:kv_cache_usage_perc"].samples[0].value
    assert 0 <= usage <= 1
    assert families["process_resident_memory_bytes"].samples[0].value > 50 * 2**20  # the worker holds the model


def test_health_shows_the_model_file_not_its_directory(server, model_path):
    r = requests.get(server.url + "/health", timeout=10)
    info = r.json()
    assert info["model_file"] == model_path.name
    assert str(model_path.parent) not in r.text and str(model_path.resolve().parent) not in r.text
    assert info["max_new_tokens"] == info["n_ctx"] == 2048 and info["max_num_samples"] >= 1


def test_405_and_options_through_the_proxy(server):
    r = requests.get(server.url + "/process", timeout=10)
    assert r.status_code == 405 and r.json()["error"]["type"] == "method_not_allowed"
    assert "POST" in r.headers["Allow"]
    r = requests.request("TRACE", server.url + "/process", timeout=10)  # nginx's own answer
    assert r.status_code == 405 and r.json()["error"]["type"] == "method_not_allowed" and "POST" in r.headers["Allow"]
    r = requests.options(server.url + "/tokenize", timeout=10)
    assert r.status_code == 204 and "POST" in r.headers["Allow"] and "html" not in r.headers.get("Content-Type", "")


def test_the_api_key_over_http(tmp_path_factory, model_path):
    s = start_server(tmp_path_factory, model_path, N_THREADS="1", API_KEY=KEY)
    try:
        body = {"prompt": "Hi", "max_new_tokens": 2, "temperature": 1e-7}
        assert requests.get(s.url + "/health", timeout=10).status_code == 200
        r = requests.post(s.url + "/process", json=body, timeout=60)
        assert r.status_code == 401 and r.json()["error"]["type"] == "unauthorized"
        assert requests.post(s.url + "/process", json=body, headers={"X-Api-Key": "nope"}, timeout=60).status_code == 401
        ok = requests.post(s.url + "/process", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
        assert ok.status_code == 200
        assert requests.post(s.url + "/tokenize", json={"text": "x"}, headers={"X-Api-Key": KEY}, timeout=60).status_code == 200
        assert requests.get(s.url + "/metrics", timeout=10).status_code == 200  # METRICS_REQUIRE_KEY is off
    finally:
        s.stop()
    assert KEY not in s.log_path.read_text()


def test_whole_number_floats_and_non_finite_numbers_over_http(server):
    ok = requests.post(server.url + "/process", json={"prompt": "Hi", "max_new_tokens": 2.0, "num_samples": 1.0,
                                                      "temperature": 1e-7}, timeout=60)
    assert ok.status_code == 200 and len(ok.json()["tokens"]) <= 2
    for raw in (b'{"prompt": "Hi", "temperature": Infinity}', b'{"prompt": "Hi", "temperature": 1e400}',
                b'{"prompt": "Hi", "max_new_tokens": 2.5}', b'{"prompt": "Hi", "max_new_tokens": "5"}'):
        r = requests.post(server.url + "/process", data=raw, headers={"Content-Type": "application/json"}, timeout=60)
        assert r.status_code == 422, raw


def _unix_socket_paths(pid: int) -> set[str]:
    """Paths of the unix sockets process pid holds open (from /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    paths = set()
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 8 and parts[6] in inodes:
            paths.add(parts[7])
    return paths


def test_gunicorns_control_socket_is_off(server):
    # gunicorn 27 opens $XDG_RUNTIME_DIR/gunicorn.ctl (or ~/.gunicorn/gunicorn.ctl) by default:
    # `gunicornc -c "worker add 1"` then loaded a second copy of the model.
    paths = _unix_socket_paths(server.gunicorn_pid())
    assert any(p.endswith("gunicorn.sock") for p in paths), paths  # the socket nginx talks to
    assert not any(p.endswith(".ctl") for p in paths), paths
