"""Whether the HTTP client of the current request is still connected (gunicorn's socket)."""
from __future__ import annotations

import select
import socket
from typing import Callable, Mapping


def disconnect_probe(environ: Mapping) -> Callable[[], bool] | None:
    """A function that says True once the client has closed its connection; None off gunicorn."""
    sock = environ.get("gunicorn.socket")
    if not isinstance(sock, socket.socket):
        return None

    def gone() -> bool:
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            if not readable:
                return False  # nothing to read: still connected and quiet
            # Readable with no bytes means the peer sent FIN; bytes mean a pipelined request.
            return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except (OSError, ValueError):
            return True  # reset or closed

    return gone
