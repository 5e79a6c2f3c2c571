"""Serve optuna-dashboard over a study store: read-only by default, cached, safe beside a running study.

* **Read-only** unless ``writable``: SQLite is opened with a read-only connection
  (``sqlite:///file:/abs/x.db?mode=ro&uri=true``), and every request that is not GET/HEAD/OPTIONS
  is refused with 403 before it reaches optuna-dashboard (:func:`msatune.studies.store.studies.open_storage`). The second guard matters: the dashboard's
  delete-study endpoint removes the study's artifact files *before* it asks the store, and other
  stores (PostgreSQL) have no read-only URL.
* **Fast refresh**: the RDB storage is wrapped in Optuna's ``_CachedStorage``, which reads finished
  trials once and afterwards only new or unfinished ones (a poll of a 2,000-trial study goes from
  seconds to tens of milliseconds; see ``benchmarks/store_scale.py``).
* **Safe beside a running study**: SQLite readers take short shared locks; the connection waits up
  to :data:`msatune.studies.store.studies.SQLITE_TIMEOUT_S` for a writer instead of failing, and the study's own
  connection (same timeout) waits for the dashboard's reads, so neither side sees
  "database is locked" (optuna-dashboard#545 was a default 5 s timeout on a busy store).
* **No authentication**: bound to 127.0.0.1 unless the caller says otherwise.

The server is the threaded ``wsgiref`` server that optuna-dashboard's own CLI uses.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import logging
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import optuna

from msatune.errors import UserError
from msatune.studies.store.connect import open_storage
from msatune.thirdparty.optuna_internals import cached_storage, study_id

log = logging.getLogger(__name__)

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
READ_ONLY_REASON = (
    "this msatune dashboard is read-only; restart it with `msatune dashboard --writable` "
    "to delete, rename, tell or annotate"
)


def open_dashboard_storage(url: str, *, writable: bool = False) -> optuna.storages.BaseStorage:
    """The storage the dashboard serves: the store (read-only unless ``writable``; never created
    here) behind Optuna's cache of finished trials.

    Raises:
        UserError: the URL is bad or the store cannot be opened.
    """
    backend = open_storage(url, read_only=not writable, create=False)
    log.debug("dashboard storage %s (%s)", url, "writable" if writable else "read-only")
    return cached_storage(backend)


class ReadOnlyArtifactStore:
    """An artifact store whose reads pass through and whose writes and removals are refused."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def open_reader(self, artifact_id: str) -> Any:
        return self._inner.open_reader(artifact_id)

    def write(self, artifact_id: str, content_body: Any) -> None:
        raise PermissionError(READ_ONLY_REASON)

    def remove(self, artifact_id: str) -> None:
        raise PermissionError(READ_ONLY_REASON)


#: Shown at the top of every read-only dashboard page: optuna-dashboard has no read-only mode,
#: so its create, rename and delete buttons stay visible (and are refused with 403).
READ_ONLY_BANNER = (
    '<div id="msatune-read-only" style="position:fixed;top:0;left:0;right:0;z-index:99999;'
    'background:#fff3cd;color:#664d03;border-bottom:1px solid #ffe69c;padding:4px 12px;'
    'font:13px system-ui,sans-serif;text-align:center">msatune: this dashboard is read-only. '
    "Create, rename, delete, tell, notes and uploads are refused; restart it with "
    "<code>msatune dashboard --writable</code> to allow them.</div>"
)


def _with_banner(body: bytes) -> bytes:
    marker = b"<body>"
    at = body.find(marker)
    if at < 0:
        return body
    at += len(marker)
    return body[:at] + READ_ONLY_BANNER.encode() + body[at:]


