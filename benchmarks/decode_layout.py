"""Decode steps of k sequences on consecutive slots against the same sequences on scattered slots.

    python benchmarks/decode_layout.py [--model PATH] [--threads 2] [--sizes 2,4,8] [--history 160]
        [--steps 8] [--repeat 3]

With a KV stream per sequence, llama.cpp puts only consecutive sequence ids into one ubatch: a
decode step whose sequences sit on scattered slots is computed as one batch per run of
consecutive ids, each a whole pass over the weights. This is why the scheduler keeps decoding
samples side by side in the decode region (app/engine/slots.py). Measured in the engine's own
model wrapper (per-sequence KV streams, flash attention, plain CPU buffers, as served): k
sequences with a cold history of `--history` tokens each, then `--steps` decode steps of one token
per sequence with every row's logits, on slots 0..k-1 and on slots 0, 2, 4, ... Prints ms per step
(median over the repetitions, alternated), scattered / consecutive, and whether every row's logits
are bit-identical between the two layouts (they must be up to the decode-group limit that the
engine measures at load; the scheduler splits larger steps into groups).
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


def run(model: LlamaModel, histories: list[list[int]], slots: list[int], steps: int) -> tuple[float, list[np.ndarray]]:
    """Compute the histories cold, then `steps` greedy decode steps; (seconds per step, logits per step)."""
    model.clear()
    for h, s in zip(histories, slots):
        for a in range(0, len(h), 128):
            part = np.asarray(h[a : a + 128], dtype=np.int32)
            model.decode(part, np.arange(a, a + len(part), dtype=np.int32), np.full(len(part), s, np.int32),
                         np.zeros(len(part), dtype=bool))
    k, n = len(slots), len(histories[0])
    tokens = np.array([h[-1] for h in histories], dtype=np.int32)
    rows: list[np.ndarray] = []
    t0 = time.perf_counter()
    for i in range(steps):
        out = model.decode(tokens, np.full(k, n + i, np.int32), np.array(slots, np.int32), np.ones(k, dtype=bool))
        rows.append(out.copy())
        tokens = out.argmax(axis=1).astype(np.int32)
    return (time.perf_counter() - t0) / steps, rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL_PATH)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sizes", default="2,4,8", help="sequences per decode step")
    ap.add_argument("--history", type=int, default=160, help="prompt tokens per sequence (under 256: groups allowed)")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    sizes = [int(x) for x in args.sizes.split(",")]
    most = max(sizes)
    settings = Settings.from_env({"MODEL_PATH": str(args.model), "N_THREADS": str(args.threads),
                                  "N_PARALLEL": str(most), "MAX_NUM_SAMPLES": "1"})
    model = LlamaModel(settings, n_slots=2 * most)
    try:
        texts = loads.unrelated(11, most, sentences=args.history // 8)
        histories = [model.tokenize(t, add_special=True, parse_special=False)[: args.history] for t in texts]
        assert all(len(h) == args.history for h in histories), "histories came out shorter than --history"
        limit = model.decode_group_limit(most)
        print(f"model {args.model.name}, {args.threads} threads, history {args.history} tokens, "
              f"{args.steps} steps, median of {args.repeat}; decode groups stay bit-identical up to {limit} sequences")
        print(f"{'sequences':>9s} {'consecutive ms':>15s} {'scattered ms':>13s} {'ratio':>6s}  bit-identical")
        for k in sizes:
            layouts = {"consecutive": list(range(k)), "scattered": list(range(0, 2 * k, 2))}
            times: dict[str, list[float]] = {name: [] for name in layouts}
            logits: dict[str, list[np.ndarray]] = {}
            for _ in range(args.repeat):
                for name, slots in layouts.items():
                    t, rows = run(model, histories[:k], slots, args.steps)
                    times[name].append(t)
                    logits[name] = rows
            same = all(np.array_equal(a, b) for a, b in zip(logits["consecutive"], logits["scattered"]))
            c, s = (1000 * statistics.median(times[n]) for n in layouts)
            note = "" if k <= limit else "  (more than the group limit: the scheduler never makes such a step)"
            print(f"{k:9d} {c:15.1f} {s:13.1f} {s / c:6.2f}  {same}{note}")
    finally:
        model.close()


if __name__ == "__main__":
    main()
