"""Reading checkpoints from an object store with ranged reads.

:class:`RemoteSafetensorsFile` is a :class:`~weightvault.core.safetensors_io.SafetensorsFile`
whose header comes from one ranged GET (the first 64 KiB, and the rest of the header if it is
longer) and whose tensors come from ranged GETs of exactly their bytes: the same validation as a
local file (the header is parsed by the same code, every span checked against the object's size
before anything is allocated), no download of the whole object.

:class:`RemoteNativeReader` is the native reader over such shards: ``open(url)`` reads
``COMMITTED`` and ``manifest.json`` of a directory (or the header of a single file) and nothing
else; ``get(name)`` reads that tensor's shard header once and then the tensor's byte range.
``read_jobs`` splits a tensor into ``part_size`` ranges that run in parallel into the caller's
preallocated buffer (what :func:`weightvault.load` uses). Checksums are verified as locally.

Chunked rows (a distributed save, ``format_version`` 2) are read the same way: ``get`` and
``load`` assemble whole tensors, and ``read_region`` (``load_distributed``) fetches only the byte
runs of the stored chunks that overlap the wanted box; runs close together are fetched in one
request (a gap up to :data:`COALESCE_GAP` costs less than another round trip), and
:attr:`~weightvault.formats.native.NativeReader.bytes_read` counts the bytes fetched.

Other formats have no ranged reader yet: :func:`open_remote` copies the object (or prefix) into
a private temporary directory and opens that with the format's own reader; the copy goes with
``close()``.
"""

from __future__ import annotations

import io
import os
import shutil
import struct
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from weightvault.abc.format import ByteSpan, FormatReader, VerifyResult
from weightvault.core.checksum import StreamingChecksum
from weightvault.core.chunks import Box, byte_runs
from weightvault.core.dtypes import dtype_from_name
from weightvault.core.safetensors_io import MAX_HEADER, SafetensorsFile
from weightvault.core.tree import tensor_names
from weightvault.errors import (
    CheckpointNotFoundError,
    FormatNotFoundError,
    InvalidHeaderError,
    TruncatedFileError,
    WeightVaultError,
)
from weightvault.formats.native import (
    COMMIT_MARKER,
    MANIFEST_FILE,
    MANIFEST_KEY,
    MAX_MANIFEST_BYTES,
    NativeReader,
    _parse_manifest,
)
from weightvault.formats.safetensors import SafetensorsReader
from weightvault.storage.location import Location

__all__ = ["RemoteNativeReader", "RemoteSafetensorsFile", "open_remote", "run_parallel"]

#: first ranged read of a safetensors object: the length prefix and, usually, the whole header
HEADER_PROBE = 64 << 10
#: byte runs of a chunk at most this far apart are fetched in one ranged request
COALESCE_GAP = 256 << 10


class RemoteSafetensorsFile(SafetensorsFile):
    """A safetensors object read with ranged GETs (see the module doc)."""

    def __init__(self, loc: Location, head: bytes | None = None, size: int | None = None) -> None:
        # no super().__init__: there is no local file to open
        self.path = loc.url
        self.loc = loc
        self.size = loc.size() if size is None else size
        self._mmap = None
        if head is None:
            head = loc.read_range(0, min(self.size, HEADER_PROBE))
        if len(head) >= 8:
            (n,) = struct.unpack("<Q", head[:8])
            if n <= MAX_HEADER and len(head) < 8 + n <= self.size:
                head += loc.read_range(len(head), 8 + n)
        # the local parser reads the length and the header from this in-memory file
        self._file = io.BytesIO(head)  # type: ignore[assignment]
        self.metadata, self.entries, self.header_len = self._read_header()
        self._file = io.BytesIO()  # type: ignore[assignment]

    def view(self, name: str) -> np.ndarray:
        e = self.entries[name]
        out = np.empty(e.shape, dtype_from_name(e.dtype))
        run_parallel(self.read_jobs(name, out), self.loc.transfer.concurrency)
        return out

    def raw(self, name: str) -> memoryview:
        e = self.entries[name]
        return memoryview(self.loc.read_range(e.start, e.end))

    def span(self, name: str) -> ByteSpan | None:
        return None  # not a local file: copies go through get()

    def checksum(self, name: str) -> str:
        """The tensor's checksum, streamed part by part (memory: one part)."""
        e = self.entries[name]
        digest = StreamingChecksum()
        step = self.loc.transfer.part_size
        for lo in range(e.start, e.end, step):
            digest.update(self.loc.read_range(lo, min(lo + step, e.end)))
        return digest.value()

    def read_jobs(
        self, name: str, out: np.ndarray, chunk: int | None = None
    ) -> list[Callable[[], None]]:
        """Ranged reads of ``part_size`` bytes that together fill ``out``; each copies straight
        into its slice of ``out``, so they may run on threads."""
        e = self.entries[name]
        size = e.end - e.start
        buf = memoryview(out.reshape(-1).view(np.uint8))
        if len(buf) != size:
            raise TruncatedFileError(
                f"buffer of {len(buf)} bytes for a tensor of {size}", path=self.path, tensor=name
            )
        step = chunk or self.loc.transfer.part_size
        loc = self.loc

        def job(lo: int, hi: int) -> None:
            loc.read_into(e.start + lo, buf[lo:hi])

        return [(lambda lo=lo: job(lo, min(lo + step, size))) for lo in range(0, size, step)]

    def close(self) -> None:
        pass


