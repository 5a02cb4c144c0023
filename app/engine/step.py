"""What goes into the next step: decode groups (one token per generating sequence) and prompt chunks.

Every row we hand llama_decode takes the kernels that its own request's fresh run gives it:
- a row's numbers depend on the batch it is computed in only through the batch's kernel class
  (its row count against KERNEL_ROW_STEPS) and, with repacked weights, its place in a group of 4
  rows from the batch's start. So a prompt of n tokens is computed in batches that all have n's
  class: one batch if n < 64; otherwise batches of 64 to C rows, each starting at a multiple of 4
  (`next_chunk`). Any such split gives every row the same numbers, which lets a prompt that reuses
  a cached prefix resume right where the prefix ends (`resume_point`), with at most 3 rows (or
  the 64 rows a batch needs) recomputed;
- a decode group carries one token for each of up to `group_limit` sequences; llama.cpp computes
  each run of consecutive sequence ids as one sub-batch, and `group_limit` is the largest size at
  which each row's logits are still bit-identical to its sequence decoded alone (measured at load).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from app.engine.jobs import Job, Seq


@dataclass(frozen=True)
class Chunk:
    """Positions [start, end) of a job's prompt, computed in the lead sequence's slot."""

    job: Job
    start: int
    end: int
    want: np.ndarray  # bool [end - start]: rows whose logits we read

    @property
    def rows(self) -> list[int]:
        """Prompt positions whose logits come back, in order."""
        return [self.start + int(i) for i in np.flatnonzero(self.want)]


@dataclass(frozen=True)
class Step:
    """One scheduler step: decode groups first (latency), then prompt chunks (oldest job first)."""

    groups: list[list[Seq]]
    chunks: list[Chunk]

    def __bool__(self) -> bool:
        return bool(self.groups or self.chunks)


# Row counts at which ggml's CPU kernels change for every row of a llama_decode: a lone row's
# attention splits the KV across threads (2), K-quant matmuls switch to a tiled kernel (8), flash
# attention switches to its tiled kernel (64, GGML_FA_TILE_Q; about 3x cheaper per row than the
# per-row path below it). Repacked weights (CPU_REPACK) take rows in groups of 4 from the batch's
# first row, the last n % 4 through another kernel.
KERNEL_ROW_STEPS = (2, 8, 64)
ROW_GROUP = 4
MIN_CHUNK = 2 * KERNEL_ROW_STEPS[-1]  # a chunk size that can always split a prompt into 64+ row batches


def _kernel_class(rows: int) -> int:
    return sum(rows >= t for t in KERNEL_ROW_STEPS)


def min_rows(n: int) -> int:
    """The fewest rows a batch of an n-token prompt may have: every batch keeps n's kernel class."""
    return ((1,) + KERNEL_ROW_STEPS)[_kernel_class(n)]


def resume_point(cached: int, n: int, *, source_n: int | None = None) -> int:
    """Where a prompt of n tokens starts computing, given that its first `cached` tokens have KV
    that a prompt of `source_n` tokens (default n) computed: the largest s <= cached, on a row group,
    that leaves at least `min_rows(n)` rows to compute, and 0 if the source's rows have another
    kernel class (a source under 64 tokens for a prompt of 64 or more, say). The prompt's last token
    is always computed (< n)."""
    assert 0 <= cached < n
    if _kernel_class(n if source_n is None else source_n) != _kernel_class(n):
        return 0
    s = min(cached, n - min_rows(n))
    return max(0, s - s % ROW_GROUP)


def next_chunk(job: Job, start: int, chunk: int) -> Chunk:
    """The job's next batch from `start` (its first uncomputed position): up to `chunk` rows,
    ending where at least `min_rows` rows are left for the batch after it.

    Echo asks for the logits of every row (canonical: the same rows whether or not this job also
    generates, so stored records match a fresh computation); otherwise only the prompt's last row,
    when a first token is to be drawn from it.
    """
    assert chunk >= MIN_CHUNK and chunk % ROW_GROUP == 0 and start % ROW_GROUP == 0
    n = len(job.prompt)
    need = min_rows(n)
    end = min(start + chunk, n)
    if 0 < n - end < need:
        end = n - need - (n - need) % ROW_GROUP
    assert end - start >= need, (start, end, n)  # holds while every start leaves `need` rows
    if job.req.echo_prompt:
        want = np.ones(end - start, dtype=bool)
    else:
        want = np.zeros(end - start, dtype=bool)
        if end == n and job.req.max_new_tokens > 0:
            want[-1] = True
    return Chunk(job=job, start=start, end=end, want=want)


def plan(active: list[Seq], jobs: list[Job], *, chunk: int, budget: int, group_limit: int,
         alone_from: int | None = None) -> Step:
    """Decode every generating sequence; then prompt chunks, oldest job first, while `budget`
    prompt tokens last (at least one chunk when any is waiting, so prompts always advance).

    A sequence whose next token goes at position `alone_from` or later always decodes alone (the
    attention kernel for one row past that extent differs from the one for a group)."""
    ordered = sorted(active, key=lambda s: s.slot)  # consecutive ids batch together in llama.cpp
    limit = alone_from if alone_from is not None else float("inf")
    short = [s for s in ordered if s.n_past < limit]
    groups = [short[i : i + group_limit] for i in range(0, len(short), group_limit)]
    groups += [[s] for s in ordered if s.n_past >= limit]
    chunks: list[Chunk] = []
    spent = 0
    for job in jobs:
        if job.done.is_set() or not job.seqs:
            continue
        n_past = job.n_past
        while n_past < len(job.prompt) and (spent < budget or not chunks):
            c = next_chunk(job, n_past, chunk)
            chunks.append(c)
            spent += c.end - c.start
            n_past = c.end
        if spent >= budget:
            break
    return Step(groups=groups, chunks=chunks)

