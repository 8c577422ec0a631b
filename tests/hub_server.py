"""A folder of repos served as a Hugging Face Hub, for tests (no network).

- :func:`serve_hub` — a loopback HTTP server (127.0.0.1, a free port) that answers what
  ``huggingface_hub.hf_hub_download`` asks: ``HEAD``/``GET /{org}/{name}/resolve/{revision}/{path}`` with
  ``X-Repo-Commit``, ``ETag`` (the file's sha256), ``Content-Length``; ``404`` with ``X-Error-Code:
  RepoNotFound`` / ``EntryNotFound`` otherwise. ``root/{org}/{name}/...`` are the repos. Yields
  ``(endpoint, log)`` (``log``: the ``(method, path)`` requests); the server is stopped on exit.
- :func:`build_hf_cache` — the offline form: a ``huggingface_hub`` cache folder
  (``models--ORG--NAME/{blobs/<sha256>, snapshots/<commit>/<file> -> blob, refs/main}``) for
  ``HF_HUB_CACHE`` + ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import os
import threading
from pathlib import Path


def repo_commit(folder: Path) -> str:
    """A 40-hex commit id for a repo folder (sha1 of its file names and contents' sha256)."""
    h = hashlib.sha1()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(f.relative_to(folder).as_posix().encode())
        h.update(_sha256(f).encode())
    return h.hexdigest()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _handler(root: Path, log: list):
    class Handler(http.server.BaseHTTPRequestHandler):
        timeout = 10  # a stuck client cannot hold the test

        def _not_found(self, code: str) -> None:
            self.send_response(404)
            self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", f"{code}: {self.path}")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _headers(self) -> Path | None:
            log.append((self.command, self.path))
            parts = self.path.split("?")[0].split("/")
            if len(parts) < 6 or parts[3] != "resolve":
                self._not_found("RepoNotFound")
                return None
            repo = root / parts[1] / parts[2]
            f = repo.joinpath(*parts[5:])
            if not repo.is_dir():
                self._not_found("RepoNotFound")
                return None
            if not f.is_file():
                self._not_found("EntryNotFound")
                return None
            self.send_response(200)
            self.send_header("X-Repo-Commit", repo_commit(repo))
            self.send_header("ETag", f'"{_sha256(f)}"')
            self.send_header("Content-Length", str(f.stat().st_size))
            self.end_headers()
            return f

        def do_HEAD(self):  # noqa: N802
            self._headers()

        def do_GET(self):  # noqa: N802
            f = self._headers()
            if f is not None:
                self.wfile.write(f.read_bytes())

        def log_message(self, *args):
            pass

    return Handler


@contextlib.contextmanager
def serve_hub(root: Path):
    """Serve ``root`` (``root/ORG/NAME/files``) on 127.0.0.1; yields ``(endpoint_url, request_log)``."""
    log: list = []
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(Path(root), log))
    srv.daemon_threads = True
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}", log
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=10)


def hub_env(monkeypatch, *, endpoint: str | None = None, hf_cache: Path, jaxuq_cache: Path,
            offline: bool = False) -> None:
    """Point huggingface_hub and jaxuq's conversion cache at test folders (read at call time by
    :func:`converters.io.resolve_hf`)."""
    for k in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(hf_cache))
    monkeypatch.setenv("JAXUQ_CACHE", str(jaxuq_cache))
    if endpoint is None:
        monkeypatch.delenv("HF_ENDPOINT", raising=False)
    else:
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


def build_hf_cache(cache: Path, repo_id: str, folder: Path) -> Path:
    """Write ``folder``'s files as ``repo_id`` into the ``huggingface_hub`` cache ``cache``; returns the
    snapshot folder."""
    commit = repo_commit(folder)
    d = Path(cache) / f"models--{repo_id.replace('/', '--')}"
    (d / "blobs").mkdir(parents=True, exist_ok=True)
    (d / "refs").mkdir(exist_ok=True)
    (d / "refs" / "main").write_text(commit)
    snap = d / "snapshots" / commit
    for f in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        blob = d / "blobs" / _sha256(f)
        if not blob.exists():
            blob.write_bytes(f.read_bytes())
        link = snap / f.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return snap
