"""NumPy ``.npy`` and ``.npz`` files, read and written without ``np.load`` / pickle.

``.npy`` layout: ``\\x93NUMPY`` | major | minor | header length (u16 for 1.0, u32 for 2.0/3.0) |
header (a Python dict literal: ``descr``, ``fortran_order``, ``shape``; latin-1, utf-8 for 3.0) |
data. The header is parsed with :func:`ast.literal_eval` (no code runs), and only plain numeric
``descr`` strings are accepted: object arrays (``|O``, which ``np.load`` would unpickle),
structured and void dtypes are refused. The data size that shape x itemsize implies is checked
against the bytes actually present before anything is allocated.

``.npz`` is a zip of ``.npy`` members. Stored (uncompressed) members are read as zero-copy views
of the mmapped zip; deflated members are decompressed one at a time, after checking that the
claimed size is possible for the compressed size (deflate cannot beat ~1032:1).

Big-endian data is returned as a little-endian copy (the interface speaks canonical dtypes);
Fortran-order data is returned as an F-contiguous view with the right values.

Writing produces version 1.0 headers (2.0 when the header is too long), little-endian, C order,
with data aligned to 64 bytes; ``.npz`` members are stored (option ``compress=True`` deflates)
and an alignment extra field is added so stored members stay 64-byte aligned for mmap. ``.npz``
has no metadata field: metadata of other formats (a gob stream's trailing values, ...) is kept as
JSON in the zip archive comment, which NumPy ignores (``formats._carry``); ``.npy`` keeps none.
"""

from __future__ import annotations

import ast
import io
import math
import mmap
import os
import re
import struct
import tokenize
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

import numpy as np

from weightvault.abc.format import ByteSpan, Format, FormatReader, TensorInfo
from weightvault.formats._carry import decode_carried, encode_carried
from weightvault.core.dtypes import dtype_from_name, dtype_name
from weightvault.core.io import atomic_write, close_mmap, write_span
from weightvault.errors import (
    DuplicateTensorError,
    HeaderTooLargeError,
    InvalidHeaderError,
    InvalidOffsetError,
    TruncatedFileError,
    UnknownDtypeError,
    UnsafePickleError,
    UnsupportedOperationError,
)
from weightvault.core.unpickler import short_repr
from weightvault.formats._common import describe_entry, fetch_array, span_of
from weightvault.formats._zipmember import check_member, inflate, member_data_offset

__all__ = ["NumpyFormat", "NumpyReader", "parse_npy_header", "npy_header_bytes"]

MAGIC = b"\x93NUMPY"
MAX_HEADER = 1 << 20  # numpy itself refuses headers over 10 000 bytes by default
ALIGN = 64
_DESCR = re.compile(r"^[<>|=]?([biuf])(\d{1,2})$|^[<>|=]?(c)(8|16)$")
#: well-formed dtypes that are not tensors: text, bytes, void, datetime, timedelta
_OTHER_DESCR = re.compile(r"^[<>|=]?([USV]\d{1,9}|[Mm]8(\[\w+\])?)$")
MAX_DIMS = 64  # numpy's limit
_ZIP_LOCAL = b"PK\x03\x04"
#: marks the JSON of carried metadata in the .npz archive comment (see formats._carry)
CARRY_PREFIX = b"weightvault-metadata:"
_ALIGN_EXTRA_ID = 0xD935  # the id Android's zipalign uses for padding


@dataclass(frozen=True)
class NpyHeader:
    dtype: np.dtype  # with the file's byte order
    shape: tuple[int, ...]
    fortran: bool
    data_offset: int  # relative to the start of the .npy bytes

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


class _NotATensor(UnknownDtypeError):
    """A well-formed member whose dtype is not a numeric tensor (text, object, structured): an
    ``.npz`` lists it in ``skipped`` and reads the rest."""


class _PickledMember(UnsafePickleError):
    """An object array: its data is a pickle, never loaded; an ``.npz`` lists it in ``skipped``."""


