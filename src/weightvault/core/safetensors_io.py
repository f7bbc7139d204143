"""The safetensors container: header validation, mmap views, streaming writes.

Layout: ``u64le N | N bytes of JSON | data``. Reading validates everything the reference Rust
reader checks *before* any tensor is touched: header size cap, UTF-8 JSON object, string-only
``__metadata__``, known dtypes, non-negative shapes, byte spans equal to shape x itemsize, spans
sorted with no gaps and no overlaps, starting at 0 and ending exactly at the end of the file.
Nothing is allocated from a size that has not been checked against the file size.

Writing streams tensor by tensor straight from each source buffer, so peak extra memory is about
one tensor. When the header must carry values only known after the data (checksums), the caller
passes ``finalize``: the header is written with fixed-width placeholders, then rewritten in place
at the same length once the data is down.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
from concurrent.futures import Future, ThreadPoolExecutor
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

from weightvault.core.dtypes import dtype_from_name, itemsize
from weightvault.core.io import close_mmap, write_span
from weightvault.core.limits import check_depth
from weightvault.errors import (
    CorruptFileError,
    DuplicateTensorError,
    HeaderTooLargeError,
    InvalidHeaderError,
    InvalidOffsetError,
    TruncatedFileError,
    UnknownDtypeError,
    UnsupportedOperationError,
)

if TYPE_CHECKING:
    import numpy as np

    from weightvault.abc.format import ByteSpan

__all__ = [
    "MAX_HEADER",
    "ProgressDigest",
    "SafetensorsFile",
    "StEntry",
    "TensorDigest",
    "TensorSource",
    "load_json",
    "write_safetensors",
]

MAX_HEADER = 100_000_000  # the reference reader's cap
#: the header key safetensors reserves for its string metadata: no tensor may be called this
METADATA_KEY = "__metadata__"
#: numpy's limit on dimensions (NPY_MAXDIMS); a header claiming more cannot be viewed
MAX_DIMS = 64
#: largest dimension numpy can index (npy_intp)
MAX_DIM = 2**63 - 1
#: most elements in a shape: numpy needs elements x itemsize (up to 16) below 2**63, even for an
#: empty array (it multiplies the non-zero dimensions)
MAX_ELEMENTS = MAX_DIM // 16

# canonical dtype name <-> safetensors dtype code
ST_CODES = {
    "bool": "BOOL",
    "uint8": "U8",
    "int8": "I8",
    "uint16": "U16",
    "int16": "I16",
    "uint32": "U32",
    "int32": "I32",
    "uint64": "U64",
    "int64": "I64",
    "float16": "F16",
    "bfloat16": "BF16",
    "float32": "F32",
    "float64": "F64",
    "complex64": "C64",
    "float8_e4m3fn": "F8_E4M3",
    "float8_e5m2": "F8_E5M2",
    "float8_e4m3fnuz": "F8_E4M3FNUZ",
    "float8_e5m2fnuz": "F8_E5M2FNUZ",
    "float8_e8m0fnu": "F8_E8M0",
}
ST_NAMES = {code: name for name, code in ST_CODES.items()}


@dataclass(frozen=True)
class StEntry:
    """One tensor in a safetensors header: dtype name, shape and absolute byte span in the file."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute file offset
    end: int


@dataclass(frozen=True)
class TensorSource:
    """A tensor to write: its header facts now, its bytes only when ``fetch()`` is called.

    ``span``, when given, says the same bytes already lie verbatim in a file (a reader's
    :meth:`~weightvault.abc.format.FormatReader.byte_span`); the writer then streams them file to
    file (:func:`~weightvault.core.io.write_span`) and never calls ``fetch()``.
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    fetch: Callable[[], np.ndarray]
    span: ByteSpan | None = None

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * itemsize(self.dtype)


class TensorDigest(Protocol):
    """Sees one tensor's bytes as they are written, in order, then hears that they are complete."""

    def update(self, chunk: memoryview) -> None: ...

    def finish(self) -> None: ...


