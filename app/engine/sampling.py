"""Logprobs, top-k selection and sampling over one row of raw logits (numpy only, no llama.cpp)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# HELM sends temperature=1e-7 when it means greedy; anything at or below this is argmax.
GREEDY_TEMPERATURE = 1e-5


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Log-softmax of a float32 vector [n_vocab], computed in float64 for a stable sum."""
    x = logits.astype(np.float64, copy=False)
    m = x.max()
    return x - (m + np.log(np.exp(x - m).sum()))


def logsumexp_rows(block: np.ndarray) -> np.ndarray:
    """Row-wise log(sum(exp)) of [m, n] logits: [m] float64.

    exp runs in float32 (relative error ~1e-7) and the sum accumulates in float64: ten times
    faster than converting the whole row to float64, and 1e-7 nats from it. Rows go through a few
    at a time, so the temporary stays small enough to be reused instead of page-faulted in for
    every block (a row's result does not depend on the rows beside it).
    """
    m = block.max(axis=1)
    out = m.astype(np.float64)
    tile = max(1, _LSE_TILE_FLOATS // max(1, block.shape[1]))
    shifted = np.empty((min(tile, len(block)), block.shape[1]), dtype=np.float32)
    for a in range(0, len(block), tile):
        s = shifted[: min(tile, len(block) - a)]
        np.subtract(block[a : a + len(s)], m[a : a + len(s), None], out=s, dtype=np.float32)
        np.exp(s, out=s)
        out[a : a + len(s)] += np.log(s.sum(axis=1, dtype=np.float64))
    return out


_LSE_TILE_FLOATS = 1 << 20  # 4 MB of float32 per tile (4 rows of a 262k vocabulary)


# Up to this k, k passes of argmax beat argpartition (a pass over 49k floats takes ~5 us).
_ARGMAX_PASSES_UP_TO = 16


def top_k_rows(block: np.ndarray, k: int) -> np.ndarray:
    """Ids of the k largest entries of each row of [m, n], best first: [m, k].

    Small k: k argmax passes, over the whole row or (large vocabularies) over the k best blocks
    of ids only. Larger k: argpartition picks the winners in O(n), and only those k are sorted.
    Ties among the winners go by id; which of several tokens tied at the k-th value is kept is
    arbitrary but deterministic.
    """
    n = block.shape[1]
    k = min(k, n)
    if k <= _ARGMAX_PASSES_UP_TO:
        width = _block_width(n, k)
        if width:
            top = _top_k_in_best_blocks(block, k, width)
            if top is not None:
                return top
        return _argmax_passes(block, k)
    part = np.argpartition(block, n - k, axis=1)[:, n - k :] if k < n else np.tile(np.arange(n), (len(block), 1))
    part.sort(axis=1)  # by id first, so the stable sort below breaks ties by id
    vals = np.take_along_axis(block, part, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def _argmax_passes(block: np.ndarray, k: int) -> np.ndarray:
    """k argmax passes per row: best first, ties to the lowest index."""
    rows = np.arange(len(block))
    out = np.empty((len(block), k), dtype=np.int64)
    work = block if k == 1 else block.copy()
    for j in range(k):
        out[:, j] = best = np.argmax(work, axis=1)  # argmax returns the lowest id among ties
        if j + 1 < k:
            work[rows, best] = -np.inf
    return out


# Blocks of ids for the top-k search: a power of two from 64 to 512 that divides the vocabulary.
_BLOCK_WIDTHS = (512, 256, 128, 64)


def _block_width(n: int, k: int) -> int:
    """The block width to search a row of n ids in, 0 when a plain pass over the row is as fast."""
    return next((w for w in _BLOCK_WIDTHS if n % w == 0 and 8 * k * w <= n), 0)


def _top_k_in_best_blocks(block: np.ndarray, k: int, width: int) -> np.ndarray | None:
    """The same ids as _argmax_passes, from k argmax passes over the k best blocks only.

    Order ids by (value descending, id ascending); a block's best id is its first in that order.
    Each id of the k best ranks below its block's best, and a block ranked past the k best has k
    better blocks' best ids above it: so the k best ids lie in the k best blocks, and blocks of
    equal best value rank by index, as their ids do. None (use a full pass) when a row has a NaN
    or fewer than k values above -inf, where passes over the whole row may pick differently (and a
    pass over blocks would pick one twice).
    """
    m, n = block.shape
    maxes = block.reshape(m, n // width, width).max(axis=2)  # [m, n_blocks]
    if np.isnan(maxes).any() or ((maxes > -np.inf).sum(axis=1) < k).any():
        return None
    best = np.sort(_argmax_passes(maxes, k), axis=1)  # the k best blocks, in id order
    ids = (best[:, :, None] * width + np.arange(width)).reshape(m, k * width)  # ascending per row
    vals = np.take_along_axis(block, ids, axis=1)
    if ((vals > -np.inf).sum(axis=1) < k).any():
        return None
    pick = _argmax_passes(vals, k)
    return np.take_along_axis(ids, pick, axis=1)


def top_k_indices(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values of a vector [n], best first: [k]."""
    return top_k_rows(values[None, :], k)[0]


@dataclass(frozen=True)
class SamplingParams:
    """How to choose the next token; logprobs never depend on these."""

    temperature: float = 0.8
    top_k: int = 200  # 0 disables top-k
    top_p: float = 1.0

    @property
    def greedy(self) -> bool:
        return self.temperature <= GREEDY_TEMPERATURE


def choose_token(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> int:
    """Pick the next token id from raw logits [n_vocab]: argmax, or top-k -> temperature -> top-p."""
    if params.greedy:
        return int(np.argmax(logits))
    n = logits.shape[0]
    k = params.top_k if 0 < params.top_k < n else n
    if k < n or params.top_p < 1.0:
        candidates = top_k_indices(logits, k)  # [k], best first
    else:
        candidates = np.arange(n)
    scaled = logits[candidates].astype(np.float64) / params.temperature
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    if params.top_p < 1.0:
        # Candidates are sorted best first: keep the smallest prefix whose mass reaches top_p.
        cut = int(np.searchsorted(np.cumsum(probs), params.top_p)) + 1
        candidates, probs = candidates[:cut], probs[:cut] / probs[:cut].sum()
    return int(candidates[rng.choice(len(candidates), p=probs)])


def score_rows(block: np.ndarray, targets: list[int], k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each row of raw logits: the logprob of its target id, its top-k ids [rows, k] and their
    logprobs [rows, k] (float64)."""
    lse = logsumexp_rows(block)
    lp = block[np.arange(len(targets)), np.asarray(targets)].astype(np.float64) - lse
    top = top_k_rows(block, k)
    return lp, top, np.take_along_axis(block, top, axis=1).astype(np.float64) - lse[:, None]


def token_logprob_and_top(
    logits: np.ndarray, token: int, k: int
) -> tuple[float, np.ndarray, np.ndarray]:
    """(logprob of `token`, top-k ids [k], their logprobs [k]) under log-softmax of raw logits."""
    lse = float(logsumexp_rows(logits[None, :])[0])
    top = top_k_indices(logits, k)
    return float(logits[token]) - lse, top, logits[top].astype(np.float64) - lse
