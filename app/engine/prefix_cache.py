"""Finished sequences kept in the KV cache so later prompts with the same prefix can share them."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Record:
    """Logprob of the token at one position, and the top alternatives there (ids best first)."""

    logprob: float
    top_ids: np.ndarray  # int [k]
    top_lps: np.ndarray  # float64 [k]

    def truncated(self, k: int) -> "Record":
        return Record(self.logprob, self.top_ids[:k], self.top_lps[:k])


@dataclass(eq=False)
class CacheEntry:
    """A sequence id whose KV cells hold `tokens` at positions 0..len-1."""

    seq_id: int
    tokens: list[int]
    records: list[Record | None]  # records[i] scores tokens[i]; None where never computed
    origin: int = -1  # number of the request that computed this sequence
    parent: int | None = None  # number of the request whose cells it shares a prefix of
    n_shared: int = 0  # length of that shared prefix
    last_used: float = field(default_factory=time.monotonic)
    last_admission: int = 0  # the cache's admission count when it was stored or last shared

    def scored_prefix(self, k: int) -> int:
        """The largest m such that records[1..m] all exist with at least k alternatives."""
        for i in range(1, len(self.tokens)):
            r = self.records[i] if i < len(self.records) else None
            if r is None or len(r.top_ids) < k:
                return i - 1
        return len(self.tokens) - 1


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token lists."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(diff[0]) if len(diff) else n


class PrefixCache:
    """Least-recently-used entries under a budget of cached tokens."""

    def __init__(self, *, budget_tokens: int) -> None:
        self.budget = budget_tokens
        self.entries: list[CacheEntry] = []
        self.admissions = 0  # requests started so far, the clock of staleness

    def admitted(self) -> None:
        self.admissions += 1

    def stale(self, max_age: int) -> list[CacheEntry]:
        """Entries no request has shared (nor stored) during the last max_age admissions: the
        prompts of a scenario that has ended. They still cost: llama.cpp's CPU attention reads the
        mask of every cell up to the highest in use, so idle entries slow every step."""
        return [e for e in self.entries if self.admissions - e.last_admission > max_age]

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def tokens(self) -> int:
        """KV cells the entries hold. An entry made by sharing its parent's first cells
        (llama_memory_seq_cp) adds only the rest while that parent is cached too."""
        origins = {e.origin for e in self.entries}
        return sum(len(e.tokens) - (e.n_shared if e.parent in origins else 0) for e in self.entries)

    def best_prefix(
        self, prompt: Sequence[int], *, limit: int, need_top_k: int = 0, extra: Sequence[CacheEntry] = ()
    ) -> tuple[CacheEntry | None, int]:
        """The entry sharing the longest usable prefix with `prompt`, and that length (<= limit).

        need_top_k > 0 (echo): the records of positions 1..n must be stored too, since the logits
        at positions < n are not recomputed; position n's record is the prompt's only if n < lcp.
        """
        best, best_n = None, 0
        for e in self.entries:
            lcp = common_prefix(e.tokens, prompt)
            n = min(lcp, limit)
            if need_top_k:
                n = min(n, lcp - 1, e.scored_prefix(need_top_k))
            if n > best_n:
                best, best_n = e, n
        return best, best_n

    def touch(self, entry: CacheEntry) -> None:
        entry.last_used = time.monotonic()
        entry.last_admission = self.admissions

    def lru(self) -> CacheEntry:
        return min(self.entries, key=lambda e: e.last_used)

    def remove(self, entry: CacheEntry) -> None:
        self.entries.remove(entry)

    def add(self, entry: CacheEntry) -> list[CacheEntry]:
        """Insert an entry; returns the entries dropped (superseded, redundant or over budget),
        possibly the new one itself. The caller frees their sequence ids."""
        dropped = []
        for e in list(self.entries):
            n = common_prefix(e.tokens, entry.tokens)
            if n == len(entry.tokens):  # the new entry is a prefix of an old one: keep the old
                _merge_records(e, entry, n)
                self.touch(e)
                return [entry]
            if n == len(e.tokens):  # an old entry is a prefix of the new one: the new one serves it
                _merge_records(entry, e, n)
                self.entries.remove(e)
                dropped.append(e)
        entry.last_admission = self.admissions
        self.entries.append(entry)
        while self.entries and self.tokens > self.budget:
            victim = self.lru()
            self.entries.remove(victim)
            dropped.append(victim)
        return dropped


def _merge_records(into: CacheEntry, other: CacheEntry, n: int) -> None:
    """Fill positions < n that `into` never scored with `other`'s records (same tokens there)."""
    if len(into.records) < len(into.tokens):
        into.records = list(into.records) + [None] * (len(into.tokens) - len(into.records))
    for i in range(min(n, len(other.records))):
        mine, theirs = into.records[i], other.records[i]
        if theirs is not None and (mine is None or len(mine.top_ids) < len(theirs.top_ids)):
            into.records[i] = theirs
