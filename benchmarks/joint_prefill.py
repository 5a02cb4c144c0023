"""Prompt chunks of several sequences in one llama_decode, against one sequence per call.

    python benchmarks/joint_prefill.py [--model PATH] [--threads 2] [--prompts 4] [--tokens 512]
        [--chunk 128] [--repeat 3]

The engine hands llama.cpp one prompt chunk per call (app/engine/step.py). llama-server puts the
chunks of all its slots into one ubatch. This measures what that is worth, in the engine's own
model wrapper (per-sequence KV streams, flash attention, plain CPU buffers, as served):
- `separate`: `--prompts` cold prompts of `--tokens` tokens, chunk by chunk, one sequence per call;
- `joint`: the same chunks, all sequences' chunk k in one call (rows grouped by sequence);
each on consecutive slots (0, 1, 2, ...) and on scattered ones (0, 2, 4, ...). llama.cpp puts only
consecutive sequence ids into one ubatch when the KV has a stream per sequence, so scattered
joint calls are split again. Prints tokens/s (median of the repetitions, alternated), the ratio to
`separate` on the same slots, and whether every prompt's last logits are bit-identical to the
consecutive `separate` run.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from app.config import DEFAULT_MODEL_PATH, Settings  # noqa: E402
from app.engine.llama import LlamaModel  # noqa: E402
from benchmarks import loads  # noqa: E402


def run(model: LlamaModel, prompts: list[list[int]], slots: list[int], chunk: int, joint: bool):
    """Compute every prompt cold; returns (seconds, last-row logits per prompt)."""
    model.clear()
    n = len(prompts[0])
    last: dict[int, np.ndarray] = {}
    t0 = time.perf_counter()
    for c0 in range(0, n, chunk):
        pos = np.arange(c0, min(c0 + chunk, n), dtype=np.int32)
        final = pos[-1] == n - 1
        parts = [(k, np.asarray(p[c0:c0 + chunk], dtype=np.int32)) for k, p in enumerate(prompts)]
        calls = [parts] if joint else [[part] for part in parts]
        for call in calls:
            want = np.zeros(len(pos) * len(call), dtype=bool)
            if final:
                want[len(pos) - 1::len(pos)] = True
            out = model.decode(np.concatenate([t for _, t in call]), np.tile(pos, len(call)),
                               np.repeat(np.array([slots[k] for k, _ in call], dtype=np.int32), len(pos)), want)
            if final:
                for j, (k, _) in enumerate(call):
                    last[k] = out[j].copy()
    return time.perf_counter() - t0, last


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL_PATH)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--chunk", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    rows = args.prompts * args.chunk
    settings = Settings.from_env({"MODEL_PATH": str(args.model), "N_THREADS": str(args.threads),
                                  "CHUNK_TOKENS": str(max(rows, 128)), "N_BATCH": str(max(rows, 512))})
    model = LlamaModel(settings, n_slots=2 * args.prompts)
    try:
        texts = loads.unrelated(5, args.prompts, sentences=args.tokens // 8)
        prompts = [model.tokenize(t, add_special=True, parse_special=False)[: args.tokens] for t in texts]
        assert all(len(p) == args.tokens for p in prompts), "prompts came out shorter than --tokens"
        layouts = {"consecutive": list(range(args.prompts)), "scattered": list(range(0, 2 * args.prompts, 2))}
        times: dict[tuple[str, bool], list[float]] = {}
        ref = None
        same = {}
        for _ in range(args.repeat):
            for name, slots in layouts.items():
                for joint in (False, True):
                    t, last = run(model, prompts, slots, args.chunk, joint)
                    ref = ref if ref is not None else last
                    times.setdefault((name, joint), []).append(t)
                    same[(name, joint)] = same.get((name, joint), True) and all(
                        np.array_equal(last[k], ref[k]) for k in range(args.prompts))
        total = args.prompts * args.tokens
        print(f"model {args.model.name}, {args.threads} threads, {args.prompts} prompts x {args.tokens} tokens, "
              f"{args.chunk}-row chunks, median of {args.repeat}")
        print(f"{'slots':12s} {'calls':9s} {'tok/s':>8s} {'vs separate':>12s}  bit-identical")
        for name in layouts:
            base = total / statistics.median(times[(name, False)])
            for joint in (False, True):
                rate = total / statistics.median(times[(name, joint)])
                print(f"{name:12s} {'joint' if joint else 'separate':9s} {rate:8.1f} {rate / base:12.2f}  {same[(name, joint)]}")
    finally:
        model.close()


if __name__ == "__main__":
    main()
