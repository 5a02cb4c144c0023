"""The engine: the one object the HTTP layer talks to. It owns the model and its scheduler."""
from __future__ import annotations

import json
import logging
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
    RequestCancelled,
    TokenOutOfRange,
)
from app.engine.types import GenerationRequest, GenerationResult, StreamPiece

log = logging.getLogger(__name__)

# How often a waiting request checks whether its client is still connected (seconds).
POLL_INTERVAL_S = 0.25


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
            self._manifest = _read_manifest(s)
            self._loaded_at = time.monotonic() - t0
            if s.n_ctx > self._model.info.n_ctx_train:
                log.warning("N_CTX=%d exceeds the model's training context of %d", s.n_ctx, self._model.info.n_ctx_train)
            log.info("loaded %s (%s) in %.1f s", s.model_path.name, self._model.info.description, self._loaded_at)
            self._ready.set()
        except Exception as exc:  # noqa: BLE001 - reported by /health, logged in full
            log.exception("could not load the model")
            self._load_error = str(exc)

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

    # ---- what /health reports ----

    def info(self) -> dict[str, Any]:
        """Model and engine facts; {"status": "loading"|"error"} before the model is up."""
        s = self.settings
        if not self._ready.is_set():
            status = "error" if self._load_error else "loading"
            return {"status": status, "model_file": s.model_path.name, "error": self._load_error}
        mi = self._model.info
        sched = self._scheduler
        return {
            "status": "ok" if sched.alive else "error",
            "error": None if sched.alive else f"the scheduler is not running ({sched.dead or 'stopped'})",
            "model": s.model_name or mi.name,
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
            "manifest": self._manifest or None,
        }

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
        """Run one request through the scheduler and wait for its answer."""
        job = self._submit(req, progress=None)
        while not job.done.wait(POLL_INTERVAL_S):
            if is_disconnected is not None and is_disconnected():
                self._scheduler.cancel(job)
                job.done.wait()
        return self._answer(job)

    def stream(
        self, req: GenerationRequest, *, is_disconnected: Callable[[], bool] | None = None
    ) -> Iterator[StreamPiece | GenerationResult]:
        """Yield each generated token's text as it comes (StreamPiece), then the GenerationResult.
        Closing the iterator early cancels the request and frees its slots."""
        job = self._submit(req, progress=queue.SimpleQueue())
        try:
            while True:
                try:
                    item = job.progress.get(timeout=POLL_INTERVAL_S)
                except queue.Empty:
                    if is_disconnected is not None and is_disconnected():
                        self._scheduler.cancel(job)
                        job.done.wait()
                        raise RequestCancelled("the client disconnected") from None
                    continue
                if item is None:
                    break
                yield StreamPiece(index=item[0], text=item[1])
            yield self._answer(job)
        finally:
            if not job.done.is_set():
                self._scheduler.cancel(job)

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
        from app.engine.jobs import Job

        model = self._require()
        prompt = self.prompt_tokens(req)
        if not prompt:
            raise EmptyPrompt()
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
        self._scheduler.submit(job)
        return job

    def _answer(self, job) -> GenerationResult:
        from app.engine.outputs import build_result

        if job.error is not None:
            raise job.error
        return build_result(job, self._model.pieces)

    # ---- what /metrics reads ----

    def stats(self) -> dict[str, Any]:
        """Counters and gauges for metrics, a snapshot: running/queued requests, KV use (0..1),
        prompt and generated tokens, prefix-cache queries and hits (tokens), finished by reason."""
        if not self._ready.is_set():
            return {"running": 0, "queued": 0, "kv_cache_usage": 0.0, "prompt_tokens_total": 0,
                    "generation_tokens_total": 0, "prefix_cache_queries_total": 0, "prefix_cache_hits_total": 0,
                    "requests_finished_total": {}}
        sched = self._scheduler
        c = dict(sched.counters)
        slots = sched.table.slots
        return {
            "running": len(sched.jobs),
            "queued": len(sched.waiting),
            "kv_cache_usage": sum(1 for s in slots if s.owner is not None) / len(slots),
            "prompt_tokens_total": c.get("prompt_tokens", 0),
            "generation_tokens_total": c.get("generation_tokens", 0),
            "prefix_cache_queries_total": c.get("prefix_cache_queries", 0),
            "prefix_cache_hits_total": c.get("prefix_cache_hits", 0),
            "requests_finished_total": {k.removeprefix("finished_"): v for k, v in c.items() if k.startswith("finished_")},
        }

    def chat_template(self) -> str | None:
        """The GGUF's own chat template (tokenizer.chat_template), if it has one."""
        return self._require().info.chat_template

    def special_tokens(self) -> dict[str, str]:
        """Texts of the model's BOS and EOS tokens."""
        info = self._require().info
        return {"bos_token": info.bos_text, "eos_token": info.eos_text}


def _read_manifest(settings: Settings) -> dict[str, Any]:
    """Key facts of the engine being served, from models/<name>/manifest.json beside the GGUF
    (written by build_engine; its "engines" hold one entry per quant level)."""
    path = settings.model_path.parent / "manifest.json"
    if not path.is_file():
        return {}
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        log.warning("could not read %s", path)
        return {}
    served = settings.model_path.resolve().name  # Docker serves model.gguf, a link to NAME-QUANT.gguf
    engine = next((e for e in manifest.get("engines", {}).values() if e.get("file") == served), None)
    if engine is None:
        return {}
    source = manifest.get("source", {})
    return {
        "name": manifest.get("name"),
        "source": source.get("id"),
        "revision": source.get("revision"),
        "quant": engine.get("quant"),
        "sha256": engine.get("sha256"),
        "size_bytes": engine.get("size_bytes"),
        "llama_cpp_python": manifest.get("versions", {}).get("llama-cpp-python"),
        "llama_cpp_commit": manifest.get("converter", {}).get("llama_cpp_commit"),
        "built_at": engine.get("built_at"),
        "quality": manifest.get("quality", {}).get("rows", {}).get(engine.get("quant")),
    }
