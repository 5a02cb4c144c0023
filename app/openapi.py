"""openapi.json, made from the declarations in app/schemas.py.

    python -m app.openapi           # rewrite the repository's openapi.json
    python -m app.openapi --check   # exit 1 if openapi.json has drifted from the declarations
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from app import schemas
from app.config import Settings

PATH = Path(__file__).resolve().parent.parent / "openapi.json"
REF = "#/components/schemas/{model}"

UNAUTHORIZED = "API key missing or wrong (only when the server has API_KEY set)"
UNAVAILABLE = "Model not loaded yet, server draining, or queue full (see Retry-After)"
TOO_LARGE = "Body larger than MAX_BODY_BYTES"

# (method, path, summary, request model, response model, error responses beyond 422)
ROUTES: list[tuple[str, str, str, type[BaseModel] | None, type[BaseModel] | None, dict[str, str]]] = [
    ("post", "/process", "Generate or score a completion", schemas.ProcessRequest, schemas.ProcessResponse,
     {"400": "Prompt and max_new_tokens do not fit in the context window", "401": UNAUTHORIZED,
      "413": TOO_LARGE, "503": UNAVAILABLE, "504": "Not finished within REQUEST_TIMEOUT: cancelled"}),
    ("post", "/tokenize", "Tokenize a text", schemas.TokenizeRequest, schemas.TokenizeResponse,
     {"401": UNAUTHORIZED, "413": TOO_LARGE, "503": UNAVAILABLE}),
    ("post", "/decode", "Decode token ids to text", schemas.DecodeRequest, schemas.DecodeResponse,
     {"401": UNAUTHORIZED, "413": TOO_LARGE, "503": UNAVAILABLE}),
    ("get", "/health", "Model facts once loaded", None, schemas.HealthResponse, {}),
    ("get", "/metrics", "Prometheus metrics (text format 0.0.4)", None, None, {"401": UNAUTHORIZED, "503": UNAVAILABLE}),
    ("get", "/openapi.json", "This document", None, None, {"401": UNAUTHORIZED, "503": UNAVAILABLE}),
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

    add(schemas.HTTPValidationError, "serialization")
    add(schemas.ErrorResponse, "serialization")
    paths: dict[str, Any] = {}
    for method, path, summary, req, resp, errors in ROUTES:
        op: dict[str, Any] = {"summary": summary, "operationId": f"{method}_{path.strip('/').replace('.', '_')}"}
        ok: dict[str, Any] = {"description": "Successful Response"}
        if path == "/metrics":
            ok["content"] = {"text/plain": {"schema": {"type": "string"}}}
        else:
            ok["content"] = _json(add(resp, "serialization")) if resp else {"application/json": {"schema": {}}}
        op["responses"] = {"200": ok}
        if resp is schemas.HealthResponse:
            op["responses"]["503"] = {"description": "Model loading, failed to load, or server draining",
                                      "content": _json(resp.__name__)}
        if req is not None:
            op["requestBody"] = {"required": True, "content": _json(add(req, "validation"))}
            op["responses"]["422"] = {"description": "Validation Error", "content": _json("HTTPValidationError")}
        for code, text in errors.items():
            op["responses"][code] = {"description": text, "content": _json("ErrorResponse")}
        paths[path] = {method: op}
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
