"""Ring 1: the disconnect probe on real sockets, including descriptors numbered 1024 and above
(select() cannot watch those: it raised, and the raise was read as a disconnect)."""
import os
import resource
import socket

import pytest

from app.http_client import disconnect_probe

HIGH_FD = 1500


@pytest.fixture()
def high_fd_pair():
    """A connected pair whose server end has descriptor number HIGH_FD."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= HIGH_FD:
        pytest.skip(f"the hard descriptor limit {hard} is below {HIGH_FD}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, HIGH_FD + 1), hard))
    a, b = socket.socketpair()
    os.dup2(a.fileno(), HIGH_FD)
    server = socket.socket(fileno=HIGH_FD)
    a.close()
    yield server, b
    server.close()
    b.close()
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_connected_quiet_client_is_not_gone_even_above_fd_1024(high_fd_pair):
    server, client = high_fd_pair
    gone = disconnect_probe({"gunicorn.socket": server})
    assert server.fileno() >= 1024
    assert gone() is False
    client.close()
    assert gone() is True


def test_a_pipelined_request_is_not_a_disconnect(high_fd_pair):
    server, client = high_fd_pair
    client.sendall(b"GET / HTTP/1.1\r\n")  # readable, but with bytes: still connected
    assert disconnect_probe({"gunicorn.socket": server})() is False


def test_no_probe_off_gunicorn():
    assert disconnect_probe({}) is None
