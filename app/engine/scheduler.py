"""One thread owns the llama.cpp context and runs every request as sequences in shared batches.

Each step packs one decode token per generating sequence, then prefill chunks of waiting
prompts (oldest first), into one llama_decode of at most n_batch tokens: continuous batching.
Finished sequences stay in the KV cache as prefix-cache entries that later prompts share.
"""
from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from app.config import Settings
from app.engine.errors import EngineError, EngineOverloaded, RequestCancelled
from app.engine.llama import DecodeFailed, LlamaModel
from app.engine.prefix_cache import CacheEntry, PrefixCache, Record, common_prefix
from app.engine.sampling import choose_token, log_softmax, logsumexp_rows, token_logprob_and_top, top_k_rows
from app.engine.text import PieceDecoder, cut_tokens, find_stop, piece_texts, stop_search_start
from app.engine.types import Completion, GenerationRequest, GenerationResult, TokenLogprob

log = logging.getLogger(__name__)

# Most logits rows one step asks for. Echo scoring wants a row per prompt token; each row is
# n_vocab floats in llama.cpp's output buffer (128 x 49152 x 4 B = 24 MiB, not 96 MiB at 512).
OUTPUTS_PER_STEP = 128
# A prefix-cache entry no request shared for this many times N_PARALLEL admissions is dropped: its
# scenario is over, and its cells widen the attention mask every step reads (see PrefixCache.stale).
STALE_AFTER_ADMISSIONS = 2
# Sharing fewer tokens than this does not count as a use of the entry (keeps it no longer).
MIN_SHARE_TO_KEEP = 32


@dataclass(eq=False)
class Job:
    """One request: its prompt tokens, its samples, and where its answer goes."""

    number: int  # a serial number (prefix-cache lineage)
    req: GenerationRequest
    prompt: list[int]  # token ids the model sees, BOS included where the model adds one
    n_hidden: int  # leading prompt tokens not shown in echo (BOS)
    rng_seed: int
    need_cells: int = 0  # KV cells this job may add (upper bound), set at admission
    seqs: list["Seq"] = field(default_factory=list)
    n_past: int = 0  # prompt tokens of the lead sequence already in the KV cache
    n_cached: int = 0  # of which came from the prefix cache
    parent: int | None = None  # number of the request whose cells the prompt's prefix shares
    records: list[Record | None] = field(default_factory=list)  # echo: record of prompt[i] at [i]
    done: threading.Event = field(default_factory=threading.Event)
    result: GenerationResult | None = None
    error: BaseException | None = None
    cancelled: bool = False
    # Streaming: (sample index, text, TokenLogprob) per generated token, then None once done.
    progress: queue.SimpleQueue | None = None

    @property
    def prefilled(self) -> bool:
        return self.n_past >= len(self.prompt)


@dataclass(eq=False)
class Seq:
    """One sample of a job: a llama.cpp sequence id and the tokens generated so far."""

    id: int
    job: Job
    index: int
    rng: np.random.Generator
    n_past: int = 0  # tokens in the KV cache
    pending: int = -1  # sampled token not yet decoded
    gen: list[int] = field(default_factory=list)
    gen_records: list[Record] = field(default_factory=list)
    gen_texts: list[str] = field(default_factory=list)
    text: str = ""
    decoder: PieceDecoder = field(default_factory=PieceDecoder)
    finish_reason: str = ""


