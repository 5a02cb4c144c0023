"""Server-sent events for stream: true, as the OpenAI SDK reads them: one `data: {json}` event per
token and choice, a last event per choice with its finish_reason, usage on request, `data: [DONE]`.

Text is sent token by token as the engine makes it, held back only as far as a stop sequence could
still cut it (openai_mapping.TokenStream). Echoed prompts are sent when their job ends (their
logprobs exist only then). Closing the generator (the client went away) cancels the jobs.
"""
from __future__ import annotations

import json
import logging
from typing import Iterator, Sequence

from app import openai_mapping as m
from app.engine.errors import EngineError
from app.engine.types import GenerationRequest, StreamPiece, TokenLogprob
from app.openai_errors import body as error_body
from app.openai_errors import from_engine
from app.openai_schemas import ChatCompletionRequest, CompletionRequest

log = logging.getLogger(__name__)
DONE = "data: [DONE]\n\n"


def _data(obj: dict) -> str:
    return "data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n\n"


def _error(exc: BaseException) -> str:
    if isinstance(exc, EngineError):
        return _data(from_engine(exc)[1])
    log.error("streamed request failed: %s", exc, exc_info=exc)
    return _data(error_body(500, "internal error", code="internal_error"))


def completion_events(events, body: CompletionRequest, reqs: Sequence[GenerationRequest], hidden: Sequence[int],
                      head: dict) -> Iterator[str]:
    """The events of a streamed /v1/completions call; choice index = prompt number x n + sample."""
    n, echo, top = reqs[0].num_samples, bool(body.echo), body.logprobs
    streams: dict[int, m.TokenStream] = {}
    offsets: dict[int, int] = {}
    n_prompt = n_gen = 0

    def chunk(index: int, text: str, tokens: list[TokenLogprob], finish: str | None, null_first: bool = False) -> str:
        logprobs = None if top is None else m.completion_logprobs(tokens, top, null_first=null_first,
                                                                   offset=offsets.get(index, 0))
        offsets[index] = offsets.get(index, 0) + len(text)
        choice = {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish, "stop_reason": None}
        return _data({**head, "object": "text_completion", "choices": [choice]})

    try:
        for p, item in events:
            if isinstance(item, BaseException):
                yield _error(item)
                break
            if isinstance(item, StreamPiece):
                if not echo:
                    ts = streams.setdefault(p * n + item.index, m.TokenStream(reqs[p].stop_sequences))
                    for tok in ts.feed(item.token):
                        yield chunk(p * n + item.index, tok.text, [tok], None)
                continue
            shown = m.Shown(n_prompt=item.n_prompt_tokens - hidden[p], null_first=hidden[p] == 0)
            n_prompt += item.n_prompt_tokens
            for i, c in enumerate(item.completions):
                index = p * n + i
                gen = c.tokens[shown.n_prompt:] if echo else c.tokens
                n_gen += len(gen)
                if echo:
                    yield chunk(index, reqs[p].prompt, c.tokens[: shown.n_prompt], None, null_first=shown.null_first)
                rest = streams.get(index, m.TokenStream(())).finish(gen)
                finish = m.FINISH[c.finish_reason]
                for j, tok in enumerate(rest):
                    yield chunk(index, tok.text, [tok], finish if j == len(rest) - 1 else None)
                if not rest:
                    yield chunk(index, "", [], finish)
        else:
            if body.stream_options is not None and body.stream_options.include_usage:
                yield _data({**head, "object": "text_completion", "choices": [], "usage": m.usage(n_prompt, n_gen)})
        yield DONE
    finally:
        events.close()


def chat_events(events, body: ChatCompletionRequest, req: GenerationRequest, head: dict) -> Iterator[str]:
    """The events of a streamed /v1/chat/completions call: the role first, then content deltas."""
    want_lp, top = bool(body.logprobs), body.top_logprobs or 0
    streams: dict[int, m.TokenStream] = {}

    def chunk(index: int, delta: dict, tokens: list[TokenLogprob] | None = None, finish: str | None = None) -> str:
        logprobs = {"content": [m.chat_token(t, top) for t in tokens]} if want_lp and tokens is not None else None
        choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        return _data({**head, "object": "chat.completion.chunk", "choices": [choice]})

    try:
        for i in range(req.num_samples):
            yield chunk(i, {"role": "assistant", "content": ""})
        for _, item in events:
            if isinstance(item, BaseException):
                yield _error(item)
                break
            if isinstance(item, StreamPiece):
                ts = streams.setdefault(item.index, m.TokenStream(req.stop_sequences))
                for tok in ts.feed(item.token):
                    yield chunk(item.index, {"content": tok.text}, [tok])
                continue
            for i, c in enumerate(item.completions):
                for tok in streams.get(i, m.TokenStream(())).finish(c.tokens):
                    yield chunk(i, {"content": tok.text}, [tok])
                yield chunk(i, {}, None, m.FINISH[c.finish_reason])
            if body.stream_options is not None and body.stream_options.include_usage:
                usage = m.usage(item.n_prompt_tokens, sum(len(c.tokens) for c in item.completions))
                yield _data({**head, "object": "chat.completion.chunk", "choices": [], "usage": usage})
        yield DONE
    finally:
        events.close()
