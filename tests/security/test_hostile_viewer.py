"""The viewer against hostile clients: a real server on 127.0.0.1 (free port), raw sockets.

Traversal in every parameter, forged Host headers, huge parameters and headers, floods of idle or
half-sent connections, clients that hang up early. The server must answer each with a 4xx (never a
500, never a file's content), stay bounded in threads, keep answering normal requests, and print no
traceback.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import weightvault
from weightvault.viewer import ViewerServer


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("hostile_viewer")
    rng = np.random.default_rng(0)
    a = weightvault.save({"big": rng.normal(size=(512, 512)).astype(np.float32), "b": np.ones(3, np.float32)}, root / "a.safetensors")
    b = weightvault.save({"big": rng.normal(size=(512, 512)).astype(np.float32), "b": np.zeros(3, np.float32)}, root / "b.safetensors")
    (root / "secret.txt").write_text("root:x:0:0:secret\n")
    return [Path(a), Path(b)]


@pytest.fixture(scope="module")
def server(files: list[Path]) -> Iterator[ViewerServer]:
    with ViewerServer(list(files)).start() as srv:
        yield srv


def request(server: ViewerServer, target: str, *, host: str | None = None, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """One GET with the target and headers sent exactly as written."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.putrequest("GET", target, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", host if host is not None else f"127.0.0.1:{server.port}")
        for key, value in (headers or {}).items():
            conn.putheader(key, value)
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def raw_exchange(port: int, data: bytes, timeout: float = 30) -> bytes:
    """Send raw bytes, return everything the server answers before closing."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def assert_refused(status: int, body: bytes, allowed: tuple[int, ...] = (400, 404)) -> None:
    assert status in allowed, (status, body[:300])
    assert b"root:" not in body and b"Traceback" not in body
    if body.startswith(b"{"):
        err = json.loads(body)["error"]
        assert err["status"] == status and "\n" not in err["message"] and len(err["message"]) < 400


@pytest.fixture
def server_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="weightvault.viewer")
    return caplog


def assert_quiet(capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err and "Exception" not in err, err[-2000:]
    bad = [r for r in caplog.records if r.name.startswith("weightvault.viewer") and r.levelno >= logging.WARNING]
    assert not bad, [r.getMessage() for r in bad]
    assert not any(r.exc_info for r in caplog.records), [r.getMessage() for r in caplog.records if r.exc_info]


# -- traversal and malformed references in every parameter -------------------------------------------

HOSTILE_REFS = [
    "..%2F..%2F..%2Fetc%2Fpasswd",
    "%2Fetc%2Fpasswd",
    "..%2Fsecret.txt",
    "%2E%2E%2Fsecret.txt",
    "%252e%252e%252fsecret.txt",  # double-encoded
    "..%5C..%5Csecret.txt",  # backslashes
    "%00",
    "0%00",
    "%000",
    "secret.txt%00.safetensors",
    "%C0%AE%C0%AE%2Fsecret.txt",  # overlong UTF-8 dots
    "%EF%BC%8E%EF%BC%8E%2Fsecret.txt",  # fullwidth dots
    "%D9%A1",  # an Arabic-Indic digit one: isdigit() but not an index
    "%C2%B2",  # superscript two: isdigit(), int() refuses
    "9" * 5000,  # Python refuses int() of more than 4300 digits
    "0" * 5000 + "1",
    "1" * 20,
    "-0",
    "+1",
    "%201",
    "1%20",
    "0x0",
    "1e0",
    "file%3A%2F%2F%2Fetc%2Fpasswd",
]


def _entry_path_tricks(files: list[Path]) -> list[str]:
    from urllib.parse import quote

    a = str(files[0])
    return [quote(p, safe="") for p in (a + "/../secret.txt", a.replace("a.safetensors", "secret.txt"), a + "\x00", "./" + a)]


def test_traversal_in_every_file_parameter_is_refused(server: ViewerServer, files: list[Path], server_log, capfd) -> None:
    refs = HOSTILE_REFS + _entry_path_tricks(files)
    targets = []
    for ref in refs:
        targets += [f"/api/{ep}?file={ref}&name=b" for ep in ("tree", "meta", "tensor", "values")]
        targets += [f"/api/diff?a={ref}&b=1", f"/api/diff?a=0&b={ref}"]
        targets += [f"/api/diff_tensor?a={ref}&b=1&name=b", f"/api/diff_tensor?a=0&b={ref}&name=b"]
    for target in targets:
        status, body = request(server, target)
        assert_refused(status, body)
    assert_quiet(capfd, server_log)


@pytest.mark.parametrize("name", ["..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", "b%00", "%00", "x" * 60000, "%FF%FE"])
def test_traversal_in_tensor_names_is_refused(server: ViewerServer, name: str, server_log, capfd) -> None:
    for ep in ("tensor", "values"):
        assert_refused(*request(server, f"/api/{ep}?file=0&name={name}"))
    assert_refused(*request(server, f"/api/diff_tensor?a=0&b=1&name={name}"))
    assert_quiet(capfd, server_log)


@pytest.mark.parametrize(
    "path",
    [
        "/static/../../../../etc/passwd",
        "/static/%2e%2e/%2e%2e/secret.txt",
        "/static/..%2f..%2fserver.py",
        "/static/app.js%00",
        "/static/app.js%00.html",
        "/static/%00",
        "/static/./app.js/..",
        "//etc/passwd",
        "/static//etc/passwd",
        "/static/C:%5Cwindows%5Cwin.ini",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/api/%2e%2e/%2e%2e/etc/passwd",
        "/api/files/../../etc/passwd",
        "http://evil.example/etc/passwd",
        "/static/" + "a" * 5000,
    ],
)
def test_traversal_in_the_path_is_refused(server: ViewerServer, path: str, server_log, capfd) -> None:
    status, body = request(server, path)
    assert_refused(status, body, (400, 404))
    assert b"import " not in body
    assert_quiet(capfd, server_log)


def test_bad_numbers_in_parameters_are_400(server: ViewerServer, server_log, capfd) -> None:
    for target in (
        "/api/tensor?file=0&name=b&bins=" + "9" * 5000,
        "/api/tensor?file=0&name=b&grid=%00",
        "/api/values?file=0&name=b&count=1e9",
        "/api/values?file=0&name=b&precision=" + "1" * 5000,
        "/api/diff?a=0&b=1&atol=nan",
        "/api/diff?a=0&b=1&rtol=1e999",
        "/api/diff?a=0&b=1&atol=" + "9" * 5000,
    ):
        assert_refused(*request(server, target), (400,))
    # absurd but valid numbers are clamped, not errors
    assert request(server, "/api/tensor?file=0&name=b&bins=999999999&grid=-5")[0] == 200
    assert_quiet(capfd, server_log)


# -- Host header (DNS rebinding) ----------------------------------------------------------------------


def test_bad_host_headers_are_refused(server: ViewerServer, server_log, capfd) -> None:
    port = server.port
    bad = [
        "127.0.0.1:evil.example",
        f"127.0.0.1:{port}.evil.example",
        f"127.0.0.1:{port}@evil.example",
        f"evil.example:{port}",
        "evil.example",
        f"127.0.0.1.evil.example:{port}",
        f"localhost.evil.example:{port}",
        f"localhost:{port}:{port}",
        f"127.0.0.1:{port + 1 if port < 65535 else port - 1}",
        "127.0.0.1",  # port 80 implied, but the server is not on 80
        f"127.0.0.1:+{port}",
        f"127.0.0.1: {port}",
        f"[::1:{port}",
        f"[::1]x:{port}",
        f"[evil.example]:{port}",
        f"::1:{port}",
        f":{port}",
        "",
        f"127.0.0.1:{port}" + "0" * 5000,
        f"{'a' * 60000}:{port}",
        f"192.168.1.1:{port}",  # an address that is not the bound one
        f"0.0.0.0:{port}",
    ]
    for host in bad:
        status, body = request(server, "/api/files", host=host)
        assert status == 403 and b"bad_host" in body, (host, status, body[:200])
    for good in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}", f"127.0.0.2:{port}", f"[::1]:{port}"):
        assert request(server, "/api/files", host=good)[0] == 200, good
    assert_quiet(capfd, server_log)


def test_missing_or_repeated_host_header_is_refused(server: ViewerServer) -> None:
    port = server.port
    answer = raw_exchange(port, b"GET /api/files HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.0 403") and b"bad_host" in answer
    two = f"GET /api/files HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nHost: evil.example\r\nConnection: close\r\n\r\n"
    answer = raw_exchange(port, two.encode())
    assert answer.startswith(b"HTTP/1.0 403"), answer[:100]


def test_listening_on_all_interfaces_still_refuses_dns_names(files: list[Path]) -> None:
    with ViewerServer(files, host="0.0.0.0").start() as srv:  # noqa: S104 - the case under test
        port = srv.port
        assert request(srv, "/api/files", host=f"evil.example:{port}")[0] == 403
        assert request(srv, "/api/files", host=f"127.0.0.1:{port}")[0] == 200
        assert request(srv, "/api/files", host=f"10.1.2.3:{port}")[0] == 200  # an address literal of this host


# -- huge requests --------------------------------------------------------------------------------------


def test_huge_request_line_headers_and_parameters(server: ViewerServer, server_log, capfd) -> None:
    port = server.port
    host = f"Host: 127.0.0.1:{port}\r\n"
    answer = raw_exchange(port, b"GET /api/files?" + b"a" * 70000 + b" HTTP/1.1\r\n" + host.encode() + b"\r\n")
    assert answer.startswith(b"HTTP/1.0 414"), answer[:100]
    answer = raw_exchange(port, f"GET /api/files HTTP/1.1\r\n{host}X-Big: {'b' * 70000}\r\n\r\n".encode())
    assert answer.startswith((b"HTTP/1.0 431", b"HTTP/1.0 400")), answer[:100]
    many = "".join(f"X-H{i}: v\r\n" for i in range(500))
    answer = raw_exchange(port, f"GET /api/files HTTP/1.1\r\n{host}{many}\r\n".encode())
    assert answer.startswith(b"HTTP/1.0 431"), answer[:100]
    # many parameters, and one parameter just under the request-line limit
    status, body = request(server, "/api/tree?" + "&".join(f"p{i}=1" for i in range(5000)))
    assert_refused(status, body, (400,))
    status, body = request(server, "/api/tree?file=" + "x" * 65000)
    assert_refused(status, body, (404,))
    # binary garbage as a request
    answer = raw_exchange(port, bytes(range(256)) * 4 + b"\r\n\r\n")
    assert b"400" in answer[:2000] or answer == b"", answer[:100]  # no version: an HTTP/0.9 answer
    assert request(server, "/api/files")[0] == 200
    assert_quiet(capfd, server_log)


# -- floods of idle and half-sent connections ------------------------------------------------------------


def _open_idle(port: int, count: int, first_bytes: bytes = b"") -> list[socket.socket]:
    socks = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        if first_bytes:
            sock.sendall(first_bytes)
        socks.append(sock)
    return socks


def _close_all(socks: list[socket.socket]) -> None:
    for sock in socks:
        with contextlib.suppress(OSError):
            sock.close()


def _is_closed_by_server(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        while True:
            data = sock.recv(4096)
            if not data:
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_many_idle_connections_hold_no_threads(files: list[Path], server_log, capfd) -> None:
    with ViewerServer(files, idle_timeout=60).start() as srv:
        before = threading.active_count()
        socks = _open_idle(srv.port, 200)
        try:
            time.sleep(0.5)
            assert threading.active_count() <= before + 2, threading.active_count() - before
            start = time.monotonic()
            status, body = request(srv, "/api/tree?file=0")
            assert status == 200 and json.loads(body)["totals"]["tensors"] == 2
            assert time.monotonic() - start < 10
        finally:
            _close_all(socks)
    assert_quiet(capfd, server_log)


def test_idle_and_half_sent_connections_are_closed_after_the_timeout(files: list[Path], server_log, capfd) -> None:
    with ViewerServer(files, idle_timeout=1.0).start() as srv:
        silent = _open_idle(srv.port, 3)
        half = _open_idle(srv.port, 3, b"GET /api/files HTTP/1.1\r\nHost: 127.0.0.1")
        try:
            for sock in silent + half:
                assert _is_closed_by_server(sock, within=15)
            assert request(srv, "/api/files")[0] == 200
        finally:
            _close_all(silent + half)
    assert_quiet(capfd, server_log)


def test_concurrent_handlers_are_capped(files: list[Path], server_log, capfd) -> None:
    """Half-sent requests occupy handlers; beyond the cap a request gets 503 at once, not a thread."""
    with ViewerServer(files, idle_timeout=2.0, max_handlers=4).start() as srv:
        before = threading.active_count()
        half = _open_idle(srv.port, 50, b"GET /api/files HTTP/1.1\r\n")
        try:
            time.sleep(0.5)
            assert threading.active_count() <= before + 4 + 1
            status, body = request(srv, "/api/files")
            assert status == 503 and json.loads(body)["error"]["code"] == "busy"
            for sock in half:
                assert _is_closed_by_server(sock, within=15)
            assert request(srv, "/api/files")[0] == 200  # the slots came back
            # a handler thread ends just after its socket closes: give the last ones a moment
            deadline = time.monotonic() + 10
            while threading.active_count() > before + 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert threading.active_count() <= before + 1
        finally:
            _close_all(half)
    assert_quiet(capfd, server_log)


def test_the_waiting_room_is_bounded(files: list[Path]) -> None:
    """Past its capacity, the connection that has waited longest is closed, not one more kept."""
    from weightvault.viewer.server import _Server

    srv = ViewerServer(files, idle_timeout=60)
    assert isinstance(srv._server, _Server)
    srv._server._waiting.capacity = 10
    srv.start()
    try:
        socks = _open_idle(srv.port, 15)
        try:
            assert all(_is_closed_by_server(s, within=10) for s in socks[:5])
            assert not any(_is_closed_by_server(s, within=0.2) for s in socks[5:])
        finally:
            _close_all(socks)
    finally:
        srv.close()


# -- clients that leave early ---------------------------------------------------------------------------


def _reset(sock: socket.socket) -> None:
    """Close with RST, as a crashed or impatient client does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_early_disconnects_print_no_traceback(server: ViewerServer, server_log, capfd) -> None:
    port = server.port
    targets = ["/api/values?file=0&name=big&count=10000", "/api/tensor?file=0&name=big&bins=512&grid=256", "/", "/static/app.js"]
    for i in range(40):
        target = targets[i % len(targets)] + ("" if i % 8 else "")
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        request_bytes = f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
        if i % 3 == 0:
            sock.sendall(request_bytes)
            _reset(sock)  # before the answer
        elif i % 3 == 1:
            sock.sendall(request_bytes)
            sock.recv(10)  # the first bytes of the answer, then gone
            _reset(sock)
        else:
            sock.sendall(request_bytes[:10])  # half a request line
            _reset(sock)
    time.sleep(1.0)  # let the handlers hit the closed sockets
    assert request(server, "/api/files")[0] == 200
    assert_quiet(capfd, server_log)


def test_5000_digit_file_parameter_is_404_without_a_log(server: ViewerServer, server_log, capfd) -> None:
    status, body = request(server, "/api/tree?file=" + "5" * 5000)
    assert_refused(status, body, (404,))
    assert json.loads(body)["error"]["code"] == "unknown_file"
    assert_quiet(capfd, server_log)
