"""ONNX model initializers, read and written without the ``onnx`` package.

An ``.onnx`` file is one ``ModelProto`` (protobuf). We walk only the fields on the path to the
weights: ``ModelProto.graph`` (7) -> ``GraphProto.initializer`` (5) -> ``TensorProto``. The walk
keeps byte offsets instead of copies, so ``raw_data`` tensors come back as zero-copy views of the
mmapped file. Wire-format primitives come from :mod:`weightvault.core.protobuf`.

TensorProto data can sit in four places, all handled:

* ``raw_data`` (9): little-endian, row-major bytes;
* typed fields: ``float_data`` (4, also complex64 pairs), ``int32_data`` (5, also int8/16, uint8/16,
  bool and the *bit patterns* of float16/bfloat16/float8), ``int64_data`` (7), ``double_data`` (10,
  also complex128), ``uint64_data`` (11, uint32/uint64), packed or not;
* external data (``data_location`` = 1, ``external_data`` entries ``location``/``offset``/
  ``length``): the location must be a relative path that stays inside the model's directory, and
  ``offset + length`` must lie inside that file before it is mapped.

String and sub-byte (int4/uint4/float4/int2) initializers, and sparse initializers, are not weight
tensors we can hand out as numpy arrays: they are left out of ``keys()`` and listed in
``metadata["onnx"]["skipped"]``.

Writing has two modes:

* ``template=PATH``: take an existing model and replace the initializers whose names are in the
  mapping, keeping every other byte of the model (nodes, inputs, outputs, opsets, metadata, field
  order). Names and shapes must match the template's; a float tensor of another float dtype is
  cast to the template's dtype (a bf16 checkpoint into a float32 model), anything else is an error.
  ``strict=False`` lets template initializers missing from the mapping keep their values.
* no template: a bare ``ModelProto`` (ir_version 8, opset 17, producer ``weightvault``) whose graph
  holds only the initializers (no nodes, so it is a weight container, not a runnable model), with
  the metadata as ``metadata_props``.

Tensors are streamed: lengths are computed from dtype x shape first, so the protobuf is written
front to back without building it in memory. ``external_data=True`` (or automatically when the
weights exceed ~1.9 GB, protobuf's 2 GB limit) puts every tensor in ``<file>.data`` at 4096-byte
aligned offsets.
"""

from __future__ import annotations

import json
import math
import mmap
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

import numpy as np

from weightvault.abc.format import ByteSpan, Format, FormatReader, TensorInfo
from weightvault.core.dtypes import dtype_from_name, is_float
from weightvault.core.io import atomic_write, close_mmap
from weightvault.core.protobuf import LEN, VARINT, decode_varint, encode_varint, get_packed
from weightvault.core.safetensors_io import TensorSource
from weightvault.errors import (
    DuplicateTensorError,
    InvalidHeaderError,
    InvalidOffsetError,
    ShapeMismatchError,
    TensorNotFoundError,
    TruncatedFileError,
    UnsupportedOperationError,
)
from weightvault.formats._common import describe_entry, fetch_array, safe_relative

__all__ = ["OnnxFormat", "OnnxReader", "ONNX_DTYPES"]

#: ONNX TensorProto.DataType -> canonical dtype name
ONNX_DTYPES: dict[int, str] = {
    1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64", 9: "bool",
    10: "float16", 11: "float64", 12: "uint32", 13: "uint64", 14: "complex64", 15: "complex128",
    16: "bfloat16", 17: "float8_e4m3fn", 18: "float8_e4m3fnuz", 19: "float8_e5m2", 20: "float8_e5m2fnuz",
    24: "float8_e8m0fnu",
}  # fmt: skip
ONNX_CODES = {name: code for code, name in ONNX_DTYPES.items()}
_SKIPPED_TYPES = {8: "string", 21: "uint4", 22: "int4", 23: "float4e2m1", 25: "uint2", 26: "int2"}

