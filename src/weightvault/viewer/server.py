"""The viewer's HTTP server: the page's static files and a JSON API, on loopback by default.

Stdlib only (``http.server.ThreadingHTTPServer``); no build step, no CDN. The routes:

* ``/`` and ``/static/{index.html,app.js,graph.js,style.css}``, ``/static/vendor/elk.bundled.js``
  (the vendored graph-layout library): the page. Only the files that are in the
  package's ``static`` folder when the server starts can be served, looked up by exact name, so
  no request path can reach another file.
* ``/api/...``: JSON, documented in ``docs/viewer.md``. Errors are JSON too
  (``{"error": {"status", "code", "message"}}``) with a one-line message: never a traceback, and
  never the content of a file (errors from a reader name only the path it was given).

Requests whose ``Host`` header is not ``name:port`` with a loopback name or address (or the
address the server listens on) and the served port are refused, so a web page on another site
cannot read the weights through DNS rebinding.

Connections are cheap to hold and cannot exhaust the server: an accepted connection waits in one
selector thread, costing no handler thread, until its request arrives (or it is closed after
``idle_timeout`` seconds of silence); at most ``max_handlers`` requests are served at once (more get
503), and a handler waits at most ``idle_timeout`` seconds for each read of the request. A client
that hangs up early is not an error: nothing is printed.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import queue
import selectors
import socket
import threading
import time
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
_LOOPBACK_NAMES = {"localhost"}
IDLE_TIMEOUT = 10.0
MAX_HANDLERS = 32
MAX_WAITING = 1024
# What a client that hangs up early makes a socket raise: not the server's problem.
_DISCONNECTS = (ConnectionError, TimeoutError)


def _static_files() -> dict[str, Path]:
    """The servable files, by name: regular files directly inside STATIC_DIR, and those of its
    ``vendor`` folder (the vendored layout library) as ``vendor/NAME``."""
    if not STATIC_DIR.is_dir():
        return {}
    found = {p.name: p for p in STATIC_DIR.iterdir() if p.is_file() and p.suffix in _CONTENT_TYPES}
    vendor = STATIC_DIR / "vendor"
    if vendor.is_dir():
        found.update({f"vendor/{p.name}": p for p in vendor.iterdir() if p.is_file() and p.suffix in _CONTENT_TYPES})
    return found


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

    def setup(self) -> None:
        self.timeout = self.server.idle_timeout  # for each read of the request line and headers
        super().setup()

    def handle(self) -> None:
        try:
            super().handle()
        except _DISCONNECTS:
            self.close_connection = True  # the client left; there is nobody to tell

    def _send_json(self, status: int, payload: dict[str, Any], head_only: bool = False) -> None:
        body = json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")
        self._send(status, body, "application/json; charset=utf-8", head_only)

    def _host_allowed(self) -> bool:
        hosts = self.headers.get_all("Host") or []
        return len(hosts) == 1 and self.server.host_allowed(hosts[0])

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
        except _DISCONNECTS:
            raise  # the client left while we answered: nothing more to send
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


def parse_host(value: str) -> tuple[str, int | None] | None:
    """``(name, port)`` of a Host header (``name``, ``name:port``, ``[v6]:port``); None if malformed."""
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        name, rest = value[1:end], value[end + 1 :]
    else:
        name, sep, port = value.partition(":")
        rest = sep + port
    if not name:
        return None
    if not rest:
        return name.lower(), None
    digits = rest[1:]
    if rest[0] != ":" or not (digits.isascii() and digits.isdigit() and len(digits) <= 5):
        return None
    return name.lower(), int(digits)


def _ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        data: ViewerData,
        *,
        idle_timeout: float = IDLE_TIMEOUT,
        max_handlers: int = MAX_HANDLERS,
        max_waiting: int = MAX_WAITING,
    ) -> None:
        self.data = data
        self.static = _static_files()
        self.routes = _routes(data)
        self.idle_timeout = idle_timeout
        host = address[0]
        self.any_host = _is_unspecified(host)
        super().__init__(address, _Handler)
        self.bound_names = {host.lower(), str(self.server_address[0]).lower()}
        self._handlers = threading.BoundedSemaphore(max_handlers)
        self._waiting = _WaitingRoom(self, max_waiting, idle_timeout)

    def host_allowed(self, value: str) -> bool:
        """Whether a Host header names this server: a loopback name or address (any IP literal when
        listening on all interfaces, the bound address otherwise) and exactly the served port."""
        parsed = parse_host(value)
        if parsed is None:
            return False
        name, port = parsed
        served = int(self.server_address[1])
        if port != served and not (port is None and served == 80):
            return False
        ip = _ip(name)
        if name in _LOOPBACK_NAMES or name in self.bound_names or (ip is not None and ip.is_loopback):
            return True
        # Listening on every interface: any address literal is ours; a DNS name never is, so a
        # rebinding attacker's domain is still refused.
        return self.any_host and ip is not None

    # -- connections: wait without a thread, serve with a bounded number of threads --------------
    def process_request(self, request: Any, client_address: Any) -> None:
        self._waiting.add(request, client_address)

    def start_handler(self, request: socket.socket, client_address: Any) -> None:
        """Serve a connection whose request has started to arrive (called by the waiting room)."""
        if not self._handlers.acquire(blocking=False):
            _refuse_busy(request)
            self.shutdown_request(request)
            return
        thread = threading.Thread(target=self._serve_one, args=(request, client_address), daemon=True)
        try:
            thread.start()
        except RuntimeError:  # cannot start a thread: the process is at its limit
            self._handlers.release()
            self.shutdown_request(request)

    def _serve_one(self, request: socket.socket, client_address: Any) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            self._handlers.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        exc = sys.exc_info()[1]
        if isinstance(exc, _DISCONNECTS):
            return  # a client that hung up early: not worth a line, let alone a traceback
        log.error("viewer connection from %s failed", client_address, exc_info=True)

    def server_close(self) -> None:
        self._waiting.close()
        super().server_close()


def _refuse_busy(request: socket.socket) -> None:
    body = json.dumps(ApiError(503, "busy", "too many requests at once; retry").to_dict()).encode()
    head = (
        "HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
    )
    try:
        request.settimeout(0.5)
        request.sendall(head.encode("ascii") + body)
    except OSError:
        pass


class _WaitingRoom:
    """Accepted connections whose request has not arrived yet, watched by one selector thread.

    A connection leaves when it becomes readable (to a handler thread), when it has been silent for
    ``idle_timeout`` seconds, or when the server closes. Past ``capacity`` waiting connections, the
    oldest is closed to make room, so idle sockets cost file descriptors only, and a bounded number.
    """

    def __init__(self, server: _Server, capacity: int, idle_timeout: float) -> None:
        self.server = server
        self.capacity = capacity
        self.idle_timeout = idle_timeout
        self._incoming: queue.SimpleQueue[tuple[socket.socket, Any] | None] = queue.SimpleQueue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._deadlines: dict[socket.socket, float] = {}  # insertion order = arrival order
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="weightvault-viewer-waiting", daemon=True)
        self._thread.start()

    def add(self, request: socket.socket, client_address: Any) -> None:
        self._incoming.put((request, client_address))
        self._wake()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._incoming.put(None)
        self._wake()
        self._thread.join(timeout=5)
        self._wake_w.close()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:  # buffer full (already woken) or closed
            pass

    def _run(self) -> None:
        try:
            while True:
                timeout = self._next_deadline() - time.monotonic() if self._deadlines else None
                for key, _ in self._selector.select(None if timeout is None else max(0.0, timeout)):
                    if key.fileobj is self._wake_r:
                        self._drain_wake()
                    else:
                        self._hand_over(key.fileobj, key.data)  # type: ignore[arg-type]
                if not self._take_incoming():
                    return
                self._expire()
        finally:
            for request in list(self._deadlines):
                self._drop(request)
            self._selector.close()
            self._wake_r.close()

    def _next_deadline(self) -> float:
        return min(self._deadlines.values())

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:  # BlockingIOError: drained
            pass

    def _take_incoming(self) -> bool:
        """Register newly accepted connections; False once the server is closing."""
        while True:
            try:
                item = self._incoming.get_nowait()
            except queue.Empty:
                return True
            if item is None:
                return False
            request, client_address = item
            if len(self._deadlines) >= self.capacity:
                self._drop(next(iter(self._deadlines)))  # the one that has waited longest
            try:
                self._selector.register(request, selectors.EVENT_READ, client_address)
            except (OSError, ValueError):
                self.server.shutdown_request(request)
                continue
            self._deadlines[request] = time.monotonic() + self.idle_timeout

    def _hand_over(self, request: socket.socket, client_address: Any) -> None:
        self._forget(request)
        self.server.start_handler(request, client_address)

    def _expire(self) -> None:
        now = time.monotonic()
        for request in [r for r, deadline in self._deadlines.items() if deadline <= now]:
            self._drop(request)

    def _forget(self, request: socket.socket) -> None:
        self._deadlines.pop(request, None)
        try:
            self._selector.unregister(request)
        except (KeyError, ValueError):
            pass

    def _drop(self, request: socket.socket) -> None:
        self._forget(request)
        self.server.shutdown_request(request)


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
        "graph": lambda p: data.graph(p.get("file")),
        "diff_tensor": lambda p: data.diff_tensor(p.get("a", "0"), p.get("b", "1"), p.get("name"), bins=_int(p, "bins", 64)),
    }


class ViewerServer:
    """A viewer over ``paths`` listening on ``host:port`` (port 0: a free one).

    ``idle_timeout``: seconds a connection may stay silent (before and while sending its request);
    ``max_handlers``: requests served at once. Use :meth:`start` to serve from a background thread
    (tests, notebooks) or
    :meth:`serve_forever` to block (the CLI). :meth:`close` stops serving and closes every reader.
    """

    def __init__(
        self,
        paths: list[str | os.PathLike[str]],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        idle_timeout: float = IDLE_TIMEOUT,
        max_handlers: int = MAX_HANDLERS,
    ) -> None:
        self.data = ViewerData(list(paths))
        self._server = _Server((host, port), self.data, idle_timeout=idle_timeout, max_handlers=max_handlers)
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

