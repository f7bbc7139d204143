"""GGUF (ggml / llama.cpp) files, versions 1 to 3, read without the ``gguf`` package.

Layout: ``GGUF`` | u32 version | tensor count | kv count | key/value pairs | tensor infos |
padding to ``general.alignment`` (default 32) | tensor data. Version 1 used u32 counts and string
lengths, later versions u64. Version 3 files may be big-endian; that shows only in the byte order of
the version field, which is how we detect it.

Every count, length and offset is checked against the bytes left in the file before anything is
allocated: a string length, an array count times its smallest element size, a tensor's byte span.

Tensors: dims are stored innermost-first (ggml order) and reversed here into the numpy shape.
F32, F16, BF16, F64 and the integer types come back as zero-copy views of the mmapped file.
Quantized tensors are a decision point: **``get()`` returns Q8_0 and Q4_0 tensors dequantized to
float32** (``info().dtype`` is therefore ``float32`` and ``info().extra["ggml_type"]`` records the
stored type, with ``extra["quantized"] = True``). Every other quantization (K-quants, IQ*, ...) is
listed by ``keys()`` with its ggml type name in ``info().extra`` and ``get()`` raises
:class:`UnsupportedOperationError` naming the type. The format is read-only here.

Metadata: ``{"gguf": {"version": 3, "endian": "little", "alignment": 32}, "<key>": value, ...}``,
with arrays as lists (numeric arrays come out as Python numbers, strings decoded as UTF-8).
"""

from __future__ import annotations

import math
import mmap
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from weightvault.abc.format import ByteSpan, Format, FormatReader, TensorInfo
from weightvault.core.dtypes import DTYPES
from weightvault.core.io import close_mmap
from weightvault.errors import (
    DuplicateTensorError,
    HeaderTooLargeError,
    InvalidHeaderError,
    InvalidOffsetError,
    TruncatedFileError,
    UnsupportedOperationError,
)

__all__ = ["GGML_TYPES", "GGUFFormat", "GGUFReader"]

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS; gguf.cpp rejects more
MAX_NESTING = 8
MAX_STRING = 1 << 30

#: ggml type id -> (name, block size in elements, bytes per block, numpy dtype for plain types)
GGML_TYPES: dict[int, tuple[str, int, int, str | None]] = {
    0: ("F32", 1, 4, "float32"),
    1: ("F16", 1, 2, "float16"),
    2: ("Q4_0", 32, 18, None),
    3: ("Q4_1", 32, 20, None),
    6: ("Q5_0", 32, 22, None),
    7: ("Q5_1", 32, 24, None),
    8: ("Q8_0", 32, 34, None),
    9: ("Q8_1", 32, 40, None),
    10: ("Q2_K", 256, 84, None),
    11: ("Q3_K", 256, 110, None),
    12: ("Q4_K", 256, 144, None),
    13: ("Q5_K", 256, 176, None),
    14: ("Q6_K", 256, 210, None),
    15: ("Q8_K", 256, 292, None),
    16: ("IQ2_XXS", 256, 66, None),
    17: ("IQ2_XS", 256, 74, None),
    18: ("IQ3_XXS", 256, 98, None),
    19: ("IQ1_S", 256, 50, None),
    20: ("IQ4_NL", 32, 18, None),
    21: ("IQ3_S", 256, 110, None),
    22: ("IQ2_S", 256, 82, None),
    23: ("IQ4_XS", 256, 136, None),
    24: ("I8", 1, 1, "int8"),
    25: ("I16", 1, 2, "int16"),
    26: ("I32", 1, 4, "int32"),
    27: ("I64", 1, 8, "int64"),
    28: ("F64", 1, 8, "float64"),
    29: ("IQ1_M", 256, 56, None),
    30: ("BF16", 1, 2, "bfloat16"),
    34: ("TQ1_0", 256, 54, None),
    35: ("TQ2_0", 256, 66, None),
    39: ("MXFP4", 32, 17, None),
}
_DEQUANTIZED = {"Q8_0", "Q4_0"}

