"""The nginx configuration that app.serve runs in front of gunicorn: pure text from the settings.

Why nginx: gunicorn's gthread worker gives every connection a thread while it reads the request,
so 64 clients sending a body at 1 byte/s held every thread and /health timed out (gunicorn's own
deployment docs put a buffering proxy in front for this). nginx reads each request whole, on its
event loop, at a few KB per connection, and only then hands it to gunicorn over a unix socket, so
slow clients cost no thread. It also answers what it can itself, as JSON: bodies over
MAX_BODY_BYTES (413), a draining server (503), a gunicorn that is not up (503).
"""
from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass
from pathlib import Path

from app.config import Settings
from app.openapi import ROUTES

# Connections one nginx worker holds (a proxied request takes two: client and gunicorn).
WORKER_CONNECTIONS = 4096
# A client must send each part of its headers, and of its body, within this many seconds of the
# previous one; an idle client is dropped (a trickling one costs nginx memory, never a thread).
CLIENT_TIMEOUT_S = 10
# nginx keeps bodies up to this size in memory; larger ones go to a temporary file.
BODY_BUFFER = "64k"


def _error(type_: str, message: str) -> str:
    """The app's error body, {"error": {"type", "message", "param"}}, as an nginx string literal."""
    return "'{\"error\": {\"type\": \"%s\", \"message\": \"%s\", \"param\": null}}'" % (type_, message)


def allowed_methods() -> dict[str, str]:
    """The Allow header of each route, as Flask sends it with its 405s (nginx answers TRACE itself)."""
    return {path: "OPTIONS, POST" if method == "post" else "GET, HEAD, OPTIONS" for method, path, *_ in ROUTES}


@dataclass(frozen=True)
class ProxyPaths:
    """Where one running server keeps its files (a private run directory)."""

    run_dir: Path

    @property
    def socket(self) -> Path:
        return self.run_dir / "gunicorn.sock"

    @property
    def conf(self) -> Path:
        return self.run_dir / "nginx.conf"

    @property
    def draining(self) -> Path:
        """Exists while the server drains: nginx then answers every new request 503 itself."""
        return self.run_dir / "draining"


def _user_line() -> str:
    """Run as root (a development machine), nginx's workers would switch to nobody; say so with
    nobody's real group. As anyone else (the image's uid 10001) there is nothing to switch."""
    if os.geteuid() != 0:
        return ""
    nobody = pwd.getpwnam("nobody")
    return f"user nobody {grp.getgrgid(nobody.pw_gid).gr_name};"


def render(settings: Settings, paths: ProxyPaths, *, listen: str) -> str:
    """nginx.conf for a server listening on `listen` (nginx's syntax: "0.0.0.0:80", "127.0.0.1:8080")."""
    run = paths.run_dir
    # The app answers 504 at REQUEST_TIMEOUT; nginx waits longer than that for gunicorn's answer.
    read_timeout = settings.request_timeout + 60 if settings.request_timeout > 0 else 86400
    unavailable = _error("unavailable", "the server is starting or restarting; retry shortly")
    draining = _error("draining", "the server is shutting down and takes no new requests")
    health_unavailable = "'{\"status\": \"loading\", \"error\": \"the server is starting or restarting\"}'"
    allow_map = "\n".join(f'        {path} "{methods}";' for path, methods in allowed_methods().items())
    proxy = f"""
            proxy_pass http://gunicorn;
            proxy_request_buffering on;   # the whole body first, then gunicorn
            proxy_buffering on;
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Request-Id $request_id;
            proxy_connect_timeout 5s;
            proxy_send_timeout 60s;
            proxy_read_timeout {read_timeout}s;"""
    return f"""# Written by app/serve.py for one server run; see app/nginx.py.
daemon off;
worker_processes 1;
pid {run}/nginx.pid;
error_log stderr warn;
{_user_line()}
worker_rlimit_nofile {2 * WORKER_CONNECTIONS};
events {{
    worker_connections {WORKER_CONNECTIONS};
}}
http {{
    access_log off;   # the app logs every request it answers (app/access_log.py)
    server_tokens off;
    default_type application/json;
    client_body_temp_path {run}/client_body;
    proxy_temp_path {run}/proxy;
    fastcgi_temp_path {run}/fastcgi;
    uwsgi_temp_path {run}/uwsgi;
    scgi_temp_path {run}/scgi;

    client_header_timeout {CLIENT_TIMEOUT_S}s;
    client_body_timeout {CLIENT_TIMEOUT_S}s;
    send_timeout 60s;
    keepalive_timeout 75s;
    client_max_body_size {settings.max_body_bytes};
    client_body_buffer_size {BODY_BUFFER};

    # nginx refuses TRACE itself (405); its answer names the route's methods too (RFC 9110).
    map $uri $allow_methods {{
        default "GET, HEAD, OPTIONS, POST";
{allow_map}
    }}

    upstream gunicorn {{
        server unix:{paths.socket};
    }}

    server {{
        listen {listen} backlog=4096;
        error_page 400 = @bad_request;
        error_page 405 = @not_allowed;
        error_page 413 = @too_large;
        error_page 502 504 = @unavailable;

        location / {{
            if (-f {paths.draining}) {{
                add_header Retry-After 5 always;
                return 503 {draining};
            }}{proxy}
        }}
        location = /health {{
            if (-f {paths.draining}) {{
                return 503 '{{"status": "draining"}}';
            }}
            error_page 502 504 = @health_unavailable;{proxy}
        }}
        location @unavailable {{
            add_header Retry-After 5 always;
            return 503 {unavailable};
        }}
        location @health_unavailable {{
            return 503 {health_unavailable};
        }}
        location @too_large {{
            return 413 {_error("request_entity_too_large", f"the body is larger than MAX_BODY_BYTES={settings.max_body_bytes}")};
        }}
        location @not_allowed {{
            add_header Allow $allow_methods always;
            return 405 {_error("method_not_allowed", "the method is not allowed for the requested URL")};
        }}
        location @bad_request {{
            return 400 {_error("bad_request", "malformed HTTP request")};
        }}
    }}
}}
"""
