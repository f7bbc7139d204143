"""TensorFlow checkpoint V1: one ``model.ckpt`` file per shard (``tf.compat.v1.train.Saver(
write_version=SaverDef.V1)``, the TF 1.0-era default).

Layout (``tensorflow/core/util/saved_tensor_slice.proto``, ``tensor_slice_writer.{h,cc}``):

* the file is a LevelDB table (:mod:`weightvault.core.sstable`, the same table format as a V2
  ``.index``), every value a ``SavedTensorSlices`` message;
* key ``""`` holds ``SavedTensorSlices.meta`` (field 1): a ``SavedTensorSliceMeta`` listing each
  tensor's name, shape, dtype and the slices saved of it (``SavedSliceMeta``), plus versions;
* every other key is ``EncodeTensorNameSlice(name, slice)`` (as for V2 partitioned variables) and
  holds ``SavedTensorSlices.data`` (field 2): a ``SavedSlice`` {name, slice, data}, where ``data``
  is a ``TensorProto`` with only a typed value field filled (``float_val`` packed little-endian
  floats, ``int_val``/``int64_val`` varints, ``bool_val``, ``half_val`` bit patterns,
  ``string_val``; no dtype, no shape). An unpartitioned variable is one slice covering every
  dimension (``start 0, length -1``); a partitioned variable (``partitioner=``) is several slices
  under the full variable's name, which the reader assembles. TF never splits a large tensor
  (it refuses slices over 2 GiB instead);
* ``Saver(sharded=True)`` writes ``PREFIX-00000-of-00002`` ... and records the pattern
  ``PREFIX-?????-of-00002`` in the ``checkpoint`` state file; all shards are read together.

Checks: every table block's CRC-32C is verified when the file is opened (V1 stores no per-tensor
checksum; the block CRCs cover every byte of every value, so :meth:`TFV1Reader.verify` reports each
tensor as checked through them). Slices must lie inside the tensor's shape, must not overlap and
must cover it exactly; every record's name and slice must match its key; a shape must be payable
by the bytes stored for it (before anything is allocated), and assembly goes through
:func:`weightvault.core.limits.check_expansion`. Files are memory-mapped read-only; float and
double values are zero-copy views. ``checkpoint`` state files may name absolute paths (TF writes
them); a path outside the run directory is replaced by the same file name inside it, so nothing
outside the named directory is read.

DT_STRING tensors are part of the training state: listed by ``keys()`` with dtype ``"string"``,
returned by ``get()`` as object arrays of ``bytes`` (as the TF bundle reader does), and also
named in ``metadata["string_tensors"]``.
"""

from __future__ import annotations

import math
import mmap
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from weightvault.abc.format import ByteSpan, Format, FormatReader, TensorInfo, VerifyResult
from weightvault.core.dtypes import DTYPES
from weightvault.core.io import close_mmap
from weightvault.core.limits import check_expansion
from weightvault.core.protobuf import (
    LEN,
    Message,
    ProtobufDecodeError,
    decode_varint,
    get_int,
    get_message,
    get_messages,
    get_packed,
    get_str,
    parse,
    parse_text,
)
from weightvault.core.sstable import TABLE_MAGIC, read_table
from weightvault.errors import (
    InvalidHeaderError,
    InvalidOffsetError,
    TensorNotFoundError,
    TruncatedFileError,
    UnknownDtypeError,
    UnsupportedOperationError,
    WeightVaultError,
)
from weightvault.formats.tf_bundle import (
    _QUANTIZED,
    _TF_DTYPE_NAMES,
    DT_STRING,
    TF_DTYPES,
    encode_tensor_name_slice,
)

__all__ = ["TFV1Format", "TFV1Reader", "find_v1_checkpoint", "is_v1_file"]

#: ``kSavedTensorSlicesKey``: the record holding the table of contents
_META_KEY = b""
#: ``TF_CHECKPOINT_VERSION``: readers refuse files whose ``min_consumer`` is newer
_CHECKPOINT_VERSION = 1
_SHARD_RE = re.compile(r"^(?P<prefix>.+)-(?P<shard>\d{5}|\?{5})-of-(?P<n>\d{5})$")