# TensorProto field numbers
T_DIMS, T_TYPE, T_SEGMENT, T_FLOAT, T_INT32, T_INT64, T_NAME, T_RAW = 1, 2, 3, 4, 5, 7, 8, 9
T_DOUBLE, T_UINT64, T_EXTERNAL, T_LOCATION = 10, 11, 13, 14
# which typed field carries which dtype, and how it is packed on the wire
_TYPED_FIELD = {
    "float32": (T_FLOAT, "float"), "complex64": (T_FLOAT, "float"),
    "float64": (T_DOUBLE, "double"), "complex128": (T_DOUBLE, "double"),
    "int64": (T_INT64, "int64"), "uint32": (T_UINT64, "uint64"), "uint64": (T_UINT64, "uint64"),
}  # fmt: skip
G_NODE, G_INITIALIZER = 1, 5
M_IR, M_PRODUCER, M_GRAPH, M_OPSET, M_METADATA = 1, 2, 7, 8, 14

EXTERNAL_THRESHOLD = 1_900_000_000
EXTERNAL_ALIGN = 4096


# -- protobuf walking with offsets ---------------------------------------------------------------------
@dataclass(frozen=True)
class _Field:
    number: int
    wire: int
    start: int  # offset of the tag
    vstart: int  # offset of the value (payload for LEN)
    end: int  # end of the field
    value: int = 0  # varint / fixed value


def _fields(buf: Any, start: int, end: int, *, path: str) -> Iterator[_Field]:
    """Fields of the message in ``buf[start:end]`` with their byte spans (bounds-checked)."""
    pos = start
    while pos < end:
        fstart = pos
        tag, pos = decode_varint(buf, pos, end, path=path)
        number, wire = tag >> 3, tag & 7
        if number == 0:
            raise InvalidHeaderError("protobuf field number 0 is invalid", path=path)
        if wire == VARINT:
            value, pos = decode_varint(buf, pos, end, path=path)
            yield _Field(number, wire, fstart, fstart, pos, value)
        elif wire == LEN:
            n, vstart = decode_varint(buf, pos, end, path=path)
            if n > end - vstart:
                raise TruncatedFileError(
                    f"protobuf field {number} claims {n} bytes but only {end - vstart} remain", path=path
                )
            pos = vstart + n
            yield _Field(number, wire, fstart, vstart, pos)
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            if pos + size > end:
                raise TruncatedFileError(f"protobuf fixed field {number} truncated", path=path)
            value = int.from_bytes(buf[pos : pos + size], "little")
            pos += size
            yield _Field(number, wire, fstart, pos - size, pos, value)
        else:
            raise InvalidHeaderError(f"protobuf wire type {wire} (field {number}) is not supported", path=path)


def _text(buf: Any, f: _Field) -> str:
    return bytes(buf[f.vstart : f.end]).decode("utf-8", "replace")


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


@dataclass
class _OnnxTensor:
    name: str
    dtype: str
    shape: tuple[int, ...]
    raw: tuple[int, int] | None = None  # absolute span of raw_data in the model file
    typed: dict[int, list[Any]] = field(default_factory=dict)  # field -> values (int or memoryview)
    external: dict[str, str] | None = None
    span: tuple[int, int] = (0, 0)  # the whole initializer field in the model file

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * dtype_from_name(self.dtype).itemsize


