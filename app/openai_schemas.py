"""OpenAI-compatible shapes (vLLM's, field by field): the views validate with them, openapi.json is made from them.

Requests are strict ("5" is not a number). Keys a request may carry beyond the declared ones are
checked by app/openai_mapping.py: a key that would change the result is a 400 naming it, never
silently ignored.
"""
from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

# extra="allow": undeclared keys are kept (model_extra) so the view can name them in its 400.
_REQUEST = ConfigDict(strict=True, extra="allow")

Prompt = Union[str, list[str], list[int], list[list[int]]]


def _prompt_shape(value: Any) -> Any:
    """A string, a list of strings, a list of token ids, or a list of lists of token ids; nothing
    empty, nothing mixed. Checked by hand so the message says which element is wrong."""
    is_id = lambda x: isinstance(x, int) and not isinstance(x, bool)  # noqa: E731 - JSON true is not a token
    if isinstance(value, str):
        if not value:
            raise ValueError("prompt is an empty string")
        return value
    if not isinstance(value, list):
        raise ValueError("prompt must be a string, a list of strings, a list of token ids or a list of lists of token ids")
    if not value:
        raise ValueError("prompt is an empty list")
    kind = "str" if isinstance(value[0], str) else "id" if is_id(value[0]) else "list" if isinstance(value[0], list) else None
    names = {"str": "a string", "id": "a token id", "list": "a list of token ids"}
    if kind is None:
        raise ValueError(f"prompt[0] is a {type(value[0]).__name__}: expected a string, a token id or a list of token ids")
    for i, item in enumerate(value):
        ok = isinstance(item, str) if kind == "str" else is_id(item) if kind == "id" else isinstance(item, list)
        if not ok:
            raise ValueError(
                f"prompt[{i}] is a {type(item).__name__} but prompt[0] is {names[kind]}: "
                "a prompt list must not mix kinds"
            )
        if kind == "str" and not item:
            raise ValueError(f"prompt[{i}] is an empty string")
        if kind == "list":
            if not item:
                raise ValueError(f"prompt[{i}] is an empty list of token ids")
            bad = next((j for j, t in enumerate(item) if not is_id(t)), None)
            if bad is not None:
                raise ValueError(f"prompt[{i}][{bad}] is a {type(item[bad]).__name__}, not a token id")
    return value


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    include_usage: Optional[bool] = Field(None, description="Send a last chunk with the usage of the whole request.")


class _Sampling(BaseModel):
    """Fields both completion endpoints share."""

    model_config = _REQUEST

    model: Optional[str] = Field(None, description="The served model's id (GET /v1/models); absent means that model.")
    temperature: Optional[float] = Field(None, ge=0.0, description="Default 1; at or below 1e-5 decoding is greedy.")
    top_p: Optional[float] = Field(None, gt=0.0, le=1.0, description="Nucleus sampling; default 1.")
    top_k: Optional[int] = Field(None, ge=-1, description="vLLM's extension: sample among the k most likely; 0 or -1 disables (default).")
    n: Optional[int] = Field(None, ge=1, description="Choices per prompt (default 1), at most MAX_NUM_SAMPLES.")
    stop: Union[str, list[str], None] = Field(None, description="Up to 16 non-empty strings; the text ends before the first.")
    seed: Optional[int] = Field(None, description="Same seed and same request give the same output.")
    presence_penalty: Optional[float] = Field(None, description="Only 0 is supported.")
    frequency_penalty: Optional[float] = Field(None, description="Only 0 is supported.")
    stream: Optional[bool] = Field(None, description="Server-sent events, ending with `data: [DONE]`.")
    stream_options: Optional[StreamOptions] = None
    user: Optional[str] = Field(None, description="Accepted and ignored.")


class CompletionRequest(_Sampling):
    """POST /v1/completions: each prompt is its own job in the scheduler, all of them at once."""

    prompt: Prompt = Field(description="A string, a list of strings, a list of token ids (used as given: no BOS "
                                       "added), or a list of lists of token ids.")
    max_tokens: Optional[int] = Field(None, ge=0, description="Default 16; 0 only with echo (scores the prompt).")
    echo: Optional[bool] = Field(None, description="Return the prompt (and its tokens' logprobs) before the completion.")
    logprobs: Optional[int] = Field(None, ge=0, description="Top-N alternatives per token (plus the chosen token), "
                                                            "N at most MAX_TOP_K_PER_TOKEN.")
    best_of: Optional[int] = Field(None, ge=1, description="Samples drawn per prompt (n..MAX_NUM_SAMPLES); the n with "
                                                           "the highest total logprob are returned. Not with stream.")

    _prompt_ok = field_validator("prompt", mode="before")(_prompt_shape)


