"""Our server against llama.cpp's own llama-server at its defaults, same GGUF and threads, one run.

    python benchmarks/bench_vs_llama_server.py [--model PATH] [--threads 2] [--parallel 4]
        [--rows decode,mmlu,gen,occupancy,helm] [--repeat 2]

How each server is started (printed again with the table):
- ours: gunicorn -c gunicorn.conf.py with MODEL_PATH, N_THREADS, N_CTX, N_PARALLEL; everything else
  at its defaults (PREFIX_CACHE_SLOTS = N_PARALLEL, so its KV is 2 x N_PARALLEL x N_CTX cells).
- llama-server: `-m MODEL -np N_PARALLEL -c N_PARALLEL*N_CTX -t T -tb T`, nothing else: its users'
  way. That means one KV stream per slot (not unified) and its host-RAM prompt cache (8 GiB).
  It is built from the llama.cpp tree vendored in the pinned llama-cpp-python sdist. Only where it
  dies at start (AMX repack on a VM that does not allow AMX tiles) is --no-repack added; the table
  says so.
- "before": the engine as it was before per-slot KV streams (git commit BEFORE_COMMIT, checked out
  under .cache/), at its defaults; where those die as llama-server's do (AMX repack), with plain
  CPU buffers (one line in its llama.py; the table says so); "deterministic": ours with
  DETERMINISTIC=1. Both for the HELM row.
Every row draws new prompts (benchmarks/loads.py) per repetition; the faster repetition counts.
The HELM row and every MMLU cell also print the prompts' distinct prefixes (the fewest prompt tokens
any prefix cache computes for them) and the prompt tokens each server computed: ours from its
/metrics, llama-server from its answers' timings.prompt_n.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache"
sys.path.insert(0, str(ROOT))
from app.config import DEFAULT_MODEL_PATH  # noqa: E402
from benchmarks import loads  # noqa: E402
from benchmarks.servers import Server, build_llama_server, peak_rss_mib  # noqa: E402

BEFORE_COMMIT = "ac80f2b"  # main before this engine: unified KV, prefix cache in the shared cells


def ours(model: Path, args, name: str = "ours", root: Path = ROOT, **env) -> Server:
    gunicorn = Path(sys.executable).with_name("gunicorn")
    base = {"MODEL_PATH": str(model), "N_THREADS": str(args.threads), "N_CTX": str(args.n_ctx),
            "N_PARALLEL": str(args.parallel), "MAX_NUM_SAMPLES": str(min(3, args.parallel))}
    return Server(name, [str(gunicorn), "-c", "gunicorn.conf.py", "-b", "127.0.0.1:{port}", "wsgi:app"],
                  {**base, **env}, "/health", cwd=root)


def before(args) -> Server:
    """The engine at BEFORE_COMMIT, at its defaults. That commit leaves llama.cpp's extra buffer types
    on (AMX repack where the CPU has it); where that dies of an illegal instruction, as llama-server
    does, the worktree gets one line, `mparams.use_extra_bufts = False` (plain CPU buffers, as ours and
    the peer then run), and starts again. `args.before_flags` records which, for the table."""
    tree = CACHE / f"before-{BEFORE_COMMIT}"
    if not (tree / "app").exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(tree), BEFORE_COMMIT], check=True)
    source = tree / "app/engine/llama.py"
    subprocess.run(["git", "-C", str(tree), "checkout", "--", "app/engine/llama.py"], check=True)

    def plain_buffers() -> Server:
        anchor = "        self.model = llama_cpp.llama_model_load_from_file("
        text = source.read_text()
        assert anchor in text, f"{source} changed: cannot turn off extra buffer types"
        source.write_text(text.replace(anchor, "        mparams.use_extra_bufts = False\n" + anchor, 1))
        return ours(args.model, args, "before", tree)

    server, died = at_defaults(lambda: ours(args.model, args, "before", tree), warm_up, plain_buffers,
                               "the engine before")
    args.before_flags = " with use_extra_bufts = False (it died at its defaults: AMX repack, illegal instruction)" if died else ""
    return server


def llama_server(exe: Path, model: Path, args) -> Server:
    """At its defaults. Only if it dies at start (llama.cpp's default repacks weights for AMX on a CPU
    that has it; where the VM does not let a process use AMX tiles, the warm-up dies of an illegal
    instruction) is it started again with --no-repack: weights in plain CPU buffers, as ours keeps
    them (CPU_REPACK=0). `args.peer_flags` records which, for the table."""
    cmd = [str(exe), "-m", str(model), "--host", "127.0.0.1", "--port", "{port}", "-np", str(args.parallel),
           "-c", str(args.parallel * args.n_ctx), "-t", str(args.threads), "-tb", str(args.threads)]
    server, died = at_defaults(lambda: Server("llama-server", cmd, {}, "/health"), lambda s: generate(s, "warm up", 4),
                               lambda: Server("llama-server", cmd + ["--no-repack"], {}, "/health"), "llama-server")
    args.peer_flags = " --no-repack (it died at its defaults: AMX repack, illegal instruction)" if died else ""
    return server


def at_defaults(start, warm, fallback, what: str) -> tuple[Server, bool]:
    """start(), then warm(server): that server and False; where it dies doing so, it is stopped and
    fallback() starts the other way: that server and True."""
    server = None
    try:
        server = start()
        warm(server)
        return server, False
    except (RuntimeError, requests.RequestException) as exc:
        print(f"{what} did not serve at its defaults ({exc}); again with plain CPU buffers", flush=True)
        if server is not None:
            server.stop()
    return fallback(), True


def warm_up(server: Server) -> None:
    post(server.url + "/process", {"prompt": "warm up", "max_new_tokens": 2})


def post(url: str, body: dict) -> dict:
    r = requests.post(url, json=body, timeout=900)
    r.raise_for_status()
    return r.json()


def generate(server: Server, prompt: str, n: int, stop: list[str] = ()) -> int:
    """One greedy generation; returns tokens generated."""
    if server.name != "llama-server":
        body = {"prompt": prompt, "max_new_tokens": n, "temperature": 1e-7, "top_k_per_token": 1,
                "stop_sequences": list(stop)}
        return len(post(server.url + "/process", body)["tokens"])
    body = {"prompt": prompt, "n_predict": n, "temperature": 0, "stop": list(stop), "n_probs": 1}
    out = post(server.url + "/completion", body)
    with _peer_lock:  # the prompt tokens it computed (its /metrics is off at its defaults)
        _peer_prompt_n[server.name] = _peer_prompt_n.get(server.name, 0) + int(out["timings"]["prompt_n"])
    return int(out["tokens_predicted"])


_peer_lock = threading.Lock()
_peer_prompt_n: dict[str, int] = {}  # llama-server: the sum of every answer's timings.prompt_n


def computed_so_far(server: Server) -> int | None:
    """Prompt tokens the server has computed since it started: llama-server's answers say so
    (timings.prompt_n); ours and DETERMINISTIC=1 count them in /metrics; the engine before: None."""
    if server.name == "llama-server":
        with _peer_lock:
            return _peer_prompt_n.get(server.name, 0)
    return computed_tokens(server)


def wall(fn, items, clients: int) -> float:
    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(clients) as pool:
        list(pool.map(fn, items))
    return time.perf_counter() - t0


def warm(server: Server, seed: int, n: int) -> None:
    """Fill the server's caches with unrelated prompts first."""
    wall(lambda p: generate(server, p, 1), loads.unrelated(seed, n), 4)