def _parse_tensor(buf: Any, start: int, end: int, *, path: str) -> tuple[_OnnxTensor | None, str, int]:
    """One TensorProto; returns (tensor or None when skipped, name, onnx data type)."""
    dims: list[int] = []
    data_type = 0
    name = ""
    t = _OnnxTensor("", "float32", ())
    location = 0
    external: dict[str, str] = {}
    for f in _fields(buf, start, end, path=path):
        n = f.number
        if n == T_DIMS:
            if f.wire == VARINT:
                dims.append(_signed(f.value))
            else:
                dims.extend(int(d) for d in get_packed({1: [buf[f.vstart : f.end]]}, 1, "int64", path=path))
        elif n == T_TYPE:
            data_type = f.value
        elif n == T_NAME:
            name = _text(buf, f)
        elif n == T_RAW:
            t.raw = (f.vstart, f.end)
        elif n in (T_FLOAT, T_INT32, T_INT64, T_DOUBLE, T_UINT64):
            t.typed.setdefault(n, []).append(f.value if f.wire != LEN else buf[f.vstart : f.end])
        elif n == T_EXTERNAL:
            key = value = ""
            for sub in _fields(buf, f.vstart, f.end, path=path):
                if sub.number == 1:
                    key = _text(buf, sub)
                elif sub.number == 2:
                    value = _text(buf, sub)
            external[key] = value
        elif n == T_LOCATION:
            location = f.value
        elif n == T_SEGMENT:
            raise UnsupportedOperationError("segmented tensors are not supported", path=path, tensor=name)
    t.name = name
    if data_type in _SKIPPED_TYPES or data_type not in ONNX_DTYPES:
        return None, name, data_type
    if any(d < 0 for d in dims):
        raise InvalidHeaderError(f"negative dimension in {dims}", path=path, tensor=name)
    t.dtype = ONNX_DTYPES[data_type]
    t.shape = tuple(dims)
    if location == 1:
        if "location" not in external:
            raise InvalidHeaderError("external tensor without a location", path=path, tensor=name)
        t.external = external
    elif t.raw is not None and t.raw[1] - t.raw[0] != t.nbytes:
        raise InvalidOffsetError(
            f"raw_data has {t.raw[1] - t.raw[0]} bytes, shape {t.shape} x {t.dtype} needs {t.nbytes}",
            path=path,
            tensor=name,
        )
    return t, name, data_type