def run_parallel(jobs: list[Callable[[], None]], workers: int) -> None:
    """Run I/O-bound jobs ``workers`` at a time (network reads wait, they do not compute)."""
    workers = min(workers, len(jobs))
    if workers <= 1:
        for job in jobs:
            job()
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="wv-read") as pool:
        for future in [pool.submit(job) for job in jobs]:
            future.result()


class RemoteNativeReader(NativeReader):
    """The native reader over an object store (see the module doc)."""

    def __init__(
        self, loc: Location, *, single: bool | None = None, shard: RemoteSafetensorsFile | None = None
    ) -> None:
        FormatReader.__init__(self, loc.url)
        self.loc = loc
        self._shards: dict[str, SafetensorsFile] = {}
        if single is None:
            single = not loc.child(COMMIT_MARKER).exists() and loc.is_file()
        if not single:
            self.root = loc  # type: ignore[assignment]
            if not loc.child(COMMIT_MARKER).exists():
                raise CheckpointNotFoundError(
                    f"no committed checkpoint: no {COMMIT_MARKER} object (absent, or a save that "
                    "did not finish)",
                    path=loc.url,
                )
            self._single: str | None = None
            raw = loc.child(MANIFEST_FILE).read_all(limit=MAX_MANIFEST_BYTES)
            self.manifest = _parse_manifest(raw, f"{loc.url}/{MANIFEST_FILE}")
        else:
            self.root = loc.parent  # type: ignore[assignment]
            st = shard or RemoteSafetensorsFile(loc)
            self._shards[loc.name] = st
            self._single = loc.name
            if MANIFEST_KEY not in st.metadata:
                raise InvalidHeaderError("safetensors file carries no weightvault manifest", path=loc.url)
            self.manifest = _parse_manifest(st.metadata[MANIFEST_KEY], self.path)
        self._rows = self.manifest["tensors"]
        self._aliases = self.manifest["aliases"]
        self._names = [
            n for n in tensor_names(self.manifest["tree"]) if n in self._rows or n in self._aliases
        ]
        seen = set(self._names)
        self._names += [n for n in self._rows if n not in seen]
        self._parts = {}  # chunked rows, checked against their shards (NativeReader._chunk_parts)
        self.bytes_read = 0
        self._count = threading.Lock()  # read jobs run on threads

    def _shard(self, file: str, tensor: str) -> SafetensorsFile:
        if self._single is not None:
            return self._shards[self._single]
        if "/" in file or "\\" in file or file in ("", ".", ".."):
            raise InvalidHeaderError(
                f"shard name {file!r} leaves the checkpoint", path=self.path, tensor=tensor
            )
        if file not in self._shards:
            shard = self.loc.child(file)
            if not shard.exists():
                raise CheckpointNotFoundError(f"shard {file} is missing", path=self.path, tensor=tensor)
            self._shards[file] = RemoteSafetensorsFile(shard)
        return self._shards[file]

    # -- regions of chunked tensors: ranged reads of the overlapping runs -------------------------
    def _run_jobs(self, jobs: list[Callable[[], None]]) -> None:
        run_parallel(jobs, self.loc.transfer.concurrency)

    def _piece_jobs(
        self, shard: Any, key: str, box: Box, common: Box, want: Box, out: np.ndarray, name: str
    ) -> list[Callable[[], None]]:
        assert isinstance(shard, RemoteSafetensorsFile)
        return self._ranged_jobs(shard, key, box, common, want, out)

    def _ranged_jobs(
        self,
        shard: RemoteSafetensorsFile,
        key: str,
        box: Box,
        common: Box,
        want: Box,
        out: np.ndarray,
    ) -> list[Callable[[], None]]:
        """Ranged reads that put the part ``common`` of the stored chunk ``box`` into ``out``
        (the box ``want``). Runs are grouped into requests of at most ``part_size`` (one run
        longer than that is split), with gaps up to :data:`COALESCE_GAP` read through."""
        shift = tuple(c - b for c, b in zip(common.offsets, box.offsets, strict=True))
        local = Box(shift, common.sizes)
        starts, run = byte_runs(box.sizes, local)
        item = out.dtype.itemsize
        step = run * item
        base = shard.entries[key].start
        dest = out[(*common.slices(want.offsets), Ellipsis)]  # a view, also for 0-d
        loc, part = shard.loc, shard.loc.transfer.part_size
        byte_starts = [int(s) * item for s in starts.tolist()]
        if dest.flags.c_contiguous:
            flat = memoryview(dest.reshape(-1).view(np.uint8))
        else:  # e.g. a column chunk of a wider region: filled by one job, then copied in
            flat = None

        def count(n: int) -> None:
            with self._count:
                self.bytes_read += n

        # groups of consecutive runs: [first, last) run index, fetched as one byte range
        groups: list[tuple[int, int]] = []
        first = 0
        for i in range(1, len(byte_starts) + 1):
            if (
                i == len(byte_starts)
                or byte_starts[i] - (byte_starts[i - 1] + step) > COALESCE_GAP
                or byte_starts[i] + step - byte_starts[first] > part
            ):
                groups.append((first, i))
                first = i

        def span(lo_run: int, hi_run: int) -> tuple[int, int]:
            return byte_starts[lo_run], byte_starts[hi_run - 1] + step

        def fetch_gapless(lo: int, a: int, b: int, into: memoryview, at: int) -> None:
            loc.read_into(base + lo + a, into[at + a : at + b])
            count(b - a)

        def fetch_group(lo_run: int, hi_run: int, into: memoryview) -> None:
            lo, hi = span(lo_run, hi_run)
            if hi - lo == (hi_run - lo_run) * step:  # no gaps: straight into the buffer
                for a in range(0, hi - lo, part):
                    fetch_gapless(lo, a, min(a + part, hi - lo), into, lo_run * step)
                return
            data = memoryview(loc.read_range(base + lo, base + hi))
            for i in range(lo_run, hi_run):
                at = byte_starts[i] - lo
                into[i * step : (i + 1) * step] = data[at : at + step]
            count(hi - lo)

        if flat is not None:
            jobs: list[Callable[[], None]] = []
            for lo_run, hi_run in groups:
                lo, hi = span(lo_run, hi_run)
                if hi - lo == (hi_run - lo_run) * step:  # a long run: its parts in parallel
                    at, n = lo_run * step, hi - lo
                    jobs += [
                        (lambda lo=lo, a=a, b=min(a + part, n), at=at: fetch_gapless(lo, a, b, flat, at))
                        for a in range(0, n, part)
                    ]
                else:
                    jobs.append(lambda g=(lo_run, hi_run): fetch_group(g[0], g[1], flat))
            return jobs

        def whole_piece() -> None:
            buf = np.empty(common.sizes, out.dtype)
            view = memoryview(buf.reshape(-1).view(np.uint8))
            for lo_run, hi_run in groups:
                fetch_group(lo_run, hi_run, view)
            dest[...] = buf

        return [whole_piece]

    def verify(self) -> VerifyResult:
        result = VerifyResult(self.path)
        for name in self._rows:
            if self.is_chunked(name):  # each chunk's record, streamed part by part
                for box, shard, chunk in self._chunk_parts(name):
                    if not chunk.get("checksum"):
                        result.unchecked += 1
                        continue
                    assert isinstance(shard, RemoteSafetensorsFile)
                    actual = shard.checksum(chunk["key"])
                    result.checked += 1
                    if actual != chunk["checksum"]:
                        result.failures.append(
                            f"{name}: chunk at {list(box.offsets)} checksum {actual} != recorded "
                            f"{chunk['checksum']}"
                        )
                continue
            shard, target, row = self._entry_checked(name)
            expected = row.get("checksum")
            if not expected:
                result.unchecked += 1
                continue
            assert isinstance(shard, RemoteSafetensorsFile)
            actual = shard.checksum(target)
            result.checked += 1
            if actual != expected:
                result.failures.append(f"{name}: checksum {actual} != recorded {expected}")
        return result


