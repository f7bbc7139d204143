"""Go ``encoding/gob`` streams of gorgonia ``*tensor.Dense`` values (e.g. ToadOCR's ``snn_weights``).

What such a file is
-------------------
A gob stream is a sequence of messages ``uint(length) body``. A body is either a *type definition*
``int(-id) wireType`` or a *value* ``int(id) value``. Programs like ToadOCR call
``enc.Encode(dense)`` once per tensor and then encode plain Go values (the training epoch). A
``*tensor.Dense`` is a ``GobEncoder``: its value is a byte string holding a complete, independent
inner gob stream with, in order, ``Shape`` (named ``[]int``), strides (``[]int``), the data order
flags (uint), the triangle kind (uint), the mask (``[]bool``) and the data as an ``interface{}``
(``"[]float64"``, ``"[]float32"``, ``"[]int"``, ...; the backing slice in *memory* order).

Design
------
* Reading is two-level and lazy: :meth:`GobFormat.open` walks the outer stream once (values that
  are not Dense become ``metadata["trailing"]``), and parses each Dense header (shape, strides,
  flags, mask, data type) without decoding its elements. :meth:`GobReader.get` decodes one tensor.
* The decoder mirrors Go's ``Decoder.decodeTypeSequence``: a message buffer that is refilled when
  empty, because Go splits an interface value across two messages when it has to define the
  concrete type first. Type ids are never hard-coded: they are process-global in the writing
  program, so every stream carries its own table, keyed by the id of the definition message.
* Element decoding is vectorised with numpy: gob's variable-length uints (one byte < 128, else a
  byte ``-n`` and ``n`` big-endian bytes) are located by a scan (skipped when the value's byte
  count proves every element has the same width) and then assembled eight bytes at a time.
* Every length and count is checked against the bytes that remain in its message before anything
  is allocated; the file has no magic or checksum, so a damaged stream raises
  :class:`~weightvault.errors.InvalidHeaderError` / :class:`~weightvault.errors.TruncatedFileError`.
* Writing reproduces what a fresh Go process running gorgonia would write, byte for byte: type ids
  are assigned in first-use order from 65 across the outer and the inner encoders (ids are
  process-global in Go), definitions are sent once per encoder, and floats/ints use gob's encodings.

Names, trailing values and layout facts (see ``docs/formats/gob.md``)
----------------------------------------------------------------------
gob carries no tensor names. Readers name tensors ``tensor_0, tensor_1, ...`` unless the ``names``
option is given (``names=["hidden", "final"]`` or ``"hidden,final"``) or the stream ends with a
``WeightVaultNames{Names []string}`` struct value (written by us when the names are not the
default ones; Go programs that decode a fixed number of values never read it). ``metadata``:
``trailing`` (JSON-able values), ``trailing_types`` (their Go types), ``go_types`` (per tensor
Go type of the data, e.g. ``"[]int"``), ``column_major`` (tensors whose data order is ColMajor),
``triangle`` (non-zero Triangle kinds) and ``masks`` (tensor -> name of its mask tensor). The
writer reads the same keys back, so ``convert`` gob -> native -> gob keeps all of them.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from weightvault.abc.format import Format, FormatReader, TensorInfo
from weightvault.core.io import atomic_write, close_mmap
from weightvault.core.jsonable import NOT_SPECIAL, jsonable
from weightvault.errors import (
    DuplicateTensorError,
    InvalidHeaderError,
    TruncatedFileError,
    UnknownDtypeError,
    UnsupportedOperationError,
)
from weightvault.formats._common import describe_entry, fetch_array

__all__ = ["GobFormat", "GobReader"]

# Predefined gob type ids (encoding/gob type.go).
T_BOOL, T_INT, T_UINT, T_FLOAT, T_BYTES, T_STRING, T_COMPLEX, T_INTERFACE = range(1, 9)
FIRST_USER_ID = 65  # the first id a fresh Go process hands out
_BASIC_NAMES = {
    T_BOOL: "bool", T_INT: "int", T_UINT: "uint", T_FLOAT: "float64",
    T_BYTES: "[]byte", T_STRING: "string", T_COMPLEX: "complex128", T_INTERFACE: "interface{}",
}  # fmt: skip
MAX_DEPTH = 64
NAMES_STRUCT = "WeightVaultNames"
COL_MAJOR = 1  # tensor.DataOrder bit 0
MASK_MODES = ("tensor", "drop", "nan", "error")

# Go element type of a data slice -> (numpy dtype, gob wire kind of one element).
_GO_DATA: dict[str, tuple[str, str]] = {
    "float64": ("float64", "float"), "float32": ("float32", "float"),
    "int": ("int64", "int"), "int64": ("int64", "int"), "int32": ("int32", "int"),
    "int16": ("int16", "int"), "int8": ("int8", "int"),
    "uint": ("uint64", "uint"), "uint64": ("uint64", "uint"), "uint32": ("uint32", "uint"),
    "uint16": ("uint16", "uint"), "uint8": ("uint8", "bytes"), "uintptr": ("uint64", "uint"),
    "bool": ("bool", "bool"), "complex128": ("complex128", "complex"), "complex64": ("complex64", "complex"),
}  # fmt: skip
# numpy dtype -> Go element type we write by default (gorgonia code mostly uses Go's int).
_DEFAULT_GO = {
    "float64": "float64", "float32": "float32", "int64": "int", "int32": "int32", "int16": "int16",
    "int8": "int8", "uint64": "uint64", "uint32": "uint32", "uint16": "uint16", "uint8": "uint8",
    "bool": "bool", "complex128": "complex128", "complex64": "complex64",
}  # fmt: skip
_KIND_ID = {"float": T_FLOAT, "int": T_INT, "uint": T_UINT, "bool": T_BOOL, "complex": T_COMPLEX}


# ------------------------------------------------------------------------------------------------
# primitives
def gob_uint(x: int) -> bytes:
    if x < 0x80:
        return bytes([x])
    b = x.to_bytes((x.bit_length() + 7) // 8, "big")
    return bytes([256 - len(b)]) + b


def gob_int(i: int) -> bytes:
    return gob_uint((~i << 1) | 1 if i < 0 else i << 1)


def gob_float(f: float) -> bytes:
    return gob_uint(int.from_bytes(struct.pack("<d", f), "big"))


def gob_string(s: str | bytes) -> bytes:
    raw = s.encode("utf-8") if isinstance(s, str) else bytes(s)
    return gob_uint(len(raw)) + raw


def _unzigzag(u: int) -> int:
    return ~(u >> 1) if u & 1 else u >> 1


@dataclass
class WireType:
    """A decoded ``wireType``: exactly one of the kinds is set in the stream."""

    kind: str  # "array" | "slice" | "struct" | "map" | "gobencoder" | "binary" | "text"
    name: str = ""
    elem: int = 0
    length: int = 0
    key: int = 0
    fields: list[tuple[str, int]] = field(default_factory=list)


class _Decoder:
    """Go's ``Decoder`` over an in-memory stream: messages, a refillable buffer, a type table."""

    def __init__(self, data: bytes | memoryview, *, path: str, tensor: str | None = None, inner: bool = False) -> None:
        self.data = data
        self.pos = 0
        self.end = 0  # end of the current message
        self.types: dict[int, WireType] = {}
        self.path = path
        self.tensor = tensor
        self.inner = inner

    # -- errors ------------------------------------------------------------------------------------
    def corrupt(self, what: str) -> InvalidHeaderError:
        where = "inner Dense stream" if self.inner else "gob stream"
        return InvalidHeaderError(f"{where}: {what} (at byte {self.pos})", path=self.path, tensor=self.tensor)

    # -- messages ------------------------------------------------------------------------------------
    def at_eof(self) -> bool:
        return self.pos >= self.end and self.pos >= len(self.data)

    def recv_message(self) -> bool:
        if self.pos >= len(self.data):
            return False
        self.end = len(self.data)  # let the length prefix be read
        n = self.uint()
        if n > len(self.data) - self.pos:
            msg = f"a message claims {n} bytes but only {len(self.data) - self.pos} remain"
            if self.inner:
                raise self.corrupt(msg)
            raise TruncatedFileError(f"gob stream ends early: {msg}", path=self.path, tensor=self.tensor)
        self.end = self.pos + n
        return True

    def remaining(self) -> int:
        return self.end - self.pos

    def need(self, n: int, what: str) -> None:
        if n < 0 or n > self.end - self.pos:
            raise self.corrupt(f"{what} needs {n} bytes but the message has {self.end - self.pos} left")

    def byte(self) -> int:
        self.need(1, "a byte")
        b = self.data[self.pos]
        self.pos += 1
        return b

    def uint(self) -> int:
        c = self.byte()
        if c < 0x80:
            return c
        n = 256 - c
        if n > 8:
            raise self.corrupt(f"unsigned integer prefix byte {c:#x} is out of range")
        self.need(n, "an unsigned integer")
        v = int.from_bytes(self.data[self.pos : self.pos + n], "big")
        self.pos += n
        return v

    def int(self) -> int:
        return _unzigzag(self.uint())

    def float(self) -> float:
        return struct.unpack("<d", self.uint().to_bytes(8, "big"))[0]

    def raw(self, n: int, what: str) -> bytes:
        self.need(n, what)
        b = bytes(self.data[self.pos : self.pos + n])
        self.pos += n
        return b

    def string(self) -> str:
        n = self.uint()
        try:
            return self.raw(n, "a string").decode("utf-8")
        except UnicodeDecodeError:
            raise self.corrupt("a string is not valid UTF-8") from None

    # -- type definitions -----------------------------------------------------------------------------
    def type_sequence(self, is_interface: bool = False) -> int | None:
        """Read type definitions until a value's type id; None at a clean end of stream."""
        while True:
            if self.pos >= self.end and not self.recv_message():
                if is_interface:
                    raise TruncatedFileError("gob stream ends inside an interface value", path=self.path, tensor=self.tensor)
                return None
            tid = self.int()
            if tid >= 0:
                return tid
            self.recv_type(-tid)
            if self.pos < self.end:
                if not is_interface:
                    raise self.corrupt("extra data after a type definition")
                self.uint()  # Go: "a DelimitedValue may still be in the buffer; skip its count"

    def recv_type(self, tid: int) -> None:
        if tid < FIRST_USER_ID - 1 or tid > 1 << 31:
            raise self.corrupt(f"type definition for reserved or impossible id {tid}")
        if tid in self.types:
            raise self.corrupt(f"type id {tid} defined twice")
        self.types[tid] = self._wire_type()

    def _fields(self, readers: dict[int, Any]) -> None:
        """Read a struct whose fields are handled by ``readers[field_number]``."""
        fnum = -1
        while True:
            delta = self.uint()
            if delta == 0:
                return
            fnum += delta
            if fnum not in readers:
                raise self.corrupt(f"unknown field {fnum} in a type definition")
            readers[fnum]()

    def _common(self, wt: WireType) -> None:
        def name() -> None:
            wt.name = self.string()

        self._fields({0: name, 1: self.int})

    def _wire_type(self) -> WireType:
        wt = WireType("")
        kinds = {0: "array", 1: "slice", 2: "struct", 3: "map", 4: "gobencoder", 5: "binary", 6: "text"}

        def set_int(attr: str) -> Any:
            def read() -> None:
                setattr(wt, attr, self.int())

            return read

        def field_type() -> None:
            entry = {"name": "", "id": 0}

            def fname() -> None:
                entry["name"] = self.string()

            def fid() -> None:
                entry["id"] = self.int()

            self._fields({0: fname, 1: fid})
            wt.fields.append((str(entry["name"]), int(entry["id"])))

        def field_list() -> None:
            count = self.uint()
            self.need(count, "the field list of a struct type")
            for _ in range(count):
                field_type()

        readers_by_kind = {
            "array": {0: lambda: self._common(wt), 1: set_int("elem"), 2: set_int("length")},
            "slice": {0: lambda: self._common(wt), 1: set_int("elem")},
            "struct": {0: lambda: self._common(wt), 1: field_list},
            "map": {0: lambda: self._common(wt), 1: set_int("key"), 2: set_int("elem")},
        }

        def kind_reader(k: str) -> Any:
            def read() -> None:
                if wt.kind:
                    raise self.corrupt("a wireType sets more than one kind")
                wt.kind = k
                self._fields(readers_by_kind.get(k, {0: lambda: self._common(wt)}))

            return read

        self._fields({n: kind_reader(k) for n, k in kinds.items()})
        if not wt.kind:
            raise self.corrupt("empty type definition")
        return wt

    def type_of(self, tid: int) -> WireType | int:
        if T_BOOL <= tid <= T_INTERFACE:
            return tid
        if tid not in self.types:
            raise self.corrupt(f"value of undefined type id {tid}")
        return self.types[tid]

    def type_name(self, tid: int, depth: int = 0) -> str:
        if depth > MAX_DEPTH:
            raise self.corrupt("type definitions nest too deeply")
        t = self.type_of(tid)
        if isinstance(t, int):
            return _BASIC_NAMES[t]
        if t.name:
            return t.name
        if t.kind == "slice":
            return "[]" + self.type_name(t.elem, depth + 1)
        if t.kind == "array":
            return f"[{t.length}]" + self.type_name(t.elem, depth + 1)
        if t.kind == "map":
            return f"map[{self.type_name(t.key, depth + 1)}]{self.type_name(t.elem, depth + 1)}"
        return t.kind

    # -- values ------------------------------------------------------------------------------------------
    def top_value(self, tid: int, depth: int = 0) -> Any:
        """Decode one top-level value of type ``tid`` (non-structs are "singletons": ``00`` first).
        ``depth``: how deep this value sits inside interface values (each starts a new top level)."""
        t = self.type_of(tid)
        if not (isinstance(t, WireType) and t.kind == "struct"):
            if self.uint() != 0:
                raise self.corrupt("non-zero field delta before a singleton value")
        return self.value(tid, depth)

    def value(self, tid: int, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise self.corrupt("values nest too deeply")
        t = self.type_of(tid)
        if isinstance(t, int):
            return self._basic(t, depth)
        if t.kind in ("gobencoder", "binary", "text"):
            n = self.uint()
            self.need(n, "a GobEncoder value")
            view = memoryview(self.data)[self.pos : self.pos + n]
            self.pos += n
            return GobEncoded(view)
        if t.kind in ("slice", "array"):
            count = self.uint()
            if t.kind == "array" and count != t.length:
                raise self.corrupt(f"array of length {t.length} holds {count} elements")
            self.need(count, f"a slice of {count} elements")  # every element takes >= 1 byte
            return [self.value(t.elem, depth + 1) for _ in range(count)]
        if t.kind == "map":
            count = self.uint()
            self.need(2 * count, f"a map of {count} entries")
            out = {}
            for _ in range(count):
                k = self.value(t.key, depth + 1)
                out[k if isinstance(k, (str, int, float, bool)) else repr(k)] = self.value(t.elem, depth + 1)
            return out
        # struct
        result: dict[str, Any] = {}
        fnum = -1
        while True:
            delta = self.uint()
            if delta == 0:
                return GoStruct(t.name, result)
            fnum += delta
            if fnum >= len(t.fields):
                raise self.corrupt(f"field {fnum} of struct {t.name or '?'} does not exist")
            fname, ftid = t.fields[fnum]
            result[fname] = self.value(ftid, depth + 1)

    def _basic(self, t: int, depth: int) -> Any:
        if t == T_BOOL:
            v = self.uint()
            if v > 1:
                raise self.corrupt(f"bool value {v}")
            return bool(v)
        if t == T_INT:
            return self.int()
        if t == T_UINT:
            return self.uint()
        if t == T_FLOAT:
            return self.float()
        if t == T_BYTES:
            return self.raw(self.uint(), "a byte slice")
        if t == T_STRING:
            return self.string()
        if t == T_COMPLEX:
            return complex(self.float(), self.float())
        return self.interface(depth)

    def interface(self, depth: int) -> Any:
        name_len = self.uint()
        if name_len == 0:
            return None
        name = self.raw(name_len, "an interface type name").decode("utf-8", "replace")
        tid = self.type_sequence(is_interface=True)
        assert tid is not None
        count = self.uint()
        self.need(count, "an interface value")
        return GoInterface(name, tid, self.top_value(tid, depth + 1))


@dataclass
class GobEncoded:
    """The bytes of a GobEncoder / BinaryMarshaler / TextMarshaler value."""

    data: memoryview


@dataclass
class GoStruct:
    name: str
    fields: dict[str, Any]


@dataclass
class GoInterface:
    name: str
    tid: int
    value: Any


# ------------------------------------------------------------------------------------------------
# vectorised element decoding
def _scan_uints(buf: bytes | memoryview, start: int, count: int, end: int) -> tuple[np.ndarray, np.ndarray]:
    """Start offsets and payload widths (0 = one-byte value) of ``count`` gob uints."""
    width = end - start
    if count and width == count:
        return np.arange(start, end, dtype=np.int64), np.zeros(count, np.int64)
    if count and width == 9 * count:
        return np.arange(start, end, 9, dtype=np.int64), np.full(count, 8, np.int64)
    starts = np.empty(count, np.int64)
    widths = np.empty(count, np.int64)
    b = bytes(buf[start:end]) if isinstance(buf, memoryview) else buf[start:end]
    p = 0
    n = len(b)
    for i in range(count):
        if p >= n:
            raise ValueError("element list runs past its value")
        c = b[p]
        starts[i] = p
        if c < 0x80:
            widths[i] = 0
            p += 1
        else:
            w = 256 - c
            widths[i] = w
            p += 1 + w
    if p > n:
        raise ValueError("element list runs past its value")
    return starts + start, widths


def _assemble_uints(a: np.ndarray, starts: np.ndarray, widths: np.ndarray) -> np.ndarray:
    if np.any(widths > 8):
        raise ValueError("unsigned integer prefix byte out of range")
    out = np.where(widths == 0, a[starts], 0).astype(np.uint64)
    for k in range(8):
        m = widths > k
        if not m.any():
            break
        out[m] = (out[m] << np.uint64(8)) | a[starts[m] + 1 + k].astype(np.uint64)
    return out


def _uints_to(kind: str, u: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if kind == "float":
        f = u.byteswap().view(np.float64)
        if dtype == np.float64:
            return f
        out = f.astype(dtype)
        if np.any(np.isfinite(f) & ~np.isfinite(out)):
            raise ValueError("a float value overflows float32")
        return out
    if kind == "int":
        i = (u >> np.uint64(1)).view(np.int64)
        i = np.where((u & np.uint64(1)).astype(bool), ~i, i)
        return _narrow(i, dtype)
    if kind == "uint":
        return _narrow(u, dtype)
    if kind == "bool":
        if np.any(u > 1):
            raise ValueError("bool element other than 0 or 1")
        return u.astype(bool)
    raise AssertionError(kind)


def _narrow(v: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if v.dtype == dtype:
        return v
    info = np.iinfo(dtype)
    if v.size and (v.min() < info.min or v.max() > info.max):
        raise ValueError(f"an element does not fit {dtype}")
    return v.astype(dtype)


# ------------------------------------------------------------------------------------------------
# Dense headers
@dataclass
class DenseHeader:
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    order: int
    triangle: int
    go_type: str  # "[]float64", "float64" (scalar), ...
    dtype: str
    mask: np.ndarray | None
    data_tid: int
    data_kind: str  # element wire kind
    count: int  # elements in the data slice (1 for a scalar)
    data_start: int  # offset of the first element in the inner stream
    data_end: int
    scalar: bool
    inner: memoryview
    offset: int  # where the inner stream starts in the file

    def view_of(self, flat: np.ndarray, *, path: str, tensor: str) -> np.ndarray:
        """The logical tensor from the backing slice, honouring strides and data order."""
        shape = self.shape
        numel = math.prod(shape)
        if self.scalar or not shape:
            if flat.size < 1:
                raise InvalidHeaderError("scalar Dense without data", path=path, tensor=tensor)
            return flat[:1].reshape(())
        strides = self.strides
        if len(strides) != len(shape):
            order = "F" if self.order & COL_MAJOR else "C"
            if flat.size != numel:
                raise InvalidHeaderError(
                    f"shape {list(shape)} needs {numel} elements, data holds {flat.size}", path=path, tensor=tensor
                )
            return flat.reshape(shape, order=order)
        if numel == 0:
            return np.zeros(shape, flat.dtype)
        if any(s < 0 for s in strides):
            raise UnsupportedOperationError(f"negative strides {list(strides)}", path=path, tensor=tensor)
        last = sum((d - 1) * s for d, s in zip(shape, strides))
        if last >= flat.size:
            raise InvalidHeaderError(
                f"shape {list(shape)} with strides {list(strides)} reaches element {last} "
                f"but the data holds {flat.size}",
                path=path,
                tensor=tensor,
            )
        item = flat.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(flat, shape, tuple(s * item for s in strides), writeable=False)
        return np.ascontiguousarray(view)


def _parse_dense(inner: memoryview, offset: int, *, path: str, tensor: str) -> DenseHeader:
    dec = _Decoder(inner, path=path, tensor=tensor, inner=True)
    ints: list[list[int]] = []
    uints: list[int] = []
    mask: list[bool] | None = None
    while True:
        tid = dec.type_sequence()
        if tid is None:
            raise dec.corrupt("the Dense stream ends before its data")
        if tid == T_INTERFACE:
            break
        t = dec.type_of(tid)
        val = dec.top_value(tid)
        if isinstance(t, WireType) and t.kind == "slice" and t.elem == T_INT and len(ints) < 2:
            ints.append(val)
        elif t == T_UINT and len(uints) < 2 and len(ints) == 2:
            uints.append(val)
        elif isinstance(t, WireType) and t.kind == "slice" and t.elem == T_BOOL and len(ints) == 2:
            mask = val
        else:
            raise dec.corrupt(f"not a gorgonia Dense: unexpected {dec.type_name(tid)} value")
    if len(ints) != 2:
        raise dec.corrupt("not a gorgonia Dense: shape and strides missing")
    if dec.uint() != 0:
        raise dec.corrupt("non-zero delta before the data interface")
    name_len = dec.uint()
    if name_len == 0:
        raise UnsupportedOperationError("Dense without data (nil interface)", path=path, tensor=tensor)
    go_type = dec.raw(name_len, "the data type name").decode("utf-8", "replace")
    tid = dec.type_sequence(is_interface=True)
    assert tid is not None
    nbytes = dec.uint()
    dec.need(nbytes, "the Dense data")
    value_end = dec.pos + nbytes
    if dec.uint() != 0:
        raise dec.corrupt("non-zero delta before the data value")
    scalar = not go_type.startswith("[]")
    elem = go_type[2:] if not scalar else go_type
    if elem not in _GO_DATA:
        raise UnknownDtypeError(f"Dense data of Go type {go_type!r} is not supported", path=path, tensor=tensor)
    dtype, kind = _GO_DATA[elem]
    t = dec.type_of(tid)
    if scalar:
        expected_ok = t == _KIND_ID.get(kind, -1)
        count = 2 if kind == "complex" else 1
        data_start = dec.pos
        if kind == "bytes":
            expected_ok = t == T_UINT
    elif kind == "bytes":
        expected_ok = t == T_BYTES
        count = dec.uint()
        data_start = dec.pos
        if count != value_end - data_start:
            raise dec.corrupt(f"[]uint8 data of {count} bytes in a value of {value_end - data_start}")
    else:
        expected_ok = isinstance(t, WireType) and t.kind == "slice" and t.elem == _KIND_ID[kind]
        count = dec.uint()
        data_start = dec.pos
        per = 2 if kind == "complex" else 1
        if count * per > value_end - data_start:
            raise dec.corrupt(f"{count} elements cannot fit in {value_end - data_start} bytes")
        count *= per
    if not expected_ok:
        raise dec.corrupt(f"data named {go_type!r} is sent as {dec.type_name(tid)}")
    shape = tuple(ints[0])
    if any(d < 0 for d in shape):
        raise dec.corrupt(f"negative dimension in shape {list(shape)}")
    mask_arr = np.asarray(mask, dtype=bool) if mask else None
    return DenseHeader(
        shape=shape,
        strides=tuple(ints[1]),
        order=uints[0] if uints else 0,
        triangle=uints[1] if len(uints) > 1 else 0,
        go_type=go_type,
        dtype=dtype,
        mask=mask_arr,
        data_tid=tid,
        data_kind=kind,
        count=count,
        data_start=data_start,
        data_end=value_end,
        scalar=scalar,
        inner=inner,
        offset=offset,
    )


def _decode_elements(h: DenseHeader, *, path: str, tensor: str) -> np.ndarray:
    dtype = np.dtype(h.dtype)
    if h.data_kind == "bytes" and not h.scalar:
        return np.frombuffer(h.inner, np.uint8, count=h.count, offset=h.data_start).copy()
    try:
        starts, widths = _scan_uints(h.inner, h.data_start, h.count, h.data_end)
        a = np.frombuffer(h.inner, np.uint8)
        if starts.size and starts[-1] + widths[-1] >= h.data_end:
            raise ValueError("element list runs past its value")
        u = _assemble_uints(a, starts, widths)
        if h.data_kind == "complex":
            f = _uints_to("float", u, np.dtype(np.float64))
            c = f[0::2] + 1j * f[1::2]
            return c.astype(dtype)
        kind = "uint" if h.data_kind == "bytes" else h.data_kind
        return _uints_to(kind, u, dtype)
    except ValueError as exc:
        raise InvalidHeaderError(f"Dense data is corrupt: {exc}", path=path, tensor=tensor) from None


# ------------------------------------------------------------------------------------------------
# trailing values <-> JSON
def _jsonable(value: Any) -> Any:
    return jsonable(value, _go_value)


def _go_value(value: Any) -> Any:
    """Go values as JSON: structs as objects, interfaces as {type, value}, bytes as hex."""
    if isinstance(value, GoStruct):
        return _jsonable(value.fields)
    if isinstance(value, GoInterface):
        return {"type": value.name, "value": _jsonable(value.value)}
    if isinstance(value, GobEncoded):
        return bytes(value.data).hex()
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, complex):
        return [value.real, value.imag]
    return NOT_SPECIAL


def _split_names(names: Any) -> list[str] | None:
    if names is None:
        return None
    if isinstance(names, str):
        return [n.strip() for n in names.split(",") if n.strip()]
    return [str(n) for n in names]


# ------------------------------------------------------------------------------------------------
class GobReader(FormatReader):
    format_name = "gob"

    def __init__(self, path: str | os.PathLike[str], *, names: Any = None, mask: str = "tensor") -> None:
        super().__init__(path)
        if mask not in MASK_MODES:
            raise UnsupportedOperationError(f"mask option must be one of {', '.join(MASK_MODES)}", path=path)
        self._mask_mode = mask
        self._file = open(self.path, "rb")  # noqa: SIM115 - closed in close()
        try:
            size = os.fstat(self._file.fileno()).st_size
            if size == 0:
                raise TruncatedFileError("empty file", path=self.path)
            self._map: Any = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
            self._headers: list[DenseHeader] = []
            self._trailing: list[Any] = []
            self._trailing_types: list[str] = []
            self._embedded_names: list[str] | None = None
            self._scan()
            self._assign_names(_split_names(names))
        except BaseException:
            self.close()
            raise

    def _scan(self) -> None:
        dec = _Decoder(memoryview(self._map), path=self.path)
        index = 0
        while True:
            tid = dec.type_sequence()
            if tid is None:
                break
            t = dec.type_of(tid)
            value = dec.top_value(tid)
            if isinstance(value, GobEncoded) and isinstance(t, WireType) and t.kind == "gobencoder":
                offset = dec.pos - len(value.data)
                self._headers.append(_parse_dense(value.data, offset, path=self.path, tensor=f"tensor_{index}"))
                index += 1
                continue
            if (
                isinstance(value, GoStruct)
                and value.name == NAMES_STRUCT
                and isinstance(value.fields.get("Names"), list)
            ):
                self._embedded_names = [str(n) for n in value.fields["Names"]]
                continue
            self._trailing.append(value)
            self._trailing_types.append(dec.type_name(tid))
        if not self._headers and not self._trailing:
            raise InvalidHeaderError("gob stream holds no values", path=self.path)

    def _assign_names(self, names: list[str] | None) -> None:
        n = len(self._headers)
        self._names_source = "default"
        if names is None and self._embedded_names is not None and len(self._embedded_names) == n:
            names, self._names_source = self._embedded_names, "embedded"
        elif names is not None:
            self._names_source = "option"
            if len(names) != n:
                raise UnsupportedOperationError(
                    f"names gives {len(names)} names but the stream holds {n} tensors", path=self.path
                )
        names = names if names is not None else [f"tensor_{i}" for i in range(n)]
        if len(set(names)) != len(names):
            raise DuplicateTensorError("tensor names repeat", path=self.path)
        self._names = names
        self._by_name = dict(zip(names, self._headers))
        self._mask_of: dict[str, str] = {}
        keys: list[str] = []
        for name, h in self._by_name.items():
            keys.append(name)
            if h.mask is None:
                continue
            if self._mask_mode == "error":
                raise UnsupportedOperationError(
                    "masked Dense", path=self.path, tensor=name, hint="open with mask='tensor', 'drop' or 'nan'"
                )
            if self._mask_mode == "nan" and np.dtype(h.dtype).kind not in "fc":
                raise UnsupportedOperationError(
                    "mask='nan' needs float data", path=self.path, tensor=name
                )
            if self._mask_mode == "tensor":
                mname = f"{name}.mask"
                if mname in self._by_name:
                    raise DuplicateTensorError(f"mask tensor name {mname!r} is taken", path=self.path)
                self._mask_of[mname] = name
                keys.append(mname)
        self._keys = keys

    # -- FormatReader -----------------------------------------------------------------------------
    def keys(self) -> list[str]:
        return list(self._keys)

    def info(self, name: str) -> TensorInfo:
        self._require(name)
        if name in self._mask_of:
            h = self._by_name[self._mask_of[name]]
            return TensorInfo(name, "bool", h.shape, {"mask_of": self._mask_of[name]})
        h = self._by_name[name]
        extra = {"go_type": h.go_type, "strides": list(h.strides), "data_order": h.order, "offset": h.offset}
        if h.triangle:
            extra["triangle"] = h.triangle
        return TensorInfo(name, h.dtype, h.shape if not h.scalar else (), extra)

    def get(self, name: str) -> np.ndarray:
        self._require(name)
        if name in self._mask_of:
            h = self._by_name[self._mask_of[name]]
            assert h.mask is not None
            return h.view_of(h.mask, path=self.path, tensor=name)
        h = self._by_name[name]
        flat = _decode_elements(h, path=self.path, tensor=name)
        if h.mask is not None and h.mask.size != flat.size:
            raise InvalidHeaderError(
                f"mask has {h.mask.size} entries but the data {flat.size}", path=self.path, tensor=name
            )
        arr = h.view_of(flat, path=self.path, tensor=name)
        if h.mask is not None and self._mask_mode == "nan":
            arr = np.where(h.view_of(h.mask, path=self.path, tensor=name), np.nan, arr).astype(arr.dtype)
        return arr

    @property
    def metadata(self) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "trailing": [_jsonable(v) for v in self._trailing],
            "trailing_types": list(self._trailing_types),
            "go_types": {n: h.go_type for n, h in self._by_name.items()},
            "names": self._names_source,
        }
        col = [n for n, h in self._by_name.items() if h.order & COL_MAJOR]
        if col:
            meta["column_major"] = col
        tri = {n: h.triangle for n, h in self._by_name.items() if h.triangle}
        if tri:
            meta["triangle"] = tri
        if self._mask_of:
            meta["masks"] = {t: m for m, t in self._mask_of.items()}
        dropped = [n for n, h in self._by_name.items() if h.mask is not None and self._mask_mode == "drop"]
        if dropped:
            meta["masks_dropped"] = dropped
        return meta

    def close(self) -> None:
        m = getattr(self, "_map", None)
        if m is not None:
            self._headers = []
            self._by_name = {}
            close_mmap(m)
            self._map = None
        f = getattr(self, "_file", None)
        if f is not None:
            f.close()
            self._file = None


# ------------------------------------------------------------------------------------------------
# writing
@dataclass(frozen=True)
class GoType:
    """A Go type as gob sees it: enough to assign ids and send definitions like Go does."""

    key: str  # Go spelling, unique per Go type ("[]int", "Shape", "WeightVaultNames")
    kind: str  # "basic" | "slice" | "struct"
    basic: int = 0
    elem: GoType | None = None
    wire_name: str = ""  # CommonType.Name ("" for unnamed types)
    fields: tuple[tuple[str, GoType], ...] = ()


_BASICS = {
    "bool": T_BOOL, "int": T_INT, "int64": T_INT, "int32": T_INT, "int16": T_INT, "int8": T_INT,
    "uint": T_UINT, "uint64": T_UINT, "uint32": T_UINT, "uint16": T_UINT, "uintptr": T_UINT,
    "float64": T_FLOAT, "float32": T_FLOAT, "[]byte": T_BYTES, "[]uint8": T_BYTES, "string": T_STRING,
    "complex128": T_COMPLEX, "complex64": T_COMPLEX, "uint8": T_UINT,
}  # fmt: skip


def go_type(spelling: str) -> GoType:
    if spelling in _BASICS:
        return GoType(spelling, "basic", _BASICS[spelling])
    if spelling.startswith("[]"):
        return GoType(spelling, "slice", elem=go_type(spelling[2:]))
    raise UnsupportedOperationError(f"writing Go values of type {spelling!r} is not supported")


SHAPE_T = GoType("Shape", "slice", elem=go_type("int"), wire_name="Shape")
NAMES_T = GoType(NAMES_STRUCT, "struct", wire_name=NAMES_STRUCT, fields=(("Names", go_type("[]string")),))


class _Ids:
    """Go's process-global type ids, handed out in first-use order."""

    def __init__(self) -> None:
        self.next = FIRST_USER_ID
        self.ids: dict[str, int] = {}

    def take(self, key: str) -> int:
        if key not in self.ids:
            self.ids[key] = self.next
            self.next += 1
        return self.ids[key]

    def of(self, t: GoType) -> int:
        if t.kind == "basic":
            return t.basic
        new = t.key not in self.ids
        tid = self.take(t.key)
        if new:  # Go registers a composite type before its parts
            for child in _children(t):
                self.of(child)
        return tid


def _children(t: GoType) -> list[GoType]:
    if t.kind == "slice" and t.elem is not None:
        return [t.elem]
    return [f for _, f in t.fields]


def _common_type(name: str, tid: int) -> bytes:
    out = bytearray()
    last = -1
    if name:
        out += gob_uint(0 - last) + gob_string(name)
        last = 0
    out += gob_uint(1 - last) + gob_int(tid) + b"\x00"
    return bytes(out)


def _wire_bytes(t: GoType, ids: _Ids) -> bytes:
    tid = ids.of(t)
    common = _common_type(t.wire_name, tid)
    if t.kind == "slice":
        assert t.elem is not None
        return b"\x02\x01" + common + b"\x01" + gob_int(ids.of(t.elem)) + b"\x00\x00"
    body = bytearray(b"\x03\x01" + common)
    if t.fields:
        body += b"\x01" + gob_uint(len(t.fields))
        for fname, ftype in t.fields:
            body += b"\x01" + gob_string(fname) + b"\x01" + gob_int(ids.of(ftype)) + b"\x00"
    return bytes(body + b"\x00\x00")


def _message(body: bytes | bytearray) -> bytes:
    return gob_uint(len(body)) + bytes(body)


class _Encoder:
    """One Go ``gob.Encoder``: its own set of sent definitions, the shared process id table."""

    def __init__(self, ids: _Ids) -> None:
        self.ids = ids
        self.sent: set[str] = set()
        self.out = bytearray()

    def typedefs(self, t: GoType, prefix: bytes = b"") -> bytes:
        """Definition messages for ``t`` not yet sent; ``prefix`` is glued into the first one."""
        if t.kind == "basic" or t.key in self.sent:
            return b""
        tid = self.ids.of(t)
        self.sent.add(t.key)
        out = _message(prefix + gob_int(-tid) + _wire_bytes(t, self.ids))
        for child in _children(t):
            out += self.typedefs(child)
        return out

    def encode(self, t: GoType, value_bytes: bytes) -> None:
        self.out += self.typedefs(t)
        singleton = b"" if t.kind == "struct" else b"\x00"
        self.out += _message(gob_int(self.ids.of(t)) + singleton + value_bytes)


def _encode_uints(u: np.ndarray) -> bytes:
    """gob uints, vectorised: one byte below 128, else ``-n`` and ``n`` big-endian bytes."""
    u = np.ascontiguousarray(u, dtype=np.uint64)
    if u.size == 0:
        return b""
    nbytes = np.ones(u.size, np.int64)
    for k in range(1, 8):
        nbytes += u >= np.uint64(1 << (8 * k))
    small = u < np.uint64(0x80)
    enc_len = np.where(small, 1, 1 + nbytes)
    ends = np.cumsum(enc_len)
    starts = ends - enc_len
    out = np.zeros(int(ends[-1]), np.uint8)
    out[starts[small]] = u[small].astype(np.uint8)
    big = ~small
    bs, bn, bu = starts[big], nbytes[big], u[big]
    out[bs] = (256 - bn).astype(np.uint8)
    for j in range(8):
        m = bn > j
        if not m.any():
            break
        shift = ((bn[m] - 1 - j) * 8).astype(np.uint64)
        out[bs[m] + 1 + j] = ((bu[m] >> shift) & np.uint64(0xFF)).astype(np.uint8)
    return out.tobytes()


def _element_uints(arr: np.ndarray, kind: str) -> np.ndarray:
    flat = arr.reshape(-1)
    if kind == "float":
        return flat.astype("<f8").view(np.uint64).byteswap()
    if kind == "complex":
        pairs = np.empty(flat.size * 2, np.float64)
        pairs[0::2], pairs[1::2] = flat.real, flat.imag
        return pairs.view(np.uint64).byteswap()
    if kind == "int":
        i = flat.astype(np.int64)
        return np.where(i < 0, (~i << 1) | 1, i << 1).view(np.uint64)
    if kind == "bool":
        return flat.astype(np.uint64)
    return flat.astype(np.uint64)


def _encode_value(t: GoType, v: Any, *, what: str) -> bytes:
    """A plain Go value (trailing values), as gob sends it after the type id."""
    try:
        if t.kind == "basic":
            b = t.basic
            if b == T_BOOL:
                return gob_uint(1 if v else 0)
            if b == T_INT:
                return gob_int(int(v))
            if b == T_UINT:
                if int(v) < 0:
                    raise ValueError("negative uint")
                return gob_uint(int(v))
            if b == T_FLOAT:
                return gob_float(float(v))
            if b == T_BYTES:
                raw = bytes.fromhex(v) if isinstance(v, str) else bytes(v)
                return gob_uint(len(raw)) + raw
            if b == T_STRING:
                return gob_string(str(v))
            if b == T_COMPLEX:
                re, im = (v.real, v.imag) if isinstance(v, complex) else v
                return gob_float(float(re)) + gob_float(float(im))
        if t.kind == "slice":
            assert t.elem is not None
            items = list(v)
            return gob_uint(len(items)) + b"".join(_encode_value(t.elem, x, what=what) for x in items)
        if t.kind == "struct":
            out = bytearray()
            last = -1
            for i, (fname, ftype) in enumerate(t.fields):
                fv = v.get(fname) if isinstance(v, Mapping) else None
                if not fv:
                    continue  # gob omits zero fields
                out += gob_uint(i - last) + _encode_value(ftype, fv, what=what)
                last = i
            return bytes(out + b"\x00")
    except (TypeError, ValueError) as exc:
        raise UnsupportedOperationError(f"{what} {v!r} cannot be sent as Go {t.key}: {exc}") from None
    raise AssertionError(t)


def _infer_type(v: Any) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float64"
    if isinstance(v, str):
        return "string"
    if isinstance(v, (bytes, bytearray)):
        return "[]byte"
    if isinstance(v, complex):
        return "complex128"
    if isinstance(v, (list, tuple)) and v:
        return "[]" + _infer_type(v[0])
    raise UnsupportedOperationError(f"cannot tell which Go type to send trailing value {v!r} as; pass trailing_types")


def _encode_dense(
    arr: np.ndarray, go_elem: str, *, ids: _Ids, column_major: bool, triangle: int, mask: np.ndarray | None, scalar_form: bool
) -> bytes:
    dtype, kind = _GO_DATA[go_elem]
    arr = np.asarray(arr).astype(dtype, copy=False)
    enc = _Encoder(ids)
    shape = list(arr.shape)
    if column_major:
        strides, acc = [], 1
        for d in shape:
            strides.append(acc)
            acc *= d
        backing = arr.reshape(-1, order="F")
        mask_flat = mask.reshape(-1, order="F") if mask is not None else None
    else:
        strides, acc = [], 1
        for d in reversed(shape):
            strides.append(acc)
            acc *= d
        strides.reverse()
        backing = arr.reshape(-1)
        mask_flat = mask.reshape(-1) if mask is not None else None
    int_t = go_type("[]int")
    enc.encode(SHAPE_T, gob_uint(len(shape)) + b"".join(gob_int(d) for d in shape))
    enc.encode(int_t, gob_uint(len(strides)) + b"".join(gob_int(s) for s in strides))
    enc.encode(go_type("uint"), gob_uint(COL_MAJOR if column_major else 0))
    enc.encode(go_type("uint"), gob_uint(triangle))
    mask_bytes = b"" if mask_flat is None else mask_flat.astype(np.uint8).tobytes()
    enc.encode(go_type("[]bool"), gob_uint(len(mask_bytes)) + mask_bytes)
    # the data interface
    name = go_elem if scalar_form else "[]" + go_elem
    if scalar_form:
        data_t = go_type(go_elem) if go_elem != "uint8" else go_type("uint")
        value = _encode_uints(_element_uints(backing[:1], kind if kind != "bytes" else "uint"))
    elif kind == "bytes":
        data_t = go_type("[]byte")
        value = gob_uint(backing.size) + backing.astype(np.uint8).tobytes()
    else:
        data_t = GoType(name, "slice", elem=go_type(go_elem))
        value = gob_uint(backing.size) + _encode_uints(_element_uints(backing, kind))
    payload = b"\x00" + value
    head = gob_int(T_INTERFACE) + b"\x00" + gob_string(name)
    defs = enc.typedefs(data_t, prefix=head)
    tail = gob_int(ids.of(data_t)) + gob_uint(len(payload)) + payload
    if defs:
        enc.out += defs + _message(tail)
    else:
        enc.out += _message(head + tail)
    return bytes(enc.out)


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not name:
        raise UnsupportedOperationError(f"tensor name {name!r} is not a non-empty string")
    return name


class GobFormat(Format):
    name = "gob"
    description = "Go encoding/gob stream of gorgonia *tensor.Dense values (+ trailing Go values)"
    read_options: ClassVar[Mapping[str, str]] = {
        "names": "tensor names in stream order (list, or comma-separated); gob stores none",
        "mask": "a masked Dense: tensor (keep the mask as a tensor), drop, nan or error",
    }
    write_options: ClassVar[Mapping[str, str]] = {
        "names": "order of the tensors in the stream (must list every tensor)",
        "trailing": "Go values written after the tensors (default: the source's metadata)",
        "trailing_types": "Go type of each trailing value (default: inferred)",
        "embed_names": "write the names into the stream (default: when not tensor_<i>)",
        "column_major": "names of tensors stored column-major, or true for all",
    }

    @classmethod
    def sniff(cls, path: Path, head: bytes) -> bool:
        """A stream whose first message defines a GobEncoder type, followed by gorgonia's ``AP``
        struct definition or a value of that type (gob has no magic number)."""
        if not head or path.is_dir():
            return False
        try:
            dec = _Decoder(head, path=str(path))
            if not dec.recv_message():
                return False
            tid = dec.int()
            if tid >= 0:
                return False
            dec.recv_type(-tid)
            if dec.types[-tid].kind != "gobencoder" or dec.pos != dec.end:
                return False
            if not dec.recv_message():
                return False
            nxt = dec.int()
            if nxt == -tid:
                return True
            if nxt < 0:
                dec.recv_type(-nxt)
                wt = dec.types[-nxt]
                return wt.kind == "struct" and wt.name == "AP" and any(f[0] == "Δ" for f in wt.fields)
            return False
        except (InvalidHeaderError, TruncatedFileError, IndexError, KeyError):
            return False

    @classmethod
    def open(cls, path: str | os.PathLike[str], **options: Any) -> GobReader:
        p = Path(path)
        if p.is_dir():
            raise InvalidHeaderError("a gob stream is a file, not a directory", path=p)
        unknown = set(options) - {"names", "mask"}
        if unknown:
            raise UnsupportedOperationError(f"unknown gob option(s): {', '.join(sorted(unknown))}", path=p)
        return GobReader(p, **options)

    @classmethod
    def write(
        cls,
        path: str | os.PathLike[str],
        tensors: Mapping[str, np.ndarray],
        *,
        metadata: Mapping[str, Any] | None = None,
        names: Sequence[str] | str | None = None,
        trailing: Sequence[Any] | None = None,
        trailing_types: Sequence[str] | None = None,
        embed_names: bool | None = None,
        column_major: Sequence[str] | bool | None = None,
        **options: Any,
    ) -> None:
        """Write tensors (in ``names`` order, else mapping order), then the trailing Go values.

        Options: ``names`` (order; must list every tensor), ``trailing`` / ``trailing_types``
        (default: ``metadata["trailing"]`` / ``["trailing_types"]``; types inferred from Python
        values when absent), ``embed_names`` (default: only when names are not ``tensor_<i>``),
        ``column_major`` (list of names, or True for all; default ``metadata["column_major"]``).
        """
        if options:
            raise UnsupportedOperationError(f"unknown gob option(s): {', '.join(sorted(options))}", path=path)
        meta = _gob_metadata(metadata)
        order = _split_names(names)
        masks: dict[str, str] = {k: v for k, v in dict(meta.get("masks") or {}).items() if k in tensors and v in tensors}
        mask_names = set(masks.values())
        data_names = [n for n in tensors if n not in mask_names]
        if order is None:
            order = data_names
        else:
            missing = [n for n in order if n not in tensors]
            left = [n for n in data_names if n not in order]
            if missing or left:
                raise UnsupportedOperationError(
                    f"names must list every tensor once (unknown: {missing}, not listed: {left})", path=path
                )
        for n in order:
            _check_name(n)
        if trailing is None:
            trailing = list(meta.get("trailing") or [])
            if trailing_types is None and meta.get("trailing_types") is not None:
                trailing_types = list(meta["trailing_types"])
        types = list(trailing_types) if trailing_types is not None else [_infer_type(v) for v in trailing]
        if len(types) != len(trailing):
            raise UnsupportedOperationError("trailing_types must give one type per trailing value", path=path)
        go_types: dict[str, str] = dict(meta.get("go_types") or {})
        if column_major is None:
            column_major = list(meta.get("column_major") or [])
        col = set(order) if column_major is True else set(column_major or [])
        triangles: dict[str, int] = dict(meta.get("triangle") or {})
        if embed_names is None:
            # A stream read by our gob reader records whether it held a names value: when it did
            # not, a Go program decodes exactly the original values, so none is added.
            from_plain_gob = meta.get("names") in ("default", "option")
            embed_names = not from_plain_gob and order != [f"tensor_{i}" for i in range(len(order))]

        ids = _Ids()
        outer = _Encoder(ids)
        with atomic_write(path) as f:
            for name in order:
                dtype, shape = describe_entry(tensors, name)
                go_elem, scalar_form = _pick_go_type(go_types.get(name), dtype, name=name, path=path)
                arr = fetch_array(tensors, name)
                mask = None
                if name in masks:
                    mask = np.asarray(fetch_array(tensors, masks[name]), dtype=bool)
                    if mask.shape != arr.shape:
                        raise UnsupportedOperationError("mask shape differs from the tensor's", path=path, tensor=name)
                if not outer.sent:
                    f.write(_dense_typedefs(ids, outer))
                inner = _encode_dense(
                    arr, go_elem, ids=ids, column_major=name in col, triangle=int(triangles.get(name, 0)),
                    mask=mask, scalar_form=scalar_form and arr.size == 1,
                )
                f.write(_message(gob_int(ids.ids["Dense"]) + b"\x00" + gob_uint(len(inner)) + inner))
                del arr
            for value, spelling in zip(trailing, types):
                t = go_type(spelling)
                outer.out = bytearray()
                outer.encode(t, _encode_value(t, value, what="trailing value"))
                f.write(outer.out)
            if embed_names and order:
                outer.out = bytearray()
                outer.encode(NAMES_T, _encode_value(NAMES_T, {"Names": order}, what="names"))
                f.write(outer.out)


_JSON_KEYS = ("trailing", "trailing_types", "go_types", "column_major", "triangle", "masks")


def _gob_metadata(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """The gob reader's metadata keys, also when a string-only container (plain safetensors)
    kept each value JSON-encoded on the way."""
    meta = dict(metadata or {})
    for key in _JSON_KEYS:
        value = meta.get(key)
        if isinstance(value, str):
            try:
                meta[key] = json.loads(value)
            except (ValueError, RecursionError):
                del meta[key]  # not ours: ignore rather than write something wrong
    return meta


def _dense_typedefs(ids: _Ids, outer: _Encoder) -> bytes:
    """The outer definitions gorgonia's ``*Dense`` causes: a GobEncoder type (the base type gets
    the message id, ``*Dense`` the CommonType id) and the embedded ``AP`` struct's definition."""
    base = ids.take("Dense")
    ptr = ids.take("*Dense")
    ap = ids.take("AP")
    outer.sent.update({"Dense", "*Dense", "AP"})
    gobenc = b"\x05\x01" + _common_type("", ptr) + b"\x00\x00"
    ap_t = b"\x03\x01" + _common_type("AP", ap) + b"\x01\x01" + b"\x01" + gob_string("Δ") + b"\x01" + gob_int(T_UINT) + b"\x00\x00\x00"
    return _message(gob_int(-base) + gobenc) + _message(gob_int(-ap) + ap_t)


def _pick_go_type(recorded: str | None, dtype: str, *, name: str, path: Any) -> tuple[str, bool]:
    """Go element type for a tensor: the recorded one when it still fits the dtype, else default."""
    if recorded:
        scalar = not recorded.startswith("[]")
        elem = recorded if scalar else recorded[2:]
        if elem in _GO_DATA and _GO_DATA[elem][0] == dtype:
            return elem, scalar
    if dtype not in _DEFAULT_GO:
        raise UnknownDtypeError(
            f"dtype {dtype} has no Go equivalent gorgonia can hold", path=path, tensor=name,
            hint="cast to float32/float64 first",
        )
    return _DEFAULT_GO[dtype], False

