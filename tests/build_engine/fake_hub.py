"""A loopback stand-in for the Hugging Face hub: just the endpoints snapshot_download uses.

Point huggingface_hub at it with HF_ENDPOINT=http://127.0.0.1:<port>. Repos are in-memory
{commit: {path: bytes}} with refs; a repo can be gated, and a file can be made to drop its
connection half-way (then answer 500) to simulate an interrupted download.
"""
from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a file's bytes (what the hub reports as a file's oid/ETag)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    """One model repo: commits (40-hex -> {path: bytes}) and refs (branch -> commit)."""

    commits: dict[str, dict[str, bytes]]
    refs: dict[str, str]
    gated: bool = False


@dataclass
class FakeHub:
    """The server's state; tests edit it between requests."""

    repos: dict[str, Repo] = field(default_factory=dict)
    broken: set[str] = field(default_factory=set)  # paths whose GET drops half-way (then 500)
    log: list[tuple[str, str, str | None]] = field(default_factory=list)  # (method, path, Range header)
    _dropped: set[str] = field(default_factory=set)

    def add_folder(self, repo_id: str, commit: str, folder: Path, *, branch: str | None = "main",
                   extra: dict[str, bytes] | None = None) -> None:
        """Publish every file of ``folder`` (plus ``extra``) as ``commit`` of ``repo_id``."""
        files = {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}
        files.update(extra or {})
        repo = self.repos.setdefault(repo_id, Repo({}, {}))
        repo.commits[commit] = files
        if branch:
            repo.refs[branch] = commit


def _handler(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep pytest output clean
            pass

        def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            if "Content-Length" not in (headers or {}):
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _error(self, status: int, code: str) -> None:
            self._send(status, json.dumps({"error": code}).encode(),
                       {"X-Error-Code": code, "X-Error-Message": code, "Content-Type": "application/json"})

        def _resolve(self, repo_id: str, rev: str) -> tuple[Repo, str] | None:
            repo = hub.repos.get(repo_id)
            if repo is None:
                self._error(401, "RepoNotFound")
                return None
            if repo.gated and "authorization" not in {k.lower() for k in self.headers}:
                self._error(401, "GatedRepo")
                return None
            commit = repo.refs.get(rev, rev)
            if commit not in repo.commits:
                self._error(404, "RevisionNotFound")
                return None
            return repo, commit

        def do_HEAD(self) -> None:
            self.do_GET()

        def do_GET(self) -> None:
            url = urlparse(self.path)
            path = unquote(url.path)
            hub.log.append((self.command, path, self.headers.get("Range")))
            if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/revision/(.+)", path):
                if got := self._resolve(m[1], m[2]):
                    repo, commit = got
                    body = {"id": m[1], "modelId": m[1], "sha": commit, "private": False, "gated": repo.gated,
                            "siblings": [{"rfilename": f} for f in repo.commits[commit]]}
                    self._send(200, json.dumps(body).encode(), {"Content-Type": "application/json"})
            elif m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)", path):
                if got := self._resolve(m[1], m[2]):
                    repo, commit = got
                    body = [{"type": "file", "path": f, "size": len(d), "oid": git_blob_sha1(d)}
                            for f, d in repo.commits[commit].items()]
                    self._send(200, json.dumps(body).encode(), {"Content-Type": "application/json"})
            elif m := re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
                if got := self._resolve(m[1], m[2]):
                    repo, commit = got
                    data = repo.commits[commit].get(m[3])
                    if data is None:
                        self._error(404, "EntryNotFound")
                        return
                    self._file(m[3], data, commit)
            else:
                self._error(404, "NotFound")

        def _file(self, name: str, data: bytes, commit: str) -> None:
            headers = {"X-Repo-Commit": commit, "ETag": f'"{git_blob_sha1(data)}"', "Accept-Ranges": "bytes"}
            start = 0
            if self.command == "GET" and (rng := self.headers.get("Range")):
                start = int(re.match(r"bytes=(\d+)-", rng)[1])
            if self.command == "GET" and name in hub.broken:
                if name in hub._dropped:
                    self._error(500, "ServerError")  # still broken: fail fast instead of retrying forever
                    return
                hub._dropped.add(name)
                self.send_response(200)
                for k, v in {**headers, "Content-Length": str(len(data))}.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data[: len(data) // 2])  # half the body, then the connection drops
                self.wfile.flush()
                self.close_connection = True
                return
            body = data[start:]
            if start:
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            self._send(206 if start else 200, body, {**headers, "Content-Length": str(len(body))})

    return Handler


class HubServer:
    """Run a FakeHub on 127.0.0.1 in a background thread (context manager)."""

    def __init__(self, hub: FakeHub) -> None:
        self.hub = hub
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> "HubServer":
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
