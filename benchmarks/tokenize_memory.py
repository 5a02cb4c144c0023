"""What 8 concurrent largest-allowed /tokenize bodies cost the worker's memory, with today's
defaults and with the limits the server had before (8 MiB bodies, all at once, glibc's default
malloc arenas). Prints RSS before, at the peak (sampled every 20 ms) and after. Loopback only.

    .venv/bin/python benchmarks/tokenize_memory.py
"""
from __future__ import annotations

import concurrent.futures as cf
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
MIB = 2**20
CONFIGS = {
    "defaults (2 MiB, 2 at a time, 2 arenas)": {},
    "before (8 MiB, 8 at a time, default arenas)": {"MAX_BODY_BYTES": str(8 * MIB), "LARGE_BODY_CONCURRENCY": "8",
                                                   "MALLOC_ARENA_MAX": "16"},
}


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def children(pid: int) -> list[int]:
    return [int(c) for t in Path(f"/proc/{pid}/task").iterdir() for c in (t / "children").read_text().split()]


def run(env: dict[str, str], limit: int) -> tuple[float, float, float]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "app.serve", "--bind", f"127.0.0.1:{port}"], cwd=ROOT,
                            env={**os.environ, "N_THREADS": "1", **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if requests.get(url + "/health", timeout=10).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, "server not healthy"
            time.sleep(0.2)
        master = next(c for c in children(proc.pid) if b"gunicorn" in Path(f"/proc/{c}/cmdline").read_bytes())
        worker = children(master)[0]
        words = "river stone water tree house bird cloud green light "
        text = (words * (limit // len(words)))[: limit - 100]
        requests.post(url + "/tokenize", json={"text": text[:100000]}, timeout=60)
        before = rss(worker)
        peak = [before]
        done = threading.Event()

        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], rss(worker))
                time.sleep(0.02)

        threading.Thread(target=sample, daemon=True).start()
        with cf.ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(lambda _: requests.post(url + "/tokenize", json={"text": text, "truncation": False},
                                                          timeout=600).status_code, range(8)))
        done.set()
        assert codes == [200] * 8, codes
        time.sleep(1)
        return before / MIB, peak[0] / MIB, rss(worker) / MIB
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def main() -> int:
    print(f"{'configuration':<46} {'body MiB':>8} {'before':>7} {'peak':>7} {'after':>7}  (worker RSS, MiB)")
    for name, env in CONFIGS.items():
        limit = int(env.get("MAX_BODY_BYTES", 2 * MIB))
        before, peak, after = run(env, limit)
        print(f"{name:<46} {limit / MIB:8.1f} {before:7.0f} {peak:7.0f} {after:7.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
