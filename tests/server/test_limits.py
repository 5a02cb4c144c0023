"""Ring 3: what hostile clients cannot do to the server as deployed (nginx + gunicorn):
hold it with slow connections (slowloris), or blow up the worker's memory with large bodies."""
import concurrent.futures as cf
import socket
import threading
import time
from pathlib import Path

import pytest
import requests

from app.config import Settings
from tests.server.conftest import start_server

pytestmark = [pytest.mark.server, pytest.mark.slow]

# What the issue measured: 64 slow connections denied service to everyone; we hold 200.
N_SLOW = 200


class SlowClients:
    """N connections that each send a request at one byte per second and never finish it: half
    trickle their headers, half send headers and trickle a 100 kB body. Stops by itself."""

    def __init__(self, port: int, n: int, *, seconds: float) -> None:
        self.port, self.n, self.seconds = port, n, seconds
        self.socks: list[socket.socket] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._trickle, daemon=True)

    def __enter__(self) -> "SlowClients":
        for i in range(self.n):
            s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
            if i % 2:  # headers done, body trickles
                s.sendall(b"POST /process HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          b"Content-Length: 100000\r\n\r\n{")
            else:  # headers trickle
                s.sendall(b"POST /process HTTP/1.1\r\n")
            self.socks.append(s)
        self.thread.start()
        return self

    def _trickle(self) -> None:
        end = time.monotonic() + self.seconds
        while not self.stop.is_set() and time.monotonic() < end:
            for i, s in enumerate(self.socks):
                try:
                    s.send(b" " if i % 2 else b"X")
                except OSError:
                    pass  # the server gave up on this one: fine
            self.stop.wait(1.0)

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        for s in self.socks:
            s.close()


def test_slow_clients_cost_no_thread_and_deny_no_service(server):
    served: list[float] = []
    with SlowClients(server.port, N_SLOW, seconds=60):
        for i in range(5):
            t0 = time.monotonic()
            assert requests.get(server.url + "/health", timeout=10).status_code == 200
            r = requests.post(server.url + "/process", json={"prompt": f"Hello {i}", "max_new_tokens": 2,
                                                             "temperature": 1e-7}, timeout=30)
            assert r.status_code == 200, r.text
            served.append(time.monotonic() - t0)
    print(f"\n{N_SLOW} slow connections open: /health + /process answered in "
          f"{', '.join(f'{s * 1000:.0f}' for s in served)} ms")


def test_the_proxy_answers_oversized_bodies_itself(server):
    r = requests.post(server.url + "/tokenize", data=b'{"text": "' + b"a" * 70000 + b'"}', timeout=30,
                      headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["type"] == "request_entity_too_large"


# ---- memory


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


# The most 8 concurrent largest-allowed /tokenize bodies may add to the worker's peak memory. The
# issue measured +1,379 MiB (693 -> 2,072) with the old 8 MiB limit and no turns.
PEAK_GROWTH_BOUND = 320 * 1024 * 1024


def test_eight_concurrent_max_size_tokenize_bodies_stay_within_a_memory_bound(tmp_path_factory, model_path):
    limit = Settings().max_body_bytes  # the default, not the suite's 64 kB
    s = start_server(tmp_path_factory, model_path, N_THREADS="1", MAX_BODY_BYTES=str(limit))
    try:
        worker = s.worker_pid()
        words = "river stone water tree house bird cloud green light "
        text = (words * (limit // len(words)))[: limit - 100]  # the body just under the limit
        body = {"text": text, "truncation": False}
        # Warm up once (first-use allocations are not growth), then measure.
        assert requests.post(s.url + "/tokenize", json={"text": text[:100000]}, timeout=60).status_code == 200
        baseline = rss_bytes(worker)
        peak = [baseline]
        done = threading.Event()

        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], rss_bytes(worker))
                time.sleep(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        with cf.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: requests.post(s.url + "/tokenize", json=body, timeout=300), range(8)))
        done.set()
        sampler.join()
        after = rss_bytes(worker)
        assert [a.status_code for a in answers] == [200] * 8
        assert len(answers[0].json()["tokens"]) > 100_000
        mib = 1024 * 1024
        print(f"\nworker RSS: {baseline / mib:.0f} MiB before, {peak[0] / mib:.0f} MiB peak, {after / mib:.0f} MiB after "
              f"8 x {limit / mib:.1f} MiB /tokenize bodies")
        assert peak[0] - baseline < PEAK_GROWTH_BOUND
        assert requests.get(s.url + "/health", timeout=10).status_code == 200
    finally:
        s.stop()
