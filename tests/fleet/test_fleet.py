"""Ring 3, fleet: three real replicas (SmolLM2, gunicorn, 127.0.0.1) behind Debian's HAProxy running
deploy/haproxy/haproxy.cfg. Run with -s to see the numbers (no timing asserts).

The replicas run in the default mode (batched, prefix reuse on), which is bit-reproducible: a
request's answer does not depend on what else runs or what the cache holds. So "equal to a single
server" is asserted exactly (text, tokens, logprobs, top logprobs): the proxy, the failover and the
rejoin change no answer.
"""
from __future__ import annotations

import collections
import concurrent.futures as cf
import time

import pytest
import requests

from tests.fleet.fleet import Fleet, answer, cpu_seconds, post, run_load
from tests.fleet.loads import helm_body, helm_requests

pytestmark = [pytest.mark.fleet, pytest.mark.server, pytest.mark.slow]

HELM_LOAD = helm_requests(6, 2)  # 6 scenarios x 2 requests: 8 generations, 4 echo scorings
CLIENTS = 6


@pytest.fixture(scope="module")
def fleet(model_path, tmp_path_factory):
    with Fleet(model_path, tmp_path_factory.mktemp("fleet")) as f:
        yield f


@pytest.fixture(scope="module")
def reference(fleet):
    """Each request of HELM_LOAD answered by one server alone, one at a time (replica r0, directly)."""
    out = []
    for body in HELM_LOAD:
        status, got, _ = post(fleet.replicas["r0"].url, body)
        assert status == 200, got
        out.append(answer(got))
    return out


@pytest.fixture(scope="module")
def busiest(fleet, reference):
    """The replica the proxy sent most of HELM_LOAD to (filled by the first test)."""
    return {}


def _check(results, reference) -> collections.Counter:
    assert [s for s, _, _ in results] == [200] * len(reference), [b for s, b, _ in results if s != 200]
    for i, ((_, got, _), want) in enumerate(zip(results, reference)):
        assert answer(got) == want, f"request {i} differs from the single server's answer"
    return collections.Counter(by for _, _, by in results)


def test_helm_load_through_the_proxy_equals_one_server(fleet, reference, busiest):
    wall, results = run_load(fleet.proxy.url, HELM_LOAD, CLIENTS)
    served = _check(results, reference)
    assert set(served) <= set(fleet.replicas) and sum(served.values()) == len(HELM_LOAD)
    stats = fleet.proxy.stats()
    assert stats["BACKEND"]["hrsp_5xx"] == "0" and stats["BACKEND"]["eresp"] == "0"
    busiest["name"] = served.most_common(1)[0][0]
    print(f"\nHELM load: {len(HELM_LOAD)} requests, {CLIENTS} clients, {wall:.2f} s through the proxy; "
          f"served by {dict(served)}; all equal to one server, bit for bit")
    _print_request_costs(fleet)


def _print_request_costs(fleet) -> None:
    """Per-request costs on this machine, for the README's arithmetic (printed, never asserted)."""
    r0 = fleet.replicas["r0"]
    tok = {"text": "Hello world", "truncation": False, "max_length": 2048}
    tiny = helm_body("Hi", max_new_tokens=1, stop=())
    haproxy = fleet.proxy.proc.pid

    def measure(label, n, call):
        call()
        t0, cpu0, hap0 = time.perf_counter(), r0.cpu(), cpu_seconds(haproxy)
        for _ in range(n):
            call()
        wall = (time.perf_counter() - t0) / n * 1000
        print(f"  {label}: {wall:.2f} ms wall, CPU per request: replica r0 {(r0.cpu() - cpu0) / n * 1000:.2f} ms, "
              f"HAProxy {(cpu_seconds(haproxy) - hap0) / n * 1000:.2f} ms")

    def ok(r):
        assert r.status_code == 200, r.text

    session = requests.Session()
    print("per-request costs (sequential; a replica is nginx + gunicorn + the engine):")
    measure("/tokenize direct to r0", 100, lambda: ok(session.post(r0.url + "/tokenize", json=tok, timeout=10)))
    measure("/tokenize via HAProxy (to whichever replica)", 100,
            lambda: ok(session.post(fleet.proxy.url + "/tokenize", json=tok, timeout=10)))
    measure("/process 1 token direct to r0", 30, lambda: ok(session.post(r0.url + "/process", json=tiny, timeout=30)))
    if requests.get(r0.url + "/metrics", timeout=10).status_code == 404:
        print("  /metrics: absent on this server")
    else:
        measure("GET /metrics direct to r0", 50, lambda: ok(session.get(r0.url + "/metrics", timeout=10)))