def _parse_descr(descr: Any, *, path: str, tensor: str | None) -> np.dtype:
    if not isinstance(descr, str):
        raise _NotATensor(
            f"structured dtype {short_repr(descr)} is not a weight tensor", path=path, tensor=tensor
        )
    if descr.lstrip("<>|=") in ("O", "O8", "O4"):
        raise _PickledMember(
            "object array: its data is a pickle, which weightvault never loads",
            path=path,
            tensor=tensor,
            hint="save numeric arrays only (np.save(..., allow_pickle=False))",
        )
    m = _DESCR.match(descr)
    if not m:
        if _OTHER_DESCR.match(descr):
            raise _NotATensor(f"dtype {descr!r} is not a numeric tensor", path=path, tensor=tensor)
        raise UnknownDtypeError(f"unsupported npy dtype {short_repr(descr)}", path=path, tensor=tensor)
    try:
        dt = np.dtype(descr)
    except TypeError:  # "<f3", "<i16": the right letters, a size numpy does not have
        raise UnknownDtypeError(f"npy dtype {descr!r} does not exist", path=path, tensor=tensor) from None
    try:
        dtype_name(dt, tensor=tensor)
    except UnknownDtypeError as exc:  # float128 and friends
        raise UnknownDtypeError(exc.message, path=path, tensor=tensor) from None
    return dt


def _literal(text: str, *, py2: bool) -> Any:
    """The header dict, by :func:`ast.literal_eval` (no code runs). Python 2 wrote long ints as
    ``2L``; like numpy's ``_filter_header`` (for format 1.0 and 2.0 only), a NAME token ``L``
    right after a NUMBER is dropped and the text evaluated again."""
    try:
        return ast.literal_eval(text)
    except SyntaxError:
        if not py2:
            raise
    tokens: list[tuple[int, str]] = []
    last = None
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if last == tokenize.NUMBER and tok.type == tokenize.NAME and tok.string in ("L", "l"):
            continue
        tokens.append((tok.type, tok.string))
        last = tok.type
    return ast.literal_eval(tokenize.untokenize(tokens))


def parse_npy_header(buf: bytes | memoryview, available: int, *, path: str, tensor: str | None = None) -> NpyHeader:
    """Parse the header at the start of ``buf``; ``available`` = bytes of the whole .npy present."""
    head = bytes(buf[:12])
    if len(head) < 10 or head[:6] != MAGIC:
        raise InvalidHeaderError("not an .npy file (bad magic)", path=path, tensor=tensor)
    major = head[6]
    if major == 1:
        (hlen,) = struct.unpack("<H", head[8:10])
        start = 10
    elif major in (2, 3):
        if len(head) < 12:
            raise TruncatedFileError("file ends inside the .npy preamble", path=path, tensor=tensor)
        (hlen,) = struct.unpack("<I", head[8:12])
        start = 12
    else:
        raise InvalidHeaderError(f"unknown .npy format version {major}.{head[7]}", path=path, tensor=tensor)
    if hlen > MAX_HEADER:
        raise HeaderTooLargeError(f".npy header claims {hlen} bytes", path=path, tensor=tensor)
    if start + hlen > available:
        raise TruncatedFileError(
            f".npy header claims {hlen} bytes but only {available - start} follow", path=path, tensor=tensor
        )
    raw = bytes(buf[start : start + hlen])
    try:
        text = raw.decode("utf-8" if major == 3 else "latin-1")
        header = _literal(text, py2=major in (1, 2))
    except (UnicodeDecodeError, ValueError, SyntaxError, MemoryError, RecursionError, tokenize.TokenError) as exc:
        raise InvalidHeaderError(
            f".npy header is not a dict literal: {short_repr(str(exc), 120)}", path=path, tensor=tensor
        ) from None
    if not isinstance(header, dict) or not {"descr", "fortran_order", "shape"} <= header.keys():
        raise InvalidHeaderError(".npy header needs descr, fortran_order and shape", path=path, tensor=tensor)
    shape = header["shape"]
    if not isinstance(shape, tuple) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise InvalidHeaderError(
            f"shape {short_repr(shape)} is not a tuple of non-negative ints", path=path, tensor=tensor
        )
    if len(shape) > MAX_DIMS:
        raise InvalidHeaderError(
            f"shape has {len(shape)} dimensions, more than numpy's {MAX_DIMS}", path=path, tensor=tensor
        )
    if math.prod(d for d in shape if d) >= 1 << 58:
        # numpy refuses such a shape even with a zero dimension ("array is too big")
        raise InvalidHeaderError(f"shape {shape} is too large for any array", path=path, tensor=tensor)
    if not isinstance(header["fortran_order"], bool):
        raise InvalidHeaderError("fortran_order is not a bool", path=path, tensor=tensor)
    dt = _parse_descr(header["descr"], path=path, tensor=tensor)
    out = NpyHeader(dt, shape, header["fortran_order"], start + hlen)
    if out.data_offset + out.nbytes > available:
        raise TruncatedFileError(
            f"shape {shape} x {dt} needs {out.nbytes} bytes but only "
            f"{available - out.data_offset} follow the header",
            path=path,
            tensor=tensor,
        )
    return out


