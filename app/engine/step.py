"""What goes into the next step: decode groups (one token per generating sequence) and prompt chunks.

Every llama_decode we issue has one shape that depends only on the request it serves:
- a prompt chunk covers positions [k*C, (k+1)*C) of one prompt (the last one may be shorter) and
  runs alone, so a token's prompt computation never depends on other prompts or on what the prefix
  cache held (a reused prefix ends on a chunk boundary);
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