# TensorProto typed field per dtype (``saved_tensor_slice_util.h``): (field, packed kind, values
# per element). Quantized types are stored like their integer base in ``int_val``.
_FIELDS: dict[str, tuple[int, str, int]] = {
    "float32": (5, "float", 1), "float64": (6, "double", 1), "complex64": (9, "float", 2),
    "complex128": (12, "double", 2), "int32": (7, "int32", 1), "int16": (7, "int32", 1),
    "int8": (7, "int32", 1), "uint8": (7, "int32", 1), "uint16": (7, "int32", 1),
    "int64": (10, "int64", 1), "bool": (11, "bool", 1), "float16": (13, "int32", 1),
    "bfloat16": (13, "int32", 1), "uint32": (16, "uint32", 1), "uint64": (17, "uint64", 1),
}  # fmt: skip
_FIXED = {"float": np.dtype("<f4"), "double": np.dtype("<f8")}
_QUANTIZED_NAMES = {11: "qint8", 12: "quint8", 13: "qint32", 15: "qint16", 16: "quint16"}
_TENSOR_CONTENT = 4
_STRING_VAL = 8


def _min_stored_bytes(dtype: str) -> int:
    """The fewest bytes one element can take in a ``SavedSlice``: what a shape must be paid with."""
    if dtype == "string":
        return 2  # a tag and a length byte per string_val
    _, kind, per = _FIELDS[dtype]
    return _FIXED[kind].itemsize * per if kind in _FIXED else 1


# -- locating the files ------------------------------------------------------------------------
def is_v1_file(path: str | os.PathLike[str], head: bytes | None = None) -> bool:
    """Whether ``path`` is a V1 checkpoint file: a table whose first record (key ``""``) is a
    ``SavedTensorSlices`` holding a meta. Looks at the first bytes and the footer magic only."""
    try:
        with open(path, "rb") as f:
            if head is None or len(head) < 16:
                head = f.read(64)
            f.seek(0, os.SEEK_END)
            if f.tell() < 48:
                return False
            f.seek(-8, os.SEEK_END)
            if int.from_bytes(f.read(8), "little") != TABLE_MAGIC:
                return False
    except OSError:
        return False
    return _head_is_v1(head)


def _head_is_v1(head: bytes) -> bool:
    # first block entry: shared 0, non_shared 0 (the empty key), value length, then the value:
    # SavedTensorSlices.meta (field 1, LEN) whose first field is a tensor (1) or versions (2)
    if head[:2] != b"\x00\x00":
        return False
    try:
        _, pos = decode_varint(head, 2)
        if head[pos : pos + 1] != b"\x0a":
            return False
        size, pos = decode_varint(head, pos + 1)
    except ProtobufDecodeError:
        return False
    return size == 0 or head[pos : pos + 1] in (b"\x0a", b"\x12")


def _shard_files(pattern: str) -> list[str] | None:
    """``P-?????-of-00002`` or ``P-00001-of-00002`` -> every shard's file name."""
    m = _SHARD_RE.match(pattern)
    if not m:
        return None
    n = int(m.group("n"))
    return [f"{m.group('prefix')}-{i:05d}-of-{n:05d}" for i in range(n)] if n else None


def find_v1_checkpoint(prefix: str | os.PathLike[str]) -> str | None:
    """The V1 checkpoint a ``.meta``'s prefix names: the file ``PREFIX`` itself, or the shard
    pattern ``PREFIX-?????-of-NNNNN`` when ``Saver(sharded=True)`` wrote it. None if neither."""
    p = os.fspath(prefix)
    if os.path.isfile(p):
        return p if is_v1_file(p) else None
    directory = os.path.dirname(p) or "."
    base = os.path.basename(p)
    try:
        names = os.listdir(directory)
    except OSError:
        return None
    for name in sorted(names):
        m = _SHARD_RE.match(name)
        if m and m.group("prefix") == base and is_v1_file(os.path.join(directory, name)):
            return os.path.join(directory, f"{base}-?????-of-{m.group('n')}")
    return None


@dataclass
class _State:
    """The ``checkpoint`` state file of a run directory (text ``CheckpointState``)."""

    directory: str
    latest: str | None
    listed: list[str]
    timestamps: list[float]


