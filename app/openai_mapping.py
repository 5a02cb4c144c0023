"""OpenAI-style requests to engine requests, engine results to vLLM's response shapes: pure functions.

No Flask and no engine calls here (a decode function is passed in), so ring-1 tests check every rule.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from app.config import Settings
from app.engine.sampling import SamplingParams
from app.engine.types import Completion, GenerationRequest, TokenLogprob
from app.openai_errors import OpenAIError
from app.openai_schemas import ChatCompletionRequest, CompletionRequest

# JSON has no -Infinity: vLLM and OpenAI report a zero-probability token at this floor.
LOGPROB_FLOOR = -9999.0
MAX_STOPS = 16
DEFAULT_MAX_TOKENS = 16  # OpenAI's and vLLM's default for /v1/completions
FINISH = {"eos": "stop", "stop": "stop", "length": "length"}

# Keys a client may send that are not declared: accepted only with a value that changes nothing.
NEUTRAL: dict[str, tuple] = {
    "logit_bias": (None, {}),
    "suffix": (None, ""),
    "use_beam_search": (None, False),
    "ignore_eos": (None, False),
    "min_tokens": (None, 0),
    "repetition_penalty": (None, 1),
    "length_penalty": (None, 1),
    "min_p": (None, 0),
    "stop_token_ids": (None, []),
    "include_stop_str_in_output": (None, False),
    "skip_special_tokens": (None, True),
    "spaces_between_special_tokens": (None, True),
    "return_tokens_as_token_ids": (None, False),
    "prompt_logprobs": (None,),
    "truncate_prompt_tokens": (None,),
    "priority": (None, 0),
    "response_format": (None, {"type": "text"}),
    "tools": (None, []),
    "tool_choice": (None, "none", "auto"),
    "functions": (None, []),
    "function_call": (None, "none", "auto"),
    "parallel_tool_calls": (None, True, False),
    "echo": (None, False),  # chat only (completions declare it)
}
# Keys that never change a result: bookkeeping.
IGNORED = {"request_id", "metadata", "store", "service_tier", "cache_salt"}


@dataclass(frozen=True)
class Prompt:
    """One prompt of a request: a text, or token ids used as given."""

    text: str | None = None
    ids: tuple[int, ...] | None = None


def check_extra(extra: dict[str, Any] | None) -> None:
    """A 400 naming the first undeclared key that would change the result."""
    for key, value in (extra or {}).items():
        if key in IGNORED:
            continue
        if key not in NEUTRAL:
            raise OpenAIError(f"{key} is not supported by this server", param=key, code="unsupported_field")
        if not any(_same(value, ok) for ok in NEUTRAL[key]):
            allowed = " or ".join("null" if v is None else repr(v) for v in NEUTRAL[key])
            raise OpenAIError(f"{key}={value!r} is not supported by this server (only {allowed})",
                              param=key, code="unsupported_value")


def _same(a: Any, b: Any) -> bool:
    """JSON equality: true is not 1, 1.0 is 1."""
    if a is None or b is None:
        return a is b
    return isinstance(a, bool) == isinstance(b, bool) and a == b


def check_model(name: str | None, accepted: Sequence[str]) -> None:
    """404 for a model name this server does not serve (absent means the served one)."""
    if name is not None and name not in accepted:
        raise OpenAIError(f"The model `{name}` does not exist: this server serves `{accepted[0]}`",
                          param="model", code="model_not_found", status=404)


def prompts_of(body: CompletionRequest, n_vocab: int) -> list[Prompt]:
    """The request's prompts, token ids checked against the vocabulary."""
    p = body.prompt
    if isinstance(p, str):
        return [Prompt(text=p)]
    if isinstance(p[0], str):
        return [Prompt(text=t) for t in p]
    lists = [p] if isinstance(p[0], int) else p
    for i, ids in enumerate(lists):
        for j, t in enumerate(ids):
            if not 0 <= t < n_vocab:
                where = f"prompt[{j}]" if lists is not p else f"prompt[{i}][{j}]"
                raise OpenAIError(f"{where} = {t} is not a token id: the vocabulary has ids 0..{n_vocab - 1}",
                                  param="prompt", code="token_out_of_range")
    return [Prompt(ids=tuple(ids)) for ids in lists]