class Scheduler:
    """Queue in, batches through llama.cpp, results out; the only user of the model's context."""

    def __init__(self, model: LlamaModel, settings: Settings, *, n_seq_max: int) -> None:
        self.model = model
        self.settings = settings
        self.n_batch = settings.n_batch
        self.free_ids: list[int] = list(range(n_seq_max))
        self.cache = PrefixCache(budget_tokens=settings.prefix_cache_cells)
        self.waiting: deque[Job] = deque()
        self.jobs: list[Job] = []  # admitted, not finished
        self.active: list[Seq] = []  # sequences generating (have a pending token)
        self._cv = threading.Condition()
        self._stopping = False
        self._start_lp = self._start_distribution()
        self._thread = threading.Thread(target=self._run, name="llama-scheduler", daemon=True)
        self._thread.start()

    # ---- called from HTTP threads ----

    def submit(self, job: Job) -> None:
        """Queue a job; the scheduler thread picks it up at its next step."""
        with self._cv:
            if self._stopping:
                raise EngineOverloaded("the engine is shutting down")
            self.waiting.append(job)
            self._cv.notify()

    def cancel(self, job: Job) -> None:
        """Ask for a job to be dropped (its client went away); its sequences are freed next step."""
        with self._cv:
            job.cancelled = True
            self._cv.notify()

    def load(self) -> dict[str, int]:
        """Requests running and queued, sequences generating, prefix-cache entries (a snapshot)."""
        return {
            "running": len(self.jobs),
            "queued": len(self.waiting),
            "generating_sequences": len(self.active),
            "prefix_cache_entries": len(self.cache),
        }

    def stop(self) -> None:
        """Finish the thread: queued and running jobs fail with EngineOverloaded."""
        with self._cv:
            self._stopping = True
            self._cv.notify()
        self._thread.join(timeout=30)

    # ---- the scheduler thread ----

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._stopping and not self.waiting and not self.jobs:
                    self._cv.wait()
                if self._stopping:
                    break
            try:
                self._step()
            except Exception:  # a bug must not kill the thread: fail what was running, go on
                log.exception("scheduler step failed")
                for job in list(self.jobs):
                    self._fail(job, EngineError("internal error in the scheduler"))
        for job in list(self.jobs) + list(self.waiting):
            self._fail(job, EngineOverloaded("the engine is shutting down"))

    def _step(self) -> None:
        self._drop_cancelled()
        self._admit()
        batch = self._build_batch()
        if batch is None:
            return
        tokens, pos, seq, want, owners = batch
        try:
            logits = self.model.decode(tokens, pos, seq, want)
        except DecodeFailed as exc:
            self._on_decode_failure(exc, owners)
            return
        self._dispatch(logits, owners)

    def _drop_cancelled(self) -> None:
        with self._cv:
            gone = [j for j in self.waiting if j.cancelled]
            for j in gone:
                self.waiting.remove(j)
        for job in gone + [j for j in self.jobs if j.cancelled]:
            self._fail(job, RequestCancelled("the client disconnected"))

    def _admit(self) -> None:
        """Move waiting jobs in while sequence ids and KV cells allow, oldest first. A job whose
        prompt prefix a running request is still computing steps aside (it will share that prefix
        soon) and lets the jobs behind it go first."""
        while True:
            with self._cv:
                if self.settings.deterministic and self.jobs:
                    return  # one request at a time
                job = next((j for j in self.waiting if not self._worth_waiting(j)), None)
                if job is None:
                    return
                source, n_shared = self._best_source(job)
                # Cells the job may add: the prompt beyond the shared prefix, every sample's tokens.
                job.need_cells = len(job.prompt) - n_shared + job.req.num_samples * job.req.max_new_tokens
                n = job.req.num_samples
                room = self.settings.kv_cells - sum(j.need_cells for j in self.jobs)
                running = sum(len(j.seqs) for j in self.jobs)
                if job.need_cells > room or running + n > self.settings.n_parallel:
                    return  # only running jobs can make room: wait for them

                def fits() -> bool:
                    return len(self.free_ids) >= n and self.cache.tokens + job.need_cells <= room

                # Evict least recently used cache entries (the shared one last) until the job fits.
                while not fits():
                    victims = [e for e in self.cache.entries if e is not source]
                    if not victims:
                        break
                    self._evict(min(victims, key=lambda e: e.last_used))
                if not fits():
                    if self.jobs or source is None or source not in self.cache.entries:
                        return  # running jobs will free ids and cells
                    self._evict(source)  # idle, and the shared entry itself is in the way: drop it
                    continue
                self.waiting.remove(job)
            self._start(job, source, n_shared)

    def _start(self, job: Job, source: CacheEntry | None, n_shared: int) -> None:
        if self.settings.deterministic:
            self.model.clear()  # the same cells and extent for the same request, every time
        n = job.req.num_samples
        ids = [self.free_ids.pop() for _ in range(n)]
        job.seqs = [
            Seq(id=i, job=job, index=k, rng=np.random.default_rng([job.rng_seed, k])) for k, i in enumerate(ids)
        ]
        job.records = [None] * len(job.prompt)
        if job.req.echo_prompt and job.n_hidden == 0:  # no BOS shown before it: score it after the start token
            job.records[0] = self._record(self._start_lp, job.prompt[0], job.req.top_k_per_token)
        if job.req.max_new_tokens == 0 and not job.req.echo_prompt:
            self.jobs.append(job)
            self._finish_job(job)  # nothing to compute
            return
        if source is not None:
            self._share_prefix(job, source, n_shared)
        self.jobs.append(job)
        self.cache.admitted()
        for entry in self.cache.stale(STALE_AFTER_ADMISSIONS * self.settings.n_parallel):
            self._evict(entry)

    def _running_prefixes(self) -> list[CacheEntry]:
        """The prompt part already in the KV cache of each running request, as sharable sources."""
        return [
            CacheEntry(seq_id=j.seqs[0].id, tokens=j.prompt[: j.n_past], records=j.records[: j.n_past], origin=j.number)
            for j in self.jobs
            if j.seqs and j.n_past > 0 and not j.done.is_set()
        ]

    def _worth_waiting(self, job: Job) -> bool:
        """True while a running request is still prefilling a prefix this job shares (>= 32 tokens)
        beyond what is computed: admitting the job later saves recomputing that prefix."""
        if self.settings.prefix_cache_cells <= 0:
            return False
        for j in self.jobs:
            if j.prefilled or not j.seqs:
                continue
            shared = common_prefix(j.prompt, job.prompt)
            if shared >= 32 and shared > j.n_past:
                return True
        return False

    def _best_source(self, job: Job) -> tuple[CacheEntry | None, int]:
        """The longest prefix of the prompt already in the KV cache: in the prefix cache, or in a
        request still running; and its length (the last prompt token is always computed)."""
        if self.settings.prefix_cache_cells <= 0:
            return None, 0
        k = job.req.top_k_per_token if job.req.echo_prompt else 0
        return self.cache.best_prefix(
            job.prompt, limit=len(job.prompt) - 1, need_top_k=k, extra=self._running_prefixes()
        )

    def _share_prefix(self, job: Job, source: CacheEntry, n: int) -> None:
        """Make the job's lead sequence share the source's first n cells instead of recomputing them."""
        lead = job.seqs[0]
        self.model.seq_cp(source.seq_id, lead.id, 0, n)
        lead.n_past = job.n_past = job.n_cached = n
        job.parent = source.origin
        if job.req.echo_prompt:  # positions 1..n are scored by logits that are not recomputed
            k = job.req.top_k_per_token
            for i in range(1, n + 1):
                job.records[i] = source.records[i].truncated(k)
        if source in self.cache.entries and n >= MIN_SHARE_TO_KEEP:
            self.cache.touch(source)  # a short common head ("The following are ...") keeps nothing alive

    def _build_batch(self):
        """One step: a token for every generating sequence, then prompt chunks, oldest job first,
        within N_BATCH tokens and OUTPUTS_PER_STEP logits rows."""
        budget = self.n_batch
        outputs = OUTPUTS_PER_STEP
        tokens: list[int] = []
        pos: list[int] = []
        seq: list[int] = []
        want: list[bool] = []
        owners: list[tuple] = []  # per wanted row: ("gen", Seq) or ("prompt", Job, position)
        for s in self.active[:budget]:
            tokens.append(s.pending)
            pos.append(s.n_past)
            seq.append(s.id)
            want.append(True)
            owners.append(("gen", s))
        budget -= len(tokens)
        outputs -= len(tokens)
        for job in self.jobs:
            if budget <= 0:
                break
            if job.prefilled or job.done.is_set():
                continue
            lead = job.seqs[0]
            start = job.n_past
            last = len(job.prompt) - 1
            p = start
            while p < len(job.prompt) and budget > 0:
                # Logits at p score prompt[p+1] (echo) or choose the first new token (p == last).
                need = (job.req.echo_prompt and p < last) or (p == last and job.req.max_new_tokens > 0)
                if need and outputs <= 0:
                    break  # the rest of this prompt waits for the next step
                tokens.append(job.prompt[p])
                pos.append(p)
                seq.append(lead.id)
                want.append(need)
                if need:
                    owners.append(("prompt", job, p))
                    outputs -= 1
                budget -= 1
                p += 1
            if p > start:
                owners.append(("advance", job, p))
        if not tokens:
            return None
        return (
            np.asarray(tokens, dtype=np.int32),
            np.asarray(pos, dtype=np.int32),
            np.asarray(seq, dtype=np.int32),
            np.asarray(want, dtype=bool),
            owners,
        )

    def _dispatch(self, logits: np.ndarray, owners: list[tuple]) -> None:
        row = 0
        prompt_rows: dict[int, list[tuple[int, int]]] = {}  # id(job) -> [(position, row)]
        jobs_by_id: dict[int, Job] = {}
        gen_rows: list[tuple[Seq, int]] = []
        advances: list[tuple[Job, int]] = []
        for owner in owners:
            if owner[0] == "gen":
                gen_rows.append((owner[1], row))
                row += 1
            elif owner[0] == "prompt":
                prompt_rows.setdefault(id(owner[1]), []).append((owner[2], row))
                jobs_by_id[id(owner[1])] = owner[1]
                row += 1
            else:
                advances.append((owner[1], owner[2]))
        for s, r in gen_rows:
            s.n_past += 1
            self._guarded(s.job, self._sample, s, logits[r])
        for job, upto in advances:
            job.seqs[0].n_past = job.n_past = upto
        for key, rows in prompt_rows.items():
            self._guarded(jobs_by_id[key], self._score_prompt, jobs_by_id[key], rows, logits)
        for job, _ in advances:
            if job.prefilled and not job.done.is_set() and job.req.max_new_tokens == 0:
                self._finish_job(job)

    def _guarded(self, job: Job, fn: Callable, *args) -> None:
        """Run one job's share of a step; an exception fails that job only."""
        if job.done.is_set():
            return
        try:
            fn(*args)
        except Exception as exc:
            log.exception("request failed inside the scheduler")
            self._fail(job, exc if isinstance(exc, EngineError) else EngineError("internal error"))

    def _score_prompt(self, job: Job, rows: list[tuple[int, int]], logits: np.ndarray) -> None:
        last = len(job.prompt) - 1
        k = job.req.top_k_per_token
        echo = [(p, r) for p, r in rows if p < last] if job.req.echo_prompt else []
        # Logprob and top-k of the next prompt token at each position, 64 rows at a time (bounded
        # temporaries: 64 x n_vocab floats, whatever the prompt's length).
        for c in range(0, len(echo), 64):
            part = echo[c : c + 64]
            r0, r1 = part[0][1], part[-1][1] + 1
            # A job's rows are contiguous in the batch: a slice is a view, not a 64 x n_vocab copy.
            block = logits[r0:r1] if r1 - r0 == len(part) else logits[[r for _, r in part]]  # [m, n_vocab]
            targets = np.array([job.prompt[p + 1] for p, _ in part])
            lse = logsumexp_rows(block)
            lp = block[np.arange(len(part)), targets].astype(np.float64) - lse
            top = top_k_rows(block, k)  # [m, k] ids, best first
            top_lp = np.take_along_axis(block, top, axis=1).astype(np.float64) - lse[:, None]
            for j, (p, _) in enumerate(part):
                job.records[p + 1] = Record(float(lp[j]), top[j], top_lp[j])
        for p, r in rows:
            if p == last:
                self._begin_generation(job, logits[r])

    def _begin_generation(self, job: Job, row: np.ndarray) -> None:
        """The prompt is in: every sample shares its KV and draws its first token from `row`."""
        lead = job.seqs[0]
        for s in job.seqs[1:]:
            self.model.seq_cp(lead.id, s.id, -1, -1)
            s.n_past = lead.n_past
        for s in job.seqs:
            self._sample(s, row)

    def _sample(self, s: Seq, row: np.ndarray) -> None:
        req = s.job.req
        tok = choose_token(row, req.sampling, s.rng)
        if s in self.active:
            self.active.remove(s)
        if self.model.eog[tok]:
            if req.include_eog:  # returned as the last token, text "" (as OpenAI and vLLM do)
                lp, top, top_lp = token_logprob_and_top(row, tok, req.top_k_per_token)
                s.gen.append(tok)
                s.gen_records.append(Record(lp, top, top_lp))
                s.gen_texts.append("")
            return self._finish_seq(s, "eos")
        lp, top, top_lp = token_logprob_and_top(row, tok, req.top_k_per_token)
        s.gen.append(tok)
        s.gen_records.append(Record(lp, top, top_lp))
        before = len(s.text)
        piece = s.decoder.feed(self.model.pieces[tok])
        s.gen_texts.append(piece)
        s.text += piece
        if s.job.progress is not None:
            s.job.progress.put((s.index, piece, self._token(piece, s.gen_records[-1])))
        if req.stop_sequences:
            cut = find_stop(s.text, req.stop_sequences, stop_search_start(before, req.stop_sequences))
            if cut != -1:
                n_keep, last_text = cut_tokens(s.gen_texts, cut)
                del s.gen[n_keep:], s.gen_records[n_keep:], s.gen_texts[n_keep:]
                if n_keep:
                    s.gen_texts[-1] = last_text
                s.text = s.text[:cut]
                return self._finish_seq(s, "stop")
        if len(s.gen) >= req.max_new_tokens:
            return self._finish_seq(s, "length")
        s.pending = tok
        self.active.append(s)

    def _finish_seq(self, s: Seq, reason: str) -> None:
        if reason != "stop":
            tail = s.decoder.flush()  # bytes of an unfinished character, as U+FFFD
            if tail and s.gen_texts:
                s.gen_texts[-1] += tail
                s.text += tail
        s.finish_reason = reason
        if all(x.finish_reason for x in s.job.seqs):
            self._finish_job(s.job)

    def _finish_job(self, job: Job) -> None:
        try:
            job.result = self._result(job)
        except Exception:
            log.exception("could not assemble a result")
            job.error = EngineError("internal error")
        self._release(job)
        job.done.set()
        if job.progress is not None:
            job.progress.put(None)

    def _fail(self, job: Job, error: BaseException) -> None:
        if job.done.is_set():
            return
        job.error = error
        self._release(job, keep=False)
        job.done.set()
        if job.progress is not None:
            job.progress.put(None)

    def _release(self, job: Job, *, keep: bool = True) -> None:
        """Return the job's sequences: the lead becomes a prefix-cache entry, the rest are freed."""
        for s in job.seqs:
            if s in self.active:
                self.active.remove(s)
        if job in self.jobs:
            self.jobs.remove(job)
        for s in job.seqs:
            if keep and s.index == 0 and self.settings.prefix_cache_cells > 0 and s.n_past > 0:
                tokens = job.prompt[: min(s.n_past, len(job.prompt))] + s.gen[: max(0, s.n_past - len(job.prompt))]
                records = job.records[: len(job.prompt)] + list(s.gen_records)
                entry = CacheEntry(seq_id=s.id, tokens=tokens, records=records[: len(tokens)], origin=job.number,
                                   parent=job.parent, n_shared=job.n_cached)
                for dropped in self.cache.add(entry):
                    self._free(dropped.seq_id)
            else:
                self._free(s.id)

    def _free(self, seq_id: int) -> None:
        self.model.seq_rm(seq_id)
        self.free_ids.append(seq_id)

    def _evict(self, entry: CacheEntry) -> None:
        self.cache.remove(entry)
        self._free(entry.seq_id)

    def _on_decode_failure(self, exc: DecodeFailed, owners: list[tuple]) -> None:
        """No KV slot (rc 1): drop the prefix cache and retry next step; otherwise fail the batch."""
        if exc.rc == 1 and self.cache:
            log.warning("KV cache full: dropping %d prefix-cache entries", len(self.cache))
            while self.cache:
                self._evict(self.cache.lru())
            return
        for owner in owners:
            job = owner[1].job if owner[0] == "gen" else owner[1]
            self._fail(job, EngineError(str(exc)))

    # ---- results ----

    def _record(self, lp_row: np.ndarray, token: int, k: int) -> Record:
        top = top_k_rows(lp_row[None, :], k)[0]
        return Record(float(lp_row[token]), top, lp_row[top].astype(np.float64))

    def _start_distribution(self) -> np.ndarray:
        """Log-softmax after the document-start token alone: scores an echoed prompt's first token
        for models that add no BOS (computed once, in a scratch sequence)."""
        scratch = self.free_ids[-1]
        t = self.model.start_token()
        logits = self.model.decode(
            np.array([t], np.int32), np.array([0], np.int32), np.array([scratch], np.int32), np.array([True])
        )
        self.model.seq_rm(scratch)
        return log_softmax(logits[0]).astype(np.float32)

    def _token(self, text: str, rec: Record) -> TokenLogprob:
        top: dict[str, float] = {}
        for t, v in zip(rec.top_ids.tolist(), rec.top_lps.tolist()):
            top.setdefault(self.model.pieces[t].decode("utf-8", errors="replace"), v)
        return TokenLogprob(text=text, logprob=rec.logprob, top_logprob=top)

    def _result(self, job: Job) -> GenerationResult:
        req = job.req
        prompt_tokens: list[TokenLogprob] = []
        if req.echo_prompt:
            shown = job.prompt[job.n_hidden :]
            texts = piece_texts(self.model.pieces[t] for t in shown) if shown else []
            for i, text in enumerate(texts):
                rec = job.records[job.n_hidden + i]
                assert rec is not None, f"echo record missing at prompt position {job.n_hidden + i}"
                prompt_tokens.append(self._token(text, rec.truncated(req.top_k_per_token)))
        completions = []
        for s in sorted(job.seqs, key=lambda x: x.index):
            gen = [self._token(t, r) for t, r in zip(s.gen_texts, s.gen_records)]
            tokens = prompt_tokens + gen
            text = (req.prompt if req.echo_prompt else "") + s.text
            completions.append(
                Completion(
                    text=text,
                    tokens=tokens,
                    logprob=float(sum(t.logprob for t in tokens)),
                    finish_reason=s.finish_reason or "length",
                )
            )
        return GenerationResult(completions=completions, n_prompt_tokens=len(job.prompt), n_cached_tokens=job.n_cached)