def row_decode(servers, args, rep):
    out = {}
    for s in servers:
        t = wall(lambda _: generate(s, f"Story {rep}: Once upon a time", 128), [0], 1)
        out[s.name] = 128 / t  # tok/s (both run the full 128: no stop)
    return out


def row_mmlu(servers, args, rep, subjects, clients):
    """Wall times of one cell; `args.cells` gets its (floor, {server: prompt tokens computed})."""
    out, computed = {}, {}
    prompts = loads.mmlu(rep * 1000 + subjects * 10 + clients, subjects=subjects, n=args.mmlu_n)
    for s in servers:
        warm(s, 7000 + rep * 100 + subjects * 10 + clients, 2 * args.parallel)
        before_cell = computed_so_far(s)
        out[s.name] = wall(lambda p: generate(s, p, 1), prompts, clients)
        computed[s.name] = computed_so_far(s) - before_cell
    ours_server = next(s for s in servers if s.name == "ours")
    args.cells.append((rep, subjects, clients, prompt_floor(ours_server, prompts)[1], computed))
    return out


def row_gen(servers, args, rep):
    out = {}
    for s in servers:
        prompts = loads.mmlu(50_000 + rep, subjects=4, n=16)
        out[s.name] = wall(lambda p: generate(s, p, 64, ["\n\n"]), prompts, args.parallel)
    return out


