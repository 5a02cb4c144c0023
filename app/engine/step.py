"""What goes into the next step: decode groups (one token per generating sequence) and prompt chunks.

Every row we hand llama_decode takes the kernels that its own request's canonical run gives it:
- a prompt is canonically computed in chunks [k*C, (k+1)*C) (the last one may be shorter), each
  alone in its llama_decode, so a token's prompt computation never depends on other prompts; a
  prompt that reuses a cached prefix resumes at `resume_point`, mid-chunk where the kernels allow;
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
# attention switches to its tiled kernel (64, GGML_FA_TILE_Q). Repacked weights (CPU_REPACK) take
# rows in groups of 4 from the batch's first row.
KERNEL_ROW_STEPS = (2, 8, 64)
ROW_GROUP = 4


def _kernel_class(rows: int) -> int:
    return sum(rows >= t for t in KERNEL_ROW_STEPS)


def resume_point(cached: int, n: int, chunk: int, *, source_n: int | None = None) -> int:
    """Where a prompt of n tokens must start computing, given that its first `cached` tokens have
    KV computed canonically for a prompt of `source_n` tokens (default n), so that every row it
    reuses or computes went through the kernels of its own canonical run.

    The canonical run computes [0, C), [C, 2C), ..., [kC, n) as one batch each. Resuming at s
    inside [c0, e) computes [s, e) as one batch, then the canonical batches. So s must keep [s, e)
    on the same side of every KERNEL_ROW_STEPS boundary as [c0, e), sit a multiple of ROW_GROUP
    rows from c0, and the rows it reuses in [c0, s) must have been computed in a batch of the same
    kernel class by the source. The result is the largest such s <= cached (< n: the prompt's
    last token is always computed)."""
    assert 0 <= cached < n
    c0 = cached - cached % chunk
    rows = min(c0 + chunk, n) - c0  # the canonical batch's rows
    src_rows = min(c0 + chunk, n if source_n is None else source_n) - c0
    if _kernel_class(src_rows) != _kernel_class(rows):
        return c0
    need = ((1,) + KERNEL_ROW_STEPS)[_kernel_class(rows)]  # rows the resumed batch must keep
    room = min(cached - c0, rows - need)
    return c0 + room - room % ROW_GROUP


def next_chunk(job: Job, start: int, chunk: int) -> Chunk:
    """The job's prompt chunk from `start` (its first uncomputed position) to the next boundary.

    Echo asks for the logits of every row (canonical: the same rows whether or not this job also
    generates, so stored records match a fresh computation); otherwise only the prompt's last row,
    when a first token is to be drawn from it.
    """
    end = min((start // chunk + 1) * chunk, len(job.prompt))
    if job.req.echo_prompt:
        want = np.ones(end - start, dtype=bool)
    else:
        want = np.zeros(end - start, dtype=bool)
        if end == len(job.prompt) and job.req.max_new_tokens > 0:
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

