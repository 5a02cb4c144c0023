"""What the engine is asked and what it answers: plain dataclasses, shared by views and scheduler."""
from __future__ import annotations

from dataclasses import dataclass, field

from app.engine.sampling import SamplingParams


@dataclass(frozen=True)
class GenerationRequest:
    """One /process call, already validated."""

    prompt: str
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
    queue_s: float = 0.0  # seconds from submission to admission by the scheduler
    first_token_s: float | None = None  # seconds from submission to the first generated token (None: none)
    n_generated_tokens: int = 0  # generated tokens returned, summed over samples
