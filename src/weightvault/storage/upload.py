"""Streaming uploads: a write-only file object that sends what it is given in parts.

:class:`ObjectWriter` is what :func:`~weightvault.core.safetensors_io.write_safetensors` writes
into instead of a local file. On S3 it is a multipart upload: bytes are gathered into parts of
``part_size`` and each full part is sent while the writer goes on, with several parts in flight.
Buffers are bounded: the part being filled, the parts in flight and (for a header rewritten at
the end) the retained first part together never exceed ``concurrency`` parts, so the extra
memory of an upload is at most ``concurrency x part_size`` (with ``concurrency >= 3``; below that,
one part in flight is still allowed).

The object appears only when the upload completes (S3 makes a completed multipart upload visible
atomically); any failure aborts the multipart upload, so no parts linger and nothing appears.

An object that ends before ``single_put_size`` bytes (and within the buffer budget) is sent as
one PUT instead: until then the writer only keeps views of what it was given (the caller's
tensors, no copy), and decides at the first byte past the limit (multipart from there on) or at
the end (one PUT, a third of the requests of a multipart upload of the same bytes and no
server-side assembly; measured in bench/RESULTS-object-store.md). The PUT is sent on the
budget's threads, so the next shard fills while it travels.

``write_safetensors`` rewrites the header once checksums are known (``finalize``): it seeks back
to the start. The writer allows that by keeping the first part (header + first data) in memory
until the end and sending it last; S3 parts may arrive in any order.

Other fsspec filesystems get the same interface over a local spool file that is copied up in one
stream at the end (``memory://`` in tests; GCS and the others: correct, not yet parallel).
"""

from __future__ import annotations

import tempfile
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Any

import numpy as np

from weightvault.errors import StorageError
from weightvault.storage.location import Location, stats

__all__ = ["ObjectWriter", "open_writer"]

#: S3's smallest part (all but the last)
S3_MIN_PART = 5 << 20
#: a write this small that starts in the first part stays whole in it (the safetensors header cap)
_WHOLE_IN_FIRST = 100_000_008
#: S3's largest part count
S3_MAX_PARTS = 10_000


def open_writer(
    loc: Location,
    *,
    exclusive: bool = False,
    rewritable_head: bool = False,
    budget: UploadBudget | None = None,
) -> Any:
    """A file object that writes ``loc`` (use as a context manager: leaving it normally commits
    the object, leaving it by an exception aborts it). ``rewritable_head``: keep the first part
    until the end so it can be rewritten (a header completed after the data); ``budget``: share
    threads and the in-flight limit with other writers of the same save."""
    if loc.is_s3:
        return ObjectWriter(loc, exclusive=exclusive, rewritable_head=rewritable_head, budget=budget)
    return SpoolWriter(loc, exclusive=exclusive)