# GGUF value types: id -> (struct code, size); 8 = string and 9 = array are handled apart
_SCALARS = {
    0: ("B", 1), 1: ("b", 1), 2: ("H", 2), 3: ("h", 2), 4: ("I", 4), 5: ("i", 4),
    6: ("f", 4), 7: ("?", 1), 10: ("Q", 8), 11: ("q", 8), 12: ("d", 8),
}  # fmt: skip
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class GGUFTensor:
    name: str
    shape: tuple[int, ...]  # numpy order (outermost first)
    type_id: int
    offset: int  # absolute file offset
    nbytes: int | None  # None for unknown types

    @property
    def plain_dtype(self) -> str | None:
        """The canonical dtype of an unquantized type, None for quantized or unknown ones."""
        return GGML_TYPES.get(self.type_id, (None, 0, 0, None))[3]

    @property
    def type_name(self) -> str:
        return GGML_TYPES[self.type_id][0] if self.type_id in GGML_TYPES else f"unknown({self.type_id})"


class _Cursor:
    """Bounds-checked reads from the mmapped header."""

    def __init__(self, buf: mmap.mmap, size: int, path: str, endian: str) -> None:
        self.buf, self.size, self.path, self.e = buf, size, path, endian
        self.pos = 0
        self.wide = True  # v2+: u64 counts and lengths

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise TruncatedFileError(
                f"file ends while reading {what}: {n} bytes wanted at offset {self.pos}, "
                f"file has {self.size}",
                path=self.path,
            )

    def unpack(self, code: str, size: int, what: str) -> Any:
        self.need(size, what)
        (v,) = struct.unpack_from(self.e + code, self.buf, self.pos)
        self.pos += size
        return v

    def count(self, what: str) -> int:
        return int(self.unpack("Q", 8, what) if self.wide else self.unpack("I", 4, what))

    def string(self, what: str) -> str:
        n = self.count(f"length of {what}")
        if n > MAX_STRING:
            raise HeaderTooLargeError(f"{what} claims {n} bytes", path=self.path)
        self.need(n, what)
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidHeaderError(f"{what} is not UTF-8", path=self.path) from None

    def value(self, vtype: int, what: str, depth: int = 0) -> Any:
        if vtype in _SCALARS:
            code, size = _SCALARS[vtype]
            return self.unpack(code, size, what)
        if vtype == _STRING:
            return self.string(what)
        if vtype == _ARRAY:
            if depth >= MAX_NESTING:
                raise InvalidHeaderError(f"{what}: arrays nested deeper than {MAX_NESTING}", path=self.path)
            etype = self.unpack("I", 4, f"{what} element type")
            n = self.count(f"{what} element count")
            if etype in _SCALARS:
                code, size = _SCALARS[etype]
                self.need(n * size, f"{what} ({n} elements)")
                arr = np.frombuffer(self.buf, dtype=np.dtype(self.e + code), count=n, offset=self.pos)
                self.pos += n * size
                return arr.tolist()
            if etype not in (_STRING, _ARRAY):
                raise InvalidHeaderError(f"{what}: unknown array element type {etype}", path=self.path)
            # every string or nested array takes at least its 8- (or 4-) byte length
            self.need(n * (8 if self.wide else 4), f"{what} ({n} elements)")
            return [self.value(etype, what, depth + 1) for _ in range(n)]
        raise InvalidHeaderError(f"{what}: unknown value type {vtype}", path=self.path)


