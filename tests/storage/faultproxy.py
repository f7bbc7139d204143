"""A small HTTP proxy that misbehaves like a busy object store, for the fault-injection tests.

It sits between the S3 client (s3fs) and the server (moto): every request is forwarded, except a
share that is answered ``503 SlowDown`` and a share whose connection is dropped (before any
answer, or halfway through the answer's body). The choice is made by a seeded random generator,
so a failing run can be replayed. ``only`` restricts faults to requests it accepts (e.g. part
uploads only). It also counts requests, the body bytes it returned (what went over the wire), the
bytes PUT through it (uploads) and the server-side copies it forwarded.
"""

from __future__ import annotations

import http.client
import random
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "upgrade"}


class FaultProxy:
    """``FaultProxy(upstream).start()``; ``.endpoint`` is what the client talks to."""

    def __init__(
        self,
        upstream: str,
        *,
        slow_down: float = 0.0,
        drop: float = 0.0,
        seed: int = 0,
        only: Callable[[str, str], bool] | None = None,
        copy_slow_down: float = 0.0,
    ) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.slow_down, self.drop = slow_down, drop
        self.only = only
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.requests = self.faults = self.bytes_out = 0
        # request bodies of PUTs that carry data (objects, parts; not server-side copies) and
        # the server-side copies (CopyObject / UploadPartCopy: x-amz-copy-source); a share
        # ``copy_slow_down`` of the copies is answered 503
        self.bytes_in = self.copies = 0
        self.copy_slow_down = copy_slow_down
        self.log: list[tuple[str, str, str]] = []  # (method, path, what happened)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = bytearray()
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return bytes(out)
                        out += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _handle(self) -> None:
                body = self._body()
                is_copy = "x-amz-copy-source" in {k.lower() for k in self.headers}
                fault = proxy._choose(self.command, self.path, len(body), is_copy)
                if fault == "slowdown":
                    self.send_response(503, "Slow Down")
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(SLOW_DOWN)))
                    self.end_headers()
                    self.wfile.write(SLOW_DOWN)
                    return
                if fault == "drop-request":
                    self._drop()
                    return
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                    if body or self.command in ("PUT", "POST"):
                        headers["Content-Length"] = str(len(body))
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                finally:
                    conn.close()
                self.send_response(resp.status, resp.reason)
                head = self.command == "HEAD"  # its Content-Length is the object's, no body
                for k, v in resp.getheaders():
                    if k.lower() not in HOP_BY_HOP and (head or k.lower() != "content-length"):
                        self.send_header(k, v)
                if not head:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command == "HEAD":
                    return
                if fault == "drop-response" and len(data) > 1:
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self._drop()
                    return
                with proxy._lock:  # counted before sending: the client never sees uncounted bytes
                    proxy.bytes_out += len(data)
                self.wfile.write(data)

            def _drop(self) -> None:
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _choose(self, method: str, path: str, nbytes: int = 0, is_copy: bool = False) -> str | None:
        with self._lock:
            self.requests += 1
            fault = None
            if is_copy:
                self.copies += 1
                if self._rng.random() < self.copy_slow_down:
                    fault = "slowdown"
            elif method == "PUT":
                self.bytes_in += nbytes
            if fault is None and (self.only is None or self.only(method, path)):
                r = self._rng.random()
                if r < self.slow_down:
                    fault = "slowdown"
                elif r < self.slow_down + self.drop:
                    fault = "drop-request" if self._rng.random() < 0.5 else "drop-response"
            if fault:
                self.faults += 1
            self.log.append((method, path, fault or "ok"))
            return fault

    def reset_counts(self) -> None:
        with self._lock:
            self.requests = self.faults = self.bytes_out = self.bytes_in = self.copies = 0
            self.log.clear()

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
