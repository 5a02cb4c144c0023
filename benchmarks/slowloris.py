"""Slowloris, measured: N connections trickle their requests at one byte per second while a
well-behaved client asks for /health and a 2-token /process; once against bare gunicorn (how the
server ran before nginx went in front) and once against the deployment (`python -m app.serve`).
Prints how many of the well-behaved requests were answered and how fast. Loopback only; stops by itself.

    .venv/bin/python benchmarks/slowloris.py --connections 200 --seconds 30
"""
from __future__ import annotations

import argparse
import math
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(kind: str, port: int) -> subprocess.Popen:
    env = {**os.environ, "N_THREADS": "1"}
    if kind == "gunicorn":
        argv = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "-b", f"127.0.0.1:{port}", "wsgi:app"]
    else:
        argv = [sys.executable, "-m", "app.serve", "--bind", f"127.0.0.1:{port}"]
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except requests.RequestException:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"{kind} did not become healthy")


def attack(port: int, n: int, stop: threading.Event) -> list[socket.socket]:
    """Open n connections: half trickle headers, half send headers and trickle a 100 kB body."""
    socks = []
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"POST /process HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"
                  if i % 2 else b"POST /process HTTP/1.1\r\n")
        socks.append(s)

    def trickle():
        while not stop.is_set():
            for i, s in enumerate(socks):
                try:
                    s.send(b" " if i % 2 else b"X")
                except OSError:
                    pass
            stop.wait(1.0)

    threading.Thread(target=trickle, daemon=True).start()
    return socks


def measure(kind: str, n: int, seconds: float) -> tuple[int, int, list[float]]:
    port = free_port()
    proc = start(kind, port)
    stop = threading.Event()
    socks = attack(port, n, stop)
    ok = tried = 0
    latencies: list[float] = []
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            tried += 1
            t0 = time.monotonic()
            try:
                h = requests.get(f"http://127.0.0.1:{port}/health", timeout=5)
                p = requests.post(f"http://127.0.0.1:{port}/process", timeout=10,
                                  json={"prompt": "Hello", "max_new_tokens": 2, "temperature": 1e-7})
                if h.status_code == 200 and p.status_code == 200:
                    ok += 1
                    latencies.append(time.monotonic() - t0)
            except requests.RequestException:
                pass
            time.sleep(0.5)
    finally:
        stop.set()
        for s in socks:
            s.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
    return ok, tried, latencies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    print(f"{args.connections} slow connections, {args.seconds:.0f} s: /health + 2-token /process, one pair at a time")
    for kind in ("gunicorn", "app.serve"):
        ok, tried, lat = measure(kind, args.connections, args.seconds)
        med = sorted(lat)[len(lat) // 2] * 1000 if lat else math.nan
        worst = max(lat) * 1000 if lat else math.nan
        print(f"{kind:>10}: {ok}/{tried} answered, median {med:.0f} ms, max {worst:.0f} ms", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
