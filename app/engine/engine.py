"""The engine: the one object the HTTP layer talks to. It owns the model and its scheduler."""
from __future__ import annotations

import itertools
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
    EngineError,
    EngineNotReady,
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
        self._numbers = itertools.count()  # request serial numbers

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
        # Sequences: n_parallel running samples, as many again for prefix-cache entries, one scratch.
        n_seq_max = 2 * s.n_parallel + 1
        try:
            t0 = time.monotonic()
            self._model = LlamaModel(s, n_seq_max=n_seq_max)
            self._scheduler = Scheduler(self._model, s, n_seq_max=n_seq_max)
            self._manifest = _read_manifest(s)
            self._loaded_at = time.monotonic() - t0
            if s.n_ctx > self._model.info.n_ctx_train:
                log.warning("N_CTX=%d exceeds the model's training context of %d", s.n_ctx, self._model.info.n_ctx_train)
            log.info("loaded %s (%s) in %.1f s", s.model_path, self._model.info.description, self._loaded_at)
            self._ready.set()
        except Exception as exc:  # noqa: BLE001 - reported by /health, logged in full
            log.exception("could not load the model")
            self._load_error = str(exc)

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def close(self) -> None:
        """Stop the scheduler and free llama.cpp's memory."""
        if self._scheduler is not None:
            self._scheduler.stop()
        if self._model is not None:
            self._model.close()
        self._ready.clear()

    def _require(self):
        if not self._ready.is_set():
            raise EngineNotReady(
                f"the model failed to load: {self._load_error}" if self._load_error else "the model is still loading"
            )
        return self._model

    # ---- what /health reports ----

    def info(self) -> dict[str, Any]:
        """Model and engine facts; {"status": "loading"|"error"} before the model is up."""
        s = self.settings
        if not self._ready.is_set():
            status = "error" if self._load_error else "loading"
            return {"status": status, "model_path": str(s.model_path), "error": self._load_error}
        mi = self._model.info
        return {
            "status": "ok",
            "model": s.model_name or mi.name,
            "model_path": str(s.model_path),
            "quant": self._manifest.get("quant") or mi.file_type,
            "description": mi.description,
            "n_params": mi.n_params,
            "size_bytes": mi.size_bytes,
            "n_vocab": mi.n_vocab,
            "n_ctx": s.n_ctx,
            "n_ctx_train": mi.n_ctx_train,
            "kv_cache_tokens": s.kv_cells,
            "kv_cache_bytes": s.kv_cells * mi.kv_bytes_per_cell,
            "n_parallel": s.n_parallel,
            "n_batch": s.n_batch,
            "n_threads": s.threads,
            "gpu_offload": mi.gpu_offload,
            "n_gpu_layers": s.n_gpu_layers if mi.gpu_offload else 0,
            "add_bos": mi.add_bos,
            "load_seconds": round(self._loaded_at or 0.0, 3),
            **self._scheduler.load(),
            "manifest": self._manifest or None,
        }

    # ---- tokenizer (no scheduler: never waits behind generation) ----

    def tokenize(
        self,
        text: str,
        *,
        truncation: bool = False,
        max_length: int | None = None,
        add_special: bool = True,
        parse_special: bool | None = None,
    ) -> list[int]:
        """Token ids the model sees for `text` (BOS included where the model adds one and add_special
        is set; special-token texts parsed per parse_special, default the PARSE_SPECIAL setting)."""
        parse = self.settings.parse_special if parse_special is None else parse_special
        ids = self._require().tokenize(text, add_special=add_special, parse_special=parse)
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

    def special_tokens(self) -> dict[str, str | None]:
        """Texts of the BOS and EOS tokens ("<|im_start|>", "<|im_end|>"), None where there is none."""
        model = self._require()
        ids = model.special_token_ids()
        return {f"{k}_token": model.token_text(v) if v is not None else None for k, v in ids.items()}

    def chat_template(self) -> str | None:
        """The model's own chat template (GGUF tokenizer.chat_template), None if it has none."""
        return self._require().chat_template()

    # ---- generation and scoring ----

    def generate(
        self, req: GenerationRequest, *, is_disconnected: Callable[[], bool] | None = None
    ) -> GenerationResult:
        """Run one request through the scheduler and wait for it."""
        job = self._job(req)
        self._scheduler.submit(job)
        while not job.done.wait(POLL_INTERVAL_S):
            if is_disconnected is not None and is_disconnected():
                self._scheduler.cancel(job)
                job.done.wait()
                break
        return self._outcome(job)

    def stream(
        self, req: GenerationRequest, *, is_disconnected: Callable[[], bool] | None = None
    ) -> Iterator[StreamPiece | GenerationResult]:
        """Run one request: it is checked and queued at the call (errors raise here); iterating the
        answer yields each generated token as it comes (StreamPiece), then the GenerationResult.
        Closing the iterator early cancels the request and frees its sequences."""
        job = self._job(req)
        job.progress = queue.SimpleQueue()
        self._scheduler.submit(job)
        return self._follow(job, is_disconnected)

    def _follow(self, job, is_disconnected: Callable[[], bool] | None) -> Iterator[StreamPiece | GenerationResult]:
        try:
            while True:
                try:
                    item = job.progress.get(timeout=POLL_INTERVAL_S)
                except queue.Empty:
                    item = ()  # nothing new: still look at the client
                if item is None:
                    break
                if is_disconnected is not None and is_disconnected():
                    self._scheduler.cancel(job)
                    job.done.wait()
                    break
                if item:
                    yield StreamPiece(index=item[0], text=item[1], token=item[2])
            yield self._outcome(job)
        finally:
            if not job.done.is_set():  # the consumer stopped early: drop the job
                self._scheduler.cancel(job)

    def _job(self, req: GenerationRequest):
        """Tokenize (or take the given ids), check the context, make the scheduler's job."""
        from app.engine.scheduler import Job

        model = self._require()
        if req.prompt_ids is not None:
            for i, t in enumerate(req.prompt_ids):
                if not 0 <= t < model.n_vocab:
                    raise TokenOutOfRange(i, t, model.n_vocab)
            prompt, n_hidden = list(req.prompt_ids), 0  # used as given: nothing added, nothing hidden
        else:
            parse = self.settings.parse_special if req.parse_special is None else req.parse_special
            prompt = model.tokenize(req.prompt, add_special=True, parse_special=parse)
            n_hidden = 1 if model.info.add_bos else 0
        n_ctx = self.settings.n_ctx
        if len(prompt) + req.max_new_tokens > n_ctx:
            raise ContextLengthExceeded(len(prompt), req.max_new_tokens, n_ctx)
        need = len(prompt) + req.num_samples * req.max_new_tokens
        if need > self.settings.kv_cells:
            raise ContextLengthExceeded(
                len(prompt), req.num_samples * req.max_new_tokens, self.settings.kv_cells, n_samples=req.num_samples
            )
        seed = req.seed if req.seed is not None else self.settings.default_seed
        job = Job(
            number=next(self._numbers),
            req=req,
            prompt=prompt,
            n_hidden=n_hidden,
            rng_seed=seed if seed >= 0 else secrets.randbits(63),
        )
        return job

    @staticmethod
    def _outcome(job) -> GenerationResult:
        if job.error is not None:
            raise job.error
        if job.result is None:
            raise EngineError("the scheduler finished a request without a result")
        return job.result


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
