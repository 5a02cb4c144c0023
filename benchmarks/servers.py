"""Starting the servers a benchmark compares: ours under gunicorn, llama.cpp's llama-server."""
from __future__ import annotations

import importlib.metadata
import os
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache"


def vendored_tree() -> Path:
    """vendor/llama.cpp of the installed llama-cpp-python's sdist (pip download, then cached)."""
    version = importlib.metadata.version("llama-cpp-python")
    out = CACHE / f"llama-cpp-python-{version}-src"
    tree = out / f"llama_cpp_python-{version}" / "vendor" / "llama.cpp"
    if (tree / "CMakeLists.txt").exists():
        return tree
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q",
                        "-d", tmp, f"llama-cpp-python=={version}"], check=True)
        sdist = next(Path(tmp).glob("*.tar.gz"))
        with tarfile.open(sdist) as tar:
            tar.extractall(out, filter="data")
    return tree


def build_llama_server() -> Path:
    """Compile llama-server (Release, CPU; CUDA when nvcc is there) once; later runs reuse it."""
    build = CACHE / "llama-server-build"
    exe = build / "bin" / "llama-server"
    if exe.exists():
        return exe
    flags = ["-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF",
             "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=ON"]
    if all(subprocess.run(["which", t], capture_output=True).returncode == 0 for t in ("nvcc", "nvidia-smi")):
        flags.append("-DGGML_CUDA=ON")
    subprocess.run(["cmake", "-S", str(vendored_tree()), "-B", str(build), *flags], check=True)
    subprocess.run(["cmake", "--build", str(build), "--target", "llama-server", f"-j{os.cpu_count()}"], check=True)
    return exe


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peak_rss_mib(pid: int) -> float:
    """Largest VmHWM (peak resident set) over a process and its children, MiB."""
    best = 0
    for p in [pid] + [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    best = max(best, int(line.split()[1]))
        except FileNotFoundError:
            pass
    return best / 1024


class Server:
    """A server process on a free loopback port, healthy before the constructor returns."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], health: str, cwd: Path = ROOT) -> None:
        self.name = name
        self.port = free_port()
        cmd = [c.replace("{port}", str(self.port)) for c in cmd]
        CACHE.mkdir(exist_ok=True)
        self.log = open(CACHE / f"bench-{name}.log", "w")
        self.proc = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, **env}, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {self.proc.returncode}; see {self.log.name}")
            try:
                if requests.get(self.url + health, timeout=2).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{name} did not become healthy; see {self.log.name}")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
