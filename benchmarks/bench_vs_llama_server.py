"""Our server against llama.cpp's own llama-server, same GGUF, same threads, same context, one run.

    python benchmarks/bench_vs_llama_server.py [--model PATH] [--threads 2] [--rows decode64,helm16,...]

llama-server is built from the llama.cpp tree vendored in the pinned llama-cpp-python sdist
(pip download; cached in .cache/). Prints one table: wall times, ours/llama-server, peak RSS.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import importlib.metadata
import json
import os
import random
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
sys.path.insert(0, str(ROOT))
from app.config import DEFAULT_MODEL_PATH  # noqa: E402


# ---- building llama-server from the vendored tree ----

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
    if subprocess.run(["which", "nvcc"], capture_output=True).returncode == 0:
        flags.append("-DGGML_CUDA=ON")
    subprocess.run(["cmake", "-S", str(vendored_tree()), "-B", str(build), *flags], check=True)
    subprocess.run(["cmake", "--build", str(build), "--target", "llama-server", f"-j{os.cpu_count()}"], check=True)
    return exe


# ---- servers ----

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
    def __init__(self, name: str, cmd: list[str], env: dict[str, str], health: str) -> None:
        self.name = name
        self.port = free_port()
        cmd = [c.replace("{port}", str(self.port)) for c in cmd]
        self.log = open(CACHE / f"bench-{name}.log", "w")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **env}, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if requests.get(self.url + health, timeout=2).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{name} did not become healthy; see {self.log.name}")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)


def ours(model: Path, threads: int, n_ctx: int, parallel: int) -> Server:
    gunicorn = Path(sys.executable).with_name("gunicorn")
    env = {"MODEL_PATH": str(model), "N_THREADS": str(threads), "N_CTX": str(n_ctx), "N_PARALLEL": str(parallel)}
    return Server("ours", [str(gunicorn), "-c", "gunicorn.conf.py", "-b", "127.0.0.1:{port}", "wsgi:app"], env, "/health")


def llama_server(exe: Path, model: Path, threads: int, n_ctx: int, parallel: int) -> Server:
    # Same total KV as ours (2 * n_ctx cells, unified), same slots, prompt cache on (its default).
    cmd = [str(exe), "-m", str(model), "--host", "127.0.0.1", "--port", "{port}", "-t", str(threads), "-tb",
           str(threads), "-c", str(2 * n_ctx), "-np", str(parallel), "--kv-unified", "-b", "512", "-ub", "512",
           "--no-webui"]
    return Server("llama-server", cmd, {}, "/health")


# ---- loads (each returns wall seconds and a count of useful units) ----

def _post(url: str, body: dict) -> dict:
    r = requests.post(url, json=body, timeout=600)
    r.raise_for_status()
    return r.json()


def request(server: Server, prompt: str, n: int, stop: list[str], greedy: bool = True) -> int:
    """One generation; returns tokens generated."""
    if server.name == "ours":
        body = {"prompt": prompt, "max_new_tokens": n, "temperature": 1e-7, "top_p": 1, "num_return_sequences": 1,
                "top_k_per_token": 1, "echo_prompt": False, "stop_sequences": stop}
        return len(_post(server.url + "/process", body)["tokens"])
    body = {"prompt": prompt, "n_predict": n, "temperature": 0, "stop": stop, "cache_prompt": True, "n_probs": 1}
    return int(_post(server.url + "/completion", body)["tokens_predicted"])


def _llama_server_prompt(server: Server, text: str) -> int:
    """llama-server processes the prompt (no cached prefix) and one token; returns prompt tokens."""
    body = {"prompt": text, "n_predict": 1, "temperature": 0, "cache_prompt": False}
    return int(_post(server.url + "/completion", body)["timings"]["prompt_n"])


def score(server: Server, text: str) -> int:
    """Prompt tokens processed for one scoring request. llama-server cannot return prompt logprobs:
    it processes the prompt and one token, its prompt-processing rate is the peer."""
    if server.name == "ours":
        body = {"prompt": text, "max_new_tokens": 0, "echo_prompt": True, "temperature": 1e-7, "top_k_per_token": 1}
        return len(_post(server.url + "/process", body)["tokens"])
    return _llama_server_prompt(server, text)


def prefill(server: Server, text: str, n_prompt: int) -> int:
    """The same texts with the same work on both sides: the prompt, then one greedy token (logits at
    the last position only). Beside the scoring row it splits scoring's cost into the extra output
    rows and everything else."""
    if server.name == "ours":
        body = {"prompt": text, "max_new_tokens": 1, "temperature": 1e-7, "top_k_per_token": 1}
        _post(server.url + "/process", body)
        return n_prompt
    return _llama_server_prompt(server, text)


def run_load(server: Server, jobs: list[tuple], clients: int, fn=None) -> tuple[float, int]:
    fn = fn or request
    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(clients) as pool:
        counts = list(pool.map(lambda j: fn(server, *j), jobs))
    return time.perf_counter() - t0, sum(counts)


def scoring_texts(n: int, seed: int = 1) -> list[tuple[str]]:
    """Distinct ~200-token texts (no shared prefix: nothing to reuse)."""
    rnd = random.Random(seed)
    words = "the of a river city model court price energy cell law number history during which".split()
    return [(f"{i}. " + " ".join(rnd.choice(words) for _ in range(190)),) for i in range(n)]


def mmlu_prompts(n_per_subject: int, seed: int = 0) -> list[str]:
    """5-shot prompts of ~700 tokens, one shared few-shot prefix per subject, 4 subjects."""
    rnd = random.Random(seed)
    words = ("energy matter cell theory market price law court river mountain number proof atom "
             "state system force motion value culture history language").split()
    prompts = []
    for subject in ("biology", "economics", "law", "physics"):
        shots = ""
        for k in range(5):
            q = " ".join(rnd.choice(words) for _ in range(90))
            opts = "".join(f"\n{c}. " + " ".join(rnd.choice(words) for _ in range(6)) for c in "ABCD")
            shots += f"Question: {q}?{opts}\nAnswer: {rnd.choice('ABCD')}\n\n"
        head = f"The following are multiple choice questions (with answers) about {subject}.\n\n{shots}"
        for i in range(n_per_subject):
            q = " ".join(rnd.choice(words) for _ in range(20))
            opts = "".join(f"\n{c}. " + " ".join(rnd.choice(words) for _ in range(5)) for c in "ABCD")
            prompts.append(f"{head}Question: {q} ({i})?{opts}\nAnswer:")
    rnd.shuffle(prompts)
    return prompts


def loads_for(rep: int, mmlu_per_subject: int, n_tokens) -> dict[str, tuple[str, list[tuple], int]]:
    """The loads of one repetition, row -> (title, jobs, clients). Every row and repetition gets its
    own prompts: no server starts a row with another's prompts in its caches (llama-server's host-RAM
    prompt cache would restore them whole). n_tokens(text) counts a text's prompt tokens."""
    return {
        "decode64": ("single stream, 64-token greedy generation (tok/s)", [("Once upon a time", 64, [])], 1),
        "decode128": ("single stream, 128-token greedy generation (tok/s)", [("Once upon a time", 128, [])], 1),
        "helm16": ("16 concurrent HELM generation requests (20 tokens, stop \\n)",
                   [(f"Quiz {rep}, question {i}: what is the capital of France?\nAnswer: The capital of France is",
                     20, ["\n"])
                    for i in range(16)], 16),
        "mmlu4": ("MMLU-shaped, 5-shot ~700 tokens, max_new_tokens 1, 4 clients",
                  [(p, 1, []) for p in mmlu_prompts(mmlu_per_subject, seed=rep)], 4),
        "mmlu16": ("MMLU-shaped, 16 clients",
                   [(p, 1, []) for p in mmlu_prompts(mmlu_per_subject, seed=50 + rep)], 16),
        "gen4": ("generation: 5-shot prefixes + question, 64 tokens, stop \\n\\n, 4 clients",
                 [(p, 64, ["\n\n"]) for p in mmlu_prompts(4, seed=100 + rep)], 4),
        "score": ("scoring: echo, max_new_tokens 0, 200-token texts, 4 clients (tok/s)",
                  scoring_texts(16, seed=rep + 1), 4),
        "prefill": ("scoring-shaped texts, prompt + 1 token on both, 4 clients (prompt tok/s)",
                    [(t, n_tokens(t)) for (t,) in scoring_texts(16, seed=1000 + rep)], 4),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL_PATH)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-ctx", type=int, default=4096)
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--mmlu-per-subject", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3, help="runs per row and server; the fastest counts")
    ap.add_argument("--rows", default="decode64,decode128,helm16,mmlu4,mmlu16,gen4,score,prefill")
    args = ap.parse_args(argv)
    CACHE.mkdir(exist_ok=True)
    exe = build_llama_server()
    rows = args.rows.split(",")

    def n_tokens(text: str) -> int:
        return len(_post(servers[1].url + "/tokenize", {"text": text})["tokens"])

    # Both servers up at once; each row runs on one, then the other, `--repeat` times, and the
    # fastest run counts: load from elsewhere on the machine hits both alike and is filtered out.
    servers: list[Server] = []
    try:
        servers.append(llama_server(exe, args.model, args.threads, args.n_ctx, args.parallel))
        servers.append(ours(args.model, args.threads, args.n_ctx, args.parallel))
        for server in servers:
            request(server, "warm up", 4, [])
        # Both have 2 * n_ctx unified f16 cells; our /health states their size.
        kv = requests.get(servers[1].url + "/health", timeout=5).json()["kv_cache_bytes"] / 2**20
        loads = [loads_for(rep, args.mmlu_per_subject, n_tokens) for rep in range(args.repeat)]
        results: dict[str, dict[str, tuple[float, int]]] = {}
        for row in rows:
            fn = {"score": score, "prefill": prefill}.get(row)
            for rep in range(args.repeat):
                _, jobs, clients = loads[rep][row]
                for server in servers:
                    got = run_load(server, jobs, clients, fn)
                    best = results.setdefault(row, {}).get(server.name)
                    if best is None or got[0] < best[0]:
                        results[row][server.name] = got
        rss = {server.name: peak_rss_mib(server.proc.pid) for server in servers}
    finally:
        for server in servers:
            server.stop()
    print(f"\nmodel {args.model.name}, {args.threads} threads, n_ctx {args.n_ctx}, {args.parallel} parallel sequences, "
          f"best of {args.repeat}")
    print(f"{'load':<66} {'ours':>10} {'llama-srv':>10} {'ours/llama':>10}")
    for row in rows:
        title = loads[0][row][0]
        (wo, no), (wl, nl) = results[row]["ours"], results[row]["llama-server"]
        if row in ("decode64", "decode128", "score", "prefill"):
            print(f"{title:<66} {no / wo:>10.1f} {nl / wl:>10.1f} {(no / wo) / (nl / wl):>10.2f}")
        else:
            print(f"{title + ' (wall s)':<66} {wo:>10.2f} {wl:>10.2f} {wo / wl:>10.2f}")
    print(f"{'peak RSS (MiB)':<66} {rss['ours']:>10.0f} {rss['llama-server']:>10.0f} {rss['ours'] / rss['llama-server']:>10.2f}")
    gguf = args.model.stat().st_size / 2**20
    print(f"RSS budget: GGUF {gguf:.0f} MiB + KV cache {kv:.0f} MiB + 250 MiB = {gguf + kv + 250:.0f} MiB; "
          f"ours uses {rss['ours']:.0f} MiB")
    print(json.dumps({"results": results, "peak_rss_mib": rss}))


if __name__ == "__main__":
    main()
