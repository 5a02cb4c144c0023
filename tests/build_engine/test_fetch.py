"""The fetch step against a loopback stand-in for the hub (HF_ENDPOINT), run as the CLI a Dockerfile runs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.build_engine.fake_hub import FakeHub, HubServer, Repo

pytestmark = pytest.mark.build
ROOT = Path(__file__).resolve().parents[2]
OLD, NEW = "a" * 40, "b" * 40  # two commits of the same repo; main points at NEW


def serve(folder: Path):
    """A hub with acme/smol (two commits, plus files conversion does not need) and a gated copy."""
    state = FakeHub()
    state.add_folder("acme/smol", OLD, folder, branch=None, extra={"README.md": b"old"})
    state.add_folder("acme/smol", NEW, folder, extra={"README.md": b"new", "pytorch_model.bin": b"x" * 64,
                                                      "original/consolidated.00.pth": b"y" * 64})
    state.repos["acme/gated"] = Repo(dict(state.repos["acme/smol"].commits), {"main": NEW}, gated=True)
    return HubServer(state)


@pytest.fixture
def hub(tmp_path_factory: pytest.TempPathFactory):
    """The hub serving a stand-in checkpoint (32 MiB of weights: over two of the client's 10 MB read chunks)."""
    folder = tmp_path_factory.mktemp("small-ckpt")
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (folder / "tokenizer.json").write_text("{}")
    (folder / "tokenizer_config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(os.urandom(32 << 20))
    with serve(folder) as server:
        yield server


@pytest.fixture
def real_hub(hf_checkpoint: Path):
    """The hub serving the real SmolLM2 checkpoint."""
    with serve(hf_checkpoint) as server:
        yield server


def run(module: str, *args: str, server: HubServer | None, home: Path, token: str = "",
        offline: bool = False) -> subprocess.CompletedProcess:
    """Run ``python -m module args`` with the hub cache in ``home`` and the hub at ``server``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(home), HF_TOKEN=token, HF_HUB_DISABLE_TELEMETRY="1",
               HF_ENDPOINT=server.url if server else "http://127.0.0.1:9", HF_HUB_OFFLINE="1" if offline else "0")
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def fetch(*args: str, **kw) -> subprocess.CompletedProcess:
    return run("build_engine.fetch", *args, "--token-file", "/nonexistent/token", **kw)


def snapshot(home: Path, repo: str, commit: str) -> Path:
    return home / "hub" / f"models--{repo.replace('/', '--')}" / "snapshots" / commit


def test_a_pinned_revision_fetches_that_commit_and_only_what_conversion_needs(hub: HubServer, tmp_path: Path) -> None:
    got = fetch("--repo", "acme/smol", "--revision", OLD, server=hub, home=tmp_path)
    assert got.returncode == 0, got.stderr
    folder = snapshot(tmp_path, "acme/smol", OLD)
    assert str(folder) in got.stdout and f"commit {OLD}" in got.stdout
    names = {p.name for p in folder.iterdir()}
    assert names == {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"}
    assert "README.md" not in names  # only the files conversion reads

    main = fetch("--repo", "acme/smol", server=hub, home=tmp_path)  # a branch resolves to its commit
    assert main.returncode == 0, main.stderr
    assert f"commit {NEW}" in main.stdout
    assert {p.name for p in snapshot(tmp_path, "acme/smol", NEW).iterdir()}.isdisjoint(
        {"README.md", "pytorch_model.bin", "original"})  # safetensors present: no .bin, no originals


def test_a_prepared_cache_is_used_offline(hub: HubServer, tmp_path: Path) -> None:
    assert fetch("--repo", "acme/smol", "--revision", OLD, server=hub, home=tmp_path).returncode == 0
    offline = fetch("--repo", "acme/smol", "--revision", OLD, server=None, home=tmp_path, offline=True)
    assert offline.returncode == 0, offline.stderr
    assert f"commit {OLD}" in offline.stdout
    missing = fetch("--repo", "acme/smol", "--revision", NEW, server=None, home=tmp_path, offline=True)
    assert missing.returncode == 1
    assert f"cannot fetch acme/smol@{NEW}" in missing.stderr and "Traceback" not in missing.stderr


def test_a_gated_repo_needs_a_token(hub: HubServer, tmp_path: Path) -> None:
    denied = fetch("--repo", "acme/gated", server=hub, home=tmp_path)
    assert denied.returncode == 1
    assert "acme/gated is a gated repo" in denied.stderr and "Traceback" not in denied.stderr
    assert fetch("--repo", "acme/gated", server=hub, home=tmp_path, token="hf_test").returncode == 0


def test_the_token_can_come_from_a_file(hub: HubServer, tmp_path: Path) -> None:
    token_file = tmp_path / "hf_token"  # what a BuildKit secret mount looks like
    token_file.write_text("hf_from_file\n")
    got = run("build_engine.fetch", "--repo", "acme/gated", "--token-file", str(token_file), server=hub,
              home=tmp_path / "home")
    assert got.returncode == 0, got.stderr


@pytest.mark.parametrize("repo, revision, message", [
    ("acme/missing", "main", "hub repo acme/missing does not exist"),
    ("acme/smol", "c" * 40, f"revision '{'c' * 40}' does not exist in acme/smol"),
])
def test_a_missing_repo_or_revision_is_named(hub: HubServer, tmp_path: Path, repo: str, revision: str,
                                             message: str) -> None:
    got = fetch("--repo", repo, "--revision", revision, server=hub, home=tmp_path)
    assert got.returncode == 1
    assert message in got.stderr and "Traceback" not in got.stderr


def test_an_interrupted_download_fails_clearly_and_the_rerun_resumes(hub: HubServer, tmp_path: Path) -> None:
    hub.hub.broken.add("model.safetensors")  # drops half-way, then answers 500
    broken = fetch("--repo", "acme/smol", "--revision", OLD, server=hub, home=tmp_path)
    assert broken.returncode == 1
    assert f"downloading acme/smol@{OLD} was interrupted" in broken.stderr
    assert "run the same command again" in broken.stderr
    ranges = [r for m, p, r in hub.hub.log if m == "GET" and p.endswith("model.safetensors") and r]
    assert ranges, "huggingface_hub resumed the dropped transfer with a Range request"

    hub.hub.broken.clear()
    hub.hub.log.clear()
    again = fetch("--repo", "acme/smol", "--revision", OLD, server=hub, home=tmp_path)
    assert again.returncode == 0, again.stderr
    fetched = {p.rsplit("/", 1)[1] for m, p, r in hub.hub.log if m == "GET" and "/resolve/" in p}
    assert fetched == {"model.safetensors"}, "files finished before the interruption are not downloaded again"


@pytest.mark.slow
def test_the_whole_pipeline_from_the_hub_records_the_commit(real_hub: HubServer, tmp_path: Path) -> None:
    out = tmp_path / "models" / "smol"
    got = run("build_engine", "--model", "acme/smol", "--revision", OLD, "--quant", "Q8_0", "--no-eval",
              "--out", str(out), "--token-file", "/nonexistent/token", server=real_hub, home=tmp_path / "home")
    assert got.returncode == 0, got.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"] == {"kind": "hub", "id": "acme/smol", "revision": OLD, "requested_revision": OLD}
    assert (out / "smol-Q8_0.gguf").is_file() and str(out / "smol-Q8_0.gguf") in got.stdout
