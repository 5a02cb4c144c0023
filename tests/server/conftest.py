"""Ring 3 fixtures: gunicorn started for real, with the project's gunicorn.conf.py, on a free port."""
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


class Server:
    def __init__(self, env: dict[str, str], log_path: Path, port: int | None = None) -> None:
        self.port = port or free_port()  # a given port: a replica restarted where its proxy expects it
        self.url = f"http://127.0.0.1:{self.port}"
        gunicorn = Path(sys.executable).with_name("gunicorn")
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(
            [str(gunicorn), "-c", "gunicorn.conf.py", "-b", f"127.0.0.1:{self.port}", "wsgi:app"],
            cwd=ROOT, env={**os.environ, **env}, stdout=self.log, stderr=subprocess.STDOUT,
        )

    def wait_healthy(self, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"gunicorn exited with {self.proc.returncode}"
            try:
                r = requests.get(self.url + "/health", timeout=2)
                if r.status_code == 200:
                    return r.json()
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        raise TimeoutError("server not healthy in time")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
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
