"""The single-writer lock of a run directory.

A :class:`RunLock` holds an exclusive ``flock`` on ``<run>/.weightvault-run.lock`` for the life of
a writing :class:`~weightvault.checkpoint.manager.CheckpointManager`. ``flock`` belongs to the open
file, so the kernel drops it when the holder exits for any reason, SIGKILL included: a crashed
trainer never leaves a stale lock behind, and no "is that pid still alive?" guessing is needed.
The holder writes its pid, host and start time into the file only to make the refusal message
useful; the lock itself is the flock, never the file's contents.

Readers (``watch``, ``runs``, a read-only manager) never touch the lock, so they are never blocked.
On network filesystems where ``flock`` is not enforced across hosts the lock only protects against
writers on the same host.
"""

from __future__ import annotations

import datetime as _dt
import errno
import fcntl
import json
import os
import socket
from pathlib import Path
from typing import Any

from weightvault.errors import CheckpointLockedError

__all__ = ["LOCK_FILE", "RunLock", "lock_holder"]

LOCK_FILE = ".weightvault-run.lock"


def lock_holder(directory: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Who last took the lock (pid, host, since), as written by the holder; None if unknown."""
    try:
        raw = (Path(directory) / LOCK_FILE).read_text(encoding="utf-8")
        info = json.loads(raw) if raw.strip() else None
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


class RunLock:
    """Exclusive, non-blocking writer lock on a run directory."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise CheckpointLockedError(
                f"another CheckpointManager is writing this run directory ({self._describe_holder()})",
                path=self.directory,
                hint="only one writer per run directory; readers can use "
                "CheckpointManager(dir, read_only=True) or weightvault.watch(dir)",
            ) from None
        self._fd = fd
        self._write_holder(fd)

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the only descriptor drops the flock

    def _write_holder(self, fd: int) -> None:
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        }
        data = json.dumps(info).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)

    def _describe_holder(self) -> str:
        info = lock_holder(self.directory)
        if not info:
            return "holder unknown"
        return f"pid {info.get('pid')} on {info.get('host')} since {info.get('since')}"

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