def sampling_of(body: CompletionRequest | ChatCompletionRequest) -> SamplingParams:
    """OpenAI's defaults: temperature 1, top_p 1, no top-k."""
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(body, name) not in (None, 0):
            raise OpenAIError(f"{name}={getattr(body, name)} is not supported (only 0)", param=name,
                              code="unsupported_value")
    top_k = body.top_k if body.top_k is not None and body.top_k > 0 else 0
    return SamplingParams(
        temperature=1.0 if body.temperature is None else body.temperature,
        top_k=top_k,
        top_p=1.0 if body.top_p is None else body.top_p,
    )


def stops_of(stop: str | list[str] | None) -> tuple[str, ...]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > MAX_STOPS:
        raise OpenAIError(f"stop has {len(stops)} strings; at most {MAX_STOPS}", param="stop", code="too_many_stops")
    if any(s == "" for s in stops):
        raise OpenAIError("stop has an empty string", param="stop", code="empty_stop")
    return tuple(stops)


def n_of(body: CompletionRequest | ChatCompletionRequest, settings: Settings) -> int:
    n = 1 if body.n is None else body.n
    if n > settings.max_num_samples:
        raise OpenAIError(f"n={n} exceeds this server's limit of {settings.max_num_samples}", param="n",
                          code="n_too_large")
    return n


def _top_n(value: int | None, name: str, settings: Settings) -> int:
    if value is not None and value > settings.max_top_k_per_token:
        raise OpenAIError(f"{name}={value} exceeds this server's limit of {settings.max_top_k_per_token}",
                          param=name, code="logprobs_too_large")
    return value or 0


def completion_requests(
    body: CompletionRequest, prompts: list[Prompt], settings: Settings, decode: Callable[[Sequence[int]], str]
) -> list[GenerationRequest]:
    """One engine request per prompt, all with the same settings."""
    n = n_of(body, settings)
    best = n if body.best_of is None or body.best_of == 1 else body.best_of  # HELM sends 1 with any n
    if best < n or best > settings.max_num_samples:
        raise OpenAIError(f"best_of={best} must be in n..{settings.max_num_samples} (n={n})", param="best_of",
                          code="invalid_value")
    if best > n and body.stream:
        raise OpenAIError("best_of above n cannot stream: the best are known only at the end", param="best_of",
                          code="invalid_value")
    echo = bool(body.echo)
    max_tokens = DEFAULT_MAX_TOKENS if body.max_tokens is None else body.max_tokens
    if max_tokens == 0 and not echo:
        raise OpenAIError("max_tokens=0 asks for nothing: it needs echo (to score the prompt)", param="max_tokens",
                          code="invalid_value")
    if max_tokens > settings.n_ctx:
        raise OpenAIError(f"max_tokens={max_tokens} exceeds the context window of {settings.n_ctx} tokens",
                          param="max_tokens", code="context_length_exceeded")
    top = _top_n(body.logprobs, "logprobs", settings)
    common = dict(
        max_new_tokens=max_tokens, num_samples=best, sampling=sampling_of(body), seed=body.seed, echo_prompt=echo,
        top_k_per_token=max(1, top), stop_sequences=stops_of(body.stop), include_eog=True, parse_special=True,
    )
    return [
        GenerationRequest(prompt=p.text, **common) if p.ids is None
        else GenerationRequest(prompt=decode(p.ids), prompt_ids=p.ids, **common)
        for p in prompts
    ]