def _typed_count(values: list[Any], kind: str) -> int:
    """How many values a typed field holds, counted on its bytes (a varint ends on a byte < 0x80)."""
    itemsize = {"float": 4, "double": 8}.get(kind)
    count = 0
    for v in values:
        if isinstance(v, int):
            count += 1
        elif itemsize is not None:
            count += -(-len(v) // itemsize)  # a ragged tail is counted, then refused by get_packed
        else:
            count += int(np.count_nonzero(np.frombuffer(v, np.uint8) < 0x80))
    return count


# -- reading ------------------------------------------------------------------------------------------
class OnnxReader(FormatReader):
    format_name = "onnx"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(path)
        self._file = open(self.path, "rb")  # noqa: SIM115 - closed in close()
        self._mmap: mmap.mmap | None = None
        self._ext: dict[str, tuple[BinaryIO, mmap.mmap | None, int]] = {}
        self._tensors: dict[str, _OnnxTensor] = {}
        self._skipped: list[dict[str, Any]] = []
        self._model: dict[str, Any] = {"metadata_props": {}, "opset_import": {}}
        try:
            size = os.fstat(self._file.fileno()).st_size
            if size == 0:
                raise TruncatedFileError("empty file", path=self.path)
            self._mmap = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
            self._parse_model(size)
        except BaseException:
            self.close()
            raise

    def _parse_model(self, size: int) -> None:
        buf = self._mmap
        graphs = []
        try:
            top = list(_fields(buf, 0, size, path=self.path))
        except (InvalidHeaderError, TruncatedFileError) as exc:
            if isinstance(exc, TruncatedFileError) and buf[0] == 0x08:  # starts as a ModelProto
                raise
            # The outermost message does not parse: a file of another kind, which says more than
            # the field that failed.
            raise InvalidHeaderError(f"not an ONNX model ({exc.message})", path=self.path) from None
        for f in top:
            if f.number == M_GRAPH and f.wire == LEN:
                graphs.append(f)
            elif f.number == M_IR and f.wire == VARINT:
                self._model["ir_version"] = f.value
            elif f.number == M_PRODUCER and f.wire == LEN:
                self._model["producer_name"] = _text(buf, f)
            elif f.number == M_OPSET and f.wire == LEN:
                domain, version = "", 0
                for sub in _fields(buf, f.vstart, f.end, path=self.path):
                    if sub.number == 1 and sub.wire == LEN:
                        domain = _text(buf, sub)
                    elif sub.number == 2 and sub.wire == VARINT:
                        version = sub.value
                self._model["opset_import"][domain or "ai.onnx"] = version
            elif f.number == M_METADATA and f.wire == LEN:
                kv = {s.number: _text(buf, s) for s in _fields(buf, f.vstart, f.end, path=self.path) if s.wire == LEN}
                self._model["metadata_props"][kv.get(1, "")] = kv.get(2, "")
        if not graphs:
            raise InvalidHeaderError("not an ONNX model: no graph field", path=self.path)
        for g in graphs:
            self._parse_graph(g.vstart, g.end)

    def _parse_graph(self, start: int, end: int) -> None:
        for f in _fields(self._mmap, start, end, path=self.path):
            if f.number == G_INITIALIZER and f.wire == LEN:
                t, name, data_type = _parse_tensor(self._mmap, f.vstart, f.end, path=self.path)
                if t is None:
                    self._skipped.append({"name": name, "data_type": _SKIPPED_TYPES.get(data_type, data_type)})
                    continue
                if name in self._tensors:
                    raise DuplicateTensorError("two initializers carry this name", path=self.path, tensor=name)
                t.span = (f.start, f.end)
                self._tensors[name] = t
            elif f.number == 15 and f.wire == LEN:
                self._skipped.append({"name": "?", "data_type": "sparse_initializer"})

    # -- FormatReader hooks ------------------------------------------------------------------------
    def keys(self) -> list[str]:
        return list(self._tensors)

    def info(self, name: str) -> TensorInfo:
        self._require(name)
        t = self._tensors[name]
        where = "external" if t.external else ("raw_data" if t.raw else "typed")
        extra: dict[str, Any] = {"storage": where}
        if t.external:
            extra["location"] = t.external.get("location")
        return TensorInfo(name, t.dtype, t.shape, extra)

    def get(self, name: str) -> np.ndarray:
        self._require(name)
        t = self._tensors[name]
        dt = dtype_from_name(t.dtype)
        count = math.prod(t.shape)
        if t.external is not None:
            return self._external(t, dt, count)
        if t.raw is not None:
            if count == 0:
                return np.empty(t.shape, dt)
            return np.frombuffer(self._mmap, dtype=dt, count=count, offset=t.raw[0]).reshape(t.shape)
        return self._typed(t, dt, count)

    def _typed(self, t: _OnnxTensor, dt: np.dtype, count: int) -> np.ndarray:
        fnum, kind = _TYPED_FIELD.get(t.dtype, (T_INT32, "int32"))
        want = count * (2 if t.dtype.startswith("complex") else 1)
        stored = _typed_count(t.typed.get(fnum, []), kind)
        if stored != want:  # checked on the stored bytes, before decoding or allocating anything
            raise InvalidOffsetError(
                f"typed data field {fnum} has {stored} values, shape {t.shape} needs {want}",
                path=self.path,
                tensor=t.name,
            )
        try:
            values = get_packed(t.typed, fnum, kind, path=self.path)
        except InvalidHeaderError as exc:
            raise InvalidHeaderError(exc.message, path=self.path, tensor=t.name) from None
        if values.size != want:
            raise InvalidOffsetError(
                f"typed data field {fnum} has {values.size} values, shape {t.shape} needs {want}",
                path=self.path,
                tensor=t.name,
            )
        if t.dtype.startswith("complex"):
            return values.view(dt).reshape(t.shape)
        if fnum == T_INT32 and (dt.kind == "f" or dt.kind == "V" or is_float(dt)):
            # float16 / bfloat16 / float8 values travel as their bit patterns in int32_data
            bits = np.dtype(f"<u{dt.itemsize}")
            return values.astype(bits).view(dt).reshape(t.shape)
        return values.astype(dt).reshape(t.shape)

    def _external(self, t: _OnnxTensor, dt: np.dtype, count: int) -> np.ndarray:
        location, offset = self._external_place(t)
        if count == 0:
            return np.empty(t.shape, dt)
        return np.frombuffer(self._ext[location][1], dtype=dt, count=count, offset=offset).reshape(t.shape)

    def _external_place(self, t: _OnnxTensor) -> tuple[str, int]:
        """(location, offset) of an external tensor, its file opened and the span checked."""
        assert t.external is not None
        location = t.external["location"]
        full = self._external_file(location, t.name)
        if location not in self._ext:
            if not os.path.isfile(full):
                raise TruncatedFileError(f"external data file {location!r} is missing", path=self.path, tensor=t.name)
            fh = open(full, "rb")  # noqa: SIM115 - closed in close()
            size = os.fstat(fh.fileno()).st_size
            mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) if size else None
            self._ext[location] = (fh, mm, size)
        _, mm, size = self._ext[location]
        try:
            offset = int(t.external.get("offset", "0") or 0)
            length = int(t.external["length"]) if t.external.get("length") else size - offset
        except ValueError:
            raise InvalidHeaderError("external offset/length are not integers", path=self.path, tensor=t.name) from None
        if offset < 0 or length < 0 or offset + length > size:
            raise TruncatedFileError(
                f"external data [{offset}, {offset + length}) lies outside {location!r} ({size} bytes)",
                path=self.path,
                tensor=t.name,
            )
        if length != t.nbytes:
            raise InvalidOffsetError(
                f"external length {length} does not match shape {t.shape} x {t.dtype} = {t.nbytes}",
                path=self.path,
                tensor=t.name,
            )
        return location, offset

    def _external_file(self, location: str, tensor: str) -> str:
        """The external data file: a relative name inside the model's directory (no ``..``, NUL,
        absolute path, directory, or link leading elsewhere)."""
        root = os.path.dirname(os.path.abspath(self.path))
        # A model file that is itself a link (the Hugging Face cache links snapshots/<rev>/* to
        # blobs/) has its data linked the same way: a link may also land beside its target.
        homes = (os.path.dirname(os.path.realpath(self.path)),) if os.path.islink(self.path) else ()
        return safe_relative(root, location, path=self.path, tensor=tensor, link_homes=homes)

    def byte_span(self, name: str) -> ByteSpan | None:
        """``raw_data`` in the model file or external data: little-endian, row-major bytes."""
        self._require(name)
        t = self._tensors[name]
        if t.nbytes == 0:
            return None
        if t.external is not None:
            location, offset = self._external_place(t)
            fh = self._ext[location][0]
            return ByteSpan(fh.name, fh.fileno(), offset, t.nbytes)
        if t.raw is not None:
            return ByteSpan(self.path, self._file.fileno(), t.raw[0], t.nbytes)
        return None  # typed fields (float_data, int32_data, ...) are decoded on read

    @property
    def metadata(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self._model["metadata_props"])
        onnx = {k: v for k, v in self._model.items() if k != "metadata_props"}
        if self._skipped:
            onnx["skipped"] = self._skipped
        out["onnx"] = onnx
        return out

    def close(self) -> None:
        for fh, mm, _ in self._ext.values():
            close_mmap(mm)
            fh.close()
        self._ext.clear()
        close_mmap(self._mmap)
        self._file.close()