def _read_state(directory: str) -> _State | None:
    path = os.path.join(directory, "checkpoint")
    if not os.path.isfile(path):
        return None
    with open(path, "rb") as f:
        raw = f.read(1 << 20)
    try:
        doc = parse_text(raw.decode("utf-8", "replace"), path=path)
    except ProtobufDecodeError:
        return None
    latest = next((str(v) for v in doc.get("model_checkpoint_path", [])), None)
    listed = [str(v) for v in doc.get("all_model_checkpoint_paths", [])]
    try:
        times = [float(v) for v in doc.get("all_model_checkpoint_timestamps", [])]
    except (TypeError, ValueError):
        times = []  # a damaged timestamp must not hide the checkpoints: they are only shown
    return _State(directory, latest, listed, times)


def _inside(directory: str, named: str) -> str:
    """A path named by a state file, kept inside ``directory``: relative names are joined (and
    may not climb out); an absolute name outside it (a run directory that was moved, or a
    hostile state file) is replaced by the same file name inside it."""
    from weightvault.formats._common import safe_relative

    state_file = os.path.join(directory, "checkpoint")
    if not os.path.isabs(named):
        return safe_relative(directory, named, path=state_file)
    real_dir = os.path.realpath(directory)
    real = os.path.realpath(named)
    if os.path.commonpath([real_dir, real]) == real_dir:
        return named
    return safe_relative(directory, os.path.basename(named), path=state_file)


def _exists(target: str) -> bool:
    shards = _shard_files(os.path.basename(target))
    if shards:
        return all(os.path.isfile(os.path.join(os.path.dirname(target), s)) for s in shards)
    return os.path.isfile(target)


def resolve_v1(path: str | os.PathLike[str]) -> tuple[str, list[str], _State | None]:
    """Map a file / shard / shard pattern / prefix / run directory / ``checkpoint`` file to
    ``(checkpoint name, shard files, state)``."""
    p = os.fspath(path)
    if os.path.isdir(p) or (os.path.basename(p) == "checkpoint" and os.path.isfile(p)):
        directory = p if os.path.isdir(p) else (os.path.dirname(p) or ".")
        state = _read_state(directory)
        if state is None or not state.latest:
            raise TruncatedFileError(
                "directory has no `checkpoint` state file naming a checkpoint", path=p,
                hint="name the V1 checkpoint file (model.ckpt) itself",
            )
        name, files, _ = resolve_v1(_inside(directory, state.latest))
        return name, files, state
    directory = os.path.dirname(p) or "."
    state = _read_state(directory)
    shards = _shard_files(os.path.basename(p))
    if shards:
        m = _SHARD_RE.match(os.path.basename(p))
        assert m is not None
        name = os.path.join(directory, f"{m.group('prefix')}-?????-of-{m.group('n')}")
        return name, [os.path.join(directory, s) for s in shards], state
    if not os.path.exists(p):
        found = find_v1_checkpoint(p)
        if found is not None and found != p:
            return resolve_v1(found)
        raise TruncatedFileError("TensorFlow V1 checkpoint not found", path=p)
    return p, [p], state


# -- slices ---------------------------------------------------------------------------------------
#: (start, length) per dimension; length -1 = the whole dimension
Extents = tuple[tuple[int, int], ...]


