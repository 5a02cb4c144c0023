"""Ring 1: the deployment's pieces that need no model: nginx's configuration (checked by the real
nginx), its Allow map against Flask's, and the supervisor's handling of a dead child."""
import signal
import subprocess

import pytest

from app.config import Settings
from app.nginx import ProxyPaths, allowed_methods, render
from app.serve import Supervisor, find_nginx
from tests.unit.test_api import make_client


def test_the_rendered_config_passes_nginx_t(tmp_path):
    paths = ProxyPaths(tmp_path)
    paths.conf.write_text(render(Settings(request_timeout=0), paths, listen="127.0.0.1:8080"))
    done = subprocess.run([find_nginx(), "-t", "-e", "stderr", "-p", str(tmp_path), "-c", str(paths.conf)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert "syntax is ok" in done.stderr


def test_the_config_carries_the_settings(tmp_path):
    text = render(Settings(max_body_bytes=123456, request_timeout=30), ProxyPaths(tmp_path), listen="0.0.0.0:80")
    assert "client_max_body_size 123456;" in text and "proxy_read_timeout 90s;" in text
    assert "listen 0.0.0.0:80 " in text and f"server unix:{tmp_path}/gunicorn.sock;" in text
    assert "proxy_request_buffering on;" in text  # the point of it: whole bodies, then gunicorn


def test_nginx_allow_header_matches_flasks():
    _, client = make_client()
    for path, methods in allowed_methods().items():
        other = "get" if "POST" in methods else "post"
        r = getattr(client, other)(path)
        assert r.status_code == 405, path
        assert set(r.headers["Allow"].split(", ")) == set(methods.split(", ")), path


def test_a_gunicorn_that_cannot_start_stops_nginx_and_fails(tmp_path, monkeypatch):
    # A bad setting makes gunicorn.conf.py fail; the supervisor must not keep nginx up alone.
    monkeypatch.setenv("N_CTX", "lots")
    sup = Supervisor(Settings(), listen="127.0.0.1:0", nginx=find_nginx(), run_dir=tmp_path)
    before = signal.getsignal(signal.SIGTERM)
    status = sup.run()
    assert status != 0
    assert signal.getsignal(signal.SIGTERM) is before  # the handlers are put back
    assert not sup._alive(sup.nginx) and not sup._alive(sup.gunicorn)


def test_serve_without_nginx_names_the_fix(monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: None)
    monkeypatch.setattr("os.access", lambda path, mode: False)
    with pytest.raises(SystemExit, match="scripts/setup.sh"):
        find_nginx()