class ProgressDigest:
    """A digest that only counts bytes for a progress bar (``on_tensor=ProgressDigest.factory(advance)``)."""

    def __init__(self, advance: Callable[[int], None]) -> None:
        self._advance = advance

    def update(self, chunk: memoryview) -> None:
        self._advance(len(chunk))

    def finish(self) -> None:
        pass

    @classmethod
    def factory(cls, advance: Callable[[int], None]) -> Callable[[TensorSource], TensorDigest]:
        digest = cls(advance)
        return lambda src: digest


def check_shape(shape: Any, *, path: str | os.PathLike[str], tensor: str | None) -> tuple[int, ...]:
    """A shape read from a file: a list of at most 64 ints, each in 0 .. 2**63-1 (what numpy can
    hold), else :class:`InvalidHeaderError`. Returns it as a tuple."""
    # fast path for the common case (this runs once per tensor of every file opened)
    if type(shape) is list and len(shape) <= MAX_DIMS:
        for d in shape:
            if type(d) is not int or d < 0:
                break
        else:
            n = math.prod(shape)
            if n <= MAX_ELEMENTS and (n or math.prod(d for d in shape if d) <= MAX_ELEMENTS):
                return tuple(shape)
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= MAX_DIM for d in shape
    ):
        raise InvalidHeaderError(
            f"shape {str(shape)[:200]} is not a list of non-negative ints (each below 2**63)",
            path=path,
            tensor=tensor,
        )
    if len(shape) > MAX_DIMS:
        raise InvalidHeaderError(
            f"shape has {len(shape)} dimensions, more than numpy's {MAX_DIMS}",
            path=path,
            tensor=tensor,
        )
    if math.prod(d for d in shape if d) > MAX_ELEMENTS:
        raise InvalidHeaderError(
            f"shape {shape} has more elements than numpy can index", path=path, tensor=tensor
        )
    return tuple(shape)


def _no_duplicates(path: str) -> Callable[[list[tuple[str, Any]]], dict[str, Any]]:
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in pairs:
            if k in out:
                raise DuplicateTensorError("duplicate key in header", path=path, tensor=k)
            out[k] = v
        return out

    return hook


_IDENTITY = bytes(range(256))
_NOT_STRUCTURAL = bytes(sorted(set(range(256)) - set(b'"[]{}')))


#: structural characters up to which :func:`json_depth` counts in Python (no numpy import)
_SMALL_JSON = 1 << 16


def json_depth(raw: bytes) -> int:
    """Deepest bracket nesting of a JSON text, found without recursion (strings are skipped).

    Escaped backslashes and quotes are removed first, then only quotes and brackets are kept; a
    quote count tells which brackets lie inside strings. Small headers are counted in Python (so
    ``ls`` needs no numpy), large ones vectorised: a 100 MB header costs milliseconds.
    """
    if b"\\" in raw:
        raw = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    structural = raw.translate(_IDENTITY, _NOT_STRUCTURAL)
    if len(structural) <= _SMALL_JSON:
        return _json_depth_small(structural)
    return _json_depth_vectorised(structural)


def _json_depth_small(structural: bytes) -> int:
    depth = deepest = 0
    in_string = False
    for char in structural:
        if char == 0x22:  # '"'
            in_string = not in_string
        elif in_string:
            continue
        elif char in (0x5B, 0x7B):  # '[' '{'
            depth += 1
            deepest = max(deepest, depth)
        else:  # ']' '}'
            depth -= 1
    return deepest