class ContentPart(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, list[ContentPart], None] = Field(description="Text, or a list of text parts (joined by newlines).")
    name: Optional[str] = None


class ChatCompletionRequest(_Sampling):
    """POST /v1/chat/completions: the messages rendered with the model's own chat template."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: Optional[int] = Field(None, ge=1, description="Default: what is left of the context window.")
    max_completion_tokens: Optional[int] = Field(None, ge=1, description="OpenAI's newer name for max_tokens.")
    logprobs: Optional[bool] = Field(None, description="Return each generated token's logprob.")
    top_logprobs: Optional[int] = Field(None, ge=0, description="Alternatives per token, with logprobs: true.")
    add_generation_prompt: Optional[bool] = Field(None, description="vLLM's extension (default true): end the "
                                                                    "rendered prompt with the assistant's turn opener.")
    chat_template_kwargs: Optional[dict[str, Any]] = Field(None, description="vLLM's extension: extra template variables.")


# ---- responses ----


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[Optional[float]] = Field(description="null for an echoed prompt's first token (it has no context).")
    top_logprobs: list[Optional[dict[str, float]]] = Field(description="The N most likely tokens and the chosen one.")
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int = Field(description="prompt number x n + sample number")
    text: str
    logprobs: Optional[CompletionLogprobs] = None
    finish_reason: Optional[str] = Field(None, description='"stop" (a stop string or end of generation) or "length".')
    stop_reason: Union[int, str, None] = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Optional[Usage] = None
    system_fingerprint: Optional[str] = None


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: Optional[str] = None


class ChatTopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: Optional[list[int]] = None


class ChatTokenLogprob(ChatTopLogprob):
    top_logprobs: list[ChatTopLogprob]


class ChatLogprobs(BaseModel):
    content: Optional[list[ChatTokenLogprob]] = None


class ChatChoice(BaseModel):
    index: int
    message: ChatMessageOut
    logprobs: Optional[ChatLogprobs] = None
    finish_reason: Optional[str] = None
    stop_reason: Union[int, str, None] = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: Optional[str] = None


class ChatDelta(BaseModel):
    role: Optional[Literal["assistant"]] = None
    content: Optional[str] = None


class ChatStreamChoice(BaseModel):
    index: int
    delta: ChatDelta
    logprobs: Optional[ChatLogprobs] = None
    finish_reason: Optional[str] = None


class ChatCompletionChunk(BaseModel):
    """One `data:` event of a streamed chat completion."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatStreamChoice]
    usage: Optional[Usage] = None


class CompletionChunk(BaseModel):
    """One `data:` event of a streamed completion (the stream ends with `data: [DONE]`)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Optional[Usage] = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    root: Optional[str] = None
    parent: Optional[str] = None
    max_model_len: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class TokenizerInfo(BaseModel):
    """GET /tokenizer_info: what lm-eval's remote tokenizer reads."""

    tokenizer_class: str
    eos_token: Optional[str]
    bos_token: Optional[str]
    pad_token: Optional[str]
    add_bos_token: bool
    model_max_length: int
    chat_template: Optional[str]


class PromptTokenizeRequest(BaseModel):
    """POST /tokenize in vLLM's form (lm-eval's remote tokenizer); special-token texts are parsed."""

    model_config = ConfigDict(strict=True, extra="ignore")

    prompt: str
    add_special_tokens: bool = Field(True, description="Add BOS where the model adds one.")
    model: Optional[str] = None


class PromptTokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    tokens: list[int]
    model: Optional[str] = None


class DetokenizeResponse(BaseModel):
    prompt: str


class OpenAIErrorBody(BaseModel):
    message: str
    type: str = Field(description='"invalid_request_error", "not_found_error", "server_error", ...')
    param: Optional[str] = Field(None, description="The request field at fault.")
    code: Optional[str] = Field(None, description='A machine-readable reason, e.g. "unsupported_field".')


class OpenAIErrorResponse(BaseModel):
    error: OpenAIErrorBody
