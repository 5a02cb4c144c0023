"""openapi.json, made from the declarations in app/schemas.py and app/openai_schemas.py.

    python -m app.openapi           # rewrite the repository's openapi.json
    python -m app.openapi --check   # exit 1 if openapi.json has drifted from the declarations
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, NamedTuple, Union

from pydantic import BaseModel

from app import openai_schemas as oa
from app import schemas
from app.config import Settings

PATH = Path(__file__).resolve().parent.parent / "openapi.json"
REF = "#/components/schemas/{model}"

Models = Union[type[BaseModel], tuple[type[BaseModel], ...], None]  # a tuple: any one of them


class Route(NamedTuple):
    method: str
    path: str
    summary: str
    request: Models
    response: Models
    errors: dict[str, str]  # status -> description, beyond 422 for the HELM routes
    error_model: type[BaseModel] = schemas.ErrorResponse
    stream: type[BaseModel] | None = None  # the event of a text/event-stream answer (stream: true)


UNAUTHORIZED = "API key missing or wrong (only when the server has API_KEY set)"
UNAVAILABLE = "Model not loaded yet, server draining, or queue full (see Retry-After)"
TOO_LARGE = "Body larger than MAX_BODY_BYTES"
TIMEOUT = "Not finished within REQUEST_TIMEOUT: cancelled"
_OPENAI_ERRORS = {"400": "Invalid or unsupported request (OpenAI error shape, naming the field)",
                  "401": UNAUTHORIZED, "404": "Unknown model", "413": TOO_LARGE, "503": UNAVAILABLE, "504": TIMEOUT}

ROUTES: list[Route] = [
    Route("post", "/process", "Generate or score a completion", schemas.ProcessRequest, schemas.ProcessResponse,
          {"400": "Prompt and max_new_tokens do not fit in the context window", "401": UNAUTHORIZED,
           "413": TOO_LARGE, "503": UNAVAILABLE, "504": TIMEOUT}),
    Route("post", "/tokenize", "Tokenize a text (HELM's form, or vLLM's {prompt, add_special_tokens})",
          (schemas.TokenizeRequest, oa.PromptTokenizeRequest), (schemas.TokenizeResponse, oa.PromptTokenizeResponse),
          {"401": UNAUTHORIZED, "413": TOO_LARGE, "503": UNAVAILABLE}),
    Route("post", "/decode", "Decode token ids to text", schemas.DecodeRequest, schemas.DecodeResponse,
          {"401": UNAUTHORIZED, "413": TOO_LARGE, "503": UNAVAILABLE}),
    Route("get", "/health", "Model facts once loaded", None, schemas.HealthResponse, {}),
    Route("get", "/metrics", "Prometheus metrics (text format 0.0.4)", None, None,
          {"401": UNAUTHORIZED, "503": UNAVAILABLE}),
    Route("get", "/openapi.json", "This document", None, None, {"401": UNAUTHORIZED, "503": UNAVAILABLE}),
    Route("post", "/v1/completions", "OpenAI-compatible completions (vLLM's shapes); score with echo",
          oa.CompletionRequest, oa.CompletionResponse, _OPENAI_ERRORS, oa.OpenAIErrorResponse, oa.CompletionChunk),
    Route("post", "/v1/chat/completions", "OpenAI-compatible chat, with the model's own chat template",
          oa.ChatCompletionRequest, oa.ChatCompletionResponse, _OPENAI_ERRORS, oa.OpenAIErrorResponse,
          oa.ChatCompletionChunk),
    Route("get", "/v1/models", "The served model", None, oa.ModelList, {"401": UNAUTHORIZED, "503": UNAVAILABLE},
          oa.OpenAIErrorResponse),
    Route("get", "/tokenizer_info", "Special tokens and chat template (lm-eval's remote tokenizer)", None,
          oa.TokenizerInfo, {"401": UNAUTHORIZED, "503": UNAVAILABLE}, oa.OpenAIErrorResponse),
    Route("post", "/detokenize", "Text of token ids (vLLM's form)", oa.DetokenizeRequest, oa.DetokenizeResponse,
          {"400": "Token id out of the vocabulary", "401": UNAUTHORIZED, "413": TOO_LARGE, "503": UNAVAILABLE},
          oa.OpenAIErrorResponse),
]

# ProcessRequest fields whose largest value is this server's setting (declared as "maximum").
MAXIMA = {"max_new_tokens": "n_ctx", "num_samples": "max_num_samples", "num_return_sequences": "max_num_samples",
          "top_k_per_token": "max_top_k_per_token"}


def _json(ref: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": REF.format(model=ref)}}}


def _declare_maxima(schema: dict[str, Any], settings: Settings) -> None:
    """Put this server's limits into ProcessRequest's properties as JSON Schema maximums."""
    for name, setting in MAXIMA.items():
        prop = schema["properties"][name]
        target = next((b for b in prop.get("anyOf", []) if b.get("type") == "integer"), prop)
        target["maximum"] = getattr(settings, setting)


def document(settings: Settings | None = None) -> dict[str, Any]:
    """The whole OpenAPI 3.1 document; limits from `settings` (the repository's file: the defaults)."""
    settings = settings or Settings()
    components: dict[str, Any] = {}

    def add(model: type[BaseModel], mode: str) -> str:
        schema = model.model_json_schema(ref_template=REF, mode=mode)
        if model is schemas.ProcessRequest:
            _declare_maxima(schema, settings)
        components.update(schema.pop("$defs", {}))
        components[model.__name__] = schema
        return model.__name__

    def content(models: Models, mode: str) -> dict[str, Any]:
        if models is None:
            return {"application/json": {"schema": {}}}
        if isinstance(models, tuple):
            refs = [{"$ref": REF.format(model=add(x, mode))} for x in models]
            return {"application/json": {"schema": {"anyOf": refs}}}
        return _json(add(models, mode))

    add(schemas.HTTPValidationError, "serialization")
    add(schemas.ErrorResponse, "serialization")
    paths: dict[str, Any] = {}
    for r in ROUTES:
        op_id = f"{r.method}_{r.path.strip('/').replace('.', '_').replace('/', '_')}"
        op: dict[str, Any] = {"summary": r.summary, "operationId": op_id}
        ok: dict[str, Any] = {"description": "Successful Response"}
        if r.path == "/metrics":
            ok["content"] = {"text/plain": {"schema": {"type": "string"}}}
        else:
            ok["content"] = content(r.response, "serialization")
        if r.stream is not None:  # each server-sent event: `data:` a JSON chunk, or "[DONE]" last
            chunk = {"$ref": REF.format(model=add(r.stream, "serialization"))}
            data = {"anyOf": [{"type": "string", "contentMediaType": "application/json", "contentSchema": chunk},
                              {"const": "[DONE]"}],
                    "description": "A JSON-encoded chunk, or [DONE] at the end"}
            ok["content"]["text/event-stream"] = {"schema": {
                "type": "object", "required": ["data"],
                "properties": {"data": data, "event": {"type": "string"}, "id": {"type": "string"}}}}
        op["responses"] = {"200": ok}
        if r.response is schemas.HealthResponse:
            op["responses"]["503"] = {"description": "Model loading, failed to load, or server draining",
                                      "content": _json(schemas.HealthResponse.__name__)}
        openai = r.error_model is not schemas.ErrorResponse
        if r.request is not None:
            op["requestBody"] = {"required": True, "content": content(r.request, "validation")}
            if not openai:  # the OpenAI routes answer bad input with a 400 in their own shape
                op["responses"]["422"] = {"description": "Validation Error", "content": _json("HTTPValidationError")}
        error_ref = add(r.error_model, "serialization")
        for code, text in r.errors.items():
            op["responses"][code] = {"description": text, "content": _json(error_ref)}
        paths[r.path] = {r.method: op}
    return {
        "openapi": "3.1.0",
        "info": {"title": "HELM evaluation server (llama.cpp)", "version": "1.0.0"},
        "paths": paths,
        "components": {"schemas": dict(sorted(components.items()))},
    }


def render() -> str:
    return json.dumps(document(), indent=2, sort_keys=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail if openapi.json differs from the declarations")
    args = parser.parse_args(argv)
    if args.check:
        if not PATH.exists() or PATH.read_text() != render():
            print(f"{PATH} is out of date: run python -m app.openapi", file=sys.stderr)
            return 1
        return 0
    PATH.write_text(render())
    print(PATH)
    return 0


if __name__ == "__main__":
    sys.exit(main())