class GGUFReader(FormatReader):
    format_name = "gguf"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(path)
        self._file = open(self.path, "rb")  # noqa: SIM115 - closed in close()
        self._mmap: mmap.mmap | None = None
        try:
            size = os.fstat(self._file.fileno()).st_size
            if size < 24:
                raise TruncatedFileError(f"file has {size} bytes, a GGUF header needs 24", path=self.path)
            self._mmap = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
            self.size = size
            self._parse()
        except BaseException:
            self.close()
            raise

    def _parse(self) -> None:
        assert self._mmap is not None
        buf = self._mmap
        if buf[:4] != MAGIC:
            raise InvalidHeaderError("not a GGUF file (bad magic)", path=self.path)
        (version,) = struct.unpack_from("<I", buf, 4)
        endian = "<"
        if version & 0xFFFF == 0:  # byte-swapped: a big-endian file
            (version,) = struct.unpack_from(">I", buf, 4)
            endian = ">"
        if version not in (1, 2, 3):
            raise InvalidHeaderError(f"unsupported GGUF version {version}", path=self.path)
        cur = _Cursor(buf, self.size, self.path, endian)
        cur.pos = 8
        cur.wide = version >= 2
        n_tensors = cur.count("tensor count")
        n_kv = cur.count("metadata count")
        # each kv needs >= 12 bytes (key length + type), each tensor info >= 24
        if n_kv * 12 + n_tensors * 24 > self.size - cur.pos:
            raise HeaderTooLargeError(
                f"header claims {n_tensors} tensors and {n_kv} keys, more than the file can hold",
                path=self.path,
            )
        kv: dict[str, Any] = {}
        for i in range(n_kv):
            key = cur.string(f"key #{i}")
            vtype = cur.unpack("I", 4, f"type of {key}")
            if key in kv:
                raise DuplicateTensorError(f"metadata key {key!r} appears twice", path=self.path)
            kv[key] = cur.value(vtype, f"value of {key}")
        alignment = kv.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            raise InvalidHeaderError(f"general.alignment {alignment!r} is not a power of two", path=self.path)
        raw_infos = [self._tensor_info(cur) for _ in range(n_tensors)]
        data_start = (cur.pos + alignment - 1) // alignment * alignment
        self.version, self.endian, self.alignment, self.kv = version, endian, alignment, kv
        self._tensors: dict[str, GGUFTensor] = {}
        for name, shape, type_id, rel in raw_infos:
            if name in self._tensors:
                raise DuplicateTensorError("tensor name appears twice", path=self.path, tensor=name)
            self._tensors[name] = self._place(name, shape, type_id, rel, data_start)

    def _tensor_info(self, cur: _Cursor) -> tuple[str, tuple[int, ...], int, int]:
        name = cur.string("tensor name")
        n_dims = cur.unpack("I", 4, f"n_dims of {name}")
        if n_dims > MAX_DIMS:
            raise InvalidHeaderError(f"{n_dims} dimensions (ggml allows {MAX_DIMS})", path=self.path, tensor=name)
        dims = [cur.count(f"dims of {name}") for _ in range(n_dims)]
        type_id = cur.unpack("I", 4, f"type of {name}")
        rel = cur.unpack("Q", 8, f"offset of {name}")
        return name, tuple(reversed(dims)), type_id, rel

    def _place(self, name: str, shape: tuple[int, ...], type_id: int, rel: int, data_start: int) -> GGUFTensor:
        if rel % self.alignment:
            raise InvalidOffsetError(f"offset {rel} is not a multiple of {self.alignment}", path=self.path, tensor=name)
        start = data_start + rel
        if type_id not in GGML_TYPES:
            return GGUFTensor(name, shape, type_id, start, None)
        tname, block, bsize, _ = GGML_TYPES[type_id]
        numel = math.prod(shape)
        inner = shape[-1] if shape else 1
        if inner % block:
            raise InvalidHeaderError(
                f"innermost dim {inner} is not a multiple of the {tname} block size {block}",
                path=self.path,
                tensor=name,
            )
        nbytes = numel // block * bsize
        if start + nbytes > self.size:
            raise TruncatedFileError(
                f"{tname} data [{start}, {start + nbytes}) runs past the end of the file ({self.size} bytes)",
                path=self.path,
                tensor=name,
            )
        return GGUFTensor(name, shape, type_id, start, nbytes)

    # -- FormatReader hooks ------------------------------------------------------------------------
    def keys(self) -> list[str]:
        return list(self._tensors)

    def info(self, name: str) -> TensorInfo:
        self._require(name)
        t = self._tensors[name]
        plain = t.plain_dtype
        extra: dict[str, Any] = {"ggml_type": t.type_name, "offset": t.offset}
        if plain is None:
            extra["quantized"] = True
            extra["supported"] = t.type_name in _DEQUANTIZED
        return TensorInfo(name, plain or "float32", t.shape, extra)

    def get(self, name: str) -> np.ndarray:
        self._require(name)
        t = self._tensors[name]
        if t.nbytes is None or (t.plain_dtype is None and t.type_name not in _DEQUANTIZED):
            raise UnsupportedOperationError(
                f"ggml type {t.type_name} cannot be dequantized by weightvault "
                f"(supported: F32, F16, BF16, F64, I8-I64, {', '.join(sorted(_DEQUANTIZED))})",
                path=self.path,
                tensor=name,
                hint="re-export the model with llama.cpp's convert script using --outtype f16 or q8_0",
            )
        assert self._mmap is not None
        numel = math.prod(t.shape)
        if numel == 0:
            return np.empty(t.shape, np.float32)
        plain = t.plain_dtype
        if plain is not None:
            from weightvault.core.dtypes import dtype_from_name

            dt = dtype_from_name(plain).newbyteorder(self.endian)
            arr = np.frombuffer(self._mmap, dtype=dt, count=numel, offset=t.offset).reshape(t.shape)
            return arr.astype(dt.newbyteorder("<")) if self.endian == ">" and dt.itemsize > 1 else arr
        raw = np.frombuffer(self._mmap, dtype=np.uint8, count=t.nbytes, offset=t.offset)
        # Quantized blocks are byte arrays to the gguf writer, which never byte-swaps them: their
        # f16 scales are little-endian even in big-endian files, so we read them that way.
        if t.type_name == "Q8_0":
            return _dequantize_q8_0(raw, "<").reshape(t.shape)
        return _dequantize_q4_0(raw, "<").reshape(t.shape)

    def byte_span(self, name: str) -> ByteSpan | None:
        """An unquantized little-endian tensor's bytes (GGUF stores them C order, numpy shape)."""
        self._require(name)
        t = self._tensors[name]
        plain = t.plain_dtype
        if plain is None or t.nbytes is None or t.nbytes == 0:
            return None  # quantized (dequantized on read), unknown, or empty
        if self.endian == ">" and DTYPES[plain].itemsize > 1:
            return None
        return ByteSpan(self.path, self._file.fileno(), t.offset, t.nbytes)

    @property
    def metadata(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "gguf": {
                "version": self.version,
                "endian": "big" if self.endian == ">" else "little",
                "alignment": self.alignment,
            }
        }
        out.update(self.kv)
        return out

    def close(self) -> None:
        close_mmap(self._mmap)
        self._file.close()


