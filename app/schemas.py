"""Request and response shapes, declared once: the views validate with them, openapi.json is made from them."""
from __future__ import annotations

from typing import Annotated, Any, Optional

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

# Strict: "5" is not an int and 1.5 is not an int (an int is still a valid float).
# Not finite is not a number: Infinity, NaN and 1e400 (which JSON parsing makes infinite) are 422s.
# Unknown keys are ignored, as the challenge's FastAPI server does.
_STRICT = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)


def _whole_number(value: Any) -> Any:
    """1.0 -> 1: JSON Schema counts a number with a zero fraction as an integer. Everything else
    goes to strict validation unchanged, so "5", 2.5, true and Infinity are still rejected."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# An integer field: an int, or a float with no fractional part.
Int = Annotated[int, BeforeValidator(_whole_number)]


def _encodable(value: str, field: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{field} is not valid Unicode: {exc.reason} at index {exc.start}") from None
    return value


class ProcessRequest(BaseModel):
    """POST /process: the challenge's keys, plus the keys HELM sends."""

    model_config = _STRICT

    prompt: str = Field(min_length=1, description="The text to continue (or to score, with echo_prompt).")
    num_samples: Int = Field(1, ge=1, description="Completions to draw; the challenge's name for it.")
    max_new_tokens: Int = Field(50, ge=0, description="Most tokens to generate; 0 with echo_prompt scores the prompt.")
    top_k: Int = Field(200, ge=0, description="Sample among the k most likely tokens; 0 disables.")
    temperature: float = Field(0.8, ge=0.0, description="At or below 1e-5 decoding is greedy (HELM sends 1e-7).")
    seed: Optional[Int] = Field(None, description="Same seed and same request give the same output.")
    echo_prompt: bool = Field(False, description="Return the prompt and its tokens' logprobs before the completion.")
    num_return_sequences: Optional[Annotated[int, Field(ge=1), BeforeValidator(_whole_number)]] = Field(
        None, description="HELM's name for num_samples."
    )
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling: keep the smallest set with this mass.")
    top_k_per_token: Int = Field(1, ge=1, description="Alternatives reported in each token's top_logprob.")
    stop_sequences: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=list, max_length=16, description="Generation stops before the first of these."
    )

    _prompt_ok = field_validator("prompt")(lambda v: _encodable(v, "prompt"))

    @field_validator("stop_sequences")
    @classmethod
    def _stops_ok(cls, v: list[str]) -> list[str]:
        return [_encodable(s, "stop sequence") for s in v]


class TokenizeRequest(BaseModel):
    """POST /tokenize."""

    model_config = _STRICT

    text: str = Field(description="Text to tokenize.")
    truncation: bool = Field(True, description="Keep only the first max_length tokens.")
    max_length: Int = Field(2048, ge=1, description="Token limit applied when truncation is true.")

    _text_ok = field_validator("text")(lambda v: _encodable(v, "text"))


class DecodeRequest(BaseModel):
    """POST /decode."""

    model_config = _STRICT

    tokens: list[Int] = Field(description="Token ids; BOS, EOS and control tokens decode to nothing.")


class Token(BaseModel):
    text: str
    logprob: float = Field(description="log-softmax of the raw logits (before temperature, top-k, top-p).")
    top_logprob: dict[str, float] = Field(description="The top_k_per_token most likely tokens at this position.")


class Completion(BaseModel):
    text: str
    tokens: list[Token]
    logprob: float = Field(description="Sum of the tokens' logprobs.")
    finish_reason: str = Field(description='"stop" (a stop sequence), "eos" (end-of-generation token) or "length".')


class ProcessResponse(BaseModel):
    """The first completion at the top level (what HELM reads); all of them in `completions` when n > 1."""

    text: str
    tokens: list[Token]
    logprob: float
    finish_reason: str
    request_time: float = Field(description="Seconds spent on the request in the server.")
    completions: Optional[list[Completion]] = None
    prompt_tokens: int = Field(description="Tokens in the prompt as the model sees it (BOS included).")
    cached_tokens: int = Field(description="Prompt tokens whose KV came from the prefix cache.")


class TokenizeResponse(BaseModel):
    tokens: list[int]
    request_time: float


class DecodeResponse(BaseModel):
    text: str
    request_time: float


class HealthResponse(BaseModel):
    """GET /health: "ok" (200) once the model is loaded; "loading", "error" or "draining" (503).
    Beyond these keys it reports the model's facts and the engine's load and counters."""

    model_config = ConfigDict(extra="allow")

    status: str = Field(description='"ok", "loading", "error" (the model failed to load) or "draining" (shutting down).')
    model: Optional[str] = Field(None, description="The served model's name.")
    model_file: Optional[str] = Field(None, description="The GGUF file's name (never its directory).")
    error: Optional[str] = Field(None, description="Why the model failed to load.")
    n_ctx: Optional[int] = Field(None, description="Tokens one request may use (prompt + max_new_tokens).")
    max_new_tokens: Optional[int] = Field(None, description="This server's largest max_new_tokens (N_CTX).")
    max_num_samples: Optional[int] = Field(None, description="This server's largest num_samples / num_return_sequences.")
    max_top_k_per_token: Optional[int] = Field(None, description="This server's largest top_k_per_token.")
    max_body_bytes: Optional[int] = Field(None, description="Larger request bodies are answered 413.")
    max_queued: Optional[int] = Field(None, description="Requests that may wait beyond N_PARALLEL before 503s.")
    request_timeout: Optional[int] = Field(None, description="Seconds a /process request may take (0: no limit).")
    running: Optional[int] = Field(None, description="Requests admitted by the scheduler, not yet finished.")
    queued: Optional[int] = Field(None, description="Requests waiting for the scheduler.")
    rejected_queue_full: Optional[int] = Field(None, description="Requests refused with 503 since start (queue full).")
    timed_out: Optional[int] = Field(None, description="Requests answered 504 since start (REQUEST_TIMEOUT).")


class ValidationError(BaseModel):
    loc: list[str | int] = Field(title="Location")
    msg: str = Field(title="Message")
    type: str = Field(title="Error Type")


class HTTPValidationError(BaseModel):
    detail: list[ValidationError]


class ErrorBody(BaseModel):
    type: str
    message: str
    param: Optional[str] = None


class ErrorResponse(BaseModel):
    error: ErrorBody
