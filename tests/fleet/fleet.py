"""A local fleet: server replicas under gunicorn (tests/server/conftest.py's Server, real processes on
127.0.0.1) behind one real HAProxy running the shipped policy."""
from __future__ import annotations

import concurrent.futures as cf
import os
import signal
import time
from pathlib import Path

import requests

from tests.fleet.haproxy import HAProxy, render
from tests.server.conftest import Server, children, free_port

# One llama.cpp thread per replica: three replicas share this machine's two cores. 4 running + 4
# cached prompts of up to 1024 tokens each: 8 KV streams, 180 MiB per replica for SmolLM2.
REPLICA_ENV = {"N_THREADS": "1", "N_CTX": "1024", "N_PARALLEL": "4", "MAX_NUM_SAMPLES": "4", "MAX_BODY_BYTES": "65536"}


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (/proc/PID/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants (app.serve: nginx master and workers, gunicorn and its worker)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children(p)
    return out


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


class Replica:
    """One server replica on a fixed port, so the proxy finds it again after a restart."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path) -> None:
        self.name, self.env, self.log_dir = name, env, log_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server: Server | None = None
        self.starts = 0

    def start(self) -> None:
        """Start gunicorn; returns at once (the caller waits on /health or on the proxy)."""
        self.starts += 1
        self.server = Server(self.env, self.log_dir / f"{self.name}-{self.starts}.log", port=self.port)

    def wait_healthy(self, timeout: float = 180) -> None:
        """Wait for /health 200 (three replicas loading at once on two cores answer slowly)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.server.proc.poll() is None, f"{self.name}: gunicorn exited with {self.server.proc.returncode}"
            try:
                if requests.get(self.url + "/health", timeout=10).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} not healthy after {timeout} s")

    def pids(self) -> list[int]:
        """Every process of the replica: app.serve, nginx, gunicorn, the worker that owns the model."""
        return process_tree(self.server.proc.pid)

    def cpu(self) -> float:
        """CPU seconds the whole replica has used (nginx and gunicorn included)."""
        return sum(cpu_seconds(p) for p in self.pids())

    def kill(self) -> None:
        """SIGKILL every process of the replica at once: a crash, no drain."""
        pids = self.pids()
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        self.server.proc.wait()
        for pid in pids[1:]:  # grandchildren are reaped by init: wait until each is gone or a zombie
            while _alive(pid):
                time.sleep(0.01)
        self.server.log.close()

    def stop(self) -> None:
        if self.server is not None and self.server.proc.poll() is None:
            self.server.stop()


class Fleet:
    """n replicas and a proxy; `with Fleet(...) as f:` starts them and waits until all are UP."""

    def __init__(self, model_path: Path, log_dir: Path, *, n: int = 3, affinity: bool = True, **env: str) -> None:
        env = {"MODEL_PATH": str(model_path), **REPLICA_ENV, **env}
        self.replicas = {f"r{i}": Replica(f"r{i}", env, log_dir) for i in range(n)}
        self.affinity = affinity
        self.log_dir = log_dir
        self.proxy: HAProxy | None = None

    def __enter__(self) -> "Fleet":
        try:
            for r in self.replicas.values():
                r.start()  # all load at once
            for r in self.replicas.values():
                r.wait_healthy()
            port, stats_port = free_port(), free_port()
            config = render(port=port, stats_port=stats_port, affinity=self.affinity,
                            servers={name: r.port for name, r in self.replicas.items()})
            self.proxy = HAProxy(config, self.log_dir, port=port, stats_port=stats_port)
            for name in self.replicas:
                self.proxy.wait_status(name, "UP")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self.proxy is not None:
            self.proxy.stop()
        for r in self.replicas.values():
            r.stop()


def post(url: str, body: dict) -> tuple[int, dict, str]:
    """(status, JSON body, the replica that answered per HAProxy's X-Served-By or '')."""
    r = requests.post(url + "/process", json=body, timeout=300)
    return r.status_code, r.json(), r.headers.get("X-Served-By", "")


def run_load(url: str, bodies: list[dict], clients: int) -> tuple[float, list[tuple[int, dict, str]]]:
    """Send every body with `clients` threads; (wall seconds, results in the bodies' order)."""
    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda b: post(url, b), bodies))
    return time.perf_counter() - t0, results


def answer(body: dict) -> dict:
    """What a response says about the model: all of it but its timing and how much of the prompt
    the replica found in its prefix cache."""
    return {k: v for k, v in body.items() if k not in ("request_time", "cached_tokens")}
