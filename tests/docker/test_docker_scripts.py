"""The Dockerfile's steps, run here: its scripts (CPU variant) and its runtime CMD and HEALTHCHECK.

Docker cannot run on this machine, so each RUN step's script runs in a temp dir with BACKEND=cpu, and
the runtime stage is laid out as the image would be (its COPY instructions, followed) and started with
the image's own CMD and ENV, on a loopback port instead of 80.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.docker.dockerfile_model import ROOT, load

DOCKER = ROOT / "docker"
DEFAULT_GGUF = ROOT / "models" / "smollm2-135m-instruct" / "smollm2-135m-instruct-Q4_1.gguf"
# The CPU image's interpreter is python:3.11-slim's python3. Here Debian's own python3 of the same
# minor version stands in for it (any user may run it, as in the image), else this test's interpreter.
_DEBIAN_PYTHON = Path("/usr/bin/python3")


def _same_minor(python: Path) -> bool:
    if not python.exists():
        return False
    done = subprocess.run([str(python), "-c", "import sys; print(sys.version_info[:2])"], capture_output=True, text=True)
    return done.stdout.strip() == str(tuple(sys.version_info[:2]))


SYSTEM_PYTHON = str(_DEBIAN_PYTHON) if _same_minor(_DEBIAN_PYTHON) else str(Path(sys.base_prefix) / "bin" / "python3")


def run(cmd: list[str], *, env: dict[str, str] | None = None, cwd: Path = ROOT, timeout: float = 1800) -> str:
    """Run a command like a RUN step: fail the test with its output when it exits non-zero."""
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{cmd} exited {done.returncode}\n--- stdout\n{done.stdout[-4000:]}\n--- stderr\n{done.stderr[-4000:]}"
    return done.stdout


def llama_pin() -> str:
    """The llama-cpp-python version requirements.txt pins (what install.sh compiles)."""
    pins = [line.split("==", 1)[1].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()
            if line.startswith("llama-cpp-python==")]
    assert len(pins) == 1, pins
    return pins[0]


def script_env(**extra: str) -> dict[str, str]:
    """The environment a RUN step sees: this one, with the build arguments as variables."""
    env = dict(os.environ)
    env.update(extra)
    return env


# ---- docker/system-packages.sh


@pytest.mark.parametrize("backend", ["cuda", "cpu"])
@pytest.mark.parametrize("role", ["builder", "runtime"])
def test_system_packages_resolve_on_debian(role: str, backend: str) -> None:
    """Every package a stage installs exists in this Debian's archive (apt-get --simulate).

    The names are the same in Ubuntu 24.04, which the CUDA images use.
    """
    packages = run(["bash", str(DOCKER / "system-packages.sh"), role, "--print"], env=script_env(BACKEND=backend)).split()
    assert ("python3" in packages) == (backend == "cuda"), "only the CUDA images take Python from apt"
    if shutil.which("apt-get") is None or not any(Path("/var/lib/apt/lists").glob("*_Packages*")):
        pytest.skip("no apt package lists on this machine (run `apt-get update`)")
    out = run(["apt-get", "install", "--simulate", "--no-install-recommends", *packages])
    assert "E:" not in out


def test_system_packages_rejects_an_unknown_role() -> None:
    done = subprocess.run(["bash", str(DOCKER / "system-packages.sh"), "runner"], capture_output=True, text=True)
    assert done.returncode == 2 and "unknown role/BACKEND 'runner/cuda'" in done.stderr


# ---- docker/install.sh


def test_install_cache_key_separates_backends_and_architectures() -> None:
    def key(**env: str) -> str:
        return run(["bash", str(DOCKER / "install.sh"), "cache-key"], env=script_env(**env)).strip()

    cpu = key(BACKEND="cpu")
    a100 = key(BACKEND="cuda", CUDA_VERSION="12.4.1", CUDA_ARCHITECTURES="80")
    all_ = key(BACKEND="cuda", CUDA_VERSION="12.4.1", CUDA_ARCHITECTURES="80;86;89;90")
    cuda12_6 = key(BACKEND="cuda", CUDA_VERSION="12.6.3", CUDA_ARCHITECTURES="80")
    assert len({cpu, a100, all_, cuda12_6}) == 4
    assert "/" not in all_ and ";" not in all_  # A folder name.
    assert llama_pin() in cpu


def test_install_rejects_an_unknown_backend() -> None:
    done = subprocess.run(["bash", str(DOCKER / "install.sh"), "cache-key"], env=script_env(BACKEND="rocm"), capture_output=True, text=True)
    assert done.returncode == 2 and "unknown BACKEND 'rocm'" in done.stderr


FAKE_PIP_PYTHON = """#!/usr/bin/env bash
# Stands in for python3 in `install.sh wheel`: records `-m pip wheel` with its CMAKE_ARGS and
# writes an empty wheel where pip would, instead of compiling for minutes.
if [ "$1 $2 $3" != "-m pip wheel" ]; then exec "$REAL_PYTHON" "$@"; fi
printf 'CMAKE_ARGS=%s\\n%s\\n' "$CMAKE_ARGS" "$*" >> "$CALLS"
while [ $# -gt 0 ]; do [ "$1" = --wheel-dir ] && dir=$2; shift; done
touch "$dir/llama_cpp_python-$VERSION-py3-none-linux_x86_64.whl"
"""


@pytest.mark.parametrize(
    ("backend", "expect"),
    [
        ("cpu", "-DGGML_NATIVE=OFF -DGGML_CUDA=OFF"),
        ("cuda", "-DGGML_CUDA=ON -DGGML_NATIVE=OFF -DCMAKE_CUDA_ARCHITECTURES=80;86;89;90 "
                 "-DCMAKE_EXE_LINKER_FLAGS=-Wl,--allow-shlib-undefined"),
    ],
)
def test_install_wheel_compiles_once_per_cache_slot(tmp_path: Path, backend: str, expect: str) -> None:
    """The compile command of each backend, then a second build that finds the wheel in the cache mount."""
    version = llama_pin()
    python = tmp_path / "python3"
    python.write_text(FAKE_PIP_PYTHON)
    python.chmod(0o755)
    calls = tmp_path / "calls.txt"
    env = script_env(BACKEND=backend, PYTHON=str(python), REAL_PYTHON=sys.executable, CALLS=str(calls), VERSION=version,
                     LLAMA_WHEEL_CACHE=str(tmp_path / "cache"), CUDA_VERSION="12.6.3", CUDA_ARCHITECTURES="80;86;89;90")
    run(["bash", str(DOCKER / "install.sh"), "wheel", str(tmp_path / "wheels1")], env=env)
    assert calls.read_text().splitlines() == [
        f"CMAKE_ARGS={expect}",
        # --no-cache-dir: never a wheel pip compiled earlier with other CMAKE_ARGS.
        f"-m pip wheel --no-deps --no-cache-dir --wheel-dir {calls.read_text().split('--wheel-dir ')[1].split()[0]} "
        f"llama-cpp-python=={version}",
    ]
    again = run(["bash", str(DOCKER / "install.sh"), "wheel", str(tmp_path / "wheels2")], env=env)
    assert "reusing the compiled wheel" in again
    assert len(calls.read_text().splitlines()) == 2, "the second build compiled again"
    assert [p.name for p in (tmp_path / "wheels2").iterdir()] == [f"llama_cpp_python-{version}-py3-none-linux_x86_64.whl"]


def cached_wheel() -> Path | None:
    """The llama-cpp-python wheel pip compiled when this machine was set up, if pip's cache has it."""
    done = subprocess.run(
        [sys.executable, "-m", "pip", "cache", "list", "llama_cpp_python", "--format=abspath"], capture_output=True, text=True
    )
    found = [Path(p) for p in done.stdout.split() if f"-{llama_pin()}-" in p]
    return found[0] if found else None


@dataclass
class ImageVenv:
    """What `install.sh wheel` and `install.sh venv` made for the CPU variant."""

    venv: Path
    wheel_dir: Path
    log: str


@pytest.fixture(scope="module")
def image_root() -> Iterator[Path]:
    """A folder that stands for the image's /; unlike pytest's own temp dirs, any user may read it."""
    root = Path(tempfile.mkdtemp(prefix="docker-image-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def image_venv(image_root: Path, tmp_path_factory: pytest.TempPathFactory) -> ImageVenv:
    """Run the builder's install steps (BACKEND=cpu) as the Dockerfile does; the venv lands at /opt/venv.

    The wheel cache mount is seeded with the wheel pip compiled for this machine's own venv, as a
    second `docker build` finds it; without one, install.sh compiles llama-cpp-python (minutes).
    """
    base = tmp_path_factory.mktemp("builder")
    cache, wheels, venv = base / "cache-mount", base / "wheels", image_root / "opt" / "venv"
    env = script_env(BACKEND="cpu", PYTHON=SYSTEM_PYTHON, LLAMA_WHEEL_CACHE=str(cache))
    seed = cached_wheel()
    if seed is not None:
        key = run(["bash", str(DOCKER / "install.sh"), "cache-key"], env=env).strip()
        (cache / key).mkdir(parents=True)
        shutil.copy(seed, cache / key / seed.name)
    log = run(["bash", str(DOCKER / "install.sh"), "wheel", str(wheels)], env=env)
    log += run(["bash", str(DOCKER / "install.sh"), "venv", str(venv), "requirements.txt"], env=env | {"WHEEL_DIR": str(wheels)})
    return ImageVenv(venv=venv, wheel_dir=wheels, log=log)


@pytest.mark.slow
def test_install_builds_the_serving_venv(image_venv: ImageVenv) -> None:
    assert len(list(image_venv.wheel_dir.glob("llama_cpp_python-*.whl"))) == 1
    py = image_venv.venv / "bin" / "python"
    # The venv runs on the system interpreter, as the copied venv does in the runtime image.
    assert os.path.realpath(py) == os.path.realpath(SYSTEM_PYTHON) or SYSTEM_PYTHON == sys.executable
    frozen = run([str(py), "-m", "pip", "list", "--format=freeze"])  # name==version, even for a local wheel
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            assert line.strip().lower().replace("_", "-") in frozen.lower().replace("_", "-"), f"{line} not installed"
    # Nothing from the build pipeline's requirements leaks into the serving venv.
    assert "torch" not in frozen.lower()
    assert (image_venv.venv / "bin" / "gunicorn").exists()


# ---- the runtime stage: laid out from the Dockerfile, started with its CMD


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RuntimeImage:
    """The runtime stage's filesystem laid out under root, with the image's CMD, ENV and HEALTHCHECK."""

    root: Path  # stands for the image's /
    workdir: Path
    env: dict[str, str]
    cmd: list[str]
    healthcheck: list[str]
    user: str  # the USER instruction's "uid:gid"

    def host(self, container_path: str) -> str:
        """Where a container path lies here."""
        return str(self.root) + container_path

    def as_user(self, argv: list[str]) -> list[str]:
        """argv run as the image's user, as Docker runs CMD and HEALTHCHECK (when this test is root)."""
        if os.geteuid() != 0 or shutil.which("setpriv") is None or SYSTEM_PYTHON != str(_DEBIAN_PYTHON):
            return argv  # Not root, or the interpreter lies where that user cannot reach it.
        uid, _, gid = self.user.partition(":")
        return ["setpriv", f"--reuid={uid}", f"--regid={gid or uid}", "--clear-groups", "--", *argv]


def lay_out_runtime(*, root: Path, engine_gguf: Path, port: int) -> RuntimeImage:
    """Follow the runtime stage's WORKDIR/COPY/ENV/USER/CMD/HEALTHCHECK, mapping container paths to root.

    /opt/venv is already under root (the image_venv fixture); the engine is engine_gguf.
    """
    stage = load().stage("runtime")
    image = RuntimeImage(root=root, workdir=root, env={}, cmd=[], healthcheck=[], user="")
    workdir = "/"
    for ins in stage.instructions:
        if ins.keyword == "WORKDIR":
            workdir = ins.value.strip()
            Path(image.host(workdir)).mkdir(parents=True, exist_ok=True)
        elif ins.keyword == "COPY" and "from" not in ins.flags:
            *sources, dest = ins.body.split()
            dest_dir = Path(image.host(dest if dest.startswith("/") else f"{workdir.rstrip('/')}/{dest}"))
            for src in sources:
                path = ROOT / src
                if path.is_dir():
                    shutil.copytree(path, dest_dir, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    dest_dir.mkdir(parents=True, exist_ok=True)
                    shutil.copy(path, dest_dir / path.name)
        elif ins.keyword == "COPY" and ins.body.split()[0].rstrip("/") == "/engine":
            # What build-engine.sh leaves in /engine: the GGUF and a stable model.gguf link to it.
            engine = Path(image.host("/engine"))
            engine.mkdir(parents=True)
            shutil.copy(engine_gguf, engine / engine_gguf.name)
            (engine / "model.gguf").symlink_to(engine_gguf.name)
        elif ins.keyword == "ENV":
            import shlex

            for word in shlex.split(ins.value):
                name, _, value = word.partition("=")
                value = value.replace("$PATH", os.environ["PATH"]).replace("${N_CTX}", stage.arg_defaults()["N_CTX"])
                if name == "PATH":
                    value = value.replace("/opt/venv/bin", image.host("/opt/venv/bin"))
                elif value.startswith("/"):  # A path in the image: MODEL_PATH.
                    value = image.host(value)
                image.env[name] = value
        elif ins.keyword == "USER":
            image.user = ins.value.strip()
        elif ins.keyword == "CMD":
            image.cmd = [a.replace("0.0.0.0:80", f"127.0.0.1:{port}") for a in ins.exec_form]
        elif ins.keyword == "HEALTHCHECK":
            image.healthcheck = [a.replace("127.0.0.1:80/", f"127.0.0.1:{port}/") for a in ins.exec_form]
    image.workdir = Path(image.host(workdir))
    return image


@pytest.fixture(scope="module")
def runtime_server(image_venv: ImageVenv, image_root: Path):
    """The runtime image's CMD, started here on a loopback port, serving the default GGUF."""
    assert DEFAULT_GGUF.is_file(), f"{DEFAULT_GGUF} is missing: run `python -m build_engine.default_model`"
    port = free_port()
    image = lay_out_runtime(root=image_root, engine_gguf=DEFAULT_GGUF, port=port)
    # The user's home, as `useradd --create-home` makes it; Docker sets HOME from /etc/passwd.
    home = Path(image.host("/home/app"))
    home.mkdir(parents=True)
    if os.geteuid() == 0:
        uid, _, gid = image.user.partition(":")
        os.chown(home, int(uid), int(gid or uid))
    # A container starts with the image's ENV and HOME, not this process's environment: no setting
    # (MODEL_PATH, N_CTX, ...) leaks in from the machine running the test.
    env = {k: v for k, v in os.environ.items() if k in {"LANG", "LC_ALL", "TZ"}}
    env.update(image.env)
    env["HOME"] = str(home)
    log = open(image.root / "gunicorn.log", "w")
    proc = subprocess.Popen(image.as_user(image.cmd), cwd=image.workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180  # seconds: import + model load on 2 cores
        while True:
            assert proc.poll() is None, f"gunicorn exited {proc.returncode}:\n{(image.root / 'gunicorn.log').read_text()[-4000:]}"
            try:
                if requests.get(f"{base}/health", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, f"/health not 200 after 180 s:\n{(image.root / 'gunicorn.log').read_text()[-4000:]}"
            time.sleep(0.5)
        yield base, image, env, proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@pytest.mark.slow
@pytest.mark.server
def test_runtime_cmd_serves_health_and_process(runtime_server) -> None:
    base, image, _, proc = runtime_server
    assert image.cmd[0] == "python" and shutil.which("python", path=image.env["PATH"]) == image.host("/opt/venv/bin/python")
    health = requests.get(f"{base}/health", timeout=10)
    assert health.status_code == 200
    # The challenge harness's own first request: a prompt and nothing else.
    done = requests.post(f"{base}/process", json={"prompt": "The capital of France is"}, timeout=120)
    assert done.status_code == 200, done.text
    body = done.json()
    assert isinstance(body["text"], str) and body["tokens"] and "request_time" in body


@pytest.mark.slow
@pytest.mark.server
def test_runtime_serves_as_the_images_user(runtime_server) -> None:
    _, image, _, proc = runtime_server
    if image.as_user(["true"]) == ["true"]:
        pytest.skip("needs root and setpriv to start the server as another user")
    status = Path(f"/proc/{proc.pid}/status").read_text()
    real_uid = next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:"))
    assert real_uid == image.user.split(":")[0] != "0"


@pytest.mark.slow
@pytest.mark.server
def test_runtime_healthcheck_command_passes(runtime_server) -> None:
    _, image, env, _ = runtime_server
    argv = [image.host("/opt/venv/bin/python") if a == "python" else a for a in image.healthcheck]
    assert shutil.which(image.healthcheck[0], path=image.env["PATH"]) == argv[0]
    done = subprocess.run(image.as_user(argv), cwd=image.workdir, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr


def test_healthcheck_fails_when_nothing_listens() -> None:
    port = free_port()  # Closed again at once: nothing listens there.
    done = subprocess.run(
        [sys.executable, str(DOCKER / "healthcheck.py"), f"http://127.0.0.1:{port}/health"], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 1, done.stderr


def test_healthcheck_fails_on_a_non_200(tmp_path: Path) -> None:
    import http.server
    import threading

    class Unhealthy(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            self.send_response(503)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Unhealthy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/health"
        done = subprocess.run([sys.executable, str(DOCKER / "healthcheck.py"), url], capture_output=True, text=True, timeout=30)
        assert done.returncode == 1, done.stderr
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# ---- docker/build-engine.sh


FAKE_PYTHON = """#!/usr/bin/env bash
# Stands in for the build venv's python: records each `-m build_engine` call and fakes its outputs.
if [ "$1" != "-m" ]; then exec "$REAL_PYTHON" "$@"; fi
shift  # "-m"; the module name stays in the record
printf '%s\\n' "$*" >> "$CALLS"
printf 'HF_TOKEN=%s\\n' "${HF_TOKEN:-}" >> "$CALLS"
out= quant=
while [ $# -gt 0 ]; do
    case "$1" in --out) out=$2; shift ;; --quant) quant=$2; shift ;; esac
    shift
done
mkdir -p "$out"
name=$(basename "$out")
echo "GGUF fake $quant" > "$out/$name-$quant.gguf"
echo '{"name": "'"$name"'"}' > "$out/manifest.json"
echo "$out/$name-$quant.gguf"
"""


@pytest.fixture()
def fake_python(tmp_path: Path) -> tuple[Path, Path]:
    script = tmp_path / "python"
    script.write_text(FAKE_PYTHON)
    script.chmod(0o755)
    return script, tmp_path / "calls.txt"


def build_engine_sh(step: str, *args: Path, python: Path, calls: Path, **env: str) -> subprocess.CompletedProcess:
    full = script_env(PYTHON=str(python), REAL_PYTHON=sys.executable, CALLS=str(calls), BACKEND="cpu", **env)
    full.pop("HF_TOKEN", None)
    full.update(env)
    return subprocess.run(["bash", str(DOCKER / "build-engine.sh"), step, *map(str, args)], cwd=ROOT, env=full,
                          capture_output=True, text=True, timeout=60)


def test_build_engine_sh_runs_build_engine_twice_with_one_command_line(tmp_path: Path, fake_python) -> None:
    python, calls = fake_python
    token = tmp_path / "hf_token"
    token.write_text("hf_not_a_real_token\n")
    env = {"MODEL": "mistral-7b", "REVISION": "abc123", "HF_TOKEN_FILE": str(token)}
    first = build_engine_sh("convert", tmp_path / "build", python=python, calls=calls, **env)
    assert first.returncode == 0, first.stderr
    second = build_engine_sh("quantize", tmp_path / "build", tmp_path / "engine", python=python, calls=calls, QUANT="Q5_K_M", **env)
    assert second.returncode == 0, second.stderr
    lines = calls.read_text().splitlines()
    out = tmp_path / "build" / "mistral-7b"  # The spec's name, as build_engine would choose it.
    common = f"--outtype f16 --out {out} --no-eval --revision abc123 --token-file {token}"
    assert lines == [
        f"build_engine --model mistral-7b --quant F16 {common}",
        "HF_TOKEN=",  # The token stays in its file: build_engine reads it there.
        f"build_engine --model mistral-7b --quant Q5_K_M {common}",
        "HF_TOKEN=",
    ]
    engine = tmp_path / "engine"
    assert sorted(p.name for p in engine.iterdir()) == ["manifest.json", "mistral-7b-Q5_K_M.gguf", "model.gguf"]
    assert os.readlink(engine / "model.gguf") == "mistral-7b-Q5_K_M.gguf"  # Relative: survives COPY.
    assert (engine / "model.gguf").read_text() == "GGUF fake Q5_K_M\n"


def test_build_engine_sh_without_revision_or_token(tmp_path: Path, fake_python) -> None:
    python, calls = fake_python
    done = build_engine_sh("convert", tmp_path / "build", python=python, calls=calls, MODEL="Qwen/Qwen2.5-7B")
    assert done.returncode == 0, done.stderr
    assert calls.read_text().splitlines()[0] == f"build_engine --model Qwen/Qwen2.5-7B --quant F16 --outtype f16 --out {tmp_path / 'build' / 'qwen2.5-7b'} --no-eval"


@pytest.mark.parametrize(
    ("step", "env", "message"),
    [
        ("quantize", {"MODEL": "mistral-7b", "QUANT": "Q4_K_M,Q8_0"}, "QUANT names one type"),
        ("quantize", {"MODEL": "mistral-7b"}, "QUANT is required"),
        ("convert", {}, "MODEL is required"),
        ("fetch", {"MODEL": "mistral-7b"}, "unknown step 'fetch'"),
    ],
)
def test_build_engine_sh_fails_naming_the_problem(tmp_path: Path, fake_python, step: str, env: dict, message: str) -> None:
    python, calls = fake_python
    full = {"QUANT": "", **env}
    done = build_engine_sh(step, tmp_path / "build", tmp_path / "engine", python=python, calls=calls, **full)
    assert done.returncode != 0 and message in done.stderr, done.stderr


@pytest.mark.slow
@pytest.mark.build
def test_build_engine_sh_builds_a_real_engine_and_requantizes_cheaply(tmp_path: Path) -> None:
    """The builder's two model steps on a real (tiny) checkpoint, then a QUANT change."""
    from tests.fixtures.hf_checkpoint import make_hf_checkpoint

    checkpoint = make_hf_checkpoint(tmp_path / "checkpoint")
    env = script_env(MODEL=str(checkpoint), PYTHON=sys.executable, BACKEND="cpu", QUANT="Q8_0")
    env.pop("HF_TOKEN", None)
    work = tmp_path / "build"
    run(["bash", str(DOCKER / "build-engine.sh"), "convert", str(work)], env=env)
    name = "checkpoint"  # build_engine names a local folder's engines after the folder.
    assert (work / name / f"{name}-F16.gguf").is_file()
    run(["bash", str(DOCKER / "build-engine.sh"), "quantize", str(work), str(tmp_path / "engine")], env=env)
    engine = tmp_path / "engine"
    assert os.readlink(engine / "model.gguf") == f"{name}-Q8_0.gguf"
    assert (engine / "model.gguf").read_bytes()[:4] == b"GGUF"
    manifest = json.loads((engine / "manifest.json").read_text())
    assert manifest["engines"]["Q8_0"]["file"] == f"{name}-Q8_0.gguf"
    # A new QUANT: the same command line reuses the 16-bit GGUF instead of converting again.
    again = subprocess.run(
        ["bash", str(DOCKER / "build-engine.sh"), "quantize", str(work), str(tmp_path / "engine-q4")],
        cwd=ROOT, env=env | {"QUANT": "Q4_0"}, capture_output=True, text=True, timeout=600,
    )
    assert again.returncode == 0, again.stderr[-4000:]
    assert "convert: reusing" in again.stderr
    assert os.readlink(tmp_path / "engine-q4" / "model.gguf") == f"{name}-Q4_0.gguf"
