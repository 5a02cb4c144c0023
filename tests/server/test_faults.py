"""Ring 3, the fault ring: the server as deployed (nginx + gunicorn, `python -m app.serve`) under
the failures issue 11 reproduced: SIGTERM with requests in flight, a killed worker, queue
overflow, the request deadline, KV exhaustion with shared prefixes, prompts of zero tokens.

Each test that needs particular settings starts its own server; all traffic goes to 127.0.0.1,
every wait is on observable state (/health, /metrics, process state) and bounded.
"""
import concurrent.futures as cf
import os
import signal
import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.server.conftest import start_server

pytestmark = [pytest.mark.server, pytest.mark.slow]

GREEDY = {"temperature": 1e-7}


def post(server, path, body, timeout=120, **kw):
    return requests.post(server.url + path, json=body, timeout=timeout, **kw)


def health(server) -> requests.Response:
    return requests.get(server.url + "/health", timeout=10)


def wait_for(predicate, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
            if value:
                return value
        except requests.ConnectionError:
            pass
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def metric(server, name: str, **labels) -> float:
    text = requests.get(server.url + "/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    raise AssertionError(f"{name} {labels} not in /metrics")


@pytest.fixture()
def fresh_server(tmp_path_factory, model_path, request):
    """A server of its own, with the environment the test asks for (indirect parametrisation)."""
    env = {"N_THREADS": "1", **getattr(request, "param", {})}
    s = start_server(tmp_path_factory, model_path, **env)
    yield s
    s.stop()


# ---- issue 11, item 1: a prompt of zero tokens


def test_a_zero_token_prompt_is_answered_at_once_and_wedges_nothing(server):
    # U+0016 tokenizes to nothing. Plain, it used to hang with the scheduler spinning; with echo
    # it leaked its sequence ids, after which every /process hung while /health said ok.
    for body in ({"prompt": "\u0016", "max_new_tokens": 5},
                 *({"prompt": "\u0016", "echo_prompt": True, "max_new_tokens": 0, "num_samples": n, "temperature": 1}
                   for n in (8, 8, 1))):
        r = post(server, "/process", body, timeout=10)  # a hang fails here, not after 120 s
        assert r.status_code == 422, r.text
        assert r.json()["detail"][0]["loc"] == ["body", "prompt"] and "no tokens" in r.json()["detail"][0]["msg"]
    r = post(server, "/process", {"prompt": "Still serving?", "max_new_tokens": 3, **GREEDY}, timeout=30)
    assert r.status_code == 200 and r.json()["tokens"]
    assert health(server).json()["running"] == 0


# ---- SIGTERM: drain


@pytest.mark.parametrize("fresh_server", [{"DRAIN_TIMEOUT": "120"}], indirect=True)
def test_sigterm_lets_running_requests_finish_and_refuses_new_ones(fresh_server):
    s = fresh_server
    bodies = [{"prompt": f"Count to a thousand, list {i}: 1, 2, 3,", "max_new_tokens": 200, **GREEDY} for i in range(3)]
    with cf.ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(post, s, "/process", b, 300) for b in bodies]
        wait_for(lambda: health(s).json()["running"] == 3, "3 requests running")
        s.proc.send_signal(signal.SIGTERM)
        # The load balancer's view: /health turns 503 "draining"...
        info = wait_for(lambda: (h := health(s)).status_code == 503 and h.json(), "/health to turn 503", 30)
        assert info["status"] == "draining"
        # ...and new work is refused with a JSON 503 and Retry-After...
        r = post(s, "/process", {"prompt": "Too late", "max_new_tokens": 2})
        assert r.status_code == 503 and r.json()["error"]["type"] == "draining" and int(r.headers["Retry-After"]) > 0
        # ...while what was running finishes in full.
        done = [f.result(timeout=300) for f in futures]
    assert [r.status_code for r in done] == [200, 200, 200]
    assert all(len(r.json()["tokens"]) == 200 for r in done)
    assert s.proc.wait(timeout=60) == 0


# ---- a killed worker


def test_a_killed_worker_is_replaced_and_healthy_again(fresh_server):
    s = fresh_server
    old = s.worker_pid()
    os.kill(old, signal.SIGKILL)
    # between the old worker's reaping and the new one's fork gunicorn has no worker: wait through it
    new = wait_for(lambda: [p for p in s.worker_pids() if p != old], "a new worker")
    assert len(new) == 1 and old not in new
    info = wait_for(lambda: (h := health(s)).status_code == 200 and h.json(), "/health 200 again")
    assert info["status"] == "ok"
    r = post(s, "/process", {"prompt": "Back?", "max_new_tokens": 2, **GREEDY})
    assert r.status_code == 200


# ---- queue overflow


@pytest.mark.parametrize("fresh_server", [{"N_PARALLEL": "1", "MAX_NUM_SAMPLES": "1", "MAX_QUEUED": "2"}], indirect=True)
def test_past_max_queued_requests_get_503_and_the_others_are_unharmed(fresh_server):
    s = fresh_server
    bodies = [{"prompt": f"Count to a thousand, list {i}: 1, 2, 3,", "max_new_tokens": 60, **GREEDY} for i in range(3)]
    with cf.ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(post, s, "/process", b, 300) for b in bodies]
        # N_PARALLEL=1 runs one; MAX_QUEUED=2 lets two wait.
        wait_for(lambda: (h := health(s).json())["in_flight"] == 3 and h["queued"] == 2, "1 running + 2 queued")
        r = post(s, "/process", {"prompt": "One too many", "max_new_tokens": 2})
        assert r.status_code == 503 and r.json()["error"]["type"] == "queue_full"
        assert int(r.headers["Retry-After"]) >= 1
        done = [f.result(timeout=300) for f in futures]
    assert [r.status_code for r in done] == [200, 200, 200]
    assert health(s).json()["rejected_queue_full"] == 1
    assert metric(s, "llm_server_queue_full_total") == 1
    assert metric(s, "http_requests_total", route="/process", status="503") == 1


