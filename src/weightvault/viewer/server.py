"""The viewer's HTTP server: three static files and a JSON API, on loopback by default.

Stdlib only (``http.server.ThreadingHTTPServer``); no build step, no CDN. The routes:

* ``/`` and ``/static/{index.html,app.js,style.css}``: the page. Only the files that are in the
  package's ``static`` folder when the server starts can be served, looked up by exact name, so
  no request path can reach another file.
* ``/api/...``: JSON, documented in ``docs/viewer.md``. Errors are JSON too
  (``{"error": {"status", "code", "message"}}``) with a one-line message: never a traceback, and
  never the content of a file (errors from a reader name only the path it was given).

Requests whose ``Host`` header is not the address the server listens on (or ``localhost``) are
refused, so a web page on another site cannot read the weights through DNS rebinding.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from weightvault.errors import TensorNotFoundError, WeightVaultError
from weightvault.viewer.data import ApiError, ViewerData

__all__ = ["STATIC_DIR", "ViewerServer"]

log = logging.getLogger("weightvault.viewer")

STATIC_DIR = Path(__file__).resolve().parent / "static"
_CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
# The page loads only its own script and style; SVG/canvas drawing needs nothing else.
_CSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
_LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


def _static_files() -> dict[str, Path]:
    """The servable files: regular files directly inside STATIC_DIR, by name."""
    if not STATIC_DIR.is_dir():
        return {}
    return {p.name: p for p in STATIC_DIR.iterdir() if p.is_file() and p.suffix in _CONTENT_TYPES}


def _float(params: dict[str, str], key: str, default: float) -> float:
    raw = params.get(key)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ApiError(400, "bad_parameter", f"parameter {key!r} must be a number") from None


def _int(params: dict[str, str], key: str, default: int) -> int:
    raw = params.get(key)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ApiError(400, "bad_parameter", f"parameter {key!r} must be an integer") from None


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "weightvault-viewer"
    sys_version = ""

    # -- plumbing -------------------------------------------------------------------------------
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("%s %s", self.address_string(), format % args)

    def _send(self, status: int, body: bytes, content_type: str, head_only: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Content-Security-Policy", _CSP)
        self.end_headers()
        if not head_only:
            self.wfile.write(body)

    def _send_json(self, status: int, payload: dict[str, Any], head_only: bool = False) -> None:
        body = json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")
        self._send(status, body, "application/json; charset=utf-8", head_only)

    def _host_allowed(self) -> bool:
        host = self.headers.get("Host", "")
        if host.startswith("["):
            name = host[1 : host.find("]")] if "]" in host else host
        else:
            name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
        return name.lower() in self.server.allowed_hosts or self.server.any_host

    # -- verbs ----------------------------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        self._dispatch(head_only=False)

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch(head_only=True)

    def _refuse_method(self) -> None:
        self._send_json(405, ApiError(405, "method_not_allowed", "the viewer is read-only: GET only").to_dict())

    do_POST = do_PUT = do_DELETE = do_PATCH = _refuse_method  # noqa: N815

    def _dispatch(self, head_only: bool) -> None:
        if not self._host_allowed():
            self._send_json(403, ApiError(403, "bad_host", "Host header is not this viewer's address").to_dict(), head_only)
            return
        url = urlsplit(self.path)
        if url.path.startswith("/api/"):
            self._api(url.path[len("/api/") :], url.query, head_only)
        else:
            self._static(url.path, head_only)

    def _static(self, path: str, head_only: bool) -> None:
        name = "index.html" if path in ("/", "/index.html") else path[len("/static/") :] if path.startswith("/static/") else None
        target = self.server.static.get(name or "")
        if target is None:
            self._send(404, b"not found\n", "text/plain; charset=utf-8", head_only)
            return
        self._send(200, target.read_bytes(), _CONTENT_TYPES[target.suffix], head_only)

    def _api(self, route: str, query: str, head_only: bool) -> None:
        handler = self.server.routes.get(route)
        try:
            if handler is None:
                raise ApiError(404, "unknown_endpoint", f"no API endpoint /api/{route[:60]}")
            try:
                raw = parse_qs(query, keep_blank_values=True, strict_parsing=False, max_num_fields=32)
            except ValueError:
                raise ApiError(400, "bad_query", "too many query parameters") from None
            params = {k: v[0] for k, v in raw.items()}
            payload = handler(params)
            self._send_json(200, payload, head_only)
        except ApiError as exc:
            self._send_json(exc.status, exc.to_dict(), head_only)
        except TensorNotFoundError as exc:
            self._send_json(404, ApiError(404, "unknown_tensor", str(exc)).to_dict(), head_only)
        except WeightVaultError as exc:
            # A file that cannot be read: its own error names the path the user gave and the problem.
            self._send_json(422, ApiError(422, type(exc).__name__, str(exc)).to_dict(), head_only)
        except OSError as exc:
            message = f"{exc.strerror or type(exc).__name__}" + (f": {exc.filename}" if exc.filename else "")
            self._send_json(422, ApiError(422, type(exc).__name__, message).to_dict(), head_only)
        except Exception:  # the page gets one line; the traceback goes to the log only
            log.exception("viewer request /api/%s failed", route)
            self._send_json(500, ApiError(500, "internal_error", f"internal error in /api/{route}; see the viewer's log").to_dict(), head_only)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], data: ViewerData) -> None:
        self.data = data
        self.static = _static_files()
        self.routes = _routes(data)
        host = address[0]
        self.any_host = _is_unspecified(host)
        super().__init__(address, _Handler)
        self.allowed_hosts = {*_LOOPBACK_NAMES, host.lower(), str(self.server_address[0]).lower()}


def _is_unspecified(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return host == ""


def _routes(data: ViewerData) -> dict[str, Callable[[dict[str, str]], dict[str, Any]]]:
    return {
        "files": lambda p: data.files(),
        "tree": lambda p: data.tree(p.get("file")),
        "tensor": lambda p: data.tensor(p.get("file"), p.get("name"), bins=_int(p, "bins", 64), grid=_int(p, "grid", 96)),
        "values": lambda p: data.values(
            p.get("file"), p.get("name"), precision=_int(p, "precision", 4), count=_int(p, "count", 100)
        ),
        "meta": lambda p: data.meta(p.get("file")),
        "runs": lambda p: data.runs(),
        "diff": lambda p: data.diff(
            p.get("a", "0"), p.get("b", "1"), atol=_float(p, "atol", 0.0), rtol=_float(p, "rtol", 0.0)
        ),
        "diff_tensor": lambda p: data.diff_tensor(p.get("a", "0"), p.get("b", "1"), p.get("name"), bins=_int(p, "bins", 64)),
    }


class ViewerServer:
    """A viewer over ``paths`` listening on ``host:port`` (port 0: a free one).

    Use :meth:`start` to serve from a background thread (tests, notebooks) or
    :meth:`serve_forever` to block (the CLI). :meth:`close` stops serving and closes every reader.
    """

    def __init__(self, paths: list[str | os.PathLike[str]], *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.data = ViewerData(list(paths))
        self._server = _Server((host, port), self.data)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def host(self) -> str:
        return str(self._server.server_address[0])

    @property
    def url(self) -> str:
        host = self.host
        if _is_unspecified(host):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/"

    def start(self) -> ViewerServer:
        self._thread = threading.Thread(target=self._server.serve_forever, name="weightvault-viewer", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._server.serve_forever()

    def close(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()
        self.data.close()

    def __enter__(self) -> ViewerServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

