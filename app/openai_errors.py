"""Errors of the OpenAI-compatible routes, in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""
from __future__ import annotations

import logging

import pydantic
from flask import Blueprint, jsonify
from werkzeug.exceptions import HTTPException

from app.engine.errors import (
    ContextLengthExceeded,
    EngineError,
    EngineNotReady,
    EngineOverloaded,
    RequestCancelled,
    TokenOutOfRange,
)

log = logging.getLogger(__name__)

# HTTP status -> OpenAI's error type.
_TYPES = {400: "invalid_request_error", 404: "not_found_error", 413: "invalid_request_error",
          422: "invalid_request_error", 499: "client_closed_request", 503: "service_unavailable"}


class OpenAIError(Exception):
    """A request the OpenAI routes refuse; `param` names the field at fault."""

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.message, self.param, self.code, self.status = message, param, code, status

    @classmethod
    def from_pydantic(cls, exc: pydantic.ValidationError) -> "OpenAIError":
        """The first validation error, its location as a param ("messages[0].role")."""
        err = exc.errors(include_url=False, include_context=False, include_input=False)[0]
        param = _param(err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "json_invalid":
            return cls(f"the body is not valid JSON: {msg}", code="invalid_json")
        if not param:
            return cls(f"the body must be a JSON object: {msg}", code="invalid_body")
        return cls(f"{param}: {msg}", param=param, code=err["type"])


def _param(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("str", "list[str]", "list[int]", "list[list[int]]", "list[ContentPart]"):
            continue  # a union branch's name, not a field
        else:
            out += f".{part}" if out else str(part)
    return out


# Engine exception -> (status, code, param). First match wins.
_ENGINE = [
    (ContextLengthExceeded, 400, "context_length_exceeded", "max_tokens"),
    (TokenOutOfRange, 400, "token_out_of_range", "prompt"),
    (EngineNotReady, 503, "model_not_ready", None),
    (EngineOverloaded, 503, "overloaded", None),
    (RequestCancelled, 499, "client_closed_request", None),
]


def body(status: int, message: str, *, param: str | None = None, code: str | None = None) -> dict:
    """The error document for a status."""
    return {"error": {"message": message, "type": _TYPES.get(status, "server_error"), "param": param, "code": code}}


def from_engine(exc: EngineError) -> tuple[int, dict]:
    """Status and body for an engine exception (a bare 500 for anything unexpected)."""
    for cls, status, code, param in _ENGINE:
        if isinstance(exc, cls):
            return status, body(status, str(exc), param=param, code=code)
    log.error("engine error: %s", exc, exc_info=exc)
    return 500, body(500, "internal error", code="internal_error")


def register(bp: Blueprint) -> None:
    """Answer every error raised in the blueprint's views in OpenAI's shape."""

    @bp.errorhandler(OpenAIError)
    def _refused(exc: OpenAIError):
        return jsonify(body(exc.status, exc.message, param=exc.param, code=exc.code)), exc.status

    @bp.errorhandler(EngineError)
    def _engine(exc: EngineError):
        status, doc = from_engine(exc)
        return jsonify(doc), status

    @bp.errorhandler(HTTPException)
    def _http(exc: HTTPException):
        status = exc.code or 500
        code = (exc.name or "error").lower().replace(" ", "_")
        return jsonify(body(status, exc.description or exc.name, code=code)), status

    @bp.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error")  # the traceback goes to the log, never to the client
        return jsonify(body(500, "internal error", code="internal_error")), 500