def _json_depth_vectorised(structural: bytes) -> int:
    import numpy as np

    chars = np.frombuffer(structural, np.uint8)
    outside = (np.cumsum(chars == ord('"')) & 1) == 0
    opens = outside & ((chars == ord("[")) | (chars == ord("{")))
    closes = outside & ((chars == ord("]")) | (chars == ord("}")))
    if not opens.any():
        return 0
    return int(np.cumsum(opens.astype(np.int64) - closes).max())


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def load_json(
    raw: bytes | str,
    *,
    path: str | os.PathLike[str],
    what: str = "header",
    object_pairs_hook: Callable[[list[tuple[str, Any]]], Any] | None = None,
) -> Any:
    """Parse JSON read from a file: UTF-8, no NaN/Infinity, nesting at most ``MAX_NESTING``.

    The depth is measured before parsing, so a file of ten thousand ``[`` cannot drive the parser
    into a ``RecursionError``; every failure is a :class:`CorruptFileError` naming the file.
    """
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    check_depth(json_depth(data), path=path, what=f"the JSON {what}")
    try:
        text = data.decode("utf-8")
        return json.loads(text, object_pairs_hook=object_pairs_hook, parse_constant=_no_constant)
    except CorruptFileError:
        raise
    except UnicodeDecodeError as exc:
        raise InvalidHeaderError(f"{what} is not UTF-8: {exc}", path=path) from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, NaN, ints over 4300 digits
        raise InvalidHeaderError(f"{what} is not valid JSON: {exc}", path=path) from None


