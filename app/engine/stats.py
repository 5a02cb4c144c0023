"""Counters the engine keeps for /health and /metrics: tokens, prefix-cache lookups, outcomes.

Counted by the Engine facade as requests finish (no scheduler state), read as one snapshot.
"""
from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field

# Finish reasons as vLLM reports them (vllm:request_success_total{finished_reason=...}): an
# end-of-generation token and a stop sequence are both "stop"; cancelled or timed out is "abort".
VLLM_REASON = {"stop": "stop", "eos": "stop", "length": "length"}

# Weight of the newest request in the moving average of request durations (for Retry-After).
EWMA_WEIGHT = 0.2


@dataclass
class EngineCounters:
    """Monotonic totals since the engine started, updated from request threads under one lock."""

    prompt_tokens: int = 0
    generation_tokens: int = 0
    prefix_cache_queries: int = 0  # prompt tokens looked up in the prefix cache
    prefix_cache_hits: int = 0  # of which were served from it
    finished: Counter = field(default_factory=Counter)  # vLLM finish reason -> samples
    rejected_queue_full: int = 0
    timed_out: int = 0
    mean_request_s: float = 1.0  # moving average of successful requests' durations (seconds)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def succeeded(self, *, n_prompt: int, n_cached: int, n_generated: int, reasons: list[str], seconds: float) -> None:
        """One request answered: its tokens, its samples' finish reasons and its duration."""
        with self._lock:
            self.prompt_tokens += n_prompt
            self.generation_tokens += n_generated
            self.prefix_cache_queries += n_prompt
            self.prefix_cache_hits += n_cached
            for r in reasons:
                self.finished[VLLM_REASON.get(r, r)] += 1
            self.mean_request_s += EWMA_WEIGHT * (seconds - self.mean_request_s)

    def aborted(self, n_samples: int, *, timed_out: bool = False) -> None:
        """A request cancelled (client gone) or timed out."""
        with self._lock:
            self.finished["abort"] += n_samples
            self.timed_out += int(timed_out)

    def rejected(self) -> None:
        """A request refused because the queue was full."""
        with self._lock:
            self.rejected_queue_full += 1

    def snapshot(self) -> dict:
        with self._lock:
            return {
                "prompt_tokens_total": self.prompt_tokens,
                "generation_tokens_total": self.generation_tokens,
                "prefix_cache_queries_total": self.prefix_cache_queries,
                "prefix_cache_hits_total": self.prefix_cache_hits,
                "requests_finished_total": dict(self.finished),
                "rejected_queue_full_total": self.rejected_queue_full,
                "timed_out_total": self.timed_out,
            }
