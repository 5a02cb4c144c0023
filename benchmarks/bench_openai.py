"""lm-eval's loglikelihood load through /v1/completions against the same scoring through /process, one run.

    python benchmarks/bench_openai.py [--threads 2] [--questions 8] [--batch 32] [--repeat 3]

llama-server cannot answer this load (it refuses echo on /v1/completions), so the peer is our own
/process, as HELM sends it. The load is a multiple-choice task as lm-eval's local-completions sends
it: each question's few-shot context + " A" ... " D", tokenized (our /tokenize, as lm-eval's remote
tokenizer does) before the clock starts, then `--batch` token-id prompts per call, one call at a time
(num_concurrent=1), each {"max_tokens": 1, "echo": true, "logprobs": 1, "temperature": 0}. /process
gets the same texts, one request each, {"max_new_tokens": 0, "echo_prompt": true}, from `--batch`
concurrent clients. Each side and repetition gets its own texts (no prefix-cache help across rows);
the sides alternate; the fastest repetition counts. Prints wall seconds, scored tokens/s and the ratio.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import random
import sys
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_vs_llama_server as base  # noqa: E402 - the server runner and the MMLU-shaped prompts

LETTERS = "ABCD"


def mc_items(questions: int, seed: int) -> list[tuple[str, str]]:
    """(context, continuation) pairs: 2 subjects, a 3-shot context each, `questions` questions per
    subject, 4 answer letters each, in the order lm-eval sends them (longest first)."""
    rnd = random.Random(seed)
    words = ("energy matter cell theory market price law court river mountain number proof atom state system "
             "force motion value culture history language").split()
    items = []
    for subject in ("biology", "law"):
        shots = ""
        for _ in range(3):
            q = " ".join(rnd.choice(words) for _ in range(40))
            opts = "".join(f"\n{c}. " + " ".join(rnd.choice(words) for _ in range(5)) for c in LETTERS)
            shots += f"Question: {q}?{opts}\nAnswer: {rnd.choice(LETTERS)}\n\n"
        head = f"The following are multiple choice questions (with answers) about {subject} ({seed}).\n\n{shots}"
        for i in range(questions):
            q = " ".join(rnd.choice(words) for _ in range(15))
            opts = "".join(f"\n{c}. " + " ".join(rnd.choice(words) for _ in range(4)) for c in LETTERS)
            items += [(f"{head}Question: {q} ({i})?{opts}\nAnswer:", f" {c}") for c in LETTERS]
    return sorted(items, key=lambda it: -len(it[0] + it[1]))


def tokenize(url: str, text: str) -> list[int]:
    r = requests.post(url + "/tokenize", json={"prompt": text, "add_special_tokens": False}, timeout=60)
    r.raise_for_status()
    return r.json()["tokens"]


def via_openai(url: str, items: list[tuple[str, str]], batch: int) -> tuple[float, int]:
    """lm-eval's local-completions: batches of token-id prompts, one call at a time."""
    prompts = [tokenize(url, ctx + cont) for ctx, cont in items]  # lm-eval tokenizes before it sends
    t0 = time.perf_counter()
    scored = 0
    for i in range(0, len(prompts), batch):
        body = {"model": None, "prompt": prompts[i : i + batch], "temperature": 0, "max_tokens": 1, "logprobs": 1,
                "seed": 1234, "echo": True}
        r = requests.post(url + "/v1/completions", json=body, timeout=600)
        r.raise_for_status()
        scored += sum(len(c["logprobs"]["tokens"]) - 1 for c in r.json()["choices"])
    return time.perf_counter() - t0, scored


def via_process(url: str, items: list[tuple[str, str]], clients: int) -> tuple[float, int]:
    """HELM's scoring request for each text, `clients` at a time."""
    def one(text: str) -> int:
        body = {"prompt": text, "max_new_tokens": 0, "echo_prompt": True, "temperature": 1e-7, "top_k_per_token": 1}
        r = requests.post(url + "/process", json=body, timeout=600)
        r.raise_for_status()
        return len(r.json()["tokens"])

    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(clients) as pool:
        scored = sum(pool.map(one, [ctx + cont for ctx, cont in items]))
    return time.perf_counter() - t0, scored


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=base.DEFAULT_MODEL_PATH)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-ctx", type=int, default=4096)
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--questions", type=int, default=4, help="questions per subject (2 subjects, 4 choices each)")
    ap.add_argument("--batch", type=int, default=32, help="lm-eval's --batch_size; /process gets as many clients")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    base.CACHE.mkdir(exist_ok=True)

    server = base.ours(args.model, args.threads, args.n_ctx, args.parallel)
    best: dict[str, tuple[float, int]] = {}
    try:
        via_process(server.url, mc_items(1, seed=999), 4)  # warm-up, its own texts
        for rep in range(args.repeat):
            sides = [("openai", via_openai, args.batch), ("process", via_process, args.batch)]
            for name, fn, width in sides if rep % 2 == 0 else sides[::-1]:
                seed = 2 * rep + (name == "process")  # every side and repetition its own texts
                wall, scored = fn(server.url, mc_items(args.questions, seed), width)
                print(f"rep {rep} {name:8s} {wall:7.2f} s  {scored} tokens  {scored / wall:7.1f} tok/s", flush=True)
                if name not in best or scored / wall > best[name][1] / best[name][0]:
                    best[name] = (wall, scored)
    finally:
        server.stop()

    n = 8 * args.questions
    print(f"\nlm-eval loglikelihood load: {n} prompts (2 subjects x {args.questions} questions x 4 choices), "
          f"{args.threads} threads, N_PARALLEL {args.parallel}, best of {args.repeat}")
    print(f"| path | wall s | scored tok/s |\n|---|---:|---:|")
    for name, label in (("openai", f"/v1/completions, batches of {args.batch} token-id prompts, max_tokens 1, echo"),
                        ("process", f"/process echo, max_new_tokens 0, {args.batch} clients")):
        wall, scored = best[name]
        print(f"| {label} | {wall:.2f} | {scored / wall:.1f} |")
    ratio = (best["openai"][1] / best["openai"][0]) / (best["process"][1] / best["process"][0])
    print(f"\n/v1/completions / /process throughput: {ratio:.2f}")


if __name__ == "__main__":
    main()