def test_killed_replica_loses_no_request(fleet, reference, busiest):
    victim = fleet.replicas[busiest["name"]]
    before = fleet.proxy.stats()["BACKEND"]
    with cf.ThreadPoolExecutor(CLIENTS) as pool:
        futures = [pool.submit(post, fleet.proxy.url, b) for b in HELM_LOAD]
        # Kill it while it holds requests: HAProxy's count of its open sessions says when.
        in_flight = 0
        while not all(f.done() for f in futures):
            in_flight = int(fleet.proxy.stats()[victim.name]["scur"])
            if in_flight >= 1:
                victim.kill()
                break
            time.sleep(0.01)
        assert in_flight >= 1, f"{victim.name} never had a request in flight"
        results = [f.result() for f in futures]
    served = _check(results, reference)  # every request answered, and answered right
    after = fleet.proxy.stats()["BACKEND"]
    replays = int(after["wretr"]) - int(before["wretr"]) + int(after["wredis"]) - int(before["wredis"])
    assert replays >= 1, "the requests in flight on the killed replica were replayed"
    assert after["hrsp_5xx"] == "0"
    print(f"\nkilled {victim.name} (SIGKILL) with {in_flight} request(s) in flight: "
          f"{len(results)} of {len(results)} answered, {replays} replay(s); served by {dict(served)}")


def test_restarted_replica_rejoins_when_health_turns_200(fleet, reference, busiest):
    victim = fleet.replicas[busiest["name"]]
    fleet.proxy.wait_status(victim.name, "DOWN")
    victim.start()
    seen = collections.Counter()
    deadline = time.monotonic() + 120
    while True:
        row = fleet.proxy.stats()[victim.name]
        seen[(row["status"], row["check_status"], row["check_code"])] += 1
        if row["status"] == "UP":
            # HAProxy put it back: its own /health must say 200 now.
            assert requests.get(victim.url + "/health", timeout=5).status_code == 200
            break
        assert time.monotonic() < deadline, f"{victim.name} not back in rotation: {row['status']}"
        time.sleep(0.02)
    _, results = run_load(fleet.proxy.url, HELM_LOAD, CLIENTS)
    served = _check(results, reference)
    assert served[victim.name] >= 1, f"{victim.name} is UP but got none of its requests back: {dict(served)}"
    print(f"\n{victim.name} restarted; states HAProxy showed: {dict(seen)}; then served {dict(served)}")


_SESSION = requests.Session()  # one keep-alive connection: each request ends before the next begins


def _served_by(url: str, path: str, body: dict) -> str:
    r = _SESSION.post(url + path, json=body, timeout=60)
    assert r.status_code == 200, r.text
    return r.headers["X-Served-By"]


HEADS = [f"Scenario {s}: the following are questions about topic number {s}. " + "Context sentence. " * 20
         for s in range(8)]


def test_same_body_head_same_replica(fleet):
    """The hash: bodies that share their first 256 bytes go to one replica, whatever follows;
    different heads spread. Sequential requests, so the bounded load never steps in."""
    routed = {s: {_served_by(fleet.proxy.url, "/tokenize", {"text": head + f"Question {i}?"}) for i in range(3)}
              for s, head in enumerate(HEADS)}
    assert all(len(v) == 1 for v in routed.values()), routed
    assert len(set.union(*routed.values())) >= 2, routed
    print(f"\n8 body heads x 3 requests: each head on one replica, {len(set.union(*routed.values()))} replicas used")


def test_openai_requests_keep_affinity(fleet):
    """The OpenAI routes' bodies begin {"model": ..., "prompt": ...: the same rule holds for them."""
    models = requests.get(fleet.replicas["r1"].url + "/v1/models", timeout=10)
    if models.status_code == 404:
        pytest.skip("the server has no /v1 routes yet (issue 10 adds them)")
    model = models.json()["data"][0]["id"]
    for head in HEADS[:3]:
        by = {_served_by(fleet.proxy.url, "/v1/completions",
                         {"model": model, "prompt": head + f"Question {i}?", "max_tokens": 1, "temperature": 0})
              for i in range(2)}
        assert len(by) == 1, by