# ---- the deadline


@pytest.mark.parametrize("fresh_server", [{"REQUEST_TIMEOUT": "2", "LOG_FORMAT": "json"}], indirect=True)
def test_past_request_timeout_the_answer_is_504_and_the_sequence_is_freed(fresh_server):
    s = fresh_server
    r = post(s, "/process", {"prompt": "Count to a thousand: 1, 2,", "max_new_tokens": 1500, **GREEDY})
    assert r.status_code == 504 and r.json()["error"]["type"] == "request_timeout"
    info = wait_for(lambda: (h := health(s).json())["running"] == 0 and h, "the sequence to be freed", 10)
    assert info["timed_out"] == 1 and info["in_flight"] == 0
    assert metric(s, "llm_server_request_timeouts_total") == 1
    assert metric(s, "vllm:request_success_total", finished_reason="abort") == 1
    assert post(s, "/process", {"prompt": "Quick one", "max_new_tokens": 2, **GREEDY}).status_code == 200
    # LOG_FORMAT=json: every access line is one JSON object with the request's numbers.
    import json

    lines = [json.loads(line) for line in s.log_path.read_text().splitlines() if line.startswith("{")]
    access = [x for x in lines if x.get("logger") == "app.access" and x["route"] == "/process"]
    assert [x["status"] for x in access] == [504, 200]
    assert access[1]["prompt_tokens"] > 0 and access[1]["new_tokens"] == 2 and access[1]["total_ms"] > 0


# ---- KV exhaustion with shared prefixes (issue 11, item 2)

W = "river stone water tree house bird cloud green light music paper table window garden street night".split()
V = "cat dog horse mouse lion tiger bear wolf fox deer sheep goat cow pig duck goose".split()


@pytest.mark.parametrize("fresh_server", [{"N_CTX": "256", "N_THREADS": "2"}], indirect=True)
def test_kv_exhaustion_with_shared_prefixes_gives_no_500s(fresh_server):
    """The issue's case scaled to N_CTX=256: six requests share a cached prefix of ~220 tokens,
    then a distinct ~180-token prompt arrives. Before per-slot KV streams its admission evicted the
    cached prefix whose cells the six still used, and all seven answered 500. Now every slot holds
    a whole context: a shortage of slots is queueing, never a 500 for the neighbours."""
    s = fresh_server
    prefix = "The history of the river valley. " + " ".join(W[(i * 7) % len(W)] for i in range(210))
    distinct = "A different text about animals. " + " ".join(V[(i * 5) % len(V)] for i in range(175))
    first = post(s, "/process", {"prompt": prefix + " Count: 0, 1, 2,", "max_new_tokens": 8, **GREEDY}, 300)
    assert first.status_code == 200  # the prefix is now cached
    assert first.json()["prompt_tokens"] < 240
    with cf.ThreadPoolExecutor(7) as pool:
        shared = [pool.submit(post, s, "/process", {"prompt": prefix + f" Count: {i}, {i + 1}, {i + 2},",
                                                    "max_new_tokens": 24, **GREEDY}, 300) for i in range(1, 7)]
        wait_for(lambda: health(s).json()["running"] >= 6, "six sharing requests running", 120)
        other = pool.submit(post, s, "/process", {"prompt": distinct, "max_new_tokens": 40, **GREEDY}, 300)
        done = [f.result(timeout=300) for f in shared + [other]]
    codes = [r.status_code for r in done]
    assert 500 not in codes, [r.text[:200] for r in done]
    assert all(c in (200, 503) for c in codes), codes
    assert all(c == 200 for c in codes[:6]), "a neighbour failed"
