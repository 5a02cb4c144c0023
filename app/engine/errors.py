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


class EmptyPrompt(EngineError):
    """The prompt tokenizes to no token at all (422): there is nothing to condition on or score."""

    def __init__(self) -> None:
        super().__init__(
            "the prompt tokenizes to zero tokens (it holds only characters the tokenizer drops, such as "
            "some control characters): send at least one token of text"
        )


class RequestCancelled(EngineError):
    """The client went away; its sequences were freed (499, never seen by that client)."""


class EngineOverloaded(EngineError):
    """The engine is shutting down or its queue is full (503)."""