class UploadBudget:
    """Threads and in-flight part slots shared by the writers of one save, so shards upload
    concurrently while the total of part buffers stays bounded (``concurrency`` parts)."""

    def __init__(self, transfer: Any) -> None:
        self.max_in_flight = max(1, transfer.concurrency - 1)  # one more part is being filled
        self.slots = threading.BoundedSemaphore(self.max_in_flight)
        self.pool = ThreadPoolExecutor(self.max_in_flight, thread_name_prefix="wv-upload")

    def close(self) -> None:
        self.pool.shutdown(wait=True)

    def __enter__(self) -> UploadBudget:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _WriterBase:
    def __enter__(self) -> Any:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if kind is None:
            self.commit()
        else:
            self.abort()

    def flush(self) -> None:
        pass

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def commit(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError


class ObjectWriter(_WriterBase):
    """An S3 multipart upload behind ``write`` / ``tell`` / ``seek`` (see the module doc)."""

    def __init__(
        self,
        loc: Location,
        *,
        exclusive: bool = False,
        rewritable_head: bool = False,
        budget: UploadBudget | None = None,
    ) -> None:
        self.loc = loc
        self.exclusive = exclusive
        self.rewritable_head = rewritable_head
        t = loc.transfer
        self.part_size = max(t.part_size, S3_MIN_PART)
        # the part being filled and the retained first part count against the budget
        self._max_in_flight = max(1, t.concurrency - 1 - int(rewritable_head))
        self._budget = budget
        self._bucket, self._key, _ = loc.fs.split_path(loc.path)
        self._first: bytearray | None = None  # part 1, kept for the header rewrite
        self._buf = bytearray()
        self._pos = 0  # logical position of the next write
        self._size = 0  # bytes written so far (the end of the object)
        self._next_part = 2
        self._upload_id: str | None = None
        self._parts: dict[int, str] = {}
        self._futures: list[Future[None]] = []
        self._slots = budget.slots if budget else threading.BoundedSemaphore(self._max_in_flight)
        self._pool: ThreadPoolExecutor | None = budget.pool if budget else None
        self._closed = False
        self._sent_rest = False
        self._pieces: list[memoryview] = []  # views of the caller's buffers, not yet sent
        self._held = 0
        # Until the object outgrows this, it may still become one PUT (no part cut yet). Its
        # body is held whole when sent, so it must fit the in-flight budget (module doc).
        in_flight = budget.max_in_flight if budget else self._max_in_flight
        self._single_max = 0 if rewritable_head else min(t.single_put_size, in_flight * self.part_size)
        self._multipart = False  # decided: parts from here on
        self._single: Future[None] | None = None  # the one PUT, once sent

    # -- file interface ------------------------------------------------------------------------------
    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = 0) -> int:
        if whence == 2:
            pos = self._size + pos
        elif whence == 1:
            pos = self._pos + pos
        if pos != self._size and not self._in_first_part(pos):
            raise StorageError(
                f"cannot seek to byte {pos} of an upload: only the first part "
                f"({self.part_size} bytes) can be rewritten",
                path=self.loc.url,
            )
        self._pos = pos
        return pos

    def _in_first_part(self, pos: int) -> bool:
        if not self.rewritable_head:
            return False
        if self._first is not None:
            return pos < len(self._first)
        return not self._parts and self._next_part == 2 and pos < len(self._buf)

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        n = len(view)
        if self._pos != self._size:
            self._overwrite(view)
            return n
        if (
            self.rewritable_head
            and self._filling_first()
            and self._size <= 8
            and n <= _WHOLE_IN_FIRST
        ):
            # the safetensors header (the write after the 8-byte length; at most 100 MB) stays
            # whole in the first part, so it can be rewritten; data is split as usual
            self._buf += view
            view = view[n:]
        if not self._multipart and self._buffered() + len(view) <= self._single_max:
            self._append(view)  # may still be one PUT: no part cut yet
        else:
            self._go_multipart()
            self._feed(view)
        self._pos += n
        self._size += n
        return n

    def _feed(self, view: memoryview) -> None:
        """Cut parts of ``part_size`` out of what is held plus ``view``; send the full ones."""
        while view:
            room = self.part_size - self._buffered()
            take = view[: max(room, 0)]
            self._append(take)
            view = view[len(take) :]
            if self._buffered() >= self.part_size:
                self._part_full()
        if self._buffered() >= self.part_size:
            self._part_full()

    def _go_multipart(self) -> None:
        """The object is too large for one PUT: what is held becomes parts, sent as usual."""
        if self._multipart:
            return
        self._multipart = True
        held, self._pieces, self._held = self._pieces, [], 0
        for view in held:
            self._feed(view)

    def _buffered(self) -> int:
        return len(self._buf) + self._held

    def _append(self, view: memoryview) -> None:
        if self.rewritable_head and self._filling_first():
            self._buf += view  # the first part is rewritten later: our own copy
        else:
            # A view of a tensor (or of bytes) is kept and copied once, when the part is
            # assembled: write_safetensors' sources stay alive and unchanged during the save
            # (the state passed to a sync save, the async snapshot). Any other buffer may be
            # reused by the caller once write() returns (write_span's copy buffer): copied now.
            keep = isinstance(view.obj, (bytes, np.ndarray))
            self._pieces.append(view if keep else memoryview(bytes(view)))
            self._held += len(view)

    def _take(self) -> bytes:
        """Everything buffered, as one bytes object (the one copy of the data)."""
        data = b"".join([self._buf, *self._pieces]) if self._buf else b"".join(self._pieces)
        self._buf, self._pieces, self._held = bytearray(), [], 0
        return data

    def _filling_first(self) -> bool:
        return self._first is None and not self._parts and self._next_part == 2

    def _overwrite(self, view: memoryview) -> None:
        """A rewrite inside the retained first part (the header, now with its checksums)."""
        target = self._first if self._first is not None else self._buf
        if not self._in_first_part(self._pos):
            raise StorageError("rewrite outside the first part of an upload", path=self.loc.url)
        end = self._pos + len(view)
        if end > len(target) or end > self._size:
            raise StorageError(
                f"rewrite of bytes {self._pos}-{end} of an upload reaches past the first part",
                path=self.loc.url,
            )
        target[self._pos : end] = view
        self._pos = end

    # -- parts -----------------------------------------------------------------------------------------
    def _part_full(self) -> None:
        if self.rewritable_head and self._filling_first():
            self._first, self._buf = self._buf, bytearray()  # sent last, after the rewrite
            return
        self._send(self._next_part, self._take())
        self._next_part += 1

    def _start(self) -> None:
        if self._upload_id is not None:
            return
        fs = self.loc.fs

        def create() -> str:
            out = fs.call_s3("create_multipart_upload", Bucket=self._bucket, Key=self._key)
            return str(out["UploadId"])

        self._upload_id = self.loc._retry(create, "starting a multipart upload")
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._max_in_flight, thread_name_prefix="wv-upload")

    def _send(self, number: int, part: bytearray) -> None:
        if number > S3_MAX_PARTS:
            raise StorageError(
                f"upload needs more than {S3_MAX_PARTS} parts of {self.part_size} bytes",
                path=self.loc.url,
                hint="raise the part_size storage option",
            )
        self._start()
        self._raise_failed()
        self._slots.acquire()  # bounded memory: wait for a part to finish before buffering more
        assert self._pool is not None
        try:
            future = self._pool.submit(self._upload_part, number, part)
        except BaseException:
            self._slots.release()
            raise
        future.add_done_callback(lambda _f: self._slots.release())
        self._futures.append(future)

    def _upload_part(self, number: int, part: bytearray) -> None:
        fs = self.loc.fs

        def op() -> str:
            out = fs.call_s3(
                "upload_part",
                Bucket=self._bucket,
                Key=self._key,
                UploadId=self._upload_id,
                PartNumber=number,
                Body=bytes(part) if isinstance(part, bytearray) else part,
            )
            return str(out["ETag"])

        self._parts[number] = self.loc._retry(op, f"uploading part {number}")
        stats.add_written(len(part))

    def _raise_failed(self) -> None:
        for f in self._futures:
            if f.done() and f.exception() is not None:
                raise f.exception()  # type: ignore[misc]
        self._futures = [f for f in self._futures if not f.done()]

    # -- end ---------------------------------------------------------------------------------------------
    def commit(self) -> None:
        """Send what is left and complete the upload (the object appears now)."""
        self.send_rest()
        self.complete()

    def send_rest(self) -> None:
        """Send the last parts without waiting for them (a small object: its one PUT, now)."""
        if self._closed or self._sent_rest:
            return
        self._sent_rest = True
        try:
            if self._upload_id is None and self._first is None:
                self._put_whole()  # it fits one PUT
                return
            if self._buffered():
                self._send(self._next_part, self._take())
                self._next_part += 1
            if self._first is not None:
                self._send(1, self._first)
                self._first = None
        except BaseException:
            self.abort()
            raise

    def _put_whole(self) -> None:
        """Send everything as one PUT: on the budget's threads when there are some (the caller
        goes on), holding as many part slots as the body is large; else now."""
        size = self._buffered()
        if self._pool is None and self._budget is None:
            self.loc.write_bytes(self._take(), exclusive=self.exclusive)
            self._closed = True
            return
        slots = max(1, -(-size // self.part_size))  # <= in-flight budget: see _single_max
        for _ in range(slots):
            self._slots.acquire()
        try:
            body = self._take()  # the one copy of the data
            pool = self._budget.pool if self._budget else self._pool
            assert pool is not None
            self._single = pool.submit(self.loc.write_bytes, body, exclusive=self.exclusive)
        except BaseException:
            for _ in range(slots):
                self._slots.release()
            raise

        def release(_f: Future[None]) -> None:
            for _ in range(slots):
                self._slots.release()

        self._single.add_done_callback(release)

    def complete(self) -> None:
        """Wait for the parts in flight, then complete the multipart upload."""
        if self._closed:
            return
        if self._single is not None:
            try:
                self._single.result()
            finally:
                self._closed = True
            return
        try:
            self._finish_multipart()
        except BaseException:
            self.abort()
            raise
        self._closed = True

    def _finish_multipart(self) -> None:
        for f in self._futures:
            f.result()
        self._futures = []
        parts = [{"PartNumber": n, "ETag": self._parts[n]} for n in sorted(self._parts)]
        fs = self.loc.fs
        extra = {"IfNoneMatch": "*"} if self.exclusive else {}

        def complete() -> None:
            fs.call_s3(
                "complete_multipart_upload",
                Bucket=self._bucket,
                Key=self._key,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": parts},
                **extra,
            )

        self.loc._retry(complete, "completing a multipart upload", passthrough=(FileExistsError,))
        self._shutdown()
        self.loc.invalidate()

    def abort(self) -> None:
        """Cancel: wait for parts in flight, then abort the multipart upload (its parts are
        deleted; the object never appears)."""
        if self._closed:
            return
        self._closed = True
        if self._single is not None:
            if self._single.exception() is None:  # it landed: take it back
                try:
                    self.loc.delete()
                except Exception:  # noqa: BLE001, S110 - the original failure is the one to report
                    pass
            return
        for f in self._futures:
            f.exception()  # wait, whatever the outcome
        self._shutdown()
        self._first, self._buf, self._pieces, self._held = None, bytearray(), [], 0
        if self._upload_id is None:
            return
        fs = self.loc.fs

        def op() -> None:
            fs.call_s3(
                "abort_multipart_upload",
                Bucket=self._bucket,
                Key=self._key,
                UploadId=self._upload_id,
            )

        try:
            self.loc._retry(op, "aborting a multipart upload")
        except Exception:  # noqa: BLE001 - the original failure is what the caller must see;
            pass  # a bucket lifecycle rule (AbortIncompleteMultipartUpload) cleans up the rest

    def _shutdown(self) -> None:
        if self._pool is not None and self._budget is None:  # a shared pool is the budget's
            self._pool.shutdown(wait=True)
        self._pool = None


class SpoolWriter(_WriterBase):
    """Any other fsspec filesystem: write to a local spool file, copy it up on commit."""

    def __init__(self, loc: Location, *, exclusive: bool = False) -> None:
        self.loc = loc
        self.exclusive = exclusive
        self._spool = tempfile.SpooledTemporaryFile(max_size=loc.transfer.part_size)  # noqa: SIM115
        self._closed = False

    def write(self, data: Any) -> int:
        return self._spool.write(data)

    def tell(self) -> int:
        return self._spool.tell()

    def seek(self, pos: int, whence: int = 0) -> int:
        return self._spool.seek(pos, whence)

    def commit(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            size = self._spool.seek(0, 2)
            if self.exclusive and self.loc.exists():
                raise FileExistsError(self.loc.url)

            def op() -> None:
                self._spool.seek(0)
                with self.loc.fs.open(self.loc.path, "wb") as out:
                    while chunk := self._spool.read(self.loc.transfer.part_size):
                        out.write(chunk)

            self.loc._retry(op, "writing", passthrough=(FileExistsError,))
            stats.add_written(size)
            self.loc.invalidate()
        finally:
            self._spool.close()

    def send_rest(self) -> None:
        pass

    def complete(self) -> None:
        self.commit()

    def abort(self) -> None:
        if not self._closed:
            self._closed = True
            self._spool.close()
