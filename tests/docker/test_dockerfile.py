"""Static checks of the Dockerfile and .dockerignore (ring 1: no Docker engine, no network).

The Dockerfile is parsed with dockerfile-parse; the checks hold it to what CI runs here: the same
scripts under docker/, the same requirements, the same serve entry and gunicorn config, and the real /health route.
"""
from __future__ import annotations

import re
import runpy
import subprocess
import sys

import pytest

from tests.docker.dockerfile_model import ROOT, Dockerfile, Stage, ignore_rules, is_ignored, load

BACKENDS = ("cuda", "cpu")


@pytest.fixture(scope="module")
def df() -> Dockerfile:
    return load()


@pytest.fixture(scope="module")
def builder(df: Dockerfile) -> Stage:
    return df.stage("builder")


@pytest.fixture(scope="module")
def runtime(df: Dockerfile) -> Stage:
    return df.stage("runtime")


def run_steps(stage: Stage) -> list[str]:
    """The shell commands of a stage's RUN steps."""
    return [i.body for i in stage.all("RUN")]


def find_run(stage: Stage, pattern: str):
    """The one RUN step whose command matches pattern."""
    found = [i for i in stage.all("RUN") if re.search(pattern, i.body)]
    assert len(found) == 1, f"stage {stage.name}: expected one RUN matching {pattern!r}, found {[i.body for i in found]}"
    return found[0]


# ---- stages and base images


def test_stages_and_default_target(df: Dockerfile) -> None:
    names = [s.name for s in df.stages]
    assert names == ["devel-cuda", "devel-cpu", "runtime-cuda", "runtime-cpu", "builder", "engine", "runtime"]
    # `docker build .` builds the last stage: it must be the server.
    assert df.stages[-1].name == "runtime"
    assert df.stage("builder").base == "devel-${BACKEND}"
    assert df.stage("runtime").base == "runtime-${BACKEND}"
    assert df.stage("engine").base == "scratch"


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_picks_a_devel_runtime_pair(df: Dockerfile, backend: str) -> None:
    devel = df.resolve(df.stage(f"devel-{backend}").base, {"BACKEND": backend})
    runtime = df.resolve(df.stage(f"runtime-{backend}").base, {"BACKEND": backend})
    if backend == "cuda":
        # Same CUDA version and the same Ubuntu in both, so the copied venv finds the same python3.
        m = re.fullmatch(r"nvidia/cuda:(\d+\.\d+\.\d+)-devel-ubuntu(\d+\.\d+)", devel)
        assert m, devel
        assert runtime == f"nvidia/cuda:{m.group(1)}-runtime-ubuntu{m.group(2)}"
        assert m.group(1).startswith("12."), f"CUDA {m.group(1)}: llama-cpp-python's wheel links libcudart.so.12"
        # Ubuntu 24.04's python3 is 3.12; 22.04's 3.10 is too old for the pinned packages.
        assert float(m.group(2)) >= 24.04, devel
    else:
        assert devel == runtime, "the CPU venv must run on the interpreter it was built with"
        m = re.fullmatch(r"python:(3\.\d+)-slim-([a-z]+)", runtime)
        assert m, runtime
        # The same Python minor version as the venv CI tests with.
        assert m.group(1) == f"{sys.version_info.major}.{sys.version_info.minor}", runtime


def test_build_arg_defaults(df: Dockerfile, builder: Stage, runtime: Stage) -> None:
    assert df.global_args["BACKEND"] == "cuda"
    args = builder.arg_defaults()
    assert args["QUANT"] == "Q4_K_M"
    assert args["REVISION"] == "", "an empty REVISION means the spec's pinned revision"
    archs = args["CUDA_ARCHITECTURES"].split(";")
    # A100 = 80, RTX 4090 = 89, H100/H200 = 90.
    assert {"80", "89", "90"} <= set(archs), archs
    n_ctx = int(runtime.arg_defaults()["N_CTX"])
    assert n_ctx >= 2048, f"HELM assumes a 2048-token window for neurips/local, N_CTX={n_ctx}"
    # The runtime passes N_CTX on to the server's setting of the same name.
    assert re.search(r"\bN_CTX=\$\{?N_CTX\}?", runtime.one("ENV").value)


