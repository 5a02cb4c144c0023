"""The API key (API_KEY / API_KEY_FILE): every route but /health, and /metrics unless
METRICS_REQUIRE_KEY, needs it as "Authorization: Bearer KEY" or "X-Api-Key: KEY".

Off when no key is set (the default: HELM's neurips/local client sends none). The key is compared
in constant time and never logged; a missing or wrong key is a 401 JSON error.
"""
from __future__ import annotations

import hmac

from flask import Flask, request

from app.config import Settings
from app.errors import error_body

# Routes that never need the key: a load balancer's health check sends none.
ALWAYS_OPEN = frozenset({"/health"})


def presented_key() -> str | None:
    """The key the client sent, from Authorization: Bearer or X-Api-Key (None when neither)."""
    auth = request.headers.get("Authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("X-Api-Key")


def register(app: Flask, settings: Settings) -> None:
    """Check the key before every request when one is configured."""
    if not settings.api_key:
        return
    expected = settings.api_key.encode("utf-8")
    open_routes = ALWAYS_OPEN if settings.metrics_require_key else ALWAYS_OPEN | {"/metrics"}

    @app.before_request
    def _require_key():
        if request.path in open_routes or request.method == "OPTIONS":
            return None
        given = presented_key()
        # compare_digest on bytes: constant time in the key's content (a length difference shows).
        if given is not None and hmac.compare_digest(given.encode("utf-8"), expected):
            return None
        response, status = error_body(
            401, "unauthorized",
            "a valid API key is required: send 'Authorization: Bearer <key>' or 'X-Api-Key: <key>'"
            if given is None else "the API key is not valid",
        )
        response.headers["WWW-Authenticate"] = 'Bearer realm="llm-eval"'
        return response, status