def row_occupancy(servers, args, rep):
    """Latency of a fresh ~800-token request with the caches empty-ish, then full of unrelated
    entries; the ratio full / empty per server."""
    out = {}
    for s in servers:
        a, b = loads.unrelated(90_000 + rep, 2, sentences=78)  # ~800 tokens each
        t_empty = wall(lambda p: generate(s, p, 1), [a], 1)
        warm(s, 91_000 + rep, 3 * args.parallel)
        t_full = wall(lambda p: generate(s, p, 1), [b], 1)
        out[s.name] = t_full / t_empty
    return out


def row_helm(servers, args, rep):
    bodies = loads.helm_mix(70_000 + rep)
    return {s.name: wall(lambda b: post(s.url + "/process", b), bodies, 16) for s in servers}


def metric_totals(text: str) -> dict[str, float]:
    """The counters (`..._total` samples) of a Prometheus text page, summed over their labels."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_total"):
                out[sample.name] = out.get(sample.name, 0.0) + sample.value
    return out


def computed_tokens(server: Server) -> int | None:
    """Prompt tokens the server has computed since it started: all it was sent, less prefix-cache
    hits, from its /metrics; None for a server without /metrics (the engine before)."""
    r = requests.get(server.url + "/metrics", timeout=10)
    if r.status_code == 404:
        return None
    r.raise_for_status()
    total = metric_totals(r.text)
    return int(total["vllm:prompt_tokens_total"] - total["vllm:prefix_cache_hits_total"])


def prompt_floor(server: Server, prompts: list[str]) -> tuple[int, int]:
    """(tokens, distinct prefixes) of the prompts as the server tokenizes them (loads.prefix_floor)."""
    return loads.prefix_floor([post(server.url + "/tokenize", {"text": p})["tokens"] for p in prompts])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL_PATH)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-ctx", type=int, default=4096)
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--mmlu-n", type=int, default=24, help="requests per MMLU cell")
    ap.add_argument("--matrix", default="1,4,16", help="subject and client counts of the MMLU matrix")
    ap.add_argument("--repeat", type=int, default=2, help="repetitions per row; the fastest counts")
    ap.add_argument("--rows", default="decode,mmlu,gen,occupancy,helm")
    args = ap.parse_args(argv)
    args.model = args.model.resolve()  # the "before" server runs from another directory
    args.cells = []  # MMLU cells: (repetition, subjects, clients, floor, prompt tokens computed per server)
    CACHE.mkdir(exist_ok=True)
    rows = args.rows.split(",")
    sizes = [int(x) for x in args.matrix.split(",")]
    results: dict[str, dict[str, float]] = {}

    def keep(key, got, lower=True):
        print(f"  {key}: " + ", ".join(f"{n} {v:.2f}" for n, v in got.items()), flush=True)  # progress
        for name, v in got.items():
            best = results.setdefault(key, {}).get(name)
            if best is None or (v < best if lower else v > best):
                results[key][name] = v

    peers = [llama_server(build_llama_server(), args.model, args), ours(args.model, args)]
    rss, kv = {}, requests.get(peers[1].url + "/health", timeout=5).json()["kv_cache_bytes"] / 2**20
    try:
        for s in peers:
            generate(s, "warm up", 4)
        for rep in range(args.repeat):
            if "occupancy" in rows:  # first: right after start the caches are as empty as they get
                keep("800-token request, cache full / cache empty (ratio)", row_occupancy(peers, args, rep))
            if "decode" in rows:
                keep("single-stream decode, 128 tokens (tok/s)", row_decode(peers, args, rep), lower=False)
            if "mmlu" in rows:
                for subjects in sizes:
                    for clients in sizes:
                        keep(f"MMLU-shaped, {subjects} subjects, {clients} clients (wall s)",
                             row_mmlu(peers, args, rep, subjects, clients))
            if "gen" in rows:
                keep(f"generation: 5-shot prefix + question, 64 tokens, {args.parallel} clients (wall s)",
                     row_gen(peers, args, rep))
        rss = {s.name: peak_rss_mib(s.proc.pid) for s in peers}
    finally:
        for s in peers:
            s.stop()
    computed: dict[str, list[int]] = {}  # HELM mix: prompt tokens each server computed, per repetition
    floor: list[tuple[int, int]] = []  # HELM mix: (tokens sent, distinct prefixes), per repetition
    if "helm" in rows:  # ours vs the engine before, vs DETERMINISTIC=1 (llama-server has no echo)
        for server in (lambda: ours(args.model, args), lambda: before(args),
                       lambda: ours(args.model, args, "deterministic", DETERMINISTIC="1")):
            s = server()
            try:
                warm_up(s)
                for rep in range(args.repeat):
                    before_rep = computed_tokens(s)
                    keep("HELM-shaped mix, 32 requests, 16 clients (wall s)", row_helm([s], args, rep))
                    if before_rep is not None:
                        computed.setdefault(s.name, []).append(computed_tokens(s) - before_rep)
                if not floor:
                    floor = [prompt_floor(s, [b["prompt"] for b in loads.helm_mix(70_000 + rep)])
                             for rep in range(args.repeat)]
            finally:
                s.stop()
    print(f"\nmodel {args.model.name}, {args.threads} threads, N_CTX {args.n_ctx}, N_PARALLEL {args.parallel}, "
          f"best of {args.repeat}")
    print("ours: gunicorn, MODEL_PATH N_THREADS N_CTX N_PARALLEL set, the rest default; llama-server: "
          f"-np {args.parallel} -c {args.parallel * args.n_ctx} -t {args.threads} -tb {args.threads}{args.peer_flags}, "
          "the rest default")
    if "helm" in rows:
        print(f"before: git {BEFORE_COMMIT} at its defaults{args.before_flags}; deterministic: ours with DETERMINISTIC=1")
    print(f"{'load':<72} {'ours':>9} {'peer':>9} {'ratio':>7}  peer")
    for key, got in results.items():
        peer_names = [n for n in got if n != "ours"]
        for peer in peer_names:
            ratio = got["ours"] / got[peer]
            print(f"{key:<72} {got['ours']:>9.2f} {got[peer]:>9.2f} {ratio:>7.2f}  {peer}")
        if not peer_names:
            print(f"{key:<72} {got['ours']:>9.2f}")
    for rep, (sent, distinct) in enumerate(floor):
        print(f"HELM mix, repetition {rep + 1}: {sent} prompt tokens, {distinct} distinct prefixes (the fewest any "
              "prefix cache computes); computed: " + ", ".join(f"{n} {c[rep]}" for n, c in computed.items()))
    for rep, subjects, clients, cell_floor, got in args.cells:
        print(f"MMLU cell {subjects} x {clients}, repetition {rep + 1}: distinct prefixes (the floor) {cell_floor}; "
              "prompt tokens computed: " + ", ".join(f"{n} {c}" for n, c in got.items()))
    if rss:
        gguf = args.model.stat().st_size / 2**20
        print(f"peak RSS: ours {rss['ours']:.0f} MiB, llama-server {rss['llama-server']:.0f} MiB; budget GGUF "
              f"{gguf:.0f} + KV {kv:.0f} + 250 = {gguf + kv + 250:.0f} MiB")
    print(json.dumps({"results": results, "peak_rss_mib": rss, "helm_computed_tokens": computed,
                      "helm_prompt_floor": floor, "mmlu_cells": args.cells}))


if __name__ == "__main__":
    main()