def test_default_model_is_a_pinned_permissive_spec(builder: Stage) -> None:
    from build_engine.specs import load_spec

    model = builder.arg_defaults()["MODEL"]
    spec = load_spec(model)
    assert spec is not None, f"MODEL={model!r} is not a spec under models/specs/"
    assert re.fullmatch(r"[0-9a-f]{40}", spec["revision"]), spec["revision"]
    assert spec["license"].lower() in {"apache-2.0", "mit"}, spec["license"]


# ---- layer order: what a changed build argument re-runs


def _uses(instruction, name: str) -> bool:
    return re.search(rf"\$\{{?{name}\b", instruction.value) is not None


def test_quant_invalidates_only_the_quantize_step(builder: Stage) -> None:
    steps = builder.instructions
    quant_arg = next(i for i in steps if i.keyword == "ARG" and i.value.startswith("QUANT"))
    pos = builder.index(quant_arg)
    # Build arguments reach RUN steps as environment variables, so a RUN after `ARG QUANT` is
    # re-run when QUANT changes; everything before it stays cached.
    after = [i for i in steps[pos + 1 :] if i.keyword == "RUN"]
    assert len(after) == 1 and "build-engine.sh quantize" in after[0].body, [i.body for i in after]
    assert not any(_uses(i, "QUANT") for i in steps[:pos])


def test_builder_layer_order(builder: Stage) -> None:
    steps = builder.instructions

    def at(pred) -> int:
        return next(n for n, i in enumerate(steps) if pred(i))

    system = at(lambda i: i.keyword == "RUN" and "system-packages.sh builder" in i.body)
    reqs = at(lambda i: i.keyword == "COPY" and "requirements.txt" in i.body)
    wheel = at(lambda i: i.keyword == "RUN" and "install.sh wheel" in i.body)
    venv = at(lambda i: i.keyword == "RUN" and "install.sh venv /opt/venv " in i.body)
    code = at(lambda i: i.keyword == "COPY" and i.body.startswith("build_engine/"))
    model = at(lambda i: i.keyword == "ARG" and i.value.startswith("MODEL"))
    convert = at(lambda i: i.keyword == "RUN" and "build-engine.sh convert" in i.body)
    quant = at(lambda i: i.keyword == "ARG" and i.value.startswith("QUANT"))
    quantize = at(lambda i: i.keyword == "RUN" and "build-engine.sh quantize" in i.body)
    assert system < reqs < wheel < venv < code < model < convert < quant < quantize
    # The model's build arguments are not seen by the compile steps.
    assert not any(_uses(i, name) for i in steps[:model] for name in ("MODEL", "REVISION", "QUANT"))


def test_compiled_wheel_is_cached_per_backend(builder: Stage) -> None:
    wheel = find_run(builder, r"install\.sh wheel")
    caches = [m for m in wheel.mounts if m.get("type") == "cache"]
    assert len(caches) == 1 and f"LLAMA_WHEEL_CACHE={caches[0]['target']}" in wheel.body, wheel.value
    # install.sh keys the slot in that mount on what changes the compiled library (see
    # test_install_cache_key_separates_backends_and_architectures); the compile sees no model argument.
    assert "CUDA_ARCHITECTURES" in builder.arg_defaults()
    assert builder.index(wheel) < min(
        builder.index(i) for i in builder.all("ARG") if i.value.split("=")[0] in {"MODEL", "REVISION", "QUANT"}
    )


def test_runtime_copies_the_engine_last(runtime: Stage) -> None:
    copies = runtime.all("COPY")
    assert copies[-1].flags.get("from") == "builder" and copies[-1].body.split()[0].startswith("/engine")


# ---- what goes into the image


