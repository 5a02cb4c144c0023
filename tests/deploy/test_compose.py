"""Ring 1: the multi-GPU compose file and the proxy config it mounts, checked offline (no Docker
engine here: the YAML is parsed and held to the image, the server's settings and HAProxy's own
config check)."""
from __future__ import annotations

import re
import subprocess

import pytest
import yaml

from app.config import Settings
from tests.deploy.manifests import ROOT, settings_vars
from tests.docker.dockerfile_model import load as load_dockerfile
from tests.fleet.haproxy import SHIPPED, haproxy_binary

COMPOSE = ROOT / "deploy" / "compose" / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _gpus(service: dict) -> list[str]:
    (device,) = service["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    return device["device_ids"]


def _replicas(compose: dict) -> dict[str, dict]:
    """The services started by a plain `docker compose up`, other than the proxy."""
    return {n: s for n, s in compose["services"].items() if n != "proxy" and not s.get("profiles")}


def _image_port() -> int:
    (port,) = load_dockerfile().stage("runtime").one("EXPOSE").value.split()
    return int(port)


def test_one_replica_per_gpu(compose):
    replicas = _replicas(compose)
    assert len(replicas) >= 2
    gpus = [_gpus(s) for s in replicas.values()]
    assert all(len(g) == 1 for g in gpus), "each replica reserves exactly one GPU"
    assert sorted(int(g[0]) for g in gpus) == list(range(len(replicas))), "GPUs 0..N-1, none shared"
    for name, service in replicas.items():
        # The reserved GPU is device 0 inside the container: a CUDA_VISIBLE_DEVICES=N there would hide it.
        assert "CUDA_VISIBLE_DEVICES" not in service.get("environment", {}), name
        assert "ports" not in service, f"{name} is reached through the proxy only"
        assert service["image"] == replicas[next(iter(replicas))]["image"]


def test_replicas_build_this_repository_with_valid_settings(compose):
    dockerfile_args = set(re.findall(r"^ARG (\w+)", (ROOT / "Dockerfile").read_text(), re.M))
    for name, service in compose["services"].items():
        if name == "proxy":
            continue
        build = service["build"]
        assert (COMPOSE.parent / build["context"]).resolve() == ROOT and (ROOT / "Dockerfile").is_file()
        assert set(build["args"]) <= dockerfile_args, f"{name}: unknown build args {set(build['args']) - dockerfile_args}"
        unknown = set(service["environment"]) - settings_vars()
        assert not unknown, f"{name}: not server settings: {unknown}"
        Settings.from_env({k: str(v) for k, v in service["environment"].items()})  # and valid values


def test_split_replica_spans_its_gpus(compose):
    split = compose["services"]["split"]
    assert split["profiles"] == ["split"], "not started with the per-GPU replicas (same GPUs)"
    s = Settings.from_env(split["environment"])
    assert s.split_mode in ("layer", "row") and len(s.tensor_split) == len(_gpus(split)) > 1
    assert s.main_gpu < len(_gpus(split))


def test_proxy_mounts_the_shipped_config_and_knows_every_replica(compose):
    proxy = compose["services"]["proxy"]
    (mount,) = proxy["volumes"]
    source, target, mode = mount.split(":")
    assert (COMPOSE.parent / source).resolve() == SHIPPED and target == "/usr/local/etc/haproxy/haproxy.cfg"
    assert mode == "ro" and proxy["image"].startswith("haproxy:2.6")  # the version tested here
    servers = re.findall(r"^\s*server (\S+) (\S+)", SHIPPED.read_text(), re.M)
    assert [name for name, _ in servers] == list(_replicas(compose))
    assert all(addr == f"{name}:{_image_port()}" for name, addr in servers)
    binds = re.findall(r"^\s*bind :(\d+)", SHIPPED.read_text(), re.M)
    published = [p.split("#")[0].strip().split(":")[1] for p in proxy["ports"]]
    assert sorted(binds) == sorted(published)


def test_shipped_proxy_config_passes_haproxys_check():
    check = subprocess.run([haproxy_binary(), "-c", "-f", str(SHIPPED)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_proxy_policy():
    cfg = SHIPPED.read_text()
    lines = {line.strip() for line in cfg.splitlines()}
    # Affinity on the body's head, kept when replicas come and go, bounded in skew.
    assert {"option http-buffer-request", "balance hash req.body,bytes(0,256)", "hash-type consistent"} <= lines
    assert int(re.search(r"hash-balance-factor (\d+)", cfg).group(1)) >= 125
    # Replays: refused or dropped connections and 503 (loading, draining), each on another replica.
    retry_on = re.search(r"^\s*retry-on (.+)$", cfg, re.M).group(1).split()
    assert {"conn-failure", "empty-response", "503"} <= set(retry_on) and "response-timeout" not in retry_on
    assert "option redispatch 1" in lines
    # A request is replayable only when whole in one buffer: a 4096-token HELM prompt is ~20 KB.
    assert int(re.search(r"tune\.bufsize (\d+)", cfg).group(1)) >= 32768
    # Health: the server's real route, 200 only when ready.
    assert "option httpchk GET /health" in lines and "http-check expect status 200" in lines
    assert int(re.search(r"timeout server (\d+)s", cfg).group(1)) >= 300, "long generations"


def test_replicas_get_their_drain(compose):
    from app import serve

    need = Settings.from_env({}).drain_timeout + serve.EXIT_GRACE_S + serve.NGINX_STOP_S
    for name, service in _replicas(compose).items():
        assert int(service["stop_grace_period"].rstrip("s")) >= need, name
