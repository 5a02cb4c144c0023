"""Typed engine exceptions; app/errors.py maps each to an HTTP status. No llama.cpp here."""
from __future__ import annotations


class EngineError(Exception):
    """Something went wrong inside the engine (a 500: the message goes to the log, not the client)."""


class ModelLoadError(EngineError):
    """The model could not be loaded; the server stays unhealthy (503)."""


class EngineNotReady(EngineError):
    """The model is still loading, or failed to load (503)."""


class ContextLengthExceeded(EngineError):
    """prompt tokens + max_new_tokens do not fit in the context window (400)."""

    def __init__(self, n_prompt: int, max_new_tokens: int, n_ctx: int, *, n_samples: int = 1) -> None:
        self.n_prompt, self.max_new_tokens, self.n_ctx = n_prompt, max_new_tokens, n_ctx
        total = n_prompt + max_new_tokens
        super().__init__(
            f"the prompt has {n_prompt} tokens and max_new_tokens is {max_new_tokens}: "
            f"{total} tokens do not fit in the context window of {n_ctx} tokens"
            + (f" (for {n_samples} samples)" if n_samples > 1 else "")
        )


class TokenOutOfRange(EngineError):
    """A token id is not in the vocabulary (422)."""

    def __init__(self, index: int, token: int, n_vocab: int, *, field: str = "tokens") -> None:
        self.index, self.token, self.n_vocab, self.field = index, token, n_vocab, field
        super().__init__(f"{field}[{index}] = {token} is not a token id: the vocabulary has ids 0..{n_vocab - 1}")


class RequestCancelled(EngineError):
    """The client went away; its sequences were freed (499, never seen by that client)."""


class EngineOverloaded(EngineError):
    """The engine is shutting down or its queue is full (503)."""


class QueueFull(EngineOverloaded):
    """MAX_QUEUED requests already wait for the scheduler (503 with Retry-After)."""

    def __init__(self, n_queued: int, retry_after_s: int) -> None:
        self.n_queued, self.retry_after_s = n_queued, retry_after_s
        super().__init__(
            f"the server is at capacity: {n_queued} requests are already queued (MAX_QUEUED); "
            f"retry in about {retry_after_s} s"
        )


class RequestTimedOut(EngineError):
    """The request ran past REQUEST_TIMEOUT; it was cancelled and its sequences freed (504)."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        super().__init__(f"the request did not finish within REQUEST_TIMEOUT={timeout_s:g} s and was cancelled")


class EmptyPrompt(EngineError):
    """The prompt tokenizes to no tokens at all: nothing to condition on or to score (422)."""

    def __init__(self, n_chars: int) -> None:
        super().__init__(
            f"the prompt ({n_chars} characters) tokenizes to no tokens: this model's tokenizer drops "
            "every character in it (control characters such as U+0016), so there is nothing to continue or score"
        )