def _array_from(buffer: Any, offset: int, hdr: NpyHeader) -> np.ndarray:
    count = math.prod(hdr.shape)
    if count == 0:
        arr = np.empty(hdr.shape, hdr.dtype)
    else:
        flat = np.frombuffer(buffer, dtype=hdr.dtype, count=count, offset=offset)
        arr = flat.reshape(hdr.shape[::-1]).T if hdr.fortran else flat.reshape(hdr.shape)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return arr


def _info(name: str, hdr: NpyHeader, **extra: Any) -> TensorInfo:
    facts = {"order": "F" if hdr.fortran else "C", "byteorder": "big" if hdr.dtype.byteorder == ">" else "little"}
    facts.update(extra)
    return TensorInfo(name, dtype_name(hdr.dtype, tensor=name), hdr.shape, facts)


class NumpyReader(FormatReader):
    """One reader for both ``.npy`` (one tensor, named after the file stem) and ``.npz``."""

    format_name = "numpy"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(path)
        self._file: BinaryIO = open(self.path, "rb")  # noqa: SIM115 - closed in close()
        self._mmap: mmap.mmap | None = None
        self._zip: zipfile.ZipFile | None = None
        self._headers: dict[str, NpyHeader] = {}
        self._base: dict[str, int] = {}  # stored member: absolute offset of its .npy bytes
        self._members: dict[str, zipfile.ZipInfo] = {}
        self._starts: dict[str, int] = {}  # member: absolute offset of its (compressed) bytes
        self._skipped: dict[str, str] = {}
        try:
            size = os.fstat(self._file.fileno()).st_size
            if size:
                self._mmap = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
            head = self._mmap[:8] if self._mmap is not None else b""
            if head.startswith(MAGIC):
                self.kind = "npy"
                assert self._mmap is not None
                name = Path(self.path).stem
                self._headers[name] = parse_npy_header(self._mmap, size, path=self.path, tensor=name)
                self._base[name] = 0
            else:
                self.kind = "npz"
                self._open_zip()
        except BaseException:
            self.close()
            raise

    def _open_zip(self) -> None:
        try:
            self._zip = zipfile.ZipFile(self._file)
            infos = self._zip.infolist()
        except (zipfile.BadZipFile, OSError, ValueError, struct.error, NotImplementedError, EOFError,
                OverflowError) as exc:
            # NotImplementedError: "zip file version 9.9"; OSError/ValueError: offsets outside the file
            raise InvalidHeaderError(
                f"not a readable .npz (zip) file: {type(exc).__name__}: {exc}", path=self.path
            ) from None
        size = os.fstat(self._file.fileno()).st_size
        for zi in infos:
            if not zi.filename:  # (ZipInfo.is_dir() would raise IndexError)
                raise InvalidHeaderError("a zip member has an empty name", path=self.path)
            if zi.filename.endswith("/"):
                continue
            name = zi.filename[:-4] if zi.filename.endswith(".npy") else zi.filename
            if name in self._members or name in self._skipped:
                raise DuplicateTensorError("two zip members carry this name", path=self.path, tensor=name)
            start = member_data_offset(self._mmap, zi, size, path=self.path, tensor=name)
            check_member(zi, path=self.path, tensor=name)
            try:
                header = self._member_header(zi, start, name)
            except (_NotATensor, _PickledMember) as exc:
                self._skipped[name] = exc.message
                continue
            self._members[name] = zi
            self._starts[name] = start
            self._headers[name] = header
            if zi.compress_type == zipfile.ZIP_STORED:
                self._base[name] = start

    def _member_header(self, zi: zipfile.ZipInfo, start: int, name: str) -> NpyHeader:
        """The .npy header of a member; the data it describes must fit in the member's declared size."""
        assert self._mmap is not None
        stored = memoryview(self._mmap)[start : start + zi.compress_size]
        if zi.compress_type == zipfile.ZIP_STORED:
            return parse_npy_header(stored[: 12 + MAX_HEADER], zi.file_size, path=self.path, tensor=name)
        pre = inflate(stored, zi, path=self.path, tensor=name, prefix=12)
        hlen = 0
        if len(pre) >= 10 and pre[6] == 1:
            hlen = struct.unpack("<H", pre[8:10])[0]
        elif len(pre) >= 12:
            hlen = struct.unpack("<I", pre[8:12])[0]
        if hlen > MAX_HEADER:
            raise HeaderTooLargeError(f".npy header claims {hlen} bytes", path=self.path, tensor=name)
        head = inflate(stored, zi, path=self.path, tensor=name, prefix=12 + hlen)
        return parse_npy_header(head, zi.file_size, path=self.path, tensor=name)

    # -- FormatReader hooks ------------------------------------------------------------------------
    def keys(self) -> list[str]:
        return list(self._headers)

    def info(self, name: str) -> TensorInfo:
        self._require(name)
        hdr = self._headers[name]
        extra: dict[str, Any] = {}
        if name in self._members:
            zi = self._members[name]
            extra["compressed"] = zi.compress_type != zipfile.ZIP_STORED
        return _info(name, hdr, **extra)

    def get(self, name: str) -> np.ndarray:
        self._require(name)
        hdr = self._headers[name]
        if name in self._base:
            return _array_from(self._mmap, self._base[name] + hdr.data_offset, hdr)
        assert self._mmap is not None
        zi = self._members[name]
        start = self._starts[name]
        data = inflate(memoryview(self._mmap)[start : start + zi.compress_size], zi, path=self.path, tensor=name)
        return _array_from(data, hdr.data_offset, hdr)

    def byte_span(self, name: str) -> ByteSpan | None:
        """The data of a ``.npy`` or stored ``.npz`` member: C order (or 1-D), little-endian."""
        self._require(name)
        hdr = self._headers[name]
        if name not in self._base or hdr.nbytes == 0:
            return None  # deflated member, or nothing to copy
        if (hdr.fortran and len(hdr.shape) > 1) or (hdr.dtype.byteorder == ">" and hdr.dtype.itemsize > 1):
            return None  # the bytes need reordering on the way
        return ByteSpan(self.path, self._file.fileno(), self._base[name] + hdr.data_offset, hdr.nbytes)

    @property
    def metadata(self) -> dict[str, Any]:
        comment = self._zip.comment if self._zip is not None else b""
        carried = decode_carried(comment[len(CARRY_PREFIX) :], "numpy") if comment.startswith(CARRY_PREFIX) else {}
        return {**carried, "numpy": {"container": self.kind}}

    @property
    def skipped(self) -> dict[str, str]:
        """``.npz`` members that are not numeric tensors (text, bytes, structured, object arrays);
        object arrays are pickles and are never unpickled."""
        return dict(self._skipped)

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
        close_mmap(self._mmap)
        self._file.close()


