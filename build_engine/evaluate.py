"""Quality and speed of quantized engines against the 16-bit reference, on a held-out text.

    python -m build_engine.evaluate --ref NAME-BF16.gguf NAME-Q8_0.gguf NAME-Q4_K_M.gguf [--text FILE]

Perplexity follows llama-perplexity: the text is cut into chunks of n_ctx tokens, the first token of
each chunk is BOS when the vocabulary asks for one, and only the second half of each chunk is
scored (every scored token has at least n_ctx/2 tokens of context). KL divergence KL(ref || quant)
and top-1 agreement compare full next-token distributions at the same positions. Speed: prompt
processing (pp) of n_ctx tokens in one batch, and generation (tg) one token at a time.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent / "data"
DEFAULT_TEXT = DATA / "eval.txt"
N_TG = 32  # tokens generated one at a time for the tg speed
REPEATS = 3  # speed runs per engine; the best is kept (other load on the machine only slows a run down)


def plain_llama(**kwargs):
    """llama-cpp-python's Llama with the weights in plain CPU buffers, as the server keeps them
    (CPU_REPACK=0). Llama takes no argument for that, and llama.cpp's default (extra buffer types)
    repacks weights for the CPU: on one with AMX, other kernels give other numbers, and a process
    that may not use AMX tiles (some VMs) dies of an illegal instruction at its first batch."""
    import llama_cpp.llama_cpp as lib
    from llama_cpp import Llama

    default = lib.llama_model_default_params

    def plain():
        params = default()
        params.use_extra_bufts = False
        return params

    lib.llama_model_default_params = plain
    try:
        return Llama(**kwargs)
    finally:
        lib.llama_model_default_params = default


def _llama(path: Path, *, n_ctx: int, threads: int, logits_all: bool):
    """A CPU llama.cpp engine on ``path``, its log filtered by build_engine.llama_log."""
    from build_engine import llama_log

    llama_log.install()
    return plain_llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, n_threads=threads,
                       n_threads_batch=threads, n_gpu_layers=0, logits_all=logits_all, verbose=False, seed=0)


def chunks_of(text: str, *, ref: Path, n_ctx: int, max_chunks: int) -> np.ndarray:
    """Tokenize ``text`` with the reference vocabulary; (n_chunks, n_ctx) int32, BOS first when wanted."""
    import llama_cpp

    llm = _llama(ref, n_ctx=n_ctx, threads=1, logits_all=False)
    tokens = llm.tokenize(text.encode(), add_bos=False, special=False)
    add_bos = llama_cpp.llama_vocab_get_add_bos(llm._model.vocab)
    n = min(len(tokens) // n_ctx, max_chunks)
    assert n >= 1, f"the evaluation text has {len(tokens)} tokens, fewer than one chunk of n_ctx={n_ctx}"
    out = np.array(tokens[: n * n_ctx], dtype=np.int32).reshape(n, n_ctx)
    if add_bos:
        out[:, 0] = llm.token_bos()
    llm.close()
    return out


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64 (then stored as float32)."""
    z = logits.astype(np.float64)
    z -= z.max(axis=-1, keepdims=True)
    return (z - np.log(np.exp(z).sum(axis=-1, keepdims=True))).astype(np.float32)


def chunk_logprobs(llm, chunk: np.ndarray) -> np.ndarray:
    """Log-probabilities (n_ctx/2 - 1, n_vocab) at the scored positions of one chunk."""
    n_ctx = len(chunk)
    first = n_ctx // 2
    llm.reset()
    llm.eval(chunk.tolist())
    logits = np.asarray(llm.scores[first : n_ctx - 1])  # position i predicts token i+1
    return _log_softmax(logits)


def speed(path: Path, *, tokens: np.ndarray, threads: int, repeats: int = REPEATS) -> tuple[float, float]:
    """(prompt tokens/s, generated tokens/s) of ``path`` on this machine: the best of ``repeats`` runs."""
    n_pp = len(tokens)
    llm = _llama(path, n_ctx=n_pp + N_TG + 1, threads=threads, logits_all=False)
    llm.eval(tokens[:16].tolist())  # warm-up: page the weights in, build the graphs
    pp = tg = 0.0
    for _ in range(repeats):
        llm.reset()
        start = time.perf_counter()
        llm.eval(tokens.tolist())
        pp = max(pp, n_pp / (time.perf_counter() - start))
        start = time.perf_counter()
        for tok in tokens[:N_TG].tolist():  # teacher-forced: the cost of a generation step, no sampling
            llm.eval([tok])
        tg = max(tg, N_TG / (time.perf_counter() - start))
    llm.close()
    return pp, tg