# -- writing ------------------------------------------------------------------------------------------
def _tag(number: int, wire: int) -> bytes:
    return encode_varint((number << 3) | wire)


def _len_field(number: int, payload: bytes) -> bytes:
    return _tag(number, LEN) + encode_varint(len(payload)) + payload


@dataclass
class _Piece:
    """A chunk of output: fixed bytes, or a tensor payload fetched when written."""

    data: bytes = b""
    fetch: Callable[[], np.ndarray] | None = None
    nbytes: int = 0

    @property
    def size(self) -> int:
        return len(self.data) if self.fetch is None else self.nbytes


def _tensor_pieces(t: TensorSource, external: tuple[str, int] | None) -> list[_Piece]:
    """An ``initializer`` field (tag, length, TensorProto) as pieces, payload last and lazy."""
    head = b"".join(_tag(T_DIMS, VARINT) + encode_varint(d) for d in t.shape)
    head += _tag(T_TYPE, VARINT) + encode_varint(ONNX_CODES[t.dtype])
    head += _len_field(T_NAME, t.name.encode("utf-8"))
    if external is not None:
        location, offset = external
        for key, value in (("location", location), ("offset", str(offset)), ("length", str(t.nbytes))):
            head += _len_field(T_EXTERNAL, _len_field(1, key.encode()) + _len_field(2, value.encode("utf-8")))
        head += _tag(T_LOCATION, VARINT) + encode_varint(1)
        return [_Piece(_tag(G_INITIALIZER, LEN) + encode_varint(len(head)) + head)]
    head += _tag(T_RAW, LEN) + encode_varint(t.nbytes)
    total = len(head) + t.nbytes
    return [_Piece(_tag(G_INITIALIZER, LEN) + encode_varint(total) + head), _Piece(fetch=t.fetch, nbytes=t.nbytes)]


