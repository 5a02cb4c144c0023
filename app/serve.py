"""Run the server as deployed: nginx in front, gunicorn (gunicorn.conf.py, wsgi:app) behind it.

    python -m app.serve --bind 0.0.0.0:8080

scripts/serve.sh and the Docker image's CMD run this. It is the parent of both (PID 1 in a
container): it writes nginx.conf into a private run directory, starts gunicorn on a unix socket
there and nginx on --bind, and watches both.

SIGTERM (or SIGINT) drains: nginx answers every new request 503 (/health: {"status":
"draining"}) while gunicorn lets the requests it holds finish, for up to DRAIN_TIMEOUT seconds
(gunicorn's graceful_timeout); then nginx stops and this process exits with gunicorn's status.
A second signal stops both at once. If either child dies, the other is stopped too.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from app.config import ROOT, Settings
from app.nginx import ProxyPaths, render

log = logging.getLogger("app.serve")

# Beyond DRAIN_TIMEOUT, how long gunicorn may take to exit before it is killed (seconds).
EXIT_GRACE_S = 15
# How long to wait for gunicorn's socket before nginx starts anyway (seconds).
SOCKET_WAIT_S = 30
# How long nginx gets to finish sending answers once gunicorn is gone (seconds).
NGINX_STOP_S = 10
# glibc's malloc arenas: one per thread by default, each keeping freed memory; 2 keeps a
# threaded worker's memory close to what it uses (unless the environment says otherwise).
MALLOC_ARENA_MAX = "2"


def find_nginx() -> str:
    """nginx from PATH, else Debian's /usr/sbin/nginx (not on non-root PATHs); fails naming the fix."""
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
    if found is None:
        raise SystemExit("serve: nginx is not installed; run scripts/setup.sh (it installs Debian's nginx)")
    return found


class Supervisor:
    """gunicorn and nginx as children; signals turn into a drain; a dead child stops the other."""

    def __init__(self, settings: Settings, *, listen: str, nginx: str, run_dir: Path) -> None:
        self.settings = settings
        self.paths = ProxyPaths(run_dir)
        self.listen = listen
        self.nginx_bin = nginx
        self.signals: list[int] = []
        self.gunicorn: subprocess.Popen | None = None
        self.nginx: subprocess.Popen | None = None
        self.exited: dict[int, int] = {}  # pid -> exit status of children reaped

    def start(self) -> None:
        self.paths.conf.write_text(render(self.settings, self.paths, listen=self.listen))
        env = {**os.environ}
        env.setdefault("MALLOC_ARENA_MAX", MALLOC_ARENA_MAX)
        # Own sessions: a terminal's Ctrl-C reaches this process only, which then drains in order.
        self.gunicorn = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "-b", f"unix:{self.paths.socket}", "wsgi:app"],
            cwd=ROOT, env=env, start_new_session=True,
        )
        # nginx starts once gunicorn listens (a second or so), so its first requests find the socket.
        deadline = time.monotonic() + SOCKET_WAIT_S
        while not self.paths.socket.exists() and self._alive(self.gunicorn) and time.monotonic() < deadline:
            time.sleep(0.05)
            self._reap()
        self.nginx = subprocess.Popen(
            [self.nginx_bin, "-e", "stderr", "-p", str(self.paths.run_dir), "-c", str(self.paths.conf)],
            start_new_session=True,
        )
        log.info("nginx on %s (pid %d) -> gunicorn on %s (pid %d)", self.listen, self.nginx.pid,
                 self.paths.socket, self.gunicorn.pid)

    def _on_signal(self, signum: int, _frame) -> None:
        self.signals.append(signum)

    def _reap(self) -> None:
        """Collect every exited child (as PID 1, orphans too)."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.exited[pid] = os.waitstatus_to_exitcode(status)
            for proc in (self.gunicorn, self.nginx):
                if proc is not None and proc.pid == pid:
                    proc.returncode = self.exited[pid]  # reaped here, not by Popen.wait

    def _alive(self, proc: subprocess.Popen | None) -> bool:
        return proc is not None and proc.pid not in self.exited

    def _wait(self, proc: subprocess.Popen, timeout: float) -> bool:
        """Wait up to timeout seconds for proc to exit; True when it has."""
        deadline = time.monotonic() + timeout
        while self._alive(proc) and time.monotonic() < deadline:
            time.sleep(0.1)
            self._reap()
        return not self._alive(proc)

    def _kill(self, proc: subprocess.Popen | None, sig: int) -> None:
        """Signal proc; SIGKILL goes to its whole process group (gunicorn's worker included)."""
        if not self._alive(proc):
            return
        try:
            if sig == signal.SIGKILL:
                os.killpg(proc.pid, sig)
            else:
                os.kill(proc.pid, sig)
        except ProcessLookupError:
            pass

    def run(self) -> int:
        """Serve until a signal or a child's death; returns the exit status."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            return self._serve()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _serve(self) -> int:
        self.start()
        while not self.signals and self._alive(self.gunicorn) and self._alive(self.nginx):
            time.sleep(0.1)
            self._reap()
        if self.signals:
            return self.drain()
        if not self._alive(self.gunicorn):
            status = self.exited[self.gunicorn.pid]
            log.error("gunicorn exited with status %s; stopping nginx", status)
            self._stop_nginx()
            return status or 1
        log.error("nginx exited with status %s; stopping gunicorn", self.exited[self.nginx.pid])
        self._kill(self.gunicorn, signal.SIGTERM)
        if not self._wait(self.gunicorn, self.settings.drain_timeout + EXIT_GRACE_S):
            self._kill(self.gunicorn, signal.SIGKILL)
        return 1

    def drain(self) -> int:
        """Refuse new requests (nginx), let gunicorn finish what it holds, then stop both."""
        log.info("draining: new requests get 503; running ones have %d s", self.settings.drain_timeout)
        self.paths.draining.touch()
        self._kill(self.gunicorn, signal.SIGTERM)  # gunicorn waits graceful_timeout = DRAIN_TIMEOUT
        deadline = time.monotonic() + self.settings.drain_timeout + EXIT_GRACE_S
        n_signals = len(self.signals)
        while not self._wait(self.gunicorn, 0.2):
            if len(self.signals) > n_signals or time.monotonic() > deadline:  # a second signal: now
                log.warning("killing gunicorn")
                self._kill(self.gunicorn, signal.SIGKILL)
                self._wait(self.gunicorn, 5)
                break
        self._stop_nginx()
        status = self.exited.get(self.gunicorn.pid, 1)
        log.info("stopped (gunicorn exit status %s)", status)
        return status

    def _stop_nginx(self) -> None:
        self._kill(self.nginx, signal.SIGQUIT)  # graceful: answers in progress are sent first
        if not self._wait(self.nginx, NGINX_STOP_S):
            self._kill(self.nginx, signal.SIGKILL)
            self._wait(self.nginx, 5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bind", default="0.0.0.0:8080", help="address nginx listens on (HOST:PORT)")
    parser.add_argument("--nginx", default=None, help="the nginx binary (default: nginx on PATH, /usr/sbin/nginx)")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    nginx = args.nginx or find_nginx()
    with tempfile.TemporaryDirectory(prefix="llm-eval-") as run_dir:
        os.chmod(run_dir, 0o711)  # nginx's workers (nobody, when started as root) reach the socket
        return Supervisor(settings, listen=args.bind, nginx=nginx, run_dir=Path(run_dir)).run()


if __name__ == "__main__":
    sys.exit(main())