def chat_request(body: ChatCompletionRequest, prompt_ids: list[int], text: str, settings: Settings) -> GenerationRequest:
    """The engine request for a rendered chat prompt (its ids, as the template wrote them)."""
    n = n_of(body, settings)
    if body.max_tokens is not None and body.max_completion_tokens is not None and body.max_tokens != body.max_completion_tokens:
        raise OpenAIError("max_tokens and max_completion_tokens disagree", param="max_completion_tokens",
                          code="invalid_value")
    asked = body.max_completion_tokens or body.max_tokens
    room = min(settings.n_ctx - len(prompt_ids), (settings.kv_cells - len(prompt_ids)) // n)
    if asked is None and room < 1:
        raise OpenAIError(f"the rendered messages take {len(prompt_ids)} tokens: no room is left in the context "
                          f"window of {settings.n_ctx}", param="messages", code="context_length_exceeded")
    if body.top_logprobs and not body.logprobs:
        raise OpenAIError("top_logprobs needs logprobs: true", param="top_logprobs", code="invalid_value")
    top = _top_n(body.top_logprobs, "top_logprobs", settings)
    return GenerationRequest(
        prompt=text, prompt_ids=tuple(prompt_ids), max_new_tokens=asked if asked is not None else room,
        num_samples=n, sampling=sampling_of(body), seed=body.seed, top_k_per_token=max(1, top),
        stop_sequences=stops_of(body.stop), include_eog=True,
    )


# ---- results ----


def _lp(value: float) -> float:
    return max(value, LOGPROB_FLOOR)


def top_dict(tok: TokenLogprob, n: int) -> dict[str, float]:
    """The chosen token, then the n most likely (as vLLM: N + 1 entries at most). Two tokens with
    the same text share a key holding the larger logprob, so max(values) is the best logprob."""
    out = {tok.text: _lp(tok.logprob)}
    for text, lp in list(tok.top_logprob.items())[:n]:
        out[text] = max(out.get(text, LOGPROB_FLOOR), _lp(lp))
    return out


def completion_logprobs(tokens: Sequence[TokenLogprob], n: int, *, null_first: bool, offset: int = 0) -> dict:
    """vLLM's logprobs object; with null_first the first token (an echoed prompt's first, which has no
    context) gets null, as in vLLM and OpenAI."""
    out: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for i, tok in enumerate(tokens):
        first = null_first and i == 0
        out["tokens"].append(tok.text)
        out["token_logprobs"].append(None if first else _lp(tok.logprob))
        out["top_logprobs"].append(None if first else top_dict(tok, n))
        out["text_offset"].append(offset)
        offset += len(tok.text)
    return out


@dataclass(frozen=True)
class Shown:
    """How one prompt's echo reads: prompt tokens shown, and whether the first has no context."""

    n_prompt: int  # prompt tokens at the head of an echoed completion's tokens
    null_first: bool  # the first shown token is the sequence's first token (no BOS before it)


def completion_choice(index: int, c: Completion, *, echo: bool, shown: Shown, logprobs: int | None) -> dict:
    """One choice of /v1/completions."""
    return {
        "index": index,
        "text": c.text,
        "logprobs": None if logprobs is None else completion_logprobs(
            c.tokens, logprobs, null_first=echo and shown.null_first
        ),
        "finish_reason": FINISH[c.finish_reason],
        "stop_reason": None,
    }


def generated(c: Completion, *, echo: bool, shown: Shown) -> int:
    """Tokens a completion generated (its echoed prompt tokens excluded)."""
    return len(c.tokens) - (shown.n_prompt if echo else 0)


def best_n(completions: Sequence[Completion], n: int) -> list[Completion]:
    """With best_of above n: the n samples of the highest total logprob (vLLM's sampling best_of)."""
    if len(completions) <= n:
        return list(completions)
    return sorted(completions, key=lambda c: -c.logprob)[:n]


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def chat_token(tok: TokenLogprob, n: int) -> dict:
    """One generated token in the chat logprobs shape."""
    top = [{"token": t, "logprob": _lp(v), "bytes": list(t.encode())} for t, v in list(tok.top_logprob.items())[:n]]
    return {"token": tok.text, "logprob": _lp(tok.logprob), "bytes": list(tok.text.encode()), "top_logprobs": top}


def chat_choice(index: int, c: Completion, *, logprobs: bool, top: int) -> dict:
    return {
        "index": index,
        "message": {"role": "assistant", "content": c.text},
        "logprobs": {"content": [chat_token(t, top) for t in c.tokens]} if logprobs else None,
        "finish_reason": FINISH[c.finish_reason],
        "stop_reason": None,
    }


class TokenStream:
    """Turns one choice's generated tokens, as the engine streams them (before stop sequences are
    cut), into tokens safe to send: never text a stop sequence will cut. The text up to `hold`
    characters before the start of the newest token is final (a stop beginning earlier would have
    ended inside text already seen, and the engine would have stopped there)."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.hold = max((len(s) for s in stops), default=1) - 1
        self.pending: list[TokenLogprob] = []
        self.sent = 0  # tokens sent
        self.sent_chars = 0

    def feed(self, tok: TokenLogprob) -> list[TokenLogprob]:
        """Take the newest token; the tokens now safe to send."""
        self.pending.append(tok)
        safe = self.sent_chars + sum(len(t.text) for t in self.pending[:-1]) - self.hold
        out = []
        while len(self.pending) > 1 and self.sent_chars + len(self.pending[0].text) <= safe:
            t = self.pending.pop(0)
            out.append(t)
            self.sent_chars += len(t.text)
        self.sent += len(out)
        return out

    def finish(self, generated: Sequence[TokenLogprob]) -> list[TokenLogprob]:
        """The final (cut) generated tokens not sent yet."""
        rest = list(generated[self.sent :])
        self.sent = len(generated)
        return rest
