"""A fake engine for HTTP-layer unit tests only (ring 1): same interface, injected via ENGINE_FACTORY."""
from __future__ import annotations

import threading

from app.config import Settings
from app.engine.errors import ContextLengthExceeded, EngineError, EngineNotReady, TokenOutOfRange
from app.engine.types import Completion, GenerationRequest, GenerationResult, TokenLogprob


class FakeEngine:
    """Characters are tokens (id = code point); generation repeats the prompt's last character."""

    n_vocab = 0x110000

    def __init__(self, settings: Settings, *, ready: bool = True, fail_with: Exception | None = None) -> None:
        self.settings = settings
        self._ready = threading.Event()
        self._start_ready = ready
        self.fail_with = fail_with
        self.requests: list[GenerationRequest] = []

    def start(self) -> "FakeEngine":
        if self._start_ready:
            self._ready.set()
        return self

    model_name = "fake"

    def info(self) -> dict:
        if not self._ready.is_set():
            return {"status": "loading"}
        return {"status": "ok", "model": "fake", "quant": "none", "n_ctx": self.settings.n_ctx}

    def stats(self) -> dict:
        """What Engine.stats() reports, with the fake's own counts."""
        n = len(self.requests)
        return {"running": 0, "queued": 0, "kv_cache_usage": 0.25, "prompt_tokens_total": 7 * n,
                "generation_tokens_total": 3 * n, "prefix_cache_queries_total": 7 * n, "prefix_cache_hits_total": 2 * n,
                "requests_finished_total": {"length": n}, "rejected_queue_full_total": 0, "timed_out_total": 0}

    def _require(self) -> None:
        if not self._ready.is_set():
            raise EngineNotReady("the model is still loading")

    def tokenize(self, text: str, *, truncation: bool = False, max_length: int | None = None) -> list[int]:
        self._require()
        ids = [ord(c) for c in text]
        return ids[:max_length] if truncation and max_length is not None else ids

    def decode(self, tokens: list[int]) -> str:
        self._require()
        for i, t in enumerate(tokens):
            if not 0 <= t < self.n_vocab:
                raise TokenOutOfRange(i, t, self.n_vocab)
        return "".join(chr(t) for t in tokens)

    def generate(self, req: GenerationRequest, *, is_disconnected=None) -> GenerationResult:
        self._require()
        self.requests.append(req)
        if self.fail_with is not None:
            raise self.fail_with
        if len(req.prompt) + req.max_new_tokens > self.settings.n_ctx:
            raise ContextLengthExceeded(len(req.prompt), req.max_new_tokens, self.settings.n_ctx)
        gen = [TokenLogprob(req.prompt[-1], -0.5, {req.prompt[-1]: -0.5}) for _ in range(req.max_new_tokens)]
        shown = [TokenLogprob(c, -1.0, {c: -1.0}) for c in req.prompt] if req.echo_prompt else []
        tokens = shown + gen
        text = (req.prompt if req.echo_prompt else "") + req.prompt[-1] * req.max_new_tokens
        c = Completion(text=text, tokens=tokens, logprob=sum(t.logprob for t in tokens), finish_reason="length")
        return GenerationResult(completions=[c] * req.num_samples, n_prompt_tokens=len(req.prompt), n_cached_tokens=0,
                                queue_s=0.5, first_token_s=0.75, n_generated_tokens=req.num_samples * req.max_new_tokens)


class BrokenEngine(FakeEngine):
    """Raises an unexpected error with a secret in it, to check that 500s hide internals."""

    def generate(self, req, *, is_disconnected=None):
        raise RuntimeError("SECRET-INTERNAL-DETAIL /etc/passwd")


__all__ = ["FakeEngine", "BrokenEngine", "EngineError"]