# -- writing -----------------------------------------------------------------------------------------
def npy_header_bytes(dtype: np.dtype, shape: tuple[int, ...], prefix_len: int = 0) -> bytes:
    """Magic + version + header, padded so data starts 64-byte aligned (counting ``prefix_len``)."""
    descr = np.lib.format.dtype_to_descr(dtype.newbyteorder("<") if dtype.itemsize > 1 else dtype)
    text = "{'descr': %r, 'fortran_order': False, 'shape': %r, }" % (descr, tuple(shape))
    for major, fmt, pre in ((1, "<H", 10), (2, "<I", 12)):
        body_len = len(text) + 1
        pad = (-(prefix_len + pre + body_len)) % ALIGN
        total = body_len + pad
        if major == 1 and total > 0xFFFF:
            continue
        body = (text + " " * pad + "\n").encode("latin-1")
        return MAGIC + bytes([major, 0]) + struct.pack(fmt, total) + body
    raise AssertionError("unreachable")


def _check_dtype(dtype: str, *, path: Any, tensor: str) -> np.dtype:
    dt = dtype_from_name(dtype, path=path, tensor=tensor)
    if dt.kind not in "biufc":
        raise UnsupportedOperationError(
            f".npy has no standard code for {dtype} (np.load would see raw void bytes)",
            path=path,
            tensor=tensor,
            hint="convert to float32 first (weightvault convert --dtype float32) or write safetensors/native",
        )
    return dt


