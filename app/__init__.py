"""The HELM-compatible evaluation server: create_app() builds the Flask app around one engine."""
from __future__ import annotations

import threading
from typing import Any, Mapping

from flask import Flask, Response, request

from app.config import Settings


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app: defaults, then the environment (Settings.from_env), then `config` (a test's dict).

    config keys: any Settings field by name (lower case), plus ENGINE_FACTORY, a callable
    Settings -> engine (default: the llama.cpp Engine), so tests inject fakes the same way.
    """
    config = dict(config or {})
    factory = config.pop("ENGINE_FACTORY", None)
    settings = Settings.from_env(**config)

    from app import access_log, auth, errors
    from app.api import bp
    from app.metrics import Metrics
    from app.openai_api import bp as openai_bp

    access_log.configure_logging(settings.log_level, settings.log_format)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes  # larger bodies: 413
    app.json.sort_keys = False
    app.extensions["settings"] = settings
    # Requests with large bodies take turns (LARGE_BODY_CONCURRENCY): bounds the worker's memory.
    app.extensions["large_bodies"] = threading.BoundedSemaphore(settings.large_body_concurrency)

    errors.register(app)
    if factory is None:
        from app.engine import Engine

        factory = Engine
    # Loads in the background: the server answers (503 on /health) while the model loads.
    engine = factory(settings).start()
    app.extensions["engine"] = engine
    metrics = Metrics(engine, settings.kv_cells, settings.chunk_tokens)
    app.extensions["metrics"] = metrics
    access_log.register(app, on_response=metrics.http_request)  # first: it times everything below
    auth.register(app, settings)
    app.before_request(_answer_options)
    app.register_blueprint(bp)
    app.register_blueprint(openai_bp)
    return app


def _answer_options():
    """OPTIONS on a known route: 204 with the methods it allows (never Flask's text/html default)."""
    if request.method != "OPTIONS" or request.url_rule is None:
        return None  # unknown routes fall through to the JSON 404
    response = Response(status=204, headers={"Allow": ", ".join(sorted(request.url_rule.methods))})
    del response.headers["Content-Type"]  # no body, so no type (not text/html)
    return response
