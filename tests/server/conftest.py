"""Ring 3 fixtures: the server started for real as deployed (`python -m app.serve`: nginx in front of
gunicorn with the project's gunicorn.conf.py), on a free port."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children(pid: int) -> list[int]:
    """Child process ids of pid (Linux /proc)."""
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        out += [int(c) for c in text]
    return out


class Server:
    def __init__(self, env: dict[str, str], log_path: Path, port: int | None = None) -> None:
        self.port = port or free_port()  # a given port: a replica restarted where its proxy expects it
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.serve", "--bind", f"127.0.0.1:{self.port}"],
            cwd=ROOT, env={**os.environ, **env}, stdout=self.log, stderr=subprocess.STDOUT,
        )

    def gunicorn_pid(self) -> int:
        """The gunicorn master, a child of app.serve."""
        pids = [c for c in children(self.proc.pid) if b"gunicorn" in Path(f"/proc/{c}/cmdline").read_bytes()]
        assert len(pids) == 1, f"gunicorn masters under {self.proc.pid}: {pids}"
        return pids[0]

    def worker_pids(self) -> list[int]:
        """gunicorn's worker processes: one, or none for a moment while a dead one is replaced."""
        return children(self.gunicorn_pid())

    def worker_pid(self) -> int:
        """gunicorn's one worker process (the one that holds the model)."""
        pids = self.worker_pids()
        assert len(pids) == 1, f"gunicorn workers: {pids}"
        return pids[0]

    def wait_healthy(self, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"the server exited with {self.proc.returncode}: {self.log_path.read_text()[-3000:]}"
            try:
                r = requests.get(self.url + "/health", timeout=2)
                if r.status_code == 200:
                    return r.json()
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        raise TimeoutError("server not healthy in time")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def start_server(tmp_path_factory, model_path, **env) -> Server:
    base = {"MODEL_PATH": str(model_path), "N_THREADS": "2", "N_CTX": "2048", "MAX_BODY_BYTES": "65536"}
    server = Server({**base, **env}, tmp_path_factory.mktemp("gunicorn") / "server.log")
    server.wait_healthy()
    return server


@pytest.fixture(scope="session")
def server(tmp_path_factory, model_path):
    s = start_server(tmp_path_factory, model_path)
    yield s
    s.stop()


@pytest.fixture(scope="session")
def deterministic_server(tmp_path_factory, model_path):
    s = start_server(tmp_path_factory, model_path, DETERMINISTIC="1")
    yield s
    s.stop()
