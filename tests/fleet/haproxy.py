"""HAProxy for the fleet tests: the shipped deploy/haproxy/haproxy.cfg with only its bind and server
lines replaced (replicas on 127.0.0.1), started as a real process, read through its stats CSV."""
from __future__ import annotations

import csv
import io
import shutil
import subprocess
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "deploy" / "haproxy" / "haproxy.cfg"
AFFINITY_LINE = "balance hash req.body,bytes(0,256)"


def haproxy_binary() -> str:
    """The Debian package's haproxy (scripts/setup.sh --dev installs it)."""
    path = shutil.which("haproxy") or ("/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None)
    assert path, "haproxy is not installed: run scripts/setup.sh --dev (apt-get install haproxy)"
    return path


def render(*, port: int, stats_port: int, servers: dict[str, int], affinity: bool, text: str | None = None) -> str:
    """The shipped config for replicas name -> port on 127.0.0.1; affinity=False swaps the body hash
    for round robin and changes nothing else."""
    lines = (text if text is not None else SHIPPED.read_text()).splitlines()

    def replace_one(old: str, new: list[str]) -> None:
        hits = [i for i, line in enumerate(lines) if line.strip() == old]
        assert len(hits) == 1, f"{SHIPPED} should have exactly one line {old!r}, has {len(hits)}"
        lines[hits[0]:hits[0] + 1] = new

    replace_one("bind :8080", [f"    bind 127.0.0.1:{port}"])
    replace_one("bind :8404", [f"    bind 127.0.0.1:{stats_port}"])
    if not affinity:
        replace_one(AFFINITY_LINE, ["    balance roundrobin"])
    first = next(i for i, line in enumerate(lines) if line.strip().startswith("server "))
    lines = [line for line in lines if not line.strip().startswith("server ")]
    lines[first:first] = [f"    server {name} 127.0.0.1:{p}" for name, p in servers.items()]
    return "\n".join(lines) + "\n"


class HAProxy:
    """One haproxy process in the foreground (-db), logging to a file."""

    def __init__(self, config: str, workdir: Path, *, port: int, stats_port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.stats_url = f"http://127.0.0.1:{stats_port}/stats;csv"
        self.config_path = workdir / "haproxy.cfg"
        self.config_path.write_text(config)
        check = subprocess.run([haproxy_binary(), "-c", "-q", "-f", str(self.config_path)], capture_output=True, text=True)
        assert check.returncode == 0, f"haproxy -c rejects the rendered config:\n{check.stdout}{check.stderr}"
        self.log = open(workdir / "haproxy.log", "w")
        self.proc = subprocess.Popen([haproxy_binary(), "-db", "-f", str(self.config_path)],
                                     stdout=self.log, stderr=subprocess.STDOUT)

    def stats(self) -> dict[str, dict[str, str]]:
        """Server name (and BACKEND) -> its row of `show stat` for the replicas backend."""
        text = requests.get(self.stats_url, timeout=5).text
        rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
        return {r["svname"]: r for r in rows if r["pxname"] == "replicas"}

    def wait_status(self, server: str, status: str, timeout: float = 60) -> None:
        """Wait until the health checks put `server` in `status` (UP, DOWN)."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"haproxy exited with {self.proc.returncode}"
            try:
                last = self.stats()[server]["status"]
                if last == status:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"{server} is {last}, not {status}, after {timeout} s")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