@dataclass
class _Slice:
    file: int
    extents: Extents
    value: Any  # the raw SavedTensorSlices record (a memoryview into the file's map)

    def bounds(self, shape: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
        return tuple((s, d if n < 0 else s + n) for (s, n), d in zip(self.extents, shape))


@dataclass
class _Tensor:
    name: str
    dtype_code: int
    shape: tuple[int, ...]
    slices: list[_Slice] = field(default_factory=list)

    @property
    def dtype(self) -> str:
        if self.dtype_code == DT_STRING:
            return "string"
        name = TF_DTYPES.get(self.dtype_code) or _QUANTIZED.get(self.dtype_code)
        if name is None or name not in _FIELDS:
            label = _TF_DTYPE_NAMES.get(self.dtype_code, name or str(self.dtype_code))
            raise UnknownDtypeError(f"TensorFlow dtype {label} is not supported in V1 checkpoints",
                                    tensor=self.name)
        return name

    @property
    def stored_bytes(self) -> int:
        return sum(len(s.value) for s in self.slices)


def _parse_extents(msg: Message | None, path: str, name: str) -> Extents:
    if msg is None:
        return ()
    out = []
    for ext in get_messages(msg, 1, path=path):
        start = get_int(ext, 1)
        length = get_int(ext, 2) if 2 in ext else -1
        out.append((start, length))
    return tuple(out)


def _parse_shape(msg: Message | None, path: str, name: str) -> tuple[int, ...]:
    if msg is None:
        return ()
    if get_int(msg, 3):
        raise InvalidHeaderError("tensor has unknown rank", path=path, tensor=name)
    dims = tuple(get_int(d, 1) for d in get_messages(msg, 2, path=path))
    if any(d < 0 for d in dims):
        raise InvalidHeaderError(f"tensor has an unknown dimension {list(dims)}", path=path,
                                 tensor=name)
    return dims


def _check_slice(t: _Tensor, extents: Extents, path: str) -> None:
    if len(extents) != len(t.shape):
        raise InvalidHeaderError(
            f"slice has rank {len(extents)}, the tensor {list(t.shape)} has {len(t.shape)}",
            path=path, tensor=t.name,
        )
    for (start, length), dim in zip(extents, t.shape):
        if length < 0 and (length != -1 or start != 0):
            raise InvalidOffsetError(f"bad slice extent start {start} length {length}", path=path,
                                     tensor=t.name)
        stop = dim if length < 0 else start + length
        if not 0 <= start <= stop <= dim:
            raise InvalidOffsetError(f"slice [{start}:{stop}] lies outside dimension {dim}",
                                     path=path, tensor=t.name)


def _check_cover(t: _Tensor, path: str) -> None:
    """The slices of ``t`` must not overlap and must fill its shape exactly."""
    boxes = sorted(s.bounds(t.shape) for s in t.slices)
    total = sum(math.prod(b - a for a, b in box) for box in boxes)
    numel = math.prod(t.shape)
    if len(t.shape) and len(boxes) > 1:
        for i, box in enumerate(boxes):
            for other in boxes[i + 1 :]:
                if other[0][0] >= box[0][1]:
                    break  # sorted on the first dimension: no later box can meet this one
                if all(a < d and c < b for (a, b), (c, d) in zip(box, other)):
                    raise InvalidOffsetError(f"slices {list(box)} and {list(other)} overlap",
                                             path=path, tensor=t.name)
    elif len(boxes) > 1:
        raise InvalidOffsetError(f"scalar saved as {len(boxes)} slices", path=path, tensor=t.name)
    if total != numel:
        raise InvalidOffsetError(
            f"slices hold {total} of the {numel} elements of {list(t.shape)}", path=path,
            tensor=t.name,
        )


def _decode_varints(payload: Any, count: int, path: str, name: str) -> np.ndarray:
    """``count`` packed varints as int64 (two's complement), vectorised."""
    b = np.frombuffer(payload, np.uint8)
    ends = np.flatnonzero(b < 0x80)
    if len(ends) != count or (count and ends[-1] != len(b) - 1) or (not count and len(b)):
        raise InvalidOffsetError(
            f"value field holds {len(ends)} complete varints in {len(b)} bytes, {count} expected",
            path=path, tensor=name,
        )
    if not count:
        return np.zeros(0, np.int64)
    starts = np.concatenate(([0], ends[:-1] + 1))
    if int((ends - starts).max()) >= 10:
        raise InvalidOffsetError("varint longer than 10 bytes", path=path, tensor=name)
    position = np.arange(len(b)) - np.repeat(starts, ends - starts + 1)
    parts = (b & 0x7F).astype(np.uint64) << (7 * position).astype(np.uint64)
    return np.bitwise_or.reduceat(parts, starts).view(np.int64)


def _typed_values(
    proto: Message, number: int, kind: str, count: int, file: str, name: str
) -> np.ndarray:
    """A TensorProto's typed value field: packed floats/doubles as zero-copy views, packed varints
    decoded at once; anything else (unpacked, split) through the generic decoder."""
    values = proto.get(number, [])
    packed_once = len(values) == 1 and proto.wire_types.get(number) == LEN
    if packed_once and kind in _FIXED and len(values[0]) % _FIXED[kind].itemsize == 0:
        return np.frombuffer(values[0], _FIXED[kind])
    if packed_once and kind not in _FIXED:
        return _decode_varints(values[0], count, file, name)
    return get_packed(proto, number, kind, path=file)


# -- reader ---------------------------------------------------------------------------------------
class TFV1Reader(FormatReader):
    format_name = "tf_v1"

    def __init__(self, path: str | os.PathLike[str], *, check_crc: bool = True) -> None:
        # check_crc is accepted for parity with tf_bundle: V1's block CRCs are always checked
        super().__init__(path)
        self.name, self.files, self.state = resolve_v1(path)
        self._maps: list[mmap.mmap | None] = []
        self._bases: list[int] = []  # address of each map, to turn record views into offsets
        self._handles: list[Any] = []
        self._tensors: dict[str, _Tensor] = {}
        self.producer: int | None = None
        try:
            for index, file in enumerate(self.files):
                self._load_file(index, file)
            for t in self._tensors.values():
                self._check_tensor(t)
        except BaseException:
            self.close()
            raise
        self._strings = [k for k, t in self._tensors.items() if t.dtype_code == DT_STRING]

    # -- loading ----------------------------------------------------------------------------------
    def _load_file(self, index: int, file: str) -> None:
        try:
            f = open(file, "rb")  # noqa: SIM115 - kept open for the map, closed in close()
        except FileNotFoundError:
            raise TruncatedFileError("V1 checkpoint shard is missing", path=file) from None
        self._handles.append(f)
        size = os.fstat(f.fileno()).st_size
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else None
        self._maps.append(mm)
        self._bases.append(np.frombuffer(mm, np.uint8, 1).ctypes.data if mm is not None else 0)
        data = memoryview(mm) if mm is not None else memoryview(b"")
        table = read_table(data, path=file)  # checks every block CRC-32C and handle
        if not table or table[0][0] != _META_KEY:
            raise InvalidHeaderError("V1 checkpoint has no table of contents (key \"\")", path=file)
        records = dict(table[1:])
        try:
            meta = get_message(parse(table[0][1], path=file), 1, path=file)
            if meta is None:
                raise InvalidHeaderError("first record holds no SavedTensorSliceMeta", path=file)
            self._read_versions(get_message(meta, 2, path=file), file)
            for entry in get_messages(meta, 1, path=file):
                self._add_tensor(entry, records, index, file)
        except ProtobufDecodeError as exc:
            raise InvalidHeaderError(f"bad SavedTensorSliceMeta: {exc.message}",
                                     path=file) from None

    def _read_versions(self, versions: Message | None, file: str) -> None:
        if versions is None:
            return
        self.producer = get_int(versions, 1)
        if get_int(versions, 2) > _CHECKPOINT_VERSION:
            raise UnsupportedOperationError(
                f"checkpoint needs reader version {get_int(versions, 2)} (this reader: "
                f"{_CHECKPOINT_VERSION})", path=file,
            )

    def _add_tensor(self, entry: Message, records: dict[bytes, Any], index: int, file: str) -> None:
        name = get_str(entry, 1)
        if not name:
            raise InvalidHeaderError("SavedSliceMeta without a tensor name", path=file)
        shape = _parse_shape(get_message(entry, 2, path=file), file, name)
        code = get_int(entry, 3)
        t = self._tensors.get(name)
        if t is None:
            t = self._tensors[name] = _Tensor(name, code, shape)
        elif t.shape != shape or t.dtype_code != code:
            raise InvalidHeaderError(
                f"shards disagree on the tensor: {list(t.shape)} code {t.dtype_code} vs "
                f"{list(shape)} code {code}", path=file, tensor=name,
            )
        for slice_msg in get_messages(entry, 4, path=file):
            extents = _parse_extents(slice_msg, file, name)
            _check_slice(t, extents, file)
            key = encode_tensor_name_slice(name, list(extents))
            value = records.get(key)
            if value is None:
                raise TruncatedFileError(
                    f"the record of slice {list(extents)} is missing", path=file, tensor=name
                )
            t.slices.append(_Slice(index, extents, value))

    def _check_tensor(self, t: _Tensor) -> None:
        where = self.files[t.slices[0].file] if t.slices else self.name
        try:
            dtype = t.dtype
        except UnknownDtypeError as exc:
            raise UnknownDtypeError(exc.message, path=where, tensor=t.name) from None
        if not t.slices:
            raise TruncatedFileError("tensor has no saved slices", path=where, tensor=t.name)
        _check_cover(t, where)
        needed = math.prod(t.shape) * _min_stored_bytes(dtype)
        if needed > t.stored_bytes:
            raise InvalidOffsetError(
                f"{dtype}{list(t.shape)} needs at least {needed} stored bytes, its records hold "
                f"{t.stored_bytes}", path=where, tensor=t.name,
            )

    # -- decoding ---------------------------------------------------------------------------------
    def _slice_proto(self, t: _Tensor, s: _Slice) -> Message:
        """The ``TensorProto`` of one slice, once its record is seen to name this tensor+slice."""
        file = self.files[s.file]
        try:
            record = get_message(parse(s.value, path=file), 2, path=file)
            if record is None:
                raise InvalidHeaderError("record holds no SavedSlice", path=file, tensor=t.name)
            if get_str(record, 1) != t.name:
                raise InvalidHeaderError(
                    f"record is named {get_str(record, 1)!r}, its key names this tensor",
                    path=file, tensor=t.name,
                )
            extents = _parse_extents(get_message(record, 2, path=file), file, t.name)
            if extents != s.extents:
                raise InvalidHeaderError(
                    f"record holds slice {list(extents)}, its key says {list(s.extents)}",
                    path=file, tensor=t.name,
                )
            return get_message(record, 3, path=file) or Message()
        except ProtobufDecodeError as exc:
            raise InvalidHeaderError(f"bad SavedSlice: {exc.message}", path=file,
                                     tensor=t.name) from None

    def _decode(self, t: _Tensor, s: _Slice, shape: tuple[int, ...]) -> np.ndarray:
        file = self.files[s.file]
        proto = self._slice_proto(t, s)
        n = math.prod(shape)
        dt = DTYPES[t.dtype]
        content = proto.get(_TENSOR_CONTENT)
        if content and len(content[-1]):  # not what TF writes, but a valid TensorProto
            raw = content[-1]
            if len(raw) != n * dt.itemsize:
                raise InvalidOffsetError(
                    f"tensor_content has {len(raw)} bytes, {t.dtype}{list(shape)} needs "
                    f"{n * dt.itemsize}", path=file, tensor=t.name,
                )
            return np.frombuffer(raw, dt).reshape(shape)
        number, kind, per = _FIELDS[t.dtype]
        try:
            flat = _typed_values(proto, number, kind, n * per, file, t.name)
        except ProtobufDecodeError as exc:
            raise InvalidHeaderError(f"bad TensorProto: {exc.message}", path=file,
                                     tensor=t.name) from None
        if flat.size != n * per:
            raise InvalidOffsetError(
                f"slice {list(s.extents)} stores {flat.size // per} values, {t.dtype}{list(shape)} "
                f"needs {n}", path=file, tensor=t.name,
            )
        if t.dtype in ("float16", "bfloat16"):  # half_val holds the 16-bit patterns
            return flat.astype(np.uint16).view(dt).reshape(shape)
        if per == 2:  # complex: (re, im) pairs
            return flat.view(dt).reshape(shape)
        return (flat if flat.dtype == dt else flat.astype(dt)).reshape(shape)

    def _assemble(self, t: _Tensor) -> np.ndarray:
        if len(t.slices) == 1 and all(n < 0 for _, n in t.slices[0].extents):
            return self._decode(t, t.slices[0], t.shape)
        dt = DTYPES[t.dtype]
        check_expansion(math.prod(t.shape) * dt.itemsize, t.stored_bytes, path=self.name,
                        tensor=t.name, what="partitioned variable")
        out = np.empty(t.shape, dt)
        for s in t.slices:
            box = s.bounds(t.shape)
            shape = tuple(b - a for a, b in box)
            out[tuple(slice(a, b) for a, b in box)] = self._decode(t, s, shape)
        return out

    # -- public API -------------------------------------------------------------------------------
    def _tensor(self, name: str) -> _Tensor:
        t = self._tensors.get(name)
        if t is None:
            raise TensorNotFoundError(
                f"no such tensor; the checkpoint has {len(self._tensors)} tensors "
                f"(first: {', '.join(list(self._tensors)[:5]) or 'none'})",
                path=self.name, tensor=name,
            )
        return t

    def keys(self) -> list[str]:
        return list(self._tensors)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._tensors

    def info(self, name: str) -> TensorInfo:
        t = self._tensor(name)
        extra: dict[str, Any] = {"file": self.files[t.slices[0].file], "slices": len(t.slices)}
        if t.dtype_code in _QUANTIZED:
            extra["tf_dtype"] = _QUANTIZED_NAMES[t.dtype_code]
        if t.dtype_code == DT_STRING:
            extra["nbytes"] = t.stored_bytes  # as stored: tags, lengths and bytes
        return TensorInfo(name, t.dtype, t.shape, extra)

    def get(self, name: str) -> np.ndarray:
        """The tensor; a DT_STRING tensor is an object array of ``bytes`` (dtype ``"string"``)."""
        t = self._tensor(name)
        return self.get_strings(name) if t.dtype_code == DT_STRING else self._assemble(t)

    def byte_span(self, name: str) -> ByteSpan | None:
        """Where an unpartitioned float/double/complex tensor's packed values lie in the file
        (they are stored little-endian, exactly as a writer stores them); None otherwise."""
        t = self._tensor(name)
        if t.dtype_code == DT_STRING:
            return None
        dt = DTYPES[t.dtype]
        number, kind, _ = _FIELDS[t.dtype]
        nbytes = math.prod(t.shape) * dt.itemsize
        if len(t.slices) != 1 or kind not in _FIXED or nbytes == 0:
            return None
        s = t.slices[0]
        if any(n >= 0 for _, n in s.extents):
            return None
        proto = self._slice_proto(t, s)
        content = proto.get(_TENSOR_CONTENT) or []
        values = [v for v in content if len(v)] or proto.get(number, [])
        if len(values) != 1 or isinstance(values[0], int) or len(values[0]) != nbytes:
            return None
        offset = np.frombuffer(values[0], np.uint8).ctypes.data - self._bases[s.file]
        return ByteSpan(self.files[s.file], self._handles[s.file].fileno(), offset, nbytes)

    def string_keys(self) -> list[str]:
        """Names of the DT_STRING tensors (also in :meth:`keys`, with dtype ``"string"``)."""
        return list(self._strings)

    def get_strings(self, name: str) -> np.ndarray:
        """A DT_STRING tensor as an object array of ``bytes``."""
        t = self._tensors.get(name)
        if t is None or t.dtype_code != DT_STRING:
            raise TensorNotFoundError("no such string tensor", path=self.name, tensor=name)
        out = np.empty(t.shape, dtype=object)
        for s in t.slices:
            box = s.bounds(t.shape)
            shape = tuple(b - a for a, b in box)
            values = self._slice_proto(t, s).get(_STRING_VAL, [])
            if len(values) != math.prod(shape) or any(isinstance(v, int) for v in values):
                raise InvalidOffsetError(
                    f"slice {list(s.extents)} stores {len(values)} strings, {list(shape)} needs "
                    f"{math.prod(shape)}", path=self.files[s.file], tensor=name,
                )
            block = np.empty(len(values), dtype=object)
            block[:] = [bytes(v) for v in values]
            out[tuple(slice(a, b) for a, b in box)] = block.reshape(shape)
        return out

    def strings(self) -> dict[str, np.ndarray]:
        return {name: self.get_strings(name) for name in self._strings}

    @property
    def metadata(self) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "checkpoint_version": "V1",
            "files": list(self.files),
            "num_shards": len(self.files),
            "checksums": "CRC-32C of every table block (checked on open); no per-tensor checksum",
        }
        if self.producer is not None:
            meta["producer"] = self.producer
        partitioned = {k: len(t.slices) for k, t in self._tensors.items() if len(t.slices) > 1}
        if partitioned:
            meta["partitioned"] = partitioned
        if self._strings:
            meta["string_tensors"] = {k: list(self._tensors[k].shape) for k in self._strings}
        if self.state is not None:
            self._state_metadata(meta, self.state)
        step = self._tensors.get("global_step")
        if step is not None and step.shape == () and step.dtype_code in (3, 9):
            try:
                meta["global_step"] = int(self.get("global_step"))
            except WeightVaultError:
                pass  # a damaged step must not hide the listing; get() reports it
        base = os.path.basename(self.name)
        shard = _SHARD_RE.match(base)
        m = re.search(r"-(\d+)$", shard.group("prefix") if shard else base)
        if "global_step" not in meta and m:
            meta["step_from_name"] = int(m.group(1))
        return meta

    def _state_metadata(self, meta: dict[str, Any], state: _State) -> None:
        meta["model_checkpoint_path"] = state.latest
        listed = list(state.listed)
        if state.latest and state.latest not in listed:
            listed.append(state.latest)
        checkpoints = []
        for i, named in enumerate(listed):
            try:
                full = _inside(state.directory, named)
            except WeightVaultError:
                full = None
            current = full is not None and os.path.normpath(full) == os.path.normpath(self.name)
            item: dict[str, Any] = {
                "prefix": named,
                "exists": full is not None and _exists(full),
                "current": current,
                "latest": named == state.latest,
            }
            if i < len(state.timestamps):
                item["timestamp"] = state.timestamps[i]
            checkpoints.append(item)
        meta["checkpoints"] = checkpoints

    def verify(self) -> VerifyResult:
        """Re-read every table block (CRC-32C) and decode every tensor. V1 has no per-tensor
        checksum: a tensor counts as checked because its record lies in CRC-checked blocks."""
        result = VerifyResult(self.name)
        for index, mm in enumerate(self._maps):
            try:
                read_table(memoryview(mm) if mm is not None else b"", path=self.files[index])
            except WeightVaultError as exc:
                result.failures.append(str(exc))
        for name in self._tensors:
            try:
                self.get(name)
                result.checked += 1
            except WeightVaultError as exc:
                result.failures.append(str(exc))
        return result

    def close(self) -> None:
        self._tensors = {}
        for mm in self._maps:
            close_mmap(mm)
        for f in self._handles:
            f.close()
        self._maps = []
        self._bases = []
        self._handles = []


