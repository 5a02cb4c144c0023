"""Soak: 16 clients send HELM-shaped traffic for N minutes; prints requests, errors, latency
percentiles and the worker's RSS over time. A program that prints numbers, not a test.

    .venv/bin/python benchmarks/soak.py --minutes 10                 # starts its own server (app.serve)
    .venv/bin/python benchmarks/soak.py --url http://127.0.0.1:8080  # an already running one

Traffic per client, in turn: HELM generation (greedy, stop "\\n", shared 3-shot prefix), HELM
scoring (echo, max_new_tokens 0, top_k_per_token 5), sampled generation with a seed and two
samples, /tokenize and /decode. Every answer is checked: the tokens join to the text, the logprob
is their sum, no stop sequence survives, echo returns the prompt, decode(tokenize(x)) == x. A
non-200 or a failed check is an error. RSS is the worker's, from GET /metrics.
"""
from __future__ import annotations

import argparse
import math
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ("Question: What is the capital of France?\nAnswer: Paris\n\n"
         "Question: What is 2 + 3?\nAnswer: 5\n\n"
         "Question: Which planet is closest to the sun?\nAnswer: Mercury\n\n")
SUBJECTS = ["the largest ocean", "the author of Hamlet", "the boiling point of water in Celsius", "the capital of Japan",
            "the square root of 81", "the chemical symbol for gold", "the longest river in Africa", "the fastest land animal"]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def check_process(body: dict, req: dict) -> str | None:
    """What is wrong with a /process answer, or None."""
    for c in body.get("completions") or [body]:
        if "".join(t["text"] for t in c["tokens"]) != c["text"]:
            return "tokens do not join to the text"
        if abs(sum(t["logprob"] for t in c["tokens"]) - c["logprob"]) > 1e-6 * max(1, len(c["tokens"])):
            return "logprob is not the sum of the tokens'"
        generated = c["text"][len(req["prompt"]):] if req.get("echo_prompt") else c["text"]
        if any(s in generated for s in req.get("stop_sequences", [])):
            return "a stop sequence survived"
        if req.get("echo_prompt") and not c["text"].startswith(req["prompt"]):
            return "echo does not start with the prompt"
    return None


class Soak:
    def __init__(self, url: str, clients: int, seconds: float) -> None:
        self.url, self.clients, self.seconds = url, clients, seconds
        self.lock = threading.Lock()
        self.latencies: list[float] = []  # this interval's, seconds
        self.requests = self.errors = 0
        self.error_kinds: dict[str, int] = {}
        self.stop = threading.Event()

    def record(self, seconds: float, error: str | None) -> None:
        with self.lock:
            self.requests += 1
            self.latencies.append(seconds)
            if error:
                self.errors += 1
                self.error_kinds[error] = self.error_kinds.get(error, 0) + 1

    def one(self, rng: random.Random, i: int) -> None:
        subject = rng.choice(SUBJECTS)
        kind = i % 5
        t0 = time.monotonic()
        try:
            if kind in (0, 1, 2):
                req = {"prompt": f"{SHOTS}Question: What is {subject}?\nAnswer:", "temperature": 1e-7,
                       "num_return_sequences": 1, "max_new_tokens": 20, "top_p": 1, "echo_prompt": False,
                       "top_k_per_token": 1, "stop_sequences": ["\n"]}
                if kind == 1:  # scoring
                    req.update(prompt=f"{SHOTS}Question: What is {subject}?\nAnswer: {rng.choice(SUBJECTS)}",
                               max_new_tokens=0, echo_prompt=True, top_k_per_token=5, stop_sequences=[])
                if kind == 2:  # sampled, two samples
                    req.update(temperature=0.8, num_return_sequences=2, seed=rng.randrange(1 << 30), max_new_tokens=30)
                r = requests.post(self.url + "/process", json=req, timeout=300)
                error = f"HTTP {r.status_code}" if r.status_code != 200 else check_process(r.json(), req)
            else:
                text = f"{SHOTS} {subject} {rng.random()}"
                r = requests.post(self.url + "/tokenize", json={"text": text, "truncation": False}, timeout=60)
                error = f"HTTP {r.status_code}" if r.status_code != 200 else None
                if error is None:
                    d = requests.post(self.url + "/decode", json={"tokens": r.json()["tokens"]}, timeout=60)
                    error = f"HTTP {d.status_code}" if d.status_code != 200 else (
                        None if d.json()["text"] == text else "decode(tokenize(x)) != x")
        except requests.RequestException as exc:
            error = type(exc).__name__
        self.record(time.monotonic() - t0, error)

    def client(self, k: int) -> None:
        rng = random.Random(k)
        i = k
        while not self.stop.is_set():
            self.one(rng, i)
            i += 1

    def rss_mib(self) -> float:
        text = requests.get(self.url + "/metrics", timeout=30).text
        for family in text_string_to_metric_families(text):
            if family.name == "process_resident_memory_bytes":
                return family.samples[0].value / 2**20
        return math.nan

    def run(self, every: float) -> int:
        threads = [threading.Thread(target=self.client, args=(k,), daemon=True) for k in range(self.clients)]
        start = time.monotonic()
        for t in threads:
            t.start()
        print(f"{'elapsed s':>9} {'requests':>9} {'errors':>7} {'p50 ms':>8} {'p99 ms':>8} {'RSS MiB':>8}", flush=True)
        total = errors = 0
        all_latencies: list[float] = []
        while time.monotonic() - start < self.seconds:
            time.sleep(min(every, max(0.0, self.seconds - (time.monotonic() - start))))
            with self.lock:
                lat, self.latencies = self.latencies, []
                n, e, self.requests, self.errors = self.requests, self.errors, 0, 0
            total += n
            errors += e
            all_latencies += lat
            print(f"{time.monotonic() - start:9.0f} {total:9d} {errors:7d} {percentile(lat, .5) * 1000:8.0f} "
                  f"{percentile(lat, .99) * 1000:8.0f} {self.rss_mib():8.0f}", flush=True)
        self.stop.set()
        for t in threads:
            t.join(timeout=300)
        print(f"total: {total} requests, {errors} errors {self.error_kinds or ''}, p50 "
              f"{percentile(all_latencies, .5) * 1000:.0f} ms, p99 {percentile(all_latencies, .99) * 1000:.0f} ms")
        return 1 if errors else 0


def start_server(threads: int) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "N_THREADS": str(threads)}
    proc = subprocess.Popen([sys.executable, "-m", "app.serve", "--bind", f"127.0.0.1:{port}"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if requests.get(url + "/health", timeout=10).status_code == 200:
                return proc, url
        except requests.RequestException:
            pass
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    raise SystemExit("the server did not become healthy within 120 s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running server (default: start one with python -m app.serve)")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--every", type=float, default=30.0, help="seconds between report lines")
    parser.add_argument("--threads", type=int, default=2, help="N_THREADS of the server this starts")
    args = parser.parse_args()
    proc = None
    url = args.url
    if url is None:
        proc, url = start_server(args.threads)
    try:
        return Soak(url.rstrip("/"), args.clients, args.minutes * 60).run(args.every)
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=120)


if __name__ == "__main__":
    sys.exit(main())
