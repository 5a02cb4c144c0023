"""The decode loop: one thread owns the llama.cpp context and runs every request through it.

Each step admits waiting jobs into free KV slots (reusing cached prompt KV), decodes one
token for every generating sequence, then computes prompt chunks (step.py). A failure in one job's
part of a step fails that job alone; its slots are emptied and the rest go on.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque

import numpy as np

from app.config import Settings
from app.engine.errors import EngineError, EngineOverloaded, RequestCancelled
from app.engine.jobs import Job, Record, Seq
from app.engine.llama import LlamaModel
from app.engine.outputs import token_logprob
from app.engine.sampling import choose_token, log_softmax, score_rows, token_logprob_and_top, top_k_rows
from app.engine.slots import Slot, SlotTable, heads
from app.engine.step import Chunk, plan

log = logging.getLogger(__name__)

ECHO_ROWS = 64  # echo rows scored at once: bounded temporaries of 64 x n_vocab floats


class Scheduler:
    """Queue in, steps through llama.cpp, finished jobs out."""

    def __init__(self, model: LlamaModel, settings: Settings) -> None:
        self.model = model
        self.settings = settings
        self.table = SlotTable(model.n_slots, chunk=settings.chunk_tokens, reuse=settings.reuse_prefixes,
                               region=min(settings.n_parallel, model.n_slots))
        self.waiting: deque[Job] = deque()
        self.jobs: list[Job] = []  # admitted, not finished
        self.active: list[Seq] = []  # sequences with a token to decode
        self._cv = threading.Condition()
        self._stopping = False
        self.dead: str | None = None  # why the thread ended, if it ended by a bug
        self._start_lp = self._start_distribution()
        self.group_limit = model.decode_group_limit(settings.n_parallel)
        log.info("decode groups of up to %d sequences stay bit-identical to one sequence alone", self.group_limit)
        self._thread = threading.Thread(target=self._run, name="llama-scheduler", daemon=True)
        self._thread.start()

    # ---- called from HTTP threads ----

    def submit(self, job: Job) -> None:
        """Queue a job; the scheduler thread picks it up at its next step."""
        with self._cv:
            if self.dead is not None:
                raise EngineError(f"the scheduler is not running: {self.dead}")
            if self._stopping:
                raise EngineOverloaded("the engine is shutting down")
            self.waiting.append(job)
            self._cv.notify()

    def cancel(self, job: Job) -> None:
        """Drop a job (its client went away, or its deadline passed); its slots free next step."""
        with self._cv:
            job.cancelled = True
            self._cv.notify()

    def load(self) -> dict[str, int]:
        """Requests running and queued, sequences generating, slots holding cached prefixes."""
        idle = self.table.idle
        return {
            "running": len(self.jobs),
            "queued": len(self.waiting),
            "generating_sequences": len(self.active),
            "prefix_cache_entries": sum(1 for s in idle if s.n_valid),
            "prefix_cache_tokens": self.table.cached_tokens,
            "kv_slots_in_use": len(self.table.slots) - len(idle),
        }

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and self.dead is None

    def stop(self, timeout: float = 30) -> bool:
        """End the thread (queued and running jobs fail with EngineOverloaded); True if it ended."""
        with self._cv:
            self._stopping = True
            self._cv.notify()
        self._thread.join(timeout=timeout)
        return not self._thread.is_alive()

    # ---- the scheduler thread ----

    def _run(self) -> None:
        try:
            while True:
                with self._cv:
                    while not self._stopping and not self.waiting and not self.jobs:
                        self._cv.wait()
                    if self._stopping:
                        break
                try:
                    self._step()
                except Exception:  # a bug outside any one job's part: fail what runs, go on
                    log.exception("scheduler step failed")
                    for job in list(self.jobs):
                        self._fail(job, EngineError("internal error in the scheduler"))
        except BaseException as exc:  # the thread itself is ending: say so to /health and submit
            self.dead = f"{type(exc).__name__}: {exc}"
            log.critical("the scheduler thread died: %s", self.dead)
            raise
        finally:
            with self._cv:
                self._stopping = True
                left = list(self.jobs) + list(self.waiting)
            for job in left:
                self._fail(job, EngineOverloaded("the engine is shutting down"))

    def _step(self) -> None:
        self._drop_cancelled()
        self._admit()
        step = plan(self.active, self.jobs, chunk=self.settings.chunk_tokens, budget=self.settings.n_batch,
                    group_limit=self.group_limit, alone_from=self.model.alone_from)
        for group in step.groups:
            self._decode(group)
        for chunk in step.chunks:
            if not chunk.job.done.is_set():
                self._guarded(chunk.job, self._compute_chunk, chunk)

    def _drop_cancelled(self) -> None:
        with self._cv:
            gone = [j for j in self.waiting if j.cancelled]
            for j in gone:
                self.waiting.remove(j)
        for job in gone + [j for j in self.jobs if j.cancelled]:
            self._fail(job, RequestCancelled("the client disconnected or the deadline passed"))

    def _admit(self) -> None:
        """Start waiting jobs, oldest first, while slots and N_PARALLEL allow. A job whose prompt a
        running job is still computing the prefix it shares with it (a whole chunk or more) steps aside
        until that prefix is computed."""
        while True:
            with self._cv:
                if self.settings.deterministic and self.jobs:
                    return  # the strict mode: one job at a time
                job = next((j for j in self.waiting if not self.table.worth_waiting(j.prompt)), None)
                if job is None:
                    return
                running = sum(len(j.seqs) for j in self.jobs)
                if running + job.n_slots > self.settings.n_parallel:
                    return  # only running jobs can make room
                self.waiting.remove(job)
            if not self._guarded(job, self._start, job, default=True):
                with self._cv:
                    self.waiting.appendleft(job)  # no slot free yet: first in line
                return

    def _start(self, job: Job) -> bool:
        """Place the job in KV slots and copy the prefix it reuses; False if no slots are free."""
        req = job.req
        if req.max_new_tokens == 0 and not req.echo_prompt:
            job.admitted = time.monotonic()
            self._finished(job)  # nothing to compute
            return True
        if self.settings.deterministic:
            for s in self.table.slots:
                self.table.release(s, keep=False)
                self.model.seq_rm(s.id)
        placed = self.table.place(job, echo_top_k=req.top_k_per_token if req.echo_prompt else 0,
                                  upcoming=self._upcoming(), decoding={s.slot for s in self.active})
        if placed is None:
            return False
        job.admitted = time.monotonic()
        self.jobs.append(job)  # from here on a failure releases the slots through _fail
        lead, n = placed.slot, placed.n_reused
        self._move(placed.moves)
        # Samples after the first get their slots when the prompt is done (_begin_generation).
        job.seqs = [Seq(slot=lead.id if k == 0 else -1, job=job, index=k, rng=np.random.default_rng([job.rng_seed, k]))
                    for k in range(job.n_slots)]
        if lead is not placed.source:
            self.model.seq_rm(lead.id)
        if placed.source is not None and placed.source is not lead:
            self.model.copy_stream(placed.source.id, lead.id)
        if n:
            self.model.seq_rm(lead.id, n, -1)  # keep what is reused
        job.records = [None] * len(job.prompt)
        if req.echo_prompt and job.n_hidden == 0:  # no BOS shown before it: score it after the start token
            job.records[0] = _record(self._start_lp, job.prompt[0], req.top_k_per_token)
        if req.echo_prompt and n:  # positions 1..n are scored by logits that are not recomputed
            for i in range(1, n + 1):
                job.records[i] = placed.source.records[i].truncated(req.top_k_per_token)
        job.n_past = job.n_cached = job.lead.n_past = n
        self.table.computed(lead, job.prompt, n, job.records)
        return True

    def _compute_chunk(self, c: Chunk) -> None:
        job = c.job
        logits = self.model.decode(
            np.asarray(job.prompt[c.start : c.end], dtype=np.int32),
            np.arange(c.start, c.end, dtype=np.int32),
            np.full(c.end - c.start, job.lead.slot, dtype=np.int32),
            c.want,
        )
        job.n_past = job.lead.n_past = c.end
        self.table.computed(self.table.slots[job.lead.slot], job.prompt, c.end, job.records)
        rows = c.rows
        last = len(job.prompt) - 1
        if job.req.echo_prompt:
            self._score(job, [(p, r) for r, p in enumerate(rows) if p < last], logits)
        if rows and rows[-1] == last and job.req.max_new_tokens > 0:
            self._begin_generation(job, logits[len(rows) - 1])
        elif job.prefilled and job.req.max_new_tokens == 0:
            self._finished(job)

    def _score(self, job: Job, rows: list[tuple[int, int]], logits: np.ndarray) -> None:
        """Records of prompt[p + 1] from the logits at position p, ECHO_ROWS rows at a time."""
        for c in range(0, len(rows), ECHO_ROWS):
            part = rows[c : c + ECHO_ROWS]
            block = logits[part[0][1] : part[-1][1] + 1]  # a view: the rows are contiguous
            lp, top, top_lp = score_rows(block, [job.prompt[p + 1] for p, _ in part], job.req.top_k_per_token)
            for j, (p, _) in enumerate(part):
                job.records[p + 1] = Record(float(lp[j]), top[j], top_lp[j])

    def _upcoming(self) -> set[tuple[int, ...]]:
        """The first chunk of every prompt waiting in line: the entries they will reuse stay."""
        if not self.table.reuse:
            return set()
        with self._cv:
            waiting = [j.prompt for j in self.waiting]
        return heads(waiting, self.table.chunk)

    def _begin_generation(self, job: Job, row: np.ndarray) -> None:
        """The prompt is in. A job that will decode takes its decode slots, next to the sequences
        decoding already, each a copy of the prompt's KV stream; then every sample draws."""
        if job.decodes:
            home = self.table.slots[job.lead.slot]
            slots, moves = self.table.decode_slots(job, len(job.seqs), decoding={s.slot for s in self.active},
                                                   upcoming=self._upcoming())
            self._move(moves + [(home, slot) for slot in slots if slot is not home])  # entries out first
            for s, slot in zip(job.seqs, slots):
                s.slot, s.n_past = slot.id, job.n_past
        for s in job.seqs:
            self._sample(s, row)

    def _move(self, moves: list[tuple[Slot, Slot]]) -> None:
        """Give each `to` slot a copy of the `from` slot's KV stream, pair by pair, in order (llama.cpp
        runs the queued stream copies in the order they were asked for, at the next llama_decode)."""
        for src, dst in moves:
            self.model.seq_rm(dst.id)
            self.model.copy_stream(src.id, dst.id)

    def _decode(self, group: list[Seq]) -> None:
        try:
            logits = self.model.decode(
                np.array([s.pending for s in group], dtype=np.int32),
                np.array([s.n_past for s in group], dtype=np.int32),
                np.array([s.slot for s in group], dtype=np.int32),
                np.ones(len(group), dtype=bool),
            )
        except Exception as exc:
            log.exception("a decode step failed")
            for s in group:
                self._fail(s.job, EngineError(str(exc)))
            return
        for s, row in zip(group, logits):
            s.n_past += 1
            self._guarded(s.job, self._sample, s, row)

    def _sample(self, s: Seq, row: np.ndarray) -> None:
        job, req = s.job, s.job.req
        tok = choose_token(row, req.sampling, s.rng)
        if s in self.active:
            self.active.remove(s)
        job.first_token = job.first_token or time.monotonic()
        record = Record(*token_logprob_and_top(row, tok, req.top_k_per_token))
        if self.model.eog[tok]:
            if req.include_eog:  # returned as the last token, text "" (as OpenAI and vLLM do)
                s.add(tok, record, "")
            return self._finish_seq(s, "eos")
        before = s.add(tok, record, s.decoder.feed(self.model.pieces[tok]))
        if job.progress is not None:
            job.progress.put((s.index, s.gen_texts[-1],
                              token_logprob(self.model.pieces, s.gen_texts[-1], record, req.top_k_per_token)))
        reason = s.ending(req, before)
        if reason:
            return self._finish_seq(s, reason)
        s.pending = tok
        self.active.append(s)

    def _finish_seq(self, s: Seq, reason: str) -> None:
        s.finish(reason)
        if all(x.finish_reason for x in s.job.seqs):
            self._finished(s.job)

    def _guarded(self, job: Job, fn, *args, default=None):
        """Run one job's part of a step; an exception fails that job alone."""
        if job.done.is_set():
            return default
        try:
            return fn(*args)
        except Exception as exc:
            log.exception("request failed inside the scheduler")
            self._fail(job, exc if isinstance(exc, EngineError) else EngineError("internal error"))
            return default

    def _finished(self, job: Job) -> None:
        self._release(job, keep=True)
        job.finish()

    def _fail(self, job: Job, error: BaseException) -> None:
        if job.done.is_set():
            return
        with self._cv:
            if job in self.waiting:
                self.waiting.remove(job)
        self._release(job, keep=False)
        job.finish(error)

    def _release(self, job: Job, *, keep: bool) -> None:
        """Give back the job's slots: the lead keeps its computed prompt (if `keep`)."""
        self.active = [s for s in self.active if s.job is not job]
        for slot in self.table.slots:
            if slot.owner is job:
                self.table.release(slot, keep=keep and slot.lead)
                self.model.seq_rm(slot.id, slot.n_valid, -1)  # the cells past the kept prompt
        if job in self.jobs:
            self.jobs.remove(job)

    def _start_distribution(self) -> np.ndarray:
        """Log-softmax after the document-start token alone: scores an echoed prompt's first token
        for models that add no BOS (computed once at load in slot 0, which is then emptied)."""
        t = self.model.start_token()
        logits = self.model.decode(np.array([t], np.int32), np.array([0], np.int32), np.array([0], np.int32),
                                   np.array([True]))
        self.model.seq_rm(0)
        return log_softmax(logits[0]).astype(np.float32)


def _record(lp_row: np.ndarray, token: int, k: int) -> Record:
    top = top_k_rows(lp_row[None, :], k)[0]
    return Record(float(lp_row[token]), top, lp_row[top].astype(np.float64))
