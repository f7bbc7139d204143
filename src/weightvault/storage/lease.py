"""One writer per run on an object store: a lease object taken with a conditional write.

There are no file locks on an object store. A writer takes ``<run>/.weightvault-writer.json``:

* **S3 (and stores with conditional writes):** created with ``If-None-Match: *``: of two writers
  racing, the store accepts exactly one PUT and refuses the other (412), which then raises
  :class:`~weightvault.errors.CheckpointLockedError`. The lease carries an expiry; the holder
  renews it (a conditional ``If-Match: <its ETag>`` overwrite) every third of its lifetime from a
  background thread and before each commit. A lease past its expiry (its writer died) is taken
  over with ``If-Match: <the expired lease's ETag>``, which again only one contender can win. A
  writer that finds its own lease replaced (its renewal is refused) stops committing: its next
  save raises ``CheckpointLockedError``.

  Guarantee: while a writer renews in time, no other writer can start; after it stops renewing
  for the lease time, exactly one new writer can take over. What the old writer's lease cannot
  stop is a write already in flight when it was paused longer than the lease (GC pause, suspended
  VM): its ``COMMITTED`` is written only after a successful renewal, so such a writer can at
  worst add one checkpoint it had already finished uploading.

* **Other filesystems** (``memory://``, stores without conditional writes through fsspec): the
  lease is written if absent or expired and read back; this detects a second writer that starts
  later, but two writers starting within the same moment are not excluded. The docs say so.

Expiry is judged by the store's clock where it reports one (``LastModified`` of the lease) plus
the lease's duration, compared with the local clock: clocks must agree to well within the lease
time (default 120 s).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from typing import Any

from weightvault.errors import CheckpointLockedError, StorageError
from weightvault.storage.location import Location

__all__ = ["LEASE_FILE", "Lease"]

LEASE_FILE = ".weightvault-writer.json"
LEASE_FORMAT = "weightvault-lease"


class _PreconditionFailed(Exception):
    """The store refused a conditional write (412): someone else's lease is there."""


def _precondition_failed(exc: BaseException) -> bool:
    while exc is not None:
        text = str(exc)
        if "PreconditionFailed" in text or "pre-conditions" in text or "412" in text:
            return True
        exc = exc.__cause__  # type: ignore[assignment]
    return False


