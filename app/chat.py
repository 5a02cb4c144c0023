"""Chat messages to a prompt, with the model's own Jinja chat template (GGUF tokenizer.chat_template).

Rendered the way transformers' apply_chat_template and llama-cpp-python render it: a sandboxed
environment with trim_blocks and lstrip_blocks, loop controls, `raise_exception`, `strftime_now`,
a `tojson` that keeps non-ASCII text, and the variables messages, add_generation_prompt,
bos_token and eos_token.
"""
from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from typing import Any, Sequence

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from app.openai_schemas import ChatMessage


class ChatTemplateError(Exception):
    """The template refused the messages (raise_exception) or failed while rendering them."""


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None, sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=4)
def compile_template(source: str) -> jinja2.Template:
    """The compiled template (a model has one: compiled once)."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(source)


def message_dicts(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """Messages as the template sees them: text parts joined by newlines, as vLLM does."""
    out = []
    for m in messages:
        content = m.content if isinstance(m.content, str) or m.content is None else "\n".join(p.text for p in m.content)
        d: dict[str, Any] = {"role": m.role, "content": content if content is not None else ""}
        if m.name is not None:
            d["name"] = m.name
        out.append(d)
    return out


def render(
    source: str,
    messages: Sequence[ChatMessage],
    *,
    bos_token: str | None,
    eos_token: str | None,
    add_generation_prompt: bool = True,
    extra: dict[str, Any] | None = None,
) -> str:
    """The prompt text the template makes of the messages."""
    try:
        template = compile_template(source)
    except jinja2.exceptions.TemplateSyntaxError as exc:
        raise ChatTemplateError(f"the model's chat template does not compile: {exc}") from None
    variables = {**(extra or {}), "messages": message_dicts(messages), "add_generation_prompt": add_generation_prompt,
                 "bos_token": bos_token or "", "eos_token": eos_token or ""}
    try:
        return template.render(**variables)
    except (jinja2.exceptions.TemplateError, TypeError, ValueError) as exc:  # raise_exception, sandbox refusals, ...
        raise ChatTemplateError(f"the model's chat template refused the messages: {exc}") from None