# -- opening any URL ---------------------------------------------------------------------------------


def probe(loc: Location) -> tuple[str | None, RemoteSafetensorsFile | None]:
    """What ``loc`` holds: ``("native-dir", None)``, ``("native-file", file)``,
    ``("safetensors", file)`` (a plain safetensors object, e.g. a Hugging Face model) or
    ``(None, None)``. A safetensors object's header is read once, here."""
    info = loc.info()
    if info is not None and info.get("type") != "directory":
        if loc.name.endswith(".safetensors"):
            size = int(info.get("size") or 0)
            head = loc.read_range(0, min(size, HEADER_PROBE))
            st = RemoteSafetensorsFile(loc, head, size)
            native = MANIFEST_KEY in st.metadata
            return ("native-file" if native else "safetensors"), st
        return None, None
    if loc.child(COMMIT_MARKER).exists() or loc.child(MANIFEST_FILE).exists():
        return "native-dir", None
    return None, None


def open_remote(loc: Location, *, format: str | None = None, **options: Any) -> FormatReader:  # noqa: A002
    """A reader for ``loc``: ranged for native checkpoints and plain safetensors objects, a
    private local copy for every other format."""
    if format in (None, "native", "safetensors"):
        kind, st = probe(loc)
        if kind == "native-dir" and format != "safetensors":
            return RemoteNativeReader(loc, single=False)
        if kind == "native-file" and format != "safetensors":
            return RemoteNativeReader(loc, single=True, shard=st)
        if kind in ("native-file", "safetensors") and format != "native":
            assert st is not None
            return RemoteSafetensorsReader(loc, st)
        if format == "native":
            if not loc.exists():
                raise CheckpointNotFoundError("no such object or prefix", path=loc.url)
            raise InvalidHeaderError("not a weightvault checkpoint", path=loc.url)
    return _open_copy(loc, format, options)