def test_copy_and_bind_sources_exist_and_are_in_the_context(df: Dockerfile) -> None:
    rules = ignore_rules()
    sources = []
    for stage in df.stages:
        for ins in stage.all("COPY"):
            if "from" in ins.flags:
                assert ins.flags["from"] in {s.name for s in df.stages}, ins.value
                continue
            sources += ins.body.split()[:-1]
        for ins in stage.all("RUN"):
            sources += [m["source"] for m in ins.mounts if m.get("type") == "bind"]
    assert sources
    for src in sources:
        path = ROOT / src
        assert path.exists(), f"{src} is named by the Dockerfile but is not in the repo"
        assert not is_ignored(src, rules), f"{src} is excluded by .dockerignore"
        if path.is_dir():
            for child in path.rglob("*.py"):
                rel = child.relative_to(ROOT).as_posix()
                if "__pycache__" not in rel:
                    assert not is_ignored(rel, rules), f"{rel} is excluded by .dockerignore"


def test_runtime_holds_only_venv_app_and_engine(runtime: Stage) -> None:
    from_builder = [i.body.split()[0].rstrip("/") for i in runtime.all("COPY") if i.flags.get("from") == "builder"]
    assert sorted(from_builder) == ["/engine", "/opt/venv"]
    local = [src for i in runtime.all("COPY") if "from" not in i.flags for src in i.body.split()[:-1]]
    assert sorted(local) == ["app/", "docker/healthcheck.py", "gunicorn.conf.py", "wsgi.py"]


def test_builder_and_runtime_share_the_venv_path(builder: Stage, runtime: Stage) -> None:
    # A venv hard-codes its own path in its scripts: it must live at the same place in both stages.
    find_run(builder, r"install\.sh venv /opt/venv requirements\.txt$")
    assert "/opt/venv/bin" in runtime.one("ENV").value.split("PATH=")[1].split()[0]


