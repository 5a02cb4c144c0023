"""The engine: the one object the HTTP layer talks to. It owns the model and its scheduler."""
from __future__ import annotations

import logging
import math
import queue
import secrets
import threading
import time
from typing import Any, Callable, Iterator, Sequence

from app.config import Settings
from app.engine.errors import (
    ContextLengthExceeded,
    EmptyPrompt,
    EngineError,
    EngineNotReady,
    QueueFull,
    RequestCancelled,
    RequestTimedOut,
    TokenOutOfRange,
)
from app.engine.manifest import read_manifest
from app.engine.stats import EngineCounters
from app.engine.types import GenerationRequest, GenerationResult, StreamPiece

log = logging.getLogger(__name__)

# How often a waiting request checks whether its client is still connected (seconds).
POLL_INTERVAL_S = 0.25
# How long a cancelled request waits for the scheduler to free its slots before the HTTP thread
# gives up on it (a healthy scheduler takes one step; a wedged one must not hold threads).
CANCEL_WAIT_S = 30.0


class Engine:
    """Loads a GGUF model (in the background) and serves tokenize/decode/generate from any thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._model = None  # app.engine.llama.LlamaModel once loaded
        self._scheduler = None  # app.engine.scheduler.Scheduler once loaded
        self._ready = threading.Event()
        self._load_error: str | None = None
        self._loaded_at: float | None = None
        self._manifest: dict[str, Any] = {}
        self.counters = EngineCounters()
        self._in_flight = 0  # requests submitted and not yet returned
        self._admission = threading.Lock()  # guards _in_flight against the queue limit

    # ---- lifecycle ----

    def start(self, *, background: bool = True) -> "Engine":
        """Load the model; in the background by default so /health can answer 503 meanwhile."""
        if background:
            threading.Thread(target=self._load, name="engine-load", daemon=True).start()
        else:
            self._load()
            if self._load_error:
                raise EngineNotReady(self._load_error)
        return self

    def _load(self) -> None:
        # Imported here: importing the engine package must not load llama.cpp.
        from app.engine.llama import LlamaModel
        from app.engine.scheduler import Scheduler

        s = self.settings
        try:
            t0 = time.monotonic()
            self._model = LlamaModel(s, n_slots=s.n_slots)
            self._scheduler = Scheduler(self._model, s)
            self._manifest = read_manifest(s)
            self._loaded_at = time.monotonic() - t0
            if s.n_ctx > self._model.info.n_ctx_train:
                log.warning("N_CTX=%d exceeds the model's training context of %d", s.n_ctx, self._model.info.n_ctx_train)
            log.info("loaded %s (%s) in %.1f s", s.model_path.name, self._model.info.description, self._loaded_at)
            self._ready.set()
        except Exception as exc:  # noqa: BLE001 - reported by /health, logged in full
            log.exception("could not load the model")
            self._load_error = _file_names_only(str(exc), s.model_path)

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def close(self) -> None:
        """Stop the scheduler and free llama.cpp's memory (only once its thread has stopped: freeing
        a context a running thread still uses would crash the process)."""
        self._ready.clear()
        stopped = self._scheduler.stop() if self._scheduler is not None else True
        if self._model is not None and stopped:
            self._model.close()
        elif not stopped:
            log.error("the scheduler thread did not stop in time; llama.cpp's memory is left to the process exit")

    def _require(self):
        if not self._ready.is_set():
            raise EngineNotReady(
                f"the model failed to load: {self._load_error}" if self._load_error else "the model is still loading"
            )
        if not self._scheduler.alive:
            raise EngineNotReady(f"the scheduler is not running ({self._scheduler.dead or 'stopped'})")
        return self._model

    # ---- what /health and /metrics report ----

    def info(self) -> dict[str, Any]:
        """Model and engine facts; {"status": "loading"|"error"} before the model is up."""
        s = self.settings
        if not self._ready.is_set():
            status = "error" if self._load_error else "loading"
            return {"status": status, "model_file": s.model_path.name, "error": self._load_error, **self.limits()}
        mi = self._model.info
        sched = self._scheduler
        counts = self.counters.snapshot()
        return {
            "status": "ok" if sched.alive else "error",
            "error": None if sched.alive else f"the scheduler is not running ({sched.dead or 'stopped'})",
            "model": self.model_name,
            "model_file": s.model_path.name,
            "quant": self._manifest.get("quant") or mi.file_type,
            "description": mi.description,
            "n_params": mi.n_params,
            "size_bytes": mi.size_bytes,
            "n_vocab": mi.n_vocab,
            "n_ctx": s.n_ctx,
            "n_ctx_train": mi.n_ctx_train,
            "kv_cache_tokens": s.kv_cells,
            "kv_cache_bytes": s.kv_cells * mi.kv_bytes_per_cell,
            "kv_slots": s.n_slots,
            "n_parallel": s.n_parallel,
            "n_batch": s.n_batch,
            "chunk_tokens": s.chunk_tokens,
            "decode_group_limit": sched.group_limit,
            "deterministic": s.deterministic,
            "n_threads": s.threads,
            "gpu_offload": mi.gpu_offload,
            "n_gpu_layers": s.n_gpu_layers if mi.gpu_offload else 0,
            "add_bos": mi.add_bos,
            "load_seconds": round(self._loaded_at or 0.0, 3),
            **sched.load(),
            "in_flight": self._in_flight,
            "kv_cache_usage": self.stats()["kv_cache_usage"],
            "rejected_queue_full": counts["rejected_queue_full_total"],
            "timed_out": counts["timed_out_total"],
            **self.limits(),
            "manifest": self._manifest or None,
        }

    @property
    def model_name(self) -> str:
        """The served model's name: MODEL_NAME, else the GGUF's general.name, else its file name."""
        if self.settings.model_name:
            return self.settings.model_name
        return self._model.info.name if self._ready.is_set() else self.settings.model_path.stem

    def limits(self) -> dict[str, int]:
        """The largest values this server accepts, for clients (also in the served openapi.json)."""
        s = self.settings
        return {
            "max_new_tokens": s.n_ctx,
            "max_num_samples": s.max_num_samples,
            "max_top_k_per_token": s.max_top_k_per_token,
            "max_body_bytes": s.max_body_bytes,
            "max_queued": s.queue_limit,
            "request_timeout": s.request_timeout,
        }

    def stats(self) -> dict[str, Any]:
        """A snapshot for /metrics: requests running and queued, KV use (0..1: slots running a
        sequence, of all KV slots), totals since start."""
        running = queued = 0
        usage = 0.0
        if self._ready.is_set():
            load = self._scheduler.load()
            running, queued = load["running"], load["queued"]
            usage = load["kv_slots_in_use"] / self.settings.n_slots
        return {"running": running, "queued": queued, "kv_cache_usage": usage, **self.counters.snapshot()}

    def chat_template(self) -> str | None:
        """The GGUF's own chat template (tokenizer.chat_template), if it has one."""
        return self._require().info.chat_template

    def special_tokens(self) -> dict[str, str]:
        """Texts of the model's BOS and EOS tokens."""
        info = self._require().info
        return {"bos_token": info.bos_text, "eos_token": info.eos_text}

    # ---- tokenizer (no scheduler: never waits behind generation) ----

    def tokenize(self, text: str, *, truncation: bool = False, max_length: int | None = None) -> list[int]:
        """Token ids the model sees for `text` (BOS included where the model adds one)."""
        ids = self._require().tokenize(text, add_special=True, parse_special=self.settings.parse_special)
        if truncation and max_length is not None:
            ids = ids[:max_length]
        return ids

    def decode(self, tokens: Sequence[int]) -> str:
        """Text of token ids; BOS, EOS and other control tokens render as nothing."""
        model = self._require()
        for i, t in enumerate(tokens):
            if not 0 <= t < model.n_vocab:
                raise TokenOutOfRange(i, t, model.n_vocab)
        return b"".join(model.pieces[t] for t in tokens).decode("utf-8", errors="replace")

    # ---- generation and scoring ----

    def generate(
        self, req: GenerationRequest, *, is_disconnected: Callable[[], bool] | None = None
    ) -> GenerationResult:
        """Run one request through the scheduler and wait for its answer (at most REQUEST_TIMEOUT)."""
        t0 = time.monotonic()
        job = self._submit(req, progress=None)
        try:
            timed_out = self._wait(job, t0, is_disconnected)
        finally:
            with self._admission:
                self._in_flight -= 1
        return self._answer(job, t0, timed_out)

    def stream(
        self, req: GenerationRequest, *, is_disconnected: Callable[[], bool] | None = None
    ) -> Iterator[StreamPiece | GenerationResult]:
        """Yield each generated token's text as it comes (StreamPiece), then the GenerationResult.
        Closing the iterator early cancels the request and frees its slots."""
        t0 = time.monotonic()
        job = self._submit(req, progress=queue.SimpleQueue())
        timeout = self.settings.request_timeout
        deadline = t0 + timeout if timeout > 0 else math.inf
        timed_out = False
        try:
            while True:
                try:
                    item = job.progress.get(timeout=POLL_INTERVAL_S)
                except queue.Empty:
                    if time.monotonic() >= deadline:
                        self._cancel(job, "deadline")
                        timed_out = True
                        break
                    if is_disconnected is not None and is_disconnected():
                        self._cancel(job, "client gone")
                        break
                    continue
                if item is None:
                    break
                yield StreamPiece(index=item[0], text=item[1])
            yield self._answer(job, t0, timed_out)
        finally:
            if not job.done.is_set():
                self._scheduler.cancel(job)
            with self._admission:
                self._in_flight -= 1

    def prompt_tokens(self, req: GenerationRequest) -> list[int]:
        """The token ids a request's prompt becomes (given ids are used as they are)."""
        model = self._require()
        if req.prompt_ids is not None:
            for i, t in enumerate(req.prompt_ids):
                if not 0 <= t < model.n_vocab:
                    raise TokenOutOfRange(i, t, model.n_vocab, field="prompt")
            return list(req.prompt_ids)
        return model.tokenize(req.prompt, add_special=True, parse_special=self.settings.parse_special)

    def _submit(self, req: GenerationRequest, *, progress: queue.SimpleQueue | None):
        """Validate and queue a request, or refuse it when N_PARALLEL + MAX_QUEUED are in flight."""
        from app.engine.jobs import Job

        model = self._require()
        prompt = self.prompt_tokens(req)
        if not prompt:
            raise EmptyPrompt(len(req.prompt))
        n_ctx = self.settings.n_ctx
        if len(prompt) + req.max_new_tokens > n_ctx:
            raise ContextLengthExceeded(len(prompt), req.max_new_tokens, n_ctx)
        seed = req.seed if req.seed is not None else self.settings.default_seed
        job = Job(
            req=req,
            prompt=prompt,
            n_hidden=1 if model.info.add_bos and req.prompt_ids is None else 0,
            rng_seed=seed if seed >= 0 else secrets.randbits(63),
            progress=progress,
        )
        limit = self.settings.n_parallel + self.settings.queue_limit
        with self._admission:
            if self._in_flight >= limit:
                self.counters.rejected()
                raise QueueFull(self._in_flight - self.settings.n_parallel, self._retry_after())
            self._scheduler.submit(job)
            self._in_flight += 1
        return job

    def _retry_after(self) -> int:
        """Seconds until a place frees up, about: the queue ahead, N_PARALLEL at a time, times the
        recent mean request duration (1..120)."""
        rounds = self.settings.queue_limit / self.settings.n_parallel + 1
        return int(min(120, max(1, math.ceil(rounds * self.counters.mean_request_s))))

    def _wait(self, job, t0: float, is_disconnected: Callable[[], bool] | None) -> bool:
        """Wait for the job; cancel it when its client goes away or its deadline passes.
        True when it was cancelled for the deadline."""
        timeout = self.settings.request_timeout
        deadline = t0 + timeout if timeout > 0 else math.inf
        while not job.done.wait(min(POLL_INTERVAL_S, max(0.0, deadline - time.monotonic()))):
            if time.monotonic() >= deadline:
                self._cancel(job, "deadline")
                return True
            if is_disconnected is not None and is_disconnected():
                self._cancel(job, "client gone")
                return False
        return False

    def _cancel(self, job, why: str) -> None:
        """Have the scheduler drop the job and free its slots; wait a bounded time for it."""
        self._scheduler.cancel(job)
        if not job.done.wait(CANCEL_WAIT_S):
            log.error("a request (%s) was not released by the scheduler within %.0f s", why, CANCEL_WAIT_S)
            job.error = job.error or RequestCancelled(f"cancelled ({why})")

    def _answer(self, job, t0: float, timed_out: bool) -> GenerationResult:
        """The finished job's result (built here, in the request's thread), counted in the totals."""
        from app.engine.outputs import build_result

        if timed_out and job.error is not None:  # (a result that beat the cancellation is still served)
            self.counters.aborted(job.req.num_samples, timed_out=True)
            raise RequestTimedOut(self.settings.request_timeout)
        if job.error is not None:
            if isinstance(job.error, RequestCancelled):
                self.counters.aborted(job.req.num_samples)
            raise job.error
        if not job.done.is_set():
            raise EngineError("the scheduler did not finish the request")
        result = build_result(job, self._model.pieces)
        self.counters.succeeded(
            n_prompt=result.n_prompt_tokens, n_cached=result.n_cached_tokens, n_generated=result.n_generated_tokens,
            reasons=[c.finish_reason for c in result.completions], seconds=time.monotonic() - t0,
        )
        return result


def _file_names_only(message: str, path) -> str:
    """A load error without the server's directories: the model's path becomes its file name."""
    for full in sorted({str(path), str(path.resolve())}, key=len, reverse=True):
        message = message.replace(full, path.name)
    for folder in sorted({str(path.parent), str(path.resolve().parent)}, key=len, reverse=True):
        if folder not in (".", "/"):
            message = message.replace(folder + "/", "")
    return message