class RemoteSafetensorsReader(SafetensorsReader):
    """A plain safetensors object read with ranged requests (header once, then each tensor)."""

    def __init__(self, loc: Location, st: RemoteSafetensorsFile) -> None:
        FormatReader.__init__(self, loc.url)
        self._file = st
        self._names = sorted(st.entries, key=lambda n: st.entries[n].start)


def _open_copy(loc: Location, format: str | None, options: dict[str, Any]) -> FormatReader:  # noqa: A002
    import weightvault.api as api

    info = loc.info()
    if info is None:
        raise FormatNotFoundError("no such object or prefix", path=loc.url)
    tmp = tempfile.mkdtemp(prefix="weightvault-")
    try:
        local = os.path.join(tmp, loc.name or "object")
        _download(loc, local, is_dir=info.get("type") == "directory")
        reader = api.open(local, format=format, **options)
    except WeightVaultError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise as_url_error(exc, local, loc.url)  # noqa: B904 - the same error, renamed
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _CopyCleanup.wrap(reader, tmp, loc.url)


def as_url_error(exc: WeightVaultError, local: str, url: str) -> WeightVaultError:
    """``exc`` (raised about ``local``, a private copy of ``url``) naming ``url`` instead: the
    user never gave the temporary path and cannot act on it."""
    if exc.path is not None and exc.path.startswith(local):
        exc.path = url + exc.path[len(local) :]
    exc.message = exc.message.replace(local, url)
    exc.args = (exc._render(),)
    return exc


def _download(loc: Location, local: str, *, is_dir: bool) -> None:
    if is_dir:
        os.makedirs(local)
        for entry in loc.listdir():
            child = loc.child(entry["base"])
            _download(child, os.path.join(local, entry["base"]), is_dir=entry.get("type") == "directory")
        return
    size = loc.size()
    with open(local, "wb") as f:
        step = loc.transfer.part_size
        for lo in range(0, size, step):
            f.write(loc.read_range(lo, min(lo + step, size)))


class _CopyCleanup:
    """Removes a reader's private local copy when the reader closes (and names the URL)."""

    @staticmethod
    def wrap(reader: FormatReader, tmp: str, url: str) -> FormatReader:
        close = reader.close

        def close_and_clean() -> None:
            try:
                close()
            finally:
                shutil.rmtree(tmp, ignore_errors=True)

        reader.close = close_and_clean  # type: ignore[method-assign]
        reader.source_url = url  # type: ignore[attr-defined]
        return reader