def test_requirements_are_the_repos_own(builder: Stage) -> None:
    copied = [src for i in builder.all("COPY") for src in i.body.split()[:-1]]
    assert "requirements.txt" in copied and "requirements-build.txt" in copied
    serving = find_run(builder, r"install\.sh venv /opt/venv ")
    assert serving.body.split("install.sh venv /opt/venv ")[1].split() == ["requirements.txt"]
    build = find_run(builder, r"install\.sh venv /opt/build-venv ")
    assert build.body.split("install.sh venv /opt/build-venv ")[1].split() == ["requirements.txt", "requirements-build.txt"]
    # The compiled llama-cpp-python is the version requirements.txt pins, read from that file.
    assert "requirements.txt" in (ROOT / "docker" / "install.sh").read_text()


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "docker").glob("*.sh")))
def test_scripts_parse_and_run_under_bash(script: str, df: Dockerfile) -> None:
    done = subprocess.run(["bash", "-n", str(ROOT / "docker" / script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    # Every step calls its script through bash, so a lost executable bit cannot break the build.
    for stage in df.stages:
        for ins in stage.all("RUN"):
            for word in ins.words_with_flags():
                if word.endswith(".sh") and not word.startswith("--"):
                    assert f"bash {word}" in ins.body, f"line {ins.line}: run {word} as `bash {word}`"


def test_build_engine_flags_exist_in_its_cli() -> None:
    """docker/build-engine.sh calls `python -m build_engine` only with flags the CLI accepts."""
    script = (ROOT / "docker" / "build-engine.sh").read_text()
    used = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]+)", script))
    done = subprocess.run([sys.executable, "-m", "build_engine", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    accepted = set(re.findall(r"--[a-z][a-z-]+", done.stdout))
    assert {"--model", "--quant", "--out"} <= used
    assert used <= accepted, f"build-engine.sh uses flags build_engine does not accept: {sorted(used - accepted)}"


# ---- secrets


# "TOKENS" (a count, as CHUNK_TOKENS) is not a secret; "HF_TOKEN" is.
SECRET_NAME = re.compile(r"TOKEN(?!S\b)|SECRET|PASSWORD|PASSWD|API_?KEY|CREDENTIAL", re.I)
SECRET_VALUE = re.compile(r"\bhf_[A-Za-z0-9]{20,}|\bsk-[A-Za-z0-9]{20,}")


def test_no_arg_or_env_carries_a_secret(df: Dockerfile) -> None:
    names_values = list(df.global_args.items())
    for stage in df.stages:
        names_values += list(stage.arg_defaults().items())
        for env in stage.all("ENV"):
            names_values += re.findall(r"(\w+)=(\S*)", env.value)
    for name, value in names_values:
        assert not SECRET_NAME.search(name), f"{name} looks like a secret: pass it with --mount=type=secret"
        assert not SECRET_VALUE.search(value or ""), f"{name} holds what looks like a token"
    assert not SECRET_VALUE.search(df.parser.content)


def test_hub_token_is_a_build_secret(builder: Stage) -> None:
    # Both model steps run build_engine, which fetches (the second one from the hub cache mount).
    model_steps = [i for i in builder.all("RUN") if "build-engine.sh" in i.body]
    assert len(model_steps) == 2
    for step in model_steps:
        secrets = [m for m in step.mounts if m.get("type") == "secret"]
        assert len(secrets) == 1 and secrets[0]["id"] == "hf_token", step.value
        assert secrets[0].get("required", "false") == "false", "public models must build without a token"
        target = secrets[0].get("target", f"/run/secrets/{secrets[0]['id']}")
        assert f"HF_TOKEN_FILE={target}" in step.body
    # No other step sees the token.
    others = [i for i in builder.all("RUN") if i not in model_steps]
    assert not any(m.get("type") == "secret" for i in others for m in i.mounts)
    # The script hands build_engine the file's path, never the token itself.
    script = (ROOT / "docker" / "build-engine.sh").read_text()
    assert '--token-file "$HF_TOKEN_FILE"' in script
    assert not re.search(r"\bHF_TOKEN=|\$\(cat", script)


# ---- the runtime's user, command and health check


def test_runtime_user_is_not_root(runtime: Stage) -> None:
    user = runtime.all("USER")[-1].value.strip()
    uid = user.split(":")[0]
    assert uid not in {"0", "root", ""}, user
    # The uid is created in the image (a numeric USER lets `runAsNonRoot` policies verify it).
    assert re.search(rf"useradd\b.*--uid {uid}\b", " ".join(run_steps(runtime))), user
    # USER comes before CMD and HEALTHCHECK, so both run as that user.
    assert runtime.index(runtime.all("USER")[-1]) < runtime.index(runtime.one("CMD"))


def gunicorn_settings() -> dict:
    return runpy.run_path(str(ROOT / "gunicorn.conf.py"))


def test_cmd_runs_the_serve_entry_on_port_80(runtime: Stage) -> None:
    argv = runtime.one("CMD").exec_form
    # What scripts/serve.sh runs: nginx on the port, gunicorn with gunicorn.conf.py behind it.
    assert argv == ["python", "-m", "app.serve", "--bind", "0.0.0.0:80"], (
        "settings belong in gunicorn.conf.py and app/config.py, not on the command line"
    )
    assert "-m app.serve --bind" in (ROOT / "scripts" / "serve.sh").read_text()
    serve = (ROOT / "app" / "serve.py").read_text()
    assert '"-c", "gunicorn.conf.py"' in serve and '"wsgi:app"' in serve
    assert runtime.all("WORKDIR")[-1].value == "/app"
    assert runtime.one("EXPOSE").value.split() == ["80"]
    settings = gunicorn_settings()
    assert settings["workers"] == 1, "one process owns the model on the GPU"
    assert settings["preload_app"] is False, "CUDA contexts do not survive fork()"
    assert settings["control_socket_disable"] is True, "gunicornc could add workers, each loading the model"


def test_stop_signal_drains_within_the_documented_docker_stop_time(runtime: Stage) -> None:
    from app.config import Settings
    from app.serve import EXIT_GRACE_S

    assert runtime.one("STOPSIGNAL").value.strip() == "SIGTERM"
    assert gunicorn_settings()["graceful_timeout"] == Settings().drain_timeout
    needed = Settings().drain_timeout + EXIT_GRACE_S
    for text in ((ROOT / "README.md").read_text(), (ROOT / "Dockerfile").read_text()):
        times = [int(t) for t in re.findall(r"docker stop --time (\d+)", text)]
        assert times and all(t >= needed for t in times), f"docker stop --time {times} < DRAIN_TIMEOUT + {EXIT_GRACE_S}"


def test_runtime_installs_nginx(df: Dockerfile) -> None:
    for backend in BACKENDS:
        out = subprocess.run(["bash", str(ROOT / "docker" / "system-packages.sh"), "runtime", "--print"],
                             env={"BACKEND": backend, "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, check=True)
        assert "nginx" in out.stdout.split(), backend


def test_runtime_env_offloads_every_layer(runtime: Stage) -> None:
    env = dict(re.findall(r"(\w+)=(\S*)", runtime.one("ENV").value))
    assert env["N_GPU_LAYERS"] == "-1"
    assert env["MODEL_PATH"] == "/engine/model.gguf"
    from app.config import Settings

    # Every variable the image sets that looks like a server setting is one the server reads.
    fields = {f.upper() for f in Settings.__dataclass_fields__} | {"SEED"}
    for name in env:
        if name not in {"PATH", "PYTHONUNBUFFERED"}:
            assert name in fields, f"ENV {name} is not a setting of app/config.py"


def test_healthcheck_calls_the_health_route_on_the_cmd_port(runtime: Stage) -> None:
    hc = runtime.one("HEALTHCHECK")
    argv = hc.exec_form
    assert argv[:2] == ["python", "docker/healthcheck.py"]
    url = argv[2]
    m = re.fullmatch(r"http://127\.0\.0\.1:(\d+)(/\S*)", url)
    assert m, url
    bind = runtime.one("CMD").exec_form[runtime.one("CMD").exec_form.index("--bind") + 1]
    assert m.group(1) == bind.rsplit(":", 1)[1], f"HEALTHCHECK port {m.group(1)} is not the bound port ({bind})"
    assert m.group(2) == "/health"
    assert "/health" in app_routes(), "the app has no /health route"
    flags = hc.flags
    # Loading a 7B engine takes time; the check must not kill the container before it is up.
    assert int(flags["start-period"].rstrip("s")) >= 120, flags


class _IdleEngine:
    """Stands in for the engine so the app's URL map can be read without loading a model."""

    def start(self) -> "_IdleEngine":
        return self


def app_routes() -> set[str]:
    """URL rules the real app registers, built by the same factory wsgi.py calls."""
    assert "create_app" in (ROOT / "wsgi.py").read_text(), "wsgi.py builds the app with create_app"
    from app import create_app

    flask_app = create_app({"ENGINE_FACTORY": lambda settings: _IdleEngine()})
    return {rule.rule for rule in flask_app.url_map.iter_rules()}


# ---- .dockerignore


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        "venv/lib/python3.11/site-packages/x.py",
        "models/smollm2-135m-instruct/smollm2-135m-instruct-Q4_1.gguf",
        "models/mistral-7b/mistral-7b-Q4_K_M.gguf",
        "models/mistral-7b/hf/model-00001-of-00002.safetensors",
        ".cache/test-checkpoints/x/model.safetensors",
        ".cache/llama-cpp-sdist/0.3.36/llama.cpp/convert_hf_to_gguf.py",
        ".git/HEAD",
        ".pytest_cache/v/cache/nodeids",
        ".hypothesis/examples/x",
        "app/__pycache__/config.cpython-311.pyc",
        "build_engine/__pycache__/specs.cpython-311.pyc",
        "benchmarks/results/run.json",
        "build/engine.gguf",
        "tests/docker/test_dockerfile.py",
    ],
)
def test_dockerignore_keeps_heavy_and_local_files_out(path: str) -> None:
    assert is_ignored(path, ignore_rules()), f"{path} would be sent to the Docker daemon"


@pytest.mark.parametrize(
    "path", ["app/config.py", "build_engine/specs.py", "models/specs/smollm2-135m-instruct.json", "gunicorn.conf.py"]
)
def test_dockerignore_keeps_what_the_image_needs(path: str) -> None:
    assert not is_ignored(path, ignore_rules())