class SafetensorsFile:
    """A validated, mmapped safetensors file. ``view(name)`` is zero-copy and read-only."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        try:
            self._file = open(self.path, "rb")  # noqa: SIM115 - kept open for the mmap, see close()
        except IsADirectoryError:
            raise InvalidHeaderError(
                "is a directory, not a safetensors file", path=self.path
            ) from None
        try:
            self.size = os.fstat(self._file.fileno()).st_size
            self.metadata, self.entries, self.header_len = self._read_header()
            self._mmap = (
                mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ) if self.size else None
            )
        except BaseException:
            self._file.close()
            raise

    def _read_header(self) -> tuple[dict[str, str], dict[str, StEntry], int]:
        path = self.path
        if self.size < 8:
            raise TruncatedFileError(f"file has {self.size} bytes, a header needs 8", path=path)
        (n,) = struct.unpack("<Q", self._file.read(8))
        if n > MAX_HEADER:
            raise HeaderTooLargeError(f"header claims {n} bytes, over the {MAX_HEADER} cap", path=path)
        if 8 + n > self.size:
            raise TruncatedFileError(
                f"header claims {n} bytes but the file has only {self.size - 8} after the length",
                path=path,
            )
        raw = self._file.read(n)
        header = load_json(raw, path=path, what="header", object_pairs_hook=_no_duplicates(path))
        if not isinstance(header, dict):
            raise InvalidHeaderError("header is not a JSON object", path=path)
        metadata = header.pop("__metadata__", None) or {}
        if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
        ):
            raise InvalidHeaderError("__metadata__ must map strings to strings", path=path)
        base = 8 + n
        entries = {name: self._parse_entry(name, spec, base) for name, spec in header.items()}
        self._check_spans(entries, base)
        return metadata, entries, n

    def _parse_entry(self, name: str, spec: Any, base: int) -> StEntry:
        path = self.path
        if not isinstance(spec, dict) or not {"dtype", "shape", "data_offsets"} <= spec.keys():
            raise InvalidHeaderError("entry needs dtype, shape and data_offsets", path=path, tensor=name)
        code, shape, offs = spec["dtype"], spec["shape"], spec["data_offsets"]
        if not isinstance(code, str) or code not in ST_NAMES:
            raise UnknownDtypeError(f"unknown safetensors dtype {code!r}", path=path, tensor=name)
        check_shape(shape, path=path, tensor=name)
        if (
            not isinstance(offs, list)
            or len(offs) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offs)
            or offs[1] < offs[0]
        ):
            raise InvalidOffsetError(f"data_offsets {offs!r} are not [begin, end]", path=path, tensor=name)
        dtype = ST_NAMES[code]
        expected = math.prod(shape) * itemsize(dtype)  # exact: Python ints
        if offs[1] - offs[0] != expected:
            raise InvalidOffsetError(
                f"byte span {offs[1] - offs[0]} does not match shape {shape} x {dtype} = {expected}",
                path=path,
                tensor=name,
            )
        return StEntry(name, dtype, tuple(shape), base + offs[0], base + offs[1])

    def _check_spans(self, entries: dict[str, StEntry], base: int) -> None:
        cursor = base
        for e in sorted(entries.values(), key=lambda e: (e.start, e.end)):
            if e.start < cursor:
                raise InvalidOffsetError("byte span overlaps the previous tensor", path=self.path, tensor=e.name)
            if e.start > cursor:
                raise InvalidOffsetError(
                    f"{e.start - cursor} bytes of hole before this tensor", path=self.path, tensor=e.name
                )
            cursor = e.end
        if cursor > self.size:
            raise TruncatedFileError(
                f"data ends at byte {cursor} but the file has {self.size} bytes", path=self.path
            )
        if cursor < self.size:
            raise InvalidOffsetError(
                f"{self.size - cursor} unexplained bytes after the last tensor", path=self.path
            )

    def view(self, name: str) -> np.ndarray:
        import numpy as np

        e = self.entries[name]
        dt = dtype_from_name(e.dtype)
        if e.end == e.start:
            return np.empty(e.shape, dt)
        assert self._mmap is not None
        arr = np.frombuffer(self._mmap, dtype=dt, count=math.prod(e.shape), offset=e.start)
        return arr.reshape(e.shape)

    def raw(self, name: str) -> memoryview:
        e = self.entries[name]
        if e.end == e.start or self._mmap is None:
            return memoryview(b"")
        return memoryview(self._mmap)[e.start : e.end]

    def span(self, name: str) -> ByteSpan | None:
        """Where the tensor's bytes lie in this file (valid until :meth:`close`); None if empty."""
        from weightvault.abc.format import ByteSpan

        e = self.entries[name]
        return ByteSpan(self.path, self._file.fileno(), e.start, e.end - e.start) if e.end > e.start else None

    def read_jobs(self, name: str, out: np.ndarray, chunk: int = 64 << 20) -> list[Callable[[], None]]:
        """Reads that fill ``out`` with the tensor's bytes, in chunks that may run in parallel.

        ``pread`` keeps no shared file position, so the jobs are safe to run on threads, and it
        releases the GIL while the kernel copies, so two threads really do copy at once.
        """
        import numpy as np

        e = self.entries[name]
        buf = memoryview(out.reshape(-1).view(np.uint8))
        fd = self._file.fileno()

        def job(lo: int, hi: int) -> None:
            view = buf[lo:hi]
            done = 0
            while done < len(view):
                got = os.preadv(fd, [view[done:]], e.start + lo + done)
                if got == 0:
                    raise TruncatedFileError("file shrank while reading", path=self.path, tensor=name)
                done += got

        size = e.end - e.start
        return [(lambda lo=lo: job(lo, min(lo + chunk, size))) for lo in range(0, size, chunk)]

    def read_into(self, name: str, out: np.ndarray) -> None:
        """Copy a tensor's bytes into ``out`` (one read; faster than touching mmap pages)."""
        for job in self.read_jobs(name, out):
            job()

    def close(self) -> None:
        close_mmap(self._mmap)
        self._file.close()


def check_tensor_names(
    sources: Iterable[TensorSource], *, path: str | os.PathLike[str] | None
) -> None:
    """Refuse names a safetensors file cannot hold: ``__metadata__`` would be read back as the
    metadata block, and the file could not be opened again."""
    for src in sources:
        if src.name == METADATA_KEY:
            raise UnsupportedOperationError(
                f"a tensor cannot be named {METADATA_KEY!r} in a safetensors file: safetensors "
                "keeps the file's metadata under that name",
                path=path,
                tensor=src.name,
                hint="rename the tensor, or nest it ({'x': {'__metadata__': t}} is stored as "
                "x/__metadata__)",
            )


