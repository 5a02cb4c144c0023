"""What the engine is asked and what it answers: plain dataclasses, shared by views and scheduler."""
from __future__ import annotations

from dataclasses import dataclass, field

from app.engine.sampling import SamplingParams


@dataclass(frozen=True)
class GenerationRequest:
    """One /process call, already validated."""

    prompt: str
    prompt_ids: tuple[int, ...] | None = None  # token ids used exactly as given (no BOS added); then
    # `prompt` is their text, which echo returns
    max_new_tokens: int = 50
    num_samples: int = 1
    sampling: SamplingParams = field(default_factory=SamplingParams)
    seed: int | None = None
    echo_prompt: bool = False
    top_k_per_token: int = 1
    stop_sequences: tuple[str, ...] = ()


@dataclass(frozen=True)
class TokenLogprob:
    """One returned token: its text, its logprob, and the top alternatives at its position."""

    text: str
    logprob: float
    top_logprob: dict[str, float]


@dataclass(frozen=True)
class Completion:
    """One sample: text, tokens and the sum of their logprobs."""

    text: str
    tokens: list[TokenLogprob]
    logprob: float
    finish_reason: str  # "stop" (a stop sequence), "eos" (an end-of-generation token), "length"


@dataclass(frozen=True)
class GenerationResult:
    """All samples of one request, the first being the one HELM reads."""

    completions: list[Completion]
    n_prompt_tokens: int
    n_cached_tokens: int  # prompt tokens whose KV came from the prefix cache
    n_generated_tokens: int = 0  # tokens sampled over all samples (before cutting at a stop sequence)
    queue_s: float = 0.0  # from submission to admission
    first_token_s: float | None = None  # from submission to the first sampled token


@dataclass(frozen=True)
class StreamPiece:
    """The text of one newly generated token of sample `index` (before stop-sequence cutting)."""

    index: int
    text: str
