"""Whether the HTTP client of the current request is still connected (gunicorn's socket)."""
from __future__ import annotations

import select
import socket
from typing import Callable, Mapping

# Events that say the peer is gone or the socket is broken, whatever is left to read.
_GONE = select.POLLHUP | select.POLLERR | select.POLLNVAL


def disconnect_probe(environ: Mapping) -> Callable[[], bool] | None:
    """A function that says True once the client has closed its connection; None off gunicorn."""
    sock = environ.get("gunicorn.socket")
    if not isinstance(sock, socket.socket):
        return None

    def gone() -> bool:
        # poll, not select: select() cannot watch descriptors numbered 1024 or above (FD_SETSIZE)
        # and raised for them, which was read as a disconnect.
        try:
            fd = sock.fileno()
            if fd < 0:
                return True  # closed
            poller = select.poll()
            poller.register(fd, select.POLLIN | select.POLLPRI)
            events = poller.poll(0)
            if not events:
                return False  # nothing to read: still connected and quiet
            if events[0][1] & _GONE and not events[0][1] & select.POLLIN:
                return True
            # Readable with no bytes means the peer sent FIN; bytes mean a pipelined request.
            return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except (OSError, ValueError):
            return True  # reset or closed

    return gone