class TFV1Format(Format):
    name = "tf_v1"
    description = "TensorFlow checkpoint V1 (one model.ckpt table file, Saver write_version=V1)"
    read_options: ClassVar[Mapping[str, str]] = {
        "check_crc": "accepted for parity with tf_bundle; V1 block CRCs are always checked",
    }
    write_options: ClassVar[Mapping[str, str]] = {}

    @classmethod
    def sniff(cls, path: Path, head: bytes) -> bool:
        p = Path(path)
        if p.is_dir() or p.name == "checkpoint":
            directory = p if p.is_dir() else p.parent
            state = _read_state(os.fspath(directory))
            if state is None or not state.latest:
                return False
            try:
                target = _inside(os.fspath(directory), state.latest)
            except WeightVaultError:
                return False
            return _is_v1_target(target)
        if p.name.endswith(".index"):
            return False
        if not p.exists():
            return find_v1_checkpoint(p) is not None or _is_v1_target(os.fspath(p))
        # the first record alone is specific enough, and a truncated V1 file (no footer) should
        # still reach this reader's errors rather than another format's
        return _head_is_v1(head)

    @classmethod
    def open(cls, path: str | os.PathLike[str], **options: Any) -> TFV1Reader:
        return TFV1Reader(path, **options)


def _is_v1_target(target: str) -> bool:
    shards = _shard_files(os.path.basename(target))
    first = os.path.join(os.path.dirname(target), shards[0]) if shards else target
    return os.path.isfile(first) and is_v1_file(first)