def _write_npy_stream(f: BinaryIO, header: bytes, tensors: Mapping[str, np.ndarray], name: str) -> None:
    """The .npy bytes of one tensor: streamed from its source file when it lies there verbatim."""
    f.write(header)
    span = span_of(tensors, name)
    if span is not None:
        write_span(f, span)
        return
    arr = fetch_array(tensors, name)
    if arr.size:
        f.write(memoryview(np.ascontiguousarray(arr).reshape(-1).view(np.uint8)))


class NumpyFormat(Format):
    name = "numpy"
    description = "NumPy .npy / .npz (no pickles)"
    read_options: ClassVar[Mapping[str, str]] = {}
    write_options: ClassVar[Mapping[str, str]] = {
        "container": "npz or npy (default from the name; .npy holds exactly one array)",
        "compress": "deflate the .npz members (default false: stored, memory-mappable)",
    }

    @classmethod
    def sniff(cls, path: Path, head: bytes) -> bool:
        if head.startswith(MAGIC):
            return True
        if head.startswith(_ZIP_LOCAL) and len(head) >= 30:
            n = struct.unpack("<H", head[26:28])[0]
            first = head[30 : 30 + n]
            return first.endswith(b".npy")
        return False

    @classmethod
    def open(cls, path: str | os.PathLike[str], **options: Any) -> NumpyReader:
        return NumpyReader(path)

    @classmethod
    def write(
        cls,
        path: str | os.PathLike[str],
        tensors: Mapping[str, np.ndarray],
        *,
        metadata: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> None:
        names = list(tensors)
        as_npy = options.get("container") == "npy" or (
            options.get("container") is None and os.fspath(path).lower().endswith(".npy")
        )
        if as_npy:
            if len(names) != 1:
                raise UnsupportedOperationError(
                    f".npy holds exactly one array, got {len(names)} tensors",
                    path=path,
                    hint="write a .npz instead",
                )
            name = names[0]
            dtype, shape = describe_entry(tensors, name)
            dt = _check_dtype(dtype, path=path, tensor=name)
            with atomic_write(path) as f:
                _write_npy_stream(f, npy_header_bytes(dt, shape), tensors, name)
            return
        compress = bool(options.get("compress", False))
        with atomic_write(path) as f, zipfile.ZipFile(f, "w", allowZip64=True) as zf:
            for name in names:
                cls._write_member(zf, f, name, tensors, compress, path)
            carried = encode_carried(metadata, "numpy", limit=0xFFFF - len(CARRY_PREFIX))
            if carried:
                zf.comment = CARRY_PREFIX + carried

    @staticmethod
    def _write_member(
        zf: zipfile.ZipFile, f: BinaryIO, name: str, tensors: Mapping[str, np.ndarray], compress: bool, path: Any
    ) -> None:
        dtype, shape = describe_entry(tensors, name)
        dt = _check_dtype(dtype, path=path, tensor=name)
        member = name + ".npy"
        zi = zipfile.ZipInfo(member, date_time=(1980, 1, 1, 0, 0, 0))
        zi.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
        zi.external_attr = 0o644 << 16
        header = npy_header_bytes(dt, shape)
        size = len(header) + math.prod(shape) * dt.itemsize
        zip64 = size > 0x7FFFFFFF
        if not compress:
            # Pad the local header's extra field so the member's bytes (and with the 64-aligned
            # .npy header, its data) start on a 64-byte boundary: mmap views stay aligned.
            name_len = len(member.encode("utf-8"))
            fixed = 30 + name_len + 4 + (20 if zip64 else 0)
            pad = (-(f.tell() + fixed)) % ALIGN
            zi.extra = struct.pack("<HH", _ALIGN_EXTRA_ID, pad) + b"\0" * pad
        zi.file_size = size
        with zf.open(zi, "w", force_zip64=zip64) as out:
            _write_npy_stream(out, header, tensors, name)  # type: ignore[arg-type]
