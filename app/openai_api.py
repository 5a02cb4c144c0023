"""The OpenAI-compatible API (vLLM's shapes): /v1/completions, /v1/chat/completions, /v1/models, and the
remote-tokenizer routes lm-eval probes (/tokenizer_info, /detokenize; /tokenize is in app/api.py).

Thin views: parse (app/openai_schemas.py), map (app/openai_mapping.py), run every prompt as its own
engine job (app/fanout.py), answer. Errors leave in OpenAI's shape (app/openai_errors.py).
"""
from __future__ import annotations

import time
import uuid
from typing import TypeVar

import pydantic
from flask import Blueprint, Response, current_app, jsonify, request

from app import chat, fanout, openai_errors
from app import openai_mapping as m
from app import openai_schemas as s
from app.config import Settings
from app.engine.errors import EngineNotReady, TokenOutOfRange
from app.http_client import disconnect_probe
from app.openai_errors import OpenAIError
from app.openai_stream import chat_events, completion_events

bp = Blueprint("openai", __name__)
openai_errors.register(bp)
M = TypeVar("M", bound=pydantic.BaseModel)


def _engine():
    return current_app.extensions["engine"]


def _settings() -> Settings:
    return current_app.extensions["settings"]


def _parse(model: type[M]) -> M:
    try:
        return model.model_validate_json(request.get_data(cache=False) or b"")
    except pydantic.ValidationError as exc:
        raise OpenAIError.from_pydantic(exc) from None


def _served() -> tuple[list[str], dict]:
    """The served model's names, its id first (MODEL_NAME, else the manifest's name, else the
    GGUF's general.name), and the engine's facts."""
    info = _engine().info()
    if info["status"] != "ok":
        raise EngineNotReady(info.get("error") or "the model is still loading")
    path = _settings().model_path
    names = [_settings().model_name, (info.get("manifest") or {}).get("name"), info.get("model"), path.name, path.stem]
    return list(dict.fromkeys(n for n in names if n)), info


def _sse(events) -> Response:
    return Response(events, mimetype="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _checked(model):
    """Parse a body, refuse fields we do not support and an unknown model; (body, names, /health info)."""
    body = _parse(model)
    m.check_extra(body.model_extra)
    names, info = _served()
    m.check_model(body.model, names)
    return body, names, info


@bp.post("/v1/completions")
def completions():
    """Complete (or score, with echo) one prompt or a batch of them, as vLLM's /v1/completions."""
    body, names, info = _checked(s.CompletionRequest)
    prompts = m.prompts_of(body, info["n_vocab"])
    reqs = m.completion_requests(body, prompts, _settings(), _engine().decode)
    # Where the model adds BOS to a text prompt, echo hides it and the first shown token has context.
    hidden = [1 if p.ids is None and info.get("add_bos") else 0 for p in prompts]
    head = dict(id=f"cmpl-{uuid.uuid4().hex}", object="text_completion", created=int(time.time()), model=names[0])
    probe = disconnect_probe(request.environ)
    if body.stream:
        events = fanout.stream_all(_engine(), reqs, is_disconnected=probe)
        return _sse(completion_events(events, body, reqs, hidden, head))
    results = fanout.generate_all(_engine(), reqs, is_disconnected=probe)
    choices, n_gen = [], 0
    for res, h in zip(results, hidden):
        shown = m.Shown(n_prompt=res.n_prompt_tokens - h, null_first=h == 0)
        for c in m.best_n(res.completions, m.n_of(body, _settings())):
            choices.append(m.completion_choice(len(choices), c, echo=bool(body.echo), shown=shown, logprobs=body.logprobs))
            n_gen += m.generated(c, echo=bool(body.echo), shown=shown)
    usage = m.usage(sum(r.n_prompt_tokens for r in results), n_gen)
    return jsonify({**head, "choices": choices, "usage": usage})


@bp.post("/v1/chat/completions")
def chat_completions():
    """Answer a conversation, rendered with the model's own chat template."""
    body, names, _ = _checked(s.ChatCompletionRequest)
    engine = _engine()
    template = engine.chat_template()
    if not template:
        raise OpenAIError("the served model has no chat template (GGUF tokenizer.chat_template): "
                          "use /v1/completions with your own prompt format", param="messages", code="no_chat_template")
    special = engine.special_tokens()
    try:
        text = chat.render(template, body.messages, bos_token=special["bos_token"], eos_token=special["eos_token"],
                           add_generation_prompt=body.add_generation_prompt is not False, extra=body.chat_template_kwargs)
    except chat.ChatTemplateError as exc:
        raise OpenAIError(str(exc), param="messages", code="chat_template_error") from None
    # The template writes the special tokens itself (BOS included): parse them, add none (as vLLM).
    ids = engine.tokenize(text, add_special=False, parse_special=True)
    req = m.chat_request(body, ids, text, _settings())
    head = dict(id=f"chatcmpl-{uuid.uuid4().hex}", object="chat.completion", created=int(time.time()), model=names[0])
    probe = disconnect_probe(request.environ)
    top = body.top_logprobs or 0
    if body.stream:
        events = fanout.stream_all(engine, [req], is_disconnected=probe)
        return _sse(chat_events(events, body, req, head))
    res = engine.generate(req, is_disconnected=probe)
    choices = [m.chat_choice(i, c, logprobs=bool(body.logprobs), top=top) for i, c in enumerate(res.completions)]
    usage = m.usage(res.n_prompt_tokens, sum(len(c.tokens) for c in res.completions))
    return jsonify({**head, "choices": choices, "usage": usage})


@bp.get("/v1/models")
def models():
    """The one served model."""
    names, info = _served()
    manifest = info.get("manifest") or {}
    card = {"id": names[0], "object": "model", "created": int(time.time()),
            "owned_by": "llama.cpp", "root": manifest.get("source") or info.get("model_path"), "parent": None,
            "max_model_len": _settings().n_ctx}
    return jsonify(object="list", data=[card])


@bp.get("/tokenizer_info")
def tokenizer_info():
    """The tokenizer's special tokens and chat template (what lm-eval's remote tokenizer reads)."""
    _, info = _served()
    engine = _engine()
    special = engine.special_tokens()
    return jsonify(
        tokenizer_class="llama.cpp", eos_token=special["eos_token"], bos_token=special["bos_token"], pad_token=None,
        add_bos_token=bool(info.get("add_bos")), model_max_length=_settings().n_ctx, chat_template=engine.chat_template(),
    )


@bp.post("/detokenize")
def detokenize():
    """Text of token ids (vLLM's /detokenize: {"tokens"} -> {"prompt"})."""
    body = _parse(s.DetokenizeRequest)
    try:
        return jsonify(prompt=_engine().decode(body.tokens))
    except TokenOutOfRange as exc:
        raise OpenAIError(str(exc), param="tokens", code="token_out_of_range") from None