def _dequantize_q8_0(raw: np.ndarray, endian: str) -> np.ndarray:
    """Q8_0 block: f16 scale d, then 32 int8 q; value = d * q."""
    blocks = raw.reshape(-1, 34)
    d = blocks[:, :2].copy().view(np.dtype(endian + "f2")).astype(np.float32)
    q = blocks[:, 2:].view(np.int8).astype(np.float32)
    return (d * q).reshape(-1)


def _dequantize_q4_0(raw: np.ndarray, endian: str) -> np.ndarray:
    """Q4_0 block: f16 scale d, then 16 bytes; low nibbles are elements 0-15, high 16-31; v = (q-8)*d."""
    blocks = raw.reshape(-1, 18)
    d = blocks[:, :2].copy().view(np.dtype(endian + "f2")).astype(np.float32)
    qs = blocks[:, 2:]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.int8) - 8
    return (d * q.astype(np.float32)).reshape(-1)


class GGUFFormat(Format):
    name = "gguf"
    description = "GGUF (llama.cpp), read-only; Q8_0/Q4_0 dequantized"
    read_options: ClassVar[Mapping[str, str]] = {}
    write_options: ClassVar[Mapping[str, str]] = {}

    @classmethod
    def sniff(cls, path: Path, head: bytes) -> bool:
        return head[:4] == MAGIC

    @classmethod
    def open(cls, path: str | os.PathLike[str], **options: Any) -> GGUFReader:
        return GGUFReader(path)