def read_only_middleware(app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
    """Refuse every request that could change something (403, JSON ``{"reason": ...}``) and say
    so on the dashboard's page (a banner in its HTML)."""

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET").upper()
        if method in SAFE_METHODS:
            if method == "GET" and environ.get("PATH_INFO", "").startswith("/dashboard"):
                return _page_with_banner(app, environ, start_response)
            return app(environ, start_response)
        log.info("refused %s %s (read-only dashboard)", method, environ.get("PATH_INFO", ""))
        body = json.dumps({"reason": READ_ONLY_REASON}).encode()
        start_response("403 Forbidden", [("Content-Type", "application/json"),
                                         ("Content-Length", str(len(body)))])
        return [body]

    return guarded


def _page_with_banner(app: Callable[..., Iterable[bytes]], environ: dict[str, Any],
                      start_response: Callable[..., Any]) -> Iterable[bytes]:
    seen: dict[str, Any] = {}

    def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[..., Any]:
        seen.update(status=status, headers=headers, exc_info=exc_info)
        return lambda data: None  # optuna-dashboard (bottle) returns its body, never writes it

    result = app(environ, capture)
    try:
        body = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if callable(close):
            close()
    headers = seen.get("headers", [])
    html = any(k.lower() == "content-type" and "text/html" in v for k, v in headers)
    if seen.get("status", "").startswith("200") and html:
        body = _with_banner(body)
        headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
        headers.append(("Content-Length", str(len(body))))
    start_response(seen.get("status", "500 Internal Server Error"), headers, seen.get("exc_info"))
    return [body]


def make_app(storage: optuna.storages.BaseStorage, artifact_dir: Path | None, *,
             writable: bool = False) -> Callable[..., Iterable[bytes]]:
    """optuna-dashboard's WSGI app over ``storage``, guarded unless ``writable``."""
    import optuna_dashboard
    from optuna.artifacts import FileSystemArtifactStore

    artifact_store: Any = None
    if artifact_dir is not None and writable:
        artifact_dir.mkdir(parents=True, exist_ok=True)
        artifact_store = FileSystemArtifactStore(str(artifact_dir))
    elif artifact_dir is not None and artifact_dir.is_dir():  # read-only: never created here
        artifact_store = ReadOnlyArtifactStore(FileSystemArtifactStore(str(artifact_dir)))
    app = optuna_dashboard.wsgi(storage, artifact_store=artifact_store)
    return app if writable else read_only_middleware(app)


def _unavailable(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
    return [b"starting"]


class _ThreadedWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    """Request lines go to the debug log, not to stderr."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("%s %s", self.address_string(), format % args)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class StudyLink:
    study_id: int
    name: str
    trials: int
    url: str


class DashboardServer:
    """A bound (not yet serving) dashboard; ``serve_forever()`` blocks, ``shutdown()`` stops it."""

    def __init__(self, storage_url: str, *, host: str = "127.0.0.1", port: int = 8080,
                 artifact_dir: Path | None = None, writable: bool = False) -> None:
        self.writable = writable
        self.storage = open_dashboard_storage(storage_url, writable=writable)
        try:  # bind first: a dashboard that cannot listen creates nothing
            self._httpd = make_server(host, port, _unavailable, server_class=_ThreadedWSGIServer,
                                      handler_class=_QuietHandler)
        except socket.gaierror as exc:
            raise UserError(f"cannot listen on {host}:{port}: {exc}; check --host") from None
        except OSError as exc:
            hint = "pass another --port (0 picks a free one)" if exc.errno == errno.EADDRINUSE else "check --host"
            raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; {hint}") from None
        self._httpd.set_app(make_app(self.storage, artifact_dir, writable=writable))
        self.host = host
        self.port = int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def study_links(self) -> list[StudyLink]:
        links = []
        for s in self.storage.get_all_studies():
            n = len(self.storage.get_all_trials(study_id(s), deepcopy=False))
            links.append(StudyLink(study_id(s), s.study_name, n,
                                   f"{self.base_url}/dashboard/studies/{study_id(s)}"))
        return links

    def serve_forever(self) -> None:
        try:
            self._httpd.serve_forever(poll_interval=0.25)
        finally:
            self._httpd.server_close()

    def shutdown(self) -> None:
        self._httpd.shutdown()