class Lease:
    """The writer lease of one run prefix (see the module doc)."""

    def __init__(self, run: Location, seconds: float = 120.0) -> None:
        if seconds <= 0:
            raise ValueError(f"lease seconds must be > 0, not {seconds}")
        self.run = run
        self.loc = run.child(LEASE_FILE)
        self.seconds = float(seconds)
        self.owner = uuid.uuid4().hex
        self.etag: str | None = None
        #: the store's time (LastModified) when this writer took the lease: older uncommitted
        #: leftovers provably belong to an earlier writer
        self.taken_at: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = False

    # -- body ------------------------------------------------------------------------------------
    def _body(self) -> bytes:
        return json.dumps(
            {
                "format": LEASE_FORMAT,
                "owner": self.owner,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "seconds": self.seconds,
                "expires": time.time() + self.seconds,
            }
        ).encode()

    def _read(self) -> tuple[dict[str, Any], str | None, float | None] | None:
        """(content, etag, last modified) of the lease object, None if there is none."""
        info = self.loc.info()
        if info is None:
            return None
        try:
            content = json.loads(self.loc.read_range(0, int(info.get("size") or 0)))
        except ValueError:
            content = {}
        etag = info.get("ETag") or info.get("etag")
        return (content if isinstance(content, dict) else {}), etag, self.loc.modified()

    def _expired(self, content: dict[str, Any], modified: float | None) -> bool:
        seconds = content.get("seconds")
        if not isinstance(seconds, (int, float)):
            return True  # not a lease we understand: treat as stale
        if modified is not None:
            return time.time() > modified + float(seconds)
        expires = content.get("expires")
        return not isinstance(expires, (int, float)) or time.time() > expires

    # -- taking, renewing, releasing ----------------------------------------------------------------
    def acquire(self) -> None:
        if self.run.is_s3:
            self._acquire_conditional()
        else:
            self._acquire_plain()
        self.taken_at = self.loc.modified() or time.time()
        self._thread = threading.Thread(target=self._renew_loop, name="wv-lease", daemon=True)
        self._thread.start()

    def _put(self, **condition: str) -> str | None:
        bucket, key, _ = self.loc.fs.split_path(self.loc.path)

        def op() -> str | None:
            out = self.loc.fs.call_s3("put_object", Bucket=bucket, Key=key, Body=self._body(), **condition)
            return out.get("ETag")

        try:
            etag = self.loc._retry(op, "writing the writer lease", passthrough=(FileExistsError,))
        except StorageError as exc:
            if _precondition_failed(exc):
                raise _PreconditionFailed(str(exc)) from exc
            raise
        self.loc.invalidate()
        return etag

    def _acquire_conditional(self) -> None:
        try:
            self.etag = self._put(IfNoneMatch="*")
            return
        except FileExistsError:
            pass
        found = self._read()
        if found is None:  # released meanwhile: try once more
            try:
                self.etag = self._put(IfNoneMatch="*")
                return
            except FileExistsError:
                found = self._read()
        content, etag, modified = found or ({}, None, None)
        if content.get("owner") == self.owner:  # our PUT went through, its answer was lost
            self.etag = etag
            return
        if not found or not self._expired(content, modified) or etag is None:
            raise self._locked(content)
        try:
            self.etag = self._put(IfMatch=etag)  # take over the expired lease, one winner
        except _PreconditionFailed:  # someone else took it over first (or our answer was lost)
            if not self._still_ours():
                raise self._locked(content) from None

    def _acquire_plain(self) -> None:
        found = self._read()
        if found is not None and not self._expired(found[0], found[2]):
            raise self._locked(found[0])
        self.loc.write_bytes(self._body())
        back = self._read()
        if back is None or back[0].get("owner") != self.owner:
            raise self._locked(back[0] if back else {})

    def _locked(self, content: dict[str, Any]) -> CheckpointLockedError:
        who = f"{content.get('host', '?')} pid {content.get('pid', '?')}"
        return CheckpointLockedError(
            f"another writer ({who}) holds the run's lease {LEASE_FILE}",
            path=self.run.url,
            hint="one CheckpointManager writes a run at a time; open it read_only=True to read, "
            "or wait until the other writer closes (or its lease expires)",
        )

    def renew(self) -> None:
        """Extend the lease; raises CheckpointLockedError if another writer has taken it."""
        if self.lost:
            raise self._lost()
        if self.run.is_s3:
            try:
                self.etag = self._put(IfMatch=self.etag or "*")
            except _PreconditionFailed:
                if not self._still_ours():  # else: our renewal landed, its answer was lost
                    self.lost = True
                    raise self._lost() from None
        else:
            back = self._read()
            if back is None or back[0].get("owner") != self.owner:
                self.lost = True
                raise self._lost()
            self.loc.write_bytes(self._body())

    def _still_ours(self) -> bool:
        """After a refused conditional write: is the lease ours anyway (an earlier attempt of the
        same write succeeded and only its answer was lost on the way back)?"""
        found = self._read()
        if found is not None and found[0].get("owner") == self.owner:
            self.etag = found[1]
            return True
        return False

    def _lost(self) -> CheckpointLockedError:
        return CheckpointLockedError(
            "this writer's lease was taken over by another writer (it was not renewed in time); "
            "nothing more is committed by this manager",
            path=self.run.url,
        )

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            try:
                self.renew()
            except CheckpointLockedError:
                return
            except Exception:  # noqa: BLE001, S112 - a failed renewal is retried next period
                continue

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self.lost:
            return
        try:
            if self.run.is_s3 and self.etag:
                # delete only our own lease: S3 has no conditional delete everywhere, so check
                found = self._read()
                if found is None or found[0].get("owner") != self.owner:
                    return
            self.loc.delete()
        except Exception:  # noqa: BLE001, S110 - it expires anyway
            pass