def _write_pieces(f: BinaryIO, pieces: list[_Piece]) -> None:
    for p in pieces:
        if p.fetch is None:
            f.write(p.data)
            continue
        arr = p.fetch()
        if arr.nbytes != p.nbytes:
            raise ValueError(f"tensor changed size while saving ({arr.nbytes} != {p.nbytes} bytes)")
        if arr.size:
            f.write(memoryview(np.ascontiguousarray(arr).reshape(-1).view(np.uint8)))


def _plan(tensors: Mapping[str, np.ndarray], path: Any) -> list[TensorSource]:
    out = []
    for name in tensors:
        dtype, shape = describe_entry(tensors, name)
        if dtype not in ONNX_CODES:
            raise UnsupportedOperationError(f"ONNX has no data type for {dtype}", path=path, tensor=name)
        out.append(TensorSource(name, dtype, shape, (lambda n: lambda: fetch_array(tensors, n))(name)))
    return out


class OnnxFormat(Format):
    name = "onnx"
    description = "ONNX model initializers (with external data; --template rewrites a model)"
    read_options: ClassVar[Mapping[str, str]] = {}
    write_options: ClassVar[Mapping[str, str]] = {
        "external_data": "tensors in NAME.onnx.data (default: above the 2 GiB protobuf limit)",
        "template": "an ONNX model whose initializers are replaced (--template)",
        "strict": "with a template: refuse tensors it does not have (default true)",
    }

    @classmethod
    def sniff(cls, path: Path, head: bytes) -> bool:
        # A ModelProto starts with ir_version (field 1 varint, tag 0x08) in every real exporter;
        # the file name keeps the check from claiming other protobufs that happen to start so.
        return path.is_file() and path.name.lower().endswith(".onnx") and head[:1] == b"\x08"

    @classmethod
    def open(cls, path: str | os.PathLike[str], **options: Any) -> OnnxReader:
        return OnnxReader(path)

    @classmethod
    def write(
        cls,
        path: str | os.PathLike[str],
        tensors: Mapping[str, np.ndarray],
        *,
        metadata: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> None:
        planned = _plan(tensors, path)
        external = options.get("external_data")
        if external is None:
            external = sum(t.nbytes for t in planned) > EXTERNAL_THRESHOLD
        template = options.get("template")
        if template:
            planned = _match_template(template, planned, path, strict=bool(options.get("strict", True)))
        data_name = f"{Path(path).name}.data"
        offsets: dict[str, tuple[str, int]] = {}
        if external:
            pos = 0
            for t in planned:
                offsets[t.name] = (data_name, pos)
                pos = (pos + t.nbytes + EXTERNAL_ALIGN - 1) // EXTERNAL_ALIGN * EXTERNAL_ALIGN
        initializer_pieces = {t.name: _tensor_pieces(t, offsets.get(t.name)) for t in planned}
        if template:
            pieces = _template_pieces(template, initializer_pieces)
        else:
            pieces = _bare_model_pieces(planned, initializer_pieces, metadata)
        if external:
            with atomic_write(Path(path).with_name(data_name)) as df:
                for t in planned:
                    df.write(b"\0" * (offsets[t.name][1] - df.tell()))
                    _write_pieces(df, [_Piece(fetch=t.fetch, nbytes=t.nbytes)])
        with atomic_write(path) as f:
            _write_pieces(f, pieces)


def _bare_model_pieces(
    planned: list[TensorSource], initializers: dict[str, list[_Piece]], metadata: Mapping[str, Any] | None
) -> list[_Piece]:
    graph: list[_Piece] = [_Piece(_len_field(2, b"weightvault"))]
    for t in planned:
        graph.extend(initializers[t.name])
    graph_len = sum(p.size for p in graph)
    head = _tag(M_IR, VARINT) + encode_varint(8) + _len_field(M_PRODUCER, b"weightvault")
    head += _tag(M_GRAPH, LEN) + encode_varint(graph_len)
    tail = _len_field(M_OPSET, _tag(2, VARINT) + encode_varint(17))
    for key, value in (metadata or {}).items():
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
        tail += _len_field(M_METADATA, _len_field(1, str(key).encode("utf-8")) + _len_field(2, text.encode("utf-8")))
    return [_Piece(head), *graph, _Piece(tail)]


def _match_template(template: Any, planned: list[TensorSource], path: Any, *, strict: bool) -> list[TensorSource]:
    """Check names/shapes against the template; cast float dtypes to the template's dtype."""
    by_name = {t.name: t for t in planned}
    with OnnxReader(template) as tpl:
        expected = {n: tpl.info(n) for n in tpl.keys()}
    extra = [n for n in by_name if n not in expected]
    if extra:
        raise TensorNotFoundError(
            f"{len(extra)} tensors are not initializers of the template (first: {', '.join(extra[:5])})",
            path=template,
            tensor=extra[0],
            hint="rename the tensors to the template's initializer names (weightvault convert --rename)",
        )
    missing = [n for n in expected if n not in by_name]
    if missing and strict:
        raise TensorNotFoundError(
            f"{len(missing)} template initializers have no tensor in the source "
            f"(first: {', '.join(missing[:5])})",
            path=template,
            tensor=missing[0],
            hint="pass -w strict=false (strict=False in Python) to keep the template's own values for those",
        )
    out = []
    for name, info in expected.items():
        if name not in by_name:
            continue
        t = by_name[name]
        if tuple(t.shape) != tuple(info.shape):
            raise ShapeMismatchError(
                f"shape {list(t.shape)} does not match the template's {list(info.shape)}", path=path, tensor=name
            )
        if t.dtype != info.dtype:
            if not (is_float(dtype_from_name(t.dtype)) and is_float(dtype_from_name(info.dtype))):
                raise UnsupportedOperationError(
                    f"dtype {t.dtype} does not match the template's {info.dtype}", path=path, tensor=name
                )
            target = dtype_from_name(info.dtype)
            t = TensorSource(name, info.dtype, t.shape, (lambda f, d: lambda: f().astype(d))(t.fetch, target))
        out.append(t)
    return out


def _template_pieces(template: Any, initializers: dict[str, list[_Piece]]) -> list[_Piece]:
    """The template's bytes with the named initializer fields swapped for ``initializers``."""
    with open(template, "rb") as fh:
        buf = fh.read()
    tpath = os.fspath(template)
    graphs = [f for f in _fields(buf, 0, len(buf), path=tpath) if f.number == M_GRAPH and f.wire == LEN]
    if len(graphs) != 1:
        raise InvalidHeaderError(f"template has {len(graphs)} graph fields, expected 1", path=tpath)
    g = graphs[0]
    graph: list[_Piece] = []
    cursor = g.vstart
    for f in _fields(buf, g.vstart, g.end, path=tpath):
        if f.number != G_INITIALIZER or f.wire != LEN:
            continue
        _, name, _ = _parse_tensor(buf, f.vstart, f.end, path=tpath)
        if name in initializers:
            graph.append(_Piece(buf[cursor : f.start]))
            graph.extend(initializers[name])
            cursor = f.end
    graph.append(_Piece(buf[cursor : g.end]))
    graph_len = sum(p.size for p in graph)
    head = buf[: g.start] + _tag(M_GRAPH, LEN) + encode_varint(graph_len)
    return [_Piece(head), *graph, _Piece(buf[g.end :])]
