"""One access-log line per request: route, status, prompt/new/cached tokens, queue ms, total ms.

LOG_FORMAT=text gives "POST /process 200 prompt_tokens=12 ..." lines; LOG_FORMAT=json renders
every log record, these included, as one JSON object per line. The views leave the engine's
numbers in flask.g; headers (and so the API key) are never logged.
"""
from __future__ import annotations

import json
import logging
import time

from flask import Flask, Response, g, request
from werkzeug.exceptions import MethodNotAllowed

log = logging.getLogger("app.access")

# Numbers a view may leave in flask.g for the access log; absent ones are logged as null / "-".
FIELDS = ("prompt_tokens", "new_tokens", "cached_tokens", "queue_ms")


class JsonFormatter(logging.Formatter):
    """A log record as one JSON object: time, level, logger, message, and an access record's fields."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update(getattr(record, "access", {}))
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def configure_logging(level: str, fmt: str) -> None:
    """The process's log format, once (a no-op when logging is already configured, as under pytest)."""
    if fmt == "json":
        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
        logging.basicConfig(level=level, handlers=[handler])
    else:
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def route_of_request() -> str:
    """The matched URL rule ("/process"), never the raw path: unknown paths are one label."""
    if request.url_rule is not None:
        return request.url_rule.rule
    if isinstance(request.routing_exception, MethodNotAllowed):
        return request.path  # a known route, another method
    return "unmatched"


def register(app: Flask, on_response=None) -> None:
    """Time every request and log it once answered; on_response(route, status) sees it too (metrics)."""

    @app.before_request
    def _start_clock():
        g.t0 = time.perf_counter()

    @app.after_request
    def _log(response: Response) -> Response:
        total_ms = (time.perf_counter() - g.get("t0", time.perf_counter())) * 1000
        route = route_of_request()
        if on_response is not None:
            on_response(route, response.status_code)
        fields = {"method": request.method, "route": route, "status": response.status_code,
                  **{k: g.get(k) for k in FIELDS}, "total_ms": round(total_ms, 1)}
        text = " ".join(f"{k}={'-' if fields[k] is None else fields[k]}" for k in (*FIELDS, "total_ms"))
        log.info("%s %s %d %s", request.method, route, response.status_code, text, extra={"access": fields})
        return response
