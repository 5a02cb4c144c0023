"""What a job is: one request's prompt, its samples (sequences), and what they have produced so far.

The scheduler thread writes these records; the HTTP thread reads a job only after `done` is set
(and its `progress` queue while it runs), so no lock guards them.
"""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from app.engine.text import PieceDecoder, cut_tokens, find_stop, stop_search_start
from app.engine.types import GenerationRequest


@dataclass(frozen=True)
class Record:
    """Logprob of the token at one position, and the top alternatives there (ids best first)."""

    logprob: float
    top_ids: np.ndarray  # int [k]
    top_lps: np.ndarray  # float64 [k]

    def truncated(self, k: int) -> "Record":
        return Record(self.logprob, self.top_ids[:k], self.top_lps[:k])


@dataclass(eq=False)
class Seq:
    """One sample of a job: the KV slot it runs in and the tokens it has generated."""

    slot: int  # llama.cpp sequence id = KV stream
    job: "Job"
    index: int  # sample number within the job
    rng: np.random.Generator
    n_past: int = 0  # tokens in the slot's KV cells (positions 0..n_past-1)
    pending: int = -1  # sampled token not yet decoded
    gen: list[int] = field(default_factory=list)
    gen_records: list[Record] = field(default_factory=list)
    gen_texts: list[str] = field(default_factory=list)
    text: str = ""
    decoder: PieceDecoder = field(default_factory=PieceDecoder)
    finish_reason: str = ""

    def add(self, token: int, record: Record, piece: str) -> int:
        """Append a generated token and its text; returns the text's length before it."""
        self.gen.append(token)
        self.gen_records.append(record)
        self.gen_texts.append(piece)
        before = len(self.text)
        self.text += piece
        return before

    def ending(self, req: GenerationRequest, before: int) -> str:
        """Why the sequence ends after its newest token ("stop", cut before the stop sequence;
        "length"), or "" if it goes on. `before`: the text's length before that token."""
        if req.stop_sequences:
            cut = find_stop(self.text, req.stop_sequences, stop_search_start(before, req.stop_sequences))
            if cut != -1:
                n_keep, last_text = cut_tokens(self.gen_texts, cut)
                del self.gen[n_keep:], self.gen_records[n_keep:], self.gen_texts[n_keep:]
                if n_keep:
                    self.gen_texts[-1] = last_text
                self.text = self.text[:cut]
                return "stop"
        return "length" if len(self.gen) >= req.max_new_tokens else ""

    def finish(self, reason: str) -> None:
        """End the sequence; an unfinished character's bytes become U+FFFD unless cut at a stop."""
        if reason != "stop":
            tail = self.decoder.flush()
            if tail and self.gen_texts:
                self.gen_texts[-1] += tail
                self.text += tail
        self.finish_reason = reason


@dataclass(eq=False)
class Job:
    """One request: prompt tokens, samples, timings, and where the answer goes."""

    req: GenerationRequest
    prompt: list[int]  # token ids the model sees (BOS included where the model adds one)
    n_hidden: int  # leading prompt tokens not shown in echo (BOS)
    rng_seed: int
    progress: queue.SimpleQueue | None = None  # (sample index, piece text) per generated token, None at the end
    submitted: float = field(default_factory=time.monotonic)
    admitted: float | None = None
    first_token: float | None = None
    seqs: list[Seq] = field(default_factory=list)
    n_past: int = 0  # prompt tokens of the lead sequence in its KV slot
    n_cached: int = 0  # of which were copied from an earlier computation
    records: list[Record | None] = field(default_factory=list)  # echo: record of prompt[i] at [i]
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    cancelled: bool = False

    @property
    def lead(self) -> Seq:
        return self.seqs[0]

    @property
    def prefilled(self) -> bool:
        return self.n_past >= len(self.prompt)

    @property
    def decodes(self) -> bool:
        """Whether the job has decode steps (its first token comes from the prompt's own logits)."""
        return self.req.max_new_tokens > 1

    @property
    def n_slots(self) -> int:
        return self.req.num_samples

    def finish(self, error: BaseException | None = None) -> None:
        """Mark the job done (once); the HTTP thread wakes up and builds the answer."""
        if self.done.is_set():
            return
        self.error = error
        self.done.set()
        if self.progress is not None:
            self.progress.put(None)
