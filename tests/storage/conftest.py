"""A real S3 API server for the object-storage tests: moto in server mode on a free loopback port,
started once per session and stopped after. s3fs (through fsspec) is the client, as for users.
Without moto or s3fs installed the tests that need the server are skipped."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_listening(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto_server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("moto_server did not start listening")


from s3support import CREDENTIALS, s3_options  # noqa: E402 - tests/storage is on sys.path


@pytest.fixture(scope="session")
def moto_endpoint():
    """``http://127.0.0.1:PORT`` of a moto S3 server for this session."""
    pytest.importorskip("moto.server", reason="moto[server] is not installed")
    pytest.importorskip("s3fs", reason="s3fs is not installed")
    port = free_port()
    env = {**os.environ, **CREDENTIALS}
    proc = subprocess.Popen(
        [sys.executable, "-c", "from moto.server import main; main()", "-H", "127.0.0.1",
         "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _wait_listening(port, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def s3(moto_endpoint, monkeypatch):
    """A fresh bucket: ``(s3://bucket, storage_options, boto3 client)``."""
    boto3 = pytest.importorskip("boto3")
    for k, v in CREDENTIALS.items():
        monkeypatch.setenv(k, v)
    bucket = f"wv-{uuid.uuid4().hex[:12]}"
    client = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=bucket)
    yield f"s3://{bucket}", s3_options(moto_endpoint), client
    client.close()