def evaluate(*, ref: Path, engines: list[Path], text: str, n_ctx: int = 512, max_chunks: int = 8,
             threads: int | None = None, workdir: Path | None = None) -> dict[str, dict]:
    """For each engine: PPL, mean KL vs ``ref``, top-1 agreement, pp and tg tok/s (list ``ref`` to get its row)."""
    threads = threads or os.cpu_count() or 1
    chunks = chunks_of(text, ref=ref, n_ctx=n_ctx, max_chunks=max_chunks)
    n_chunks = len(chunks)
    n_pos = n_ctx - 1 - n_ctx // 2  # scored positions per chunk
    targets = chunks[:, n_ctx // 2 + 1 :]  # (n_chunks, n_pos) tokens that are predicted
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        store = None  # reference log-probs, (n_chunks, n_pos, n_vocab) float32 on disk
        for path in [ref] + [e for e in engines if e != ref]:
            llm = _llama(path, n_ctx=n_ctx, threads=threads, logits_all=True)
            nll, kl, agree = 0.0, 0.0, 0  # sums over scored positions
            for c, chunk in enumerate(chunks):
                lp = chunk_logprobs(llm, chunk)  # (n_pos, n_vocab)
                if store is None:
                    store = np.lib.format.open_memmap(Path(tmp) / "ref.npy", mode="w+", dtype=np.float32,
                                                      shape=(n_chunks, n_pos, lp.shape[1]))
                if path == ref:
                    store[c] = lp
                ref_lp = np.asarray(store[c])
                nll -= float(lp[np.arange(n_pos), targets[c]].sum())
                kl += float((np.exp(ref_lp) * (ref_lp - lp)).sum())
                agree += int((ref_lp.argmax(-1) == lp.argmax(-1)).sum())
            llm.close()
            if path not in engines:
                continue  # the reference pass only filled the store
            n = n_chunks * n_pos
            pp, tg = speed(path, tokens=chunks[0], threads=threads)
            results[path.name] = {"ppl": float(np.exp(nll / n)), "kl_mean": kl / n, "top1": agree / n,
                                  "pp_tok_s": pp, "tg_tok_s": tg, "n_tokens_scored": n,
                                  "size_bytes": path.stat().st_size}
    return results


def format_table(rows: dict[str, dict]) -> str:
    """A fixed-width table of evaluation rows, one per engine."""
    w = max([12, *(len(name) for name in rows)])  # first column width
    head = f"{'engine':<{w}} {'size MiB':>9} {'PPL':>8} {'KL mean':>9} {'top-1 %':>8} {'pp tok/s':>9} {'tg tok/s':>9}"
    lines = [head, "-" * len(head)]
    for name, r in rows.items():
        lines.append(f"{name:<{w}} {r['size_bytes'] / 2**20:>9.1f} {r['ppl']:>8.3f} {r['kl_mean']:>9.5f} "
                     f"{100 * r['top1']:>8.2f} {r['pp_tok_s']:>9.1f} {r['tg_tok_s']:>9.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("engines", type=Path, nargs="+", help="GGUF files to evaluate")
    parser.add_argument("--ref", type=Path, required=True, help="16-bit reference GGUF (f16/bf16)")
    parser.add_argument("--text", type=Path, default=DEFAULT_TEXT, help="held-out text file")
    parser.add_argument("--ctx", type=int, default=512, help="tokens per chunk")
    parser.add_argument("--max-chunks", type=int, default=8, help="chunks of the text to use at most")
    parser.add_argument("--threads", type=int, help="CPU threads (default: all)")
    args = parser.parse_args(argv)
    for path in [args.ref, *args.engines, args.text]:
        if not path.is_file():
            raise SystemExit(f"error: {path} does not exist")
    rows = evaluate(ref=args.ref, engines=[args.ref, *args.engines], text=args.text.read_text(), n_ctx=args.ctx,
                    max_chunks=args.max_chunks, threads=args.threads)
    print(format_table(rows))


if __name__ == "__main__":
    main()