def _alignment_key(src: TensorSource) -> int:
    return -dtype_from_name(src.dtype).itemsize


def _header_bytes(meta: dict[str, str], entries: dict[str, Any], pad_to: int | None) -> bytes:
    header: dict[str, Any] = {}
    if meta:
        header["__metadata__"] = meta
    header.update(entries)
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if pad_to is None:
        pad_to = (len(raw) + 7) // 8 * 8
    if len(raw) > pad_to:
        raise AssertionError("rewritten header is longer than the reserved space")
    return raw + b" " * (pad_to - len(raw))


def _checked_bytes(src: TensorSource) -> memoryview:
    import numpy as np

    arr = src.fetch()
    if arr.nbytes != src.nbytes or tuple(arr.shape) != src.shape:
        raise ValueError(
            f"tensor {src.name!r} changed while saving: expected {src.shape} {src.dtype}, "
            f"got {arr.shape} {arr.dtype}"
        )
    if not arr.flags.c_contiguous:
        arr = arr.copy(order="C")
    return memoryview(arr.reshape(-1).view(np.uint8))


def _digest_all(digest: TensorDigest, data: memoryview) -> None:
    digest.update(data)
    digest.finish()


def write_safetensors(
    f: BinaryIO,
    sources: Iterable[TensorSource],
    metadata: dict[str, str] | None = None,
    *,
    on_tensor: Callable[[TensorSource], TensorDigest] | None = None,
    finalize: Callable[[], dict[str, str]] | None = None,
) -> dict[str, tuple[int, int]]:
    """Stream ``sources`` into ``f`` as a safetensors file; returns each name's data offsets.

    Tensors are ordered by decreasing item size (stable otherwise), so every tensor starts at an
    offset aligned to its own item size and mmap views are aligned. ``on_tensor(src)`` returns a
    digest that sees the tensor's bytes as they are written (checksums, progress); ``finalize``
    returns the final metadata, which must serialise to the same length as the placeholder.
    """
    ordered = sorted(sources, key=_alignment_key)
    entries: dict[str, Any] = {}
    offsets: dict[str, tuple[int, int]] = {}
    pos = 0
    for src in ordered:
        check_tensor_names([src], path=None)
        end = pos + src.nbytes
        entries[src.name] = {
            "dtype": ST_CODES[src.dtype],
            "shape": list(src.shape),
            "data_offsets": [pos, end],
        }
        offsets[src.name] = (pos, end)
        pos = end
    head = _header_bytes(metadata or {}, entries, None)
    start = f.tell()
    f.write(struct.pack("<Q", len(head)))
    f.write(head)
    # The digest of an in-memory tensor i runs on a helper thread while tensor i+1 is written:
    # the write syscall releases the GIL, so the hash is nearly free. At most one hash is in
    # flight, so at most two tensors' buffers are alive at once. A tensor copied from a file
    # span is hashed chunk by chunk on the way through instead, while each chunk is in cache.
    with ThreadPoolExecutor(1) as pool:
        in_flight: Future[None] | None = None
        for src in ordered:
            digest = on_tensor(src) if on_tensor is not None else None
            if src.span is not None:
                if src.span.nbytes != src.nbytes:
                    raise ValueError(f"tensor {src.name!r}: its source span holds {src.span.nbytes} bytes, "
                                     f"expected {src.nbytes}")
                write_span(f, src.span, digest.update if digest is not None else None)
                if digest is not None:
                    digest.finish()
                continue
            data = _checked_bytes(src)
            f.write(data)
            if digest is not None:
                if in_flight is not None:
                    in_flight.result()
                in_flight = pool.submit(_digest_all, digest, data)
        if in_flight is not None:
            in_flight.result()
    if finalize is not None:
        end_pos = f.tell()
        f.seek(start + 8)
        f.write(_header_bytes(finalize(), entries, len(head)))
        f.seek(end_pos)
    return offsets
