"""The HELM-compatible evaluation server: create_app() builds the Flask app around one engine."""
from __future__ import annotations

import logging
from typing import Any, Mapping

from flask import Flask

from app.config import Settings


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app: defaults, then the environment (Settings.from_env), then `config` (a test's dict).

    config keys: any Settings field by name (lower case), plus ENGINE_FACTORY, a callable
    Settings -> engine (default: the llama.cpp Engine), so tests inject fakes the same way.
    """
    config = dict(config or {})
    factory = config.pop("ENGINE_FACTORY", None)
    settings = Settings.from_env(**config)
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes  # larger bodies: 413
    app.json.sort_keys = False
    app.extensions["settings"] = settings

    from app import errors
    from app.api import bp
    from app.openai_api import bp as openai_bp

    errors.register(app)
    app.register_blueprint(bp)
    app.register_blueprint(openai_bp)

    if factory is None:
        from app.engine import Engine

        factory = Engine
    # Loads in the background: the server answers (503 on /health) while the model loads.
    app.extensions["engine"] = factory(settings).start()
    return app
