"""Every error leaves as JSON: engine exceptions by type, HTTP errors by code, the rest as a bare 500."""
from __future__ import annotations

import logging

import pydantic
from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

from app.engine.errors import (
    ContextLengthExceeded,
    EmptyPrompt,
    EngineError,
    EngineNotReady,
    EngineOverloaded,
    QueueFull,
    RequestCancelled,
    RequestTimedOut,
    TokenOutOfRange,
)

log = logging.getLogger(__name__)

# Engine exception -> (HTTP status, error type, the request field to blame). First match wins.
ENGINE_ERRORS: list[tuple[type[EngineError], int, str, str | None]] = [
    (ContextLengthExceeded, 400, "context_length_exceeded", "max_new_tokens"),
    (EngineNotReady, 503, "model_not_ready", None),
    (QueueFull, 503, "queue_full", None),
    (EngineOverloaded, 503, "overloaded", None),
    (RequestTimedOut, 504, "request_timeout", None),
    (RequestCancelled, 499, "client_closed_request", None),
]

# Headers of werkzeug's own error responses worth keeping (405's Allow, 401's WWW-Authenticate).
_KEPT_HEADERS = ("Allow", "WWW-Authenticate", "Retry-After")


class RequestInvalid(Exception):
    """A request failed validation: answered 422 with the challenge's {"detail": [...]} body."""

    def __init__(self, detail: list[dict]) -> None:
        super().__init__(detail)
        self.detail = detail

    @classmethod
    def from_pydantic(cls, exc: pydantic.ValidationError) -> "RequestInvalid":
        return cls(
            [
                {"loc": ["body", *e["loc"]], "msg": e["msg"], "type": e["type"]}
                for e in exc.errors(include_url=False, include_context=False, include_input=False)
            ]
        )

    @classmethod
    def field(cls, loc: list, msg: str, type_: str = "value_error") -> "RequestInvalid":
        return cls([{"loc": ["body", *loc], "msg": msg, "type": type_}])


def error_body(status: int, type_: str, message: str, param: str | None = None):
    return jsonify(error={"type": type_, "message": message, "param": param}), status


def register(app: Flask) -> None:
    """Install the handlers on the app."""

    @app.errorhandler(RequestInvalid)
    def _invalid(exc: RequestInvalid):
        return jsonify(detail=exc.detail), 422

    @app.errorhandler(TokenOutOfRange)
    def _token(exc: TokenOutOfRange):
        return jsonify(detail=[{"loc": ["body", exc.field, exc.index], "msg": str(exc), "type": "token_out_of_range"}]), 422

    @app.errorhandler(EmptyPrompt)
    def _empty(exc: EmptyPrompt):
        return jsonify(detail=[{"loc": ["body", "prompt"], "msg": str(exc), "type": "empty_prompt"}]), 422

    @app.errorhandler(EngineError)
    def _engine(exc: EngineError):
        for cls, status, type_, param in ENGINE_ERRORS:
            if isinstance(exc, cls):
                response, status = error_body(status, type_, str(exc), param)
                if isinstance(exc, QueueFull):
                    response.headers["Retry-After"] = str(exc.retry_after_s)
                elif status == 503:
                    response.headers["Retry-After"] = "5"
                return response, status
        log.error("engine error: %s", exc, exc_info=exc)
        return error_body(500, "internal_error", "internal error")

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException):
        type_ = (exc.name or "error").lower().replace(" ", "_")
        response, status = error_body(exc.code or 500, type_, exc.description or exc.name)
        for name, value in exc.get_headers():
            if name in _KEPT_HEADERS:
                response.headers[name] = value
        return response, status

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error")  # the traceback goes to the log, never to the client
        return error_body(500, "internal_error", "internal error")
