"""TensorFlow checkpoint V2 ("tensor bundle"): ``PREFIX.index`` + ``PREFIX.data-SSSSS-of-NNNNN``.

Reading (pure Python + numpy, see ``research/formats.md`` §1):

* ``open()`` takes a run directory (its ``checkpoint`` state file names the newest prefix; a
  SavedModel's ``variables/`` works too), a prefix (``model.ckpt-1000``), the ``.index`` file or a
  ``.data-*`` file.
* The ``.index`` is a LevelDB table (:mod:`weightvault.core.sstable`, block CRCs always checked):
  key ``""`` holds the ``BundleHeaderProto``, every other key a ``BundleEntryProto`` giving dtype,
  shape, shard, offset, size and the masked CRC-32C of the bytes.
* Numeric tensors are mmapped read-only views of the data shard; big-endian bundles are
  byte-swapped copies. Partitioned (sliced) variables are reassembled into the full tensor; their
  slice entries (keys starting with ``\\x00``) are not listed.
* **String tensors** (DT_STRING) are listed by ``keys()`` with dtype ``"string"``; ``get`` returns
  them as object arrays of ``bytes`` (also :meth:`TFBundleReader.get_strings`), and
  ``metadata["string_tensors"]`` lists them. ``_CHECKPOINTABLE_OBJECT_GRAPH``, the TF2 object
  graph, is the bundle's own bookkeeping, not a variable: it is not in ``keys()`` (see
  :attr:`~TFBundleReader.object_graph`).
* CRC-32C of the data is checked by :meth:`~TFBundleReader.verify` (or on every ``get`` with
  ``check_crc=True``) with the C implementation from google_crc32c, without copying tensors.
* TF2 object-based checkpoints are listed with readable names by default (``names="readable"``):
  ``model/layer_with_weights-0/kernel/.ATTRIBUTES/VARIABLE_VALUE`` becomes ``model/dense/kernel``
  using the object graph (the root child that owns the variable + the variable's ``full_name``,
  which Keras sets to ``layer_name/variable``); a name two keys would share, or one that is
  another key, keeps its key. ``names="raw"`` lists the keys as stored. ``get``, ``info`` and
  ``in`` accept both spellings in either mode.

Writing: one ``.index`` plus ``num_shards`` data files (default 1) and a ``checkpoint`` state file,
laid out exactly as TF's ``BundleWriter`` does (so given the same tensors in the same order the
``.index`` is byte-identical to TF's). Object arrays / ``bytes_`` arrays are written as DT_STRING,
and ``strings=`` adds more. TF restores name-based (TF1 ``Saver``) from the result, and
``tf.train.load_checkpoint`` reads it.
"""

from __future__ import annotations

import contextlib
import math
import mmap
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from weightvault.abc.format import ByteSpan, DescribedTensors, Format, FormatReader, TensorInfo, VerifyResult
from weightvault.core.crc32c import crc32c, mask, unmask
from weightvault.core.dtypes import DTYPES, dtype_name
from weightvault.core.io import atomic_write, close_mmap
from weightvault.core.limits import check_expansion
from weightvault.core.protobuf import (
    ProtobufDecodeError,
    Writer,
    decode_varint,
    encode_varint,
    format_text_string,
    get_int,
    get_message,
    get_messages,
    get_str,
    parse,
    parse_text,
)
from weightvault.core.sstable import TABLE_MAGIC, read_table, write_table
from weightvault.errors import (
    ChecksumMismatchError,
    CorruptFileError,
    InvalidHeaderError,
    InvalidOffsetError,
    TensorNotFoundError,
    TruncatedFileError,
    UnknownDtypeError,
    UnsupportedOperationError,
)

__all__ = [
    "OBJECT_GRAPH_KEY",
    "TFBundleFormat",
    "TFBundleReader",
    "data_file_name",
    "ema_names",
    "encode_tensor_name_slice",
    "resolve_prefix",
]

OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
_ATTR_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"

#: TF DataType enum -> canonical dtype name (types.proto). DT_STRING (7) is handled apart.
TF_DTYPES: dict[int, str] = {
    1: "float32", 2: "float64", 3: "int32", 4: "uint8", 5: "int16", 6: "int8", 8: "complex64",
    9: "int64", 10: "bool", 14: "bfloat16", 17: "uint16", 18: "complex128", 19: "float16",
    22: "uint32", 23: "uint64", 24: "float8_e5m2", 25: "float8_e4m3fn", 26: "float8_e4m3fnuz",
    28: "float8_e5m2fnuz",
}  # fmt: skip
#: quantized types are stored like their integer base; read them as such (never written back)
_QUANTIZED = {11: "int8", 12: "uint8", 13: "int32", 15: "int16", 16: "uint16"}
TF_CODES: dict[str, int] = {name: code for code, name in TF_DTYPES.items()}
DT_STRING = 7
_TF_DTYPE_NAMES = {7: "string", 20: "resource", 21: "variant", 27: "float8_e4m3b11fnuz", 29: "int4", 30: "uint4"}

_MAX_OVERLAP_CHECKS = 1024
_DATA_RE = re.compile(r"^(?P<prefix>.+)\.data-(?P<shard>\d{5})-of-(?P<n>\d{5})$")


def data_file_name(prefix: str, shard: int, num_shards: int) -> str:
    """``naming.cc``: ``%s.data-%05d-of-%05d``."""
    return f"{prefix}.data-{shard:05d}-of-{num_shards:05d}"


# -- locating the checkpoint --------------------------------------------------------------------------
@dataclass
class CheckpointState:
    """The ``checkpoint`` text file of a run directory.

    Its paths are relative to the directory (``tf.train.Checkpoint``, a ``Saver`` given a relative
    prefix) or absolute (a ``Saver`` given an absolute prefix, so a copied run directory names the
    old place). Nothing outside the directory is ever read: :meth:`resolve` answers ``None`` for a
    path that leaves it.
    """

    directory: str
    model_checkpoint_path: str | None = None
    all_model_checkpoint_paths: list[str] = field(default_factory=list)
    timestamps: list[float] = field(default_factory=list)

    def resolve(self, p: str) -> str | None:
        """The full prefix of ``p`` when it lies inside the directory (after links), else None."""
        if not p or "\x00" in p:
            return None
        full = p if os.path.isabs(p) else os.path.join(self.directory, p)
        real_root = os.path.realpath(self.directory)
        for suffix in ("", ".index"):  # the .index itself may be a link out of the directory
            if os.path.commonpath([real_root, os.path.realpath(full + suffix)]) != real_root:
                return None
        return full

    def current_prefix(self) -> str:
        """The prefix ``model_checkpoint_path`` names, refusing one outside the directory.

        An absolute path to another place whose file name exists here is a run directory that was
        copied or moved (TF1 ``Saver`` records absolute paths): that name here is meant.
        """
        p = self.model_checkpoint_path or ""
        full = self.resolve(p)
        if full is not None:
            return full
        state_file = os.path.join(self.directory, "checkpoint")
        if os.path.isabs(p) and "\x00" not in p:
            moved = self.resolve(os.path.basename(p))
            if moved is not None and os.path.isfile(moved + ".index"):
                return moved
        raise InvalidHeaderError(
            f"model_checkpoint_path {p!r} leaves the checkpoint directory", path=state_file,
            hint="name the checkpoint prefix or its .index file instead of the directory",
        )

    @classmethod
    def read(cls, directory: str) -> CheckpointState | None:
        path = os.path.join(directory, "checkpoint")
        if not os.path.isfile(path):
            return None
        real_root = os.path.realpath(directory)
        if os.path.commonpath([real_root, os.path.realpath(path)]) != real_root:
            raise InvalidHeaderError("the `checkpoint` state file links outside its directory", path=path)
        with open(path, "rb") as f:
            raw = f.read(1 << 20)
        try:
            doc = parse_text(raw.decode("utf-8", "replace"), path=path)
        except ProtobufDecodeError:
            return None
        timestamps = []
        for v in doc.get("all_model_checkpoint_timestamps", []):
            with contextlib.suppress(TypeError, ValueError):
                timestamps.append(float(v))
        return cls(
            directory,
            next((str(v) for v in doc.get("model_checkpoint_path", [])), None),
            [str(v) for v in doc.get("all_model_checkpoint_paths", [])],
            timestamps,
        )


def resolve_prefix(path: str | os.PathLike[str]) -> tuple[str, CheckpointState | None]:
    """Map a directory / prefix / ``.index`` / ``.data-*`` path to ``(prefix, checkpoint state)``."""
    p = os.fspath(path)
    if os.path.isdir(p):
        state = CheckpointState.read(p)
        if state and state.model_checkpoint_path:
            return state.current_prefix(), state
        saved_model_vars = os.path.join(p, "variables", "variables.index")
        if os.path.isfile(saved_model_vars):
            return saved_model_vars[: -len(".index")], state
        indexes = sorted(f for f in os.listdir(p) if f.endswith(".index"))
        if len(indexes) == 1:
            return os.path.join(p, indexes[0][: -len(".index")]), state
        raise TruncatedFileError(
            "directory has no `checkpoint` state file"
            + (f" and {len(indexes)} .index files" if indexes else " and no .index file"),
            path=p,
            hint="name the checkpoint prefix or its .index file",
        )
    if p.endswith(".index"):
        prefix = p[: -len(".index")]
    elif m := _DATA_RE.match(p):
        prefix = m.group("prefix")
    elif os.path.basename(p) == "checkpoint" and os.path.isfile(p):
        return resolve_prefix(os.path.dirname(p) or ".")
    else:
        prefix = p
    try:  # a named prefix does not need the state file: a broken one only loses the listing
        state = CheckpointState.read(os.path.dirname(prefix) or ".")
    except CorruptFileError:
        state = None
    return prefix, state


# -- slices (partitioned variables) -------------------------------------------------------------------
def _num_increasing(value: int) -> bytes:
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big") if value else b""
    return bytes((len(raw),)) + raw


_HEADER_BITS = [(0, 0), (0x80, 0), (0xC0, 0), (0xE0, 0), (0xF0, 0), (0xF8, 0), (0xFC, 0), (0xFE, 0),
                (0xFF, 0), (0xFF, 0x80), (0xFF, 0xC0)]  # fmt: skip


def _signed_num_increasing(value: int) -> bytes:
    """``OrderedCode::WriteSignedNumIncreasing``."""
    x = ~value if value < 0 else value
    if x < 64:
        return bytes(((0x80 ^ value) & 0xFF,))
    length = (x.bit_length() + 7) // 7
    buf = bytearray((value & (2**80 - 1)).to_bytes(10, "big"))  # sign-extended to 10 bytes
    begin = 10 - length
    buf[begin] ^= _HEADER_BITS[length][0]
    buf[begin + 1] ^= _HEADER_BITS[length][1]
    return bytes(buf[begin:])


def encode_tensor_name_slice(name: str, extents: list[tuple[int, int]]) -> bytes:
    """``EncodeTensorNameSlice``: the table key of one slice; extents are ``(start, length)``,
    ``length == -1`` meaning the full dimension."""
    escaped = name.encode("utf-8").replace(b"\xff", b"\xff\x00").replace(b"\x00", b"\x00\xff")
    out = bytearray(b"\x00") + escaped + b"\x00\x01" + _num_increasing(len(extents))
    for start, length in extents:
        out += _signed_num_increasing(start) + _signed_num_increasing(length)
    return bytes(out)


# -- the index ----------------------------------------------------------------------------------------
@dataclass
class BundleEntry:
    key: str
    dtype_code: int
    shape: tuple[int, ...]
    shard_id: int = 0
    offset: int = 0
    size: int = 0
    crc32c: int = 0  # masked, as stored
    slices: list[list[tuple[int, int]]] = field(default_factory=list)  # (start, length|-1) per dim

    @property
    def dtype(self) -> str:
        if self.dtype_code == DT_STRING:
            return "string"
        name = TF_DTYPES.get(self.dtype_code) or _QUANTIZED.get(self.dtype_code)
        if name is None:
            label = _TF_DTYPE_NAMES.get(self.dtype_code, str(self.dtype_code))
            raise UnknownDtypeError(f"TensorFlow dtype {label} is not supported", tensor=self.key)
        return name


def _parse_shape(msg: Any, path: str, key: str) -> tuple[int, ...]:
    if msg is None:
        return ()
    if get_int(msg, 3):
        raise InvalidHeaderError("tensor has unknown rank", path=path, tensor=key)
    dims = []
    for dim in get_messages(msg, 2, path=path):
        size = get_int(dim, 1)
        if size < 0:
            raise InvalidHeaderError(f"tensor has an unknown dimension ({size})", path=path, tensor=key)
        dims.append(size)
    return tuple(dims)


def _parse_entry(key: str, value: bytes, path: str) -> BundleEntry:
    try:
        msg = parse(value, path=path)
        entry = BundleEntry(
            key,
            get_int(msg, 1),
            _parse_shape(get_message(msg, 2, path=path), path, key),
            get_int(msg, 3),
            get_int(msg, 4),
            get_int(msg, 5),
            get_int(msg, 6, signed=False),
        )
        for sl in get_messages(msg, 7, path=path):
            extents = []
            for ext in get_messages(sl, 1, path=path):
                extents.append((get_int(ext, 1), get_int(ext, 2) if 2 in ext else -1))
            entry.slices.append(extents)
    except ProtobufDecodeError as exc:
        raise InvalidHeaderError(f"bad BundleEntryProto: {exc.message}", path=path, tensor=key) from None
    if entry.offset < 0 or entry.size < 0 or entry.shard_id < 0:
        raise InvalidOffsetError(
            f"negative offset/size/shard ({entry.offset}, {entry.size}, {entry.shard_id})",
            path=path, tensor=key,
        )
    return entry


def _decode_key(raw: bytes, path: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidHeaderError(f"tensor name {raw!r} is not UTF-8", path=path) from None


# -- object graph -------------------------------------------------------------------------------------
def object_graph_names(graph_bytes: bytes, *, path: str = "") -> dict[str, str]:
    """``checkpoint key -> readable name`` from a serialized ``TrackableObjectGraph``.

    A variable's readable name is the root child it is reached from (preferring the model over the
    optimizer, which also references the model's variables) followed by the variable's
    ``full_name`` (``dense/kernel`` for Keras), or the object path when ``full_name`` is missing.
    Direct children of the root (``epoch``, ``save_counter``) keep their local name.
    """
    graph = parse(graph_bytes, path=path)
    nodes = get_messages(graph, 1, path=path)
    if not nodes:
        return {}
    children = [[(get_int(c, 1), get_str(c, 2)) for c in get_messages(n, 1, path=path)] for n in nodes]
    top_children = children[0]
    ordered = [c for c in top_children if c[1] != "optimizer"] + [c for c in top_children if c[1] == "optimizer"]
    # A compiled Keras model tracks its optimizer as a child too: an object that is itself a
    # child of the root is named from the root (optimizer/...), never through another one.
    top_ids = {node_id for node_id, _ in top_children}
    owner: dict[int, tuple[str, list[str]]] = {}
    for node_id, local in ordered:
        if not 0 <= node_id < len(nodes):
            continue
        queue = [(node_id, [local])]
        while queue:
            current, trail = queue.pop(0)
            if current in owner or current == 0 or (current in top_ids and current != node_id):
                continue
            owner[current] = (local, trail)
            for child, child_name in children[current]:
                if 0 <= child < len(nodes) and child not in owner:
                    queue.append((child, [*trail, child_name]))
    names: dict[str, str] = {}
    for node_id, node in enumerate(nodes):
        for attr in get_messages(node, 2, path=path):
            ckey = get_str(attr, 3)
            attr_name = get_str(attr, 1)
            if not ckey or node_id not in owner:
                continue
            top, trail = owner[node_id]
            full_name = get_str(attr, 2)
            if len(trail) == 1:
                readable = top
            elif full_name:
                readable = f"{top}/{full_name}"
            else:
                readable = "/".join(trail)
            if attr_name != "VARIABLE_VALUE":
                readable = f"{readable}/{attr_name}"
            names[ckey] = readable
    return names


# -- reader -------------------------------------------------------------------------------------------
#: ``names=`` spellings: "raw" (keys as stored; "object" is its older name) or "readable"
_NAME_MODES = {"readable": "readable", "raw": "raw", "object": "raw"}


class TFBundleReader(FormatReader):
    format_name = "tf_bundle"

    def __init__(
        self, path: str | os.PathLike[str], *, names: str = "readable", check_crc: bool = False
    ) -> None:
        super().__init__(path)
        if names not in _NAME_MODES:
            raise UnsupportedOperationError(
                f"names must be one of {', '.join(_NAME_MODES)}, not {names!r}", path=path,
                hint="-o names=readable (object-graph names, the default) "
                "or -o names=raw (keys as stored)",
            )
        names = _NAME_MODES[names]
        self.prefix, self.state = resolve_prefix(path)
        self.index_path = self.prefix + ".index"
        self.check_crc = check_crc
        self._maps: dict[int, mmap.mmap | None] = {}
        self._files: dict[int, Any] = {}
        self._load_index()
        self._check_shards()
        self._names_mode = names
        self._to_key: dict[str, str] = {}
        self._display: dict[str, str] = {k: k for k in self._listed}
        self._apply_readable_names(display=names == "readable")

    # -- index ----------------------------------------------------------------------------------
    def _load_index(self) -> None:
        try:
            with open(self.index_path, "rb") as f:
                data = f.read()
        except OSError as exc:  # missing, a directory, a name too long for the file system...
            if not isinstance(exc, (FileNotFoundError, IsADirectoryError, NotADirectoryError)):
                raise InvalidHeaderError(
                    f"cannot open the checkpoint index: {exc.strerror or exc}", path=self.path
                ) from None
            named = os.fspath(self.path)
            if os.path.isfile(named) and not named.endswith(".index") and not _DATA_RE.match(named):
                raise InvalidHeaderError(  # e.g. --format tf_bundle on another kind of file
                    f"not a TensorFlow checkpoint (no {os.path.basename(self.index_path)} beside it)",
                    path=named,
                ) from None
            raise TruncatedFileError(
                "TensorFlow checkpoint index not found", path=self.index_path,
                hint="pass a checkpoint prefix, its .index file, or a directory with a `checkpoint` file",
            ) from None
        table = read_table(data, path=self.index_path)
        if not table or table[0][0] != b"":
            raise InvalidHeaderError("checkpoint index has no header entry", path=self.index_path)
        try:
            header = parse(table[0][1], path=self.index_path)
            self.num_shards = get_int(header, 1)
            self.big_endian = get_int(header, 2) == 1
            version = get_message(header, 3, path=self.index_path) or {}
            self.producer = get_int(version, 1)
            reader_version = get_int(version, 2)
        except ProtobufDecodeError as exc:
            raise InvalidHeaderError(f"bad BundleHeaderProto: {exc.message}", path=self.index_path) from None
        if not 1 <= self.num_shards <= 100_000:
            raise InvalidHeaderError(f"header claims {self.num_shards} data shards", path=self.index_path)
        if reader_version > 1:
            raise UnsupportedOperationError(
                f"checkpoint needs bundle reader version {reader_version}", path=self.index_path
            )
        self._entries: dict[str, BundleEntry] = {}
        self._slice_entries: dict[bytes, BundleEntry] = {}
        for raw_key, value in table[1:]:
            if raw_key[:1] == b"\x00":  # a slice of a partitioned variable
                self._slice_entries[raw_key] = _parse_entry(repr(raw_key), value, self.index_path)
                continue
            key = _decode_key(raw_key, self.index_path)
            self._entries[key] = _parse_entry(key, value, self.index_path)
        self._numeric = [k for k, e in self._entries.items() if e.dtype_code != DT_STRING]
        self._strings = [k for k, e in self._entries.items() if e.dtype_code == DT_STRING]
        self._listed = [k for k in self._entries if k != OBJECT_GRAPH_KEY]  # what keys() shows
        for key in self._numeric:
            entry = self._entries[key]
            try:
                entry.dtype  # noqa: B018 - raises UnknownDtypeError early, naming the tensor
            except UnknownDtypeError as exc:
                raise UnknownDtypeError(exc.message, path=self.index_path, tensor=key) from None
            if not entry.slices:
                self._check_size(entry, entry.size)

    def _check_size(self, entry: BundleEntry, size: int) -> None:
        expected = math.prod(entry.shape) * DTYPES[entry.dtype].itemsize
        if size != expected:
            raise InvalidOffsetError(
                f"entry holds {size} bytes but {entry.dtype}{list(entry.shape)} needs {expected}",
                path=self.index_path, tensor=entry.key,
            )

    def _data_entries(self) -> Iterable[BundleEntry]:
        for e in self._entries.values():
            if not e.slices:
                yield e
        yield from self._slice_entries.values()

    def _check_inside(self, name: str, key: str) -> None:
        """A data shard must resolve beside the checkpoint (its prefix's directory, or the
        directory the index really lives in): a link elsewhere would read another file."""
        real = os.path.realpath(name)
        homes = {os.path.realpath(os.path.dirname(os.path.abspath(self.prefix))),
                 os.path.dirname(os.path.realpath(self.index_path))}
        if os.path.dirname(real) not in homes:
            raise InvalidHeaderError(
                f"data shard {os.path.basename(name)} links outside the checkpoint's directory "
                f"(to {real})",
                path=self.index_path,
                tensor=key,
            )

    def _check_shards(self) -> None:
        ends: dict[int, tuple[int, str]] = {}
        for e in self._data_entries():
            if e.shard_id >= self.num_shards:
                raise InvalidOffsetError(
                    f"entry is in shard {e.shard_id} but the bundle has {self.num_shards}",
                    path=self.index_path, tensor=e.key,
                )
            if e.offset + e.size > ends.get(e.shard_id, (0, ""))[0]:
                ends[e.shard_id] = (e.offset + e.size, e.key)
        for shard, (end, key) in ends.items():
            name = data_file_name(self.prefix, shard, self.num_shards)
            self._check_inside(name, key)
            try:
                size = os.path.getsize(name)
            except FileNotFoundError:
                raise TruncatedFileError("data shard is missing", path=name, tensor=key) from None
            if size < end:
                raise TruncatedFileError(
                    f"data shard has {size} bytes but the index places data up to byte {end}",
                    path=name, tensor=key,
                )

    def _apply_readable_names(self, display: bool) -> None:
        """Readable names from the object graph: listed when ``display``, accepted by ``get``,
        ``info`` and ``in`` either way."""
        if OBJECT_GRAPH_KEY not in self._entries:
            return
        graph = self.get_strings(OBJECT_GRAPH_KEY).reshape(-1)
        if graph.size != 1:
            return
        try:
            mapping = object_graph_names(graph[0], path=self.index_path)
        except ProtobufDecodeError as exc:
            raise InvalidHeaderError(f"bad object graph: {exc.message}", path=self.index_path,
                                     tensor=OBJECT_GRAPH_KEY) from None
        taken: dict[str, int] = {}
        for key in self._listed:
            name = mapping.get(key)
            if name:
                taken[name] = taken.get(name, 0) + 1
        chosen: dict[str, str] = {}
        for key in self._listed:
            name = mapping.get(key)
            if not name or taken[name] > 1 or (name in self._entries and name != key):
                name = key[: -len(_ATTR_SUFFIX)] if key.endswith(_ATTR_SUFFIX) else key
            chosen[key] = name
        # Names stay unique: a name that two keys would share, or that is another key, gives way
        # to the key itself.
        counts = Counter(chosen.values())
        for key, name in chosen.items():
            if counts[name] > 1 or (name in self._entries and name != key):
                name = key
            if display:
                self._display[key] = name
            if name != key:
                self._to_key[name] = key

    # -- shards ---------------------------------------------------------------------------------
    def _shard(self, shard: int) -> mmap.mmap | None:
        if shard not in self._maps:
            name = data_file_name(self.prefix, shard, self.num_shards)
            f = open(name, "rb")  # noqa: SIM115 - kept open for the map, closed in close()
            self._files[shard] = f
            size = os.fstat(f.fileno()).st_size
            self._maps[shard] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else None
        return self._maps[shard]

    def _raw(self, entry: BundleEntry) -> np.ndarray:
        if entry.size == 0:
            return np.zeros(0, np.uint8)
        mm = self._shard(entry.shard_id)
        assert mm is not None
        if entry.offset + entry.size > len(mm):
            raise TruncatedFileError(
                "data shard shrank since it was opened",
                path=data_file_name(self.prefix, entry.shard_id, self.num_shards), tensor=entry.key,
            )
        return np.frombuffer(mm, np.uint8, entry.size, entry.offset)

    def _check_entry_crc(self, entry: BundleEntry, raw: np.ndarray) -> None:
        if entry.dtype_code == DT_STRING:
            try:
                actual = _string_data_crc(raw.tobytes(), math.prod(entry.shape))
            except CorruptFileError as exc:
                raise InvalidOffsetError(exc.message, path=self.index_path, tensor=entry.key) from None
        else:
            actual = crc32c(raw)
        if actual != unmask(entry.crc32c):
            raise ChecksumMismatchError(
                f"data CRC-32C is {actual:#010x}, the index records {unmask(entry.crc32c):#010x}",
                path=data_file_name(self.prefix, entry.shard_id, self.num_shards), tensor=entry.key,
            )

    def _numeric_array(self, entry: BundleEntry, shape: tuple[int, ...]) -> np.ndarray:
        raw = self._raw(entry)
        if self.check_crc:
            self._check_entry_crc(entry, raw)
        dt = DTYPES[entry.dtype]
        if self.big_endian and dt.itemsize > 1:
            return raw.view(dt.newbyteorder(">")).astype(dt).reshape(shape)
        return raw.view(dt).reshape(shape)

    # -- public API -----------------------------------------------------------------------------
    def _key(self, name: str) -> str:
        key = self._to_key.get(name, name)
        if key not in self._entries or key == OBJECT_GRAPH_KEY:
            raise TensorNotFoundError(
                f"no such tensor; the checkpoint has {len(self._listed)} tensors "
                f"(first: {', '.join(self.keys()[:5]) or 'none'})",
                path=self.prefix, tensor=name,
            )
        return key

    def keys(self) -> list[str]:
        return [self._display[k] for k in self._listed]

    def __contains__(self, name: object) -> bool:
        key = self._to_key.get(name, name) if isinstance(name, str) else name
        return key in self._entries and key != OBJECT_GRAPH_KEY

    def info(self, name: str) -> TensorInfo:
        key = self._key(name)
        e = self._entries[key]
        extra: dict[str, Any] = {"shard": e.shard_id, "offset": e.offset, "size": e.size,
                                 "crc32c": f"{unmask(e.crc32c):#010x}"}
        if e.slices:
            extra = {"slices": len(e.slices)}
        if key != name or self._display[key] != key:
            extra["checkpoint_key"] = key
        if e.dtype_code == DT_STRING:
            extra["nbytes"] = e.size  # varint lengths + CRC + bytes, as stored
        if e.dtype_code in _QUANTIZED:
            extra["tf_dtype"] = {11: "qint8", 12: "quint8", 13: "qint32", 15: "qint16", 16: "quint16"}[e.dtype_code]
        return TensorInfo(self._display[key], e.dtype, e.shape, extra)

    def get(self, name: str) -> np.ndarray:
        key = self._key(name)
        entry = self._entries[key]
        if entry.dtype_code == DT_STRING:
            return self.get_strings(key)
        if entry.slices:
            return self._assemble(entry)
        return self._numeric_array(entry, entry.shape)

    def byte_span(self, name: str) -> ByteSpan | None:
        """An unpartitioned little-endian tensor's bytes in its data shard (None with
        ``check_crc``: a span copy would skip the check ``get`` promises)."""
        entry = self._entries[self._key(name)]
        if entry.dtype_code == DT_STRING:
            return None
        itemsize = DTYPES[entry.dtype].itemsize
        if entry.slices or entry.size == 0 or self.check_crc or (self.big_endian and itemsize > 1):
            return None
        self._shard(entry.shard_id)  # opens the shard file
        shard_path = data_file_name(self.prefix, entry.shard_id, self.num_shards)
        return ByteSpan(shard_path, self._files[entry.shard_id].fileno(), entry.offset, entry.size)

    def _slice_plan(self, entry: BundleEntry) -> list[tuple[tuple[slice, ...], BundleEntry]]:
        """Where each stored slice goes in the full tensor, checked against the full shape, the
        slice entry's bytes and each other (together they must tile the tensor exactly)."""
        plan = []
        covered = 0
        for extents in entry.slices:
            if len(extents) != len(entry.shape):
                raise InvalidHeaderError("slice rank differs from the tensor's", path=self.index_path, tensor=entry.key)
            index = []
            for (start, length), dim in zip(extents, entry.shape):
                stop = dim if length == -1 else start + length
                if length < -1 or not 0 <= start <= stop <= dim:
                    raise InvalidOffsetError(
                        f"slice [{start}:{stop}] outside dimension {dim}", path=self.index_path, tensor=entry.key
                    )
                index.append(slice(start, stop))
            part = self._slice_entries.get(encode_tensor_name_slice(entry.key, extents))
            if part is None:
                raise TruncatedFileError("a slice of the partitioned variable is missing", path=self.index_path,
                                         tensor=entry.key)
            part.key = entry.key
            if part.dtype_code != entry.dtype_code:
                raise InvalidHeaderError(
                    f"a slice has dtype code {part.dtype_code}, the variable {entry.dtype_code}",
                    path=self.index_path, tensor=entry.key,
                )
            shape = tuple(s.stop - s.start for s in index)
            self._check_size(BundleEntry(entry.key, part.dtype_code, shape), part.size)
            # Pairwise overlap test: cheap for the few partitions TF writes, bounded for hostile files
            # (past that the element count alone guards the allocation, and gaps stay zero).
            for other, _ in plan[:_MAX_OVERLAP_CHECKS]:
                overlap = all(a.start < b.stop and b.start < a.stop for a, b in zip(index, other))
                if overlap and math.prod(shape):
                    raise InvalidOffsetError("two slices of the partitioned variable overlap",
                                             path=self.index_path, tensor=entry.key)
            covered += math.prod(shape)
            plan.append((tuple(index), part))
        full = math.prod(entry.shape)
        if covered != full:
            raise InvalidOffsetError(
                f"the slices hold {covered} of the variable's {full} elements",
                path=self.index_path, tensor=entry.key,
            )
        return plan

    def _assemble(self, entry: BundleEntry) -> np.ndarray:
        plan = self._slice_plan(entry)
        itemsize = DTYPES[entry.dtype].itemsize
        # Disjoint slices covering the tensor store exactly its bytes; the check stays as a backstop
        # against any path that would allocate the full shape from fewer stored bytes.
        check_expansion(math.prod(entry.shape) * itemsize, sum(part.size for _, part in plan),
                        path=self.index_path, tensor=entry.key, what="partitioned variable")
        out = np.zeros(entry.shape, DTYPES[entry.dtype])
        for index, part in plan:
            out[index] = self._numeric_array(part, tuple(s.stop - s.start for s in index))
        return out

    def string_keys(self) -> list[str]:
        """Keys of the DT_STRING tensors (also in :meth:`keys`, apart from the object graph)."""
        return list(self._strings)

    def get_strings(self, name: str) -> np.ndarray:
        """A DT_STRING tensor as an object array of ``bytes``."""
        entry = self._entries.get(name)
        if entry is None or entry.dtype_code != DT_STRING:
            raise TensorNotFoundError("no such string tensor", path=self.prefix, tensor=name)
        raw = self._raw(entry).tobytes()
        n = math.prod(entry.shape)
        lengths, pos = [], 0
        try:
            for _ in range(n):
                length, pos = decode_varint(raw, pos)
                lengths.append(length)
        except ProtobufDecodeError:
            raise InvalidOffsetError("string tensor lengths run past its data", path=self.prefix, tensor=name) from None
        if pos + 4 + sum(lengths) != len(raw):
            raise InvalidOffsetError(
                f"string tensor holds {len(raw)} bytes, its lengths need {pos + 4 + sum(lengths)}",
                path=self.prefix, tensor=name,
            )
        if self.check_crc:
            self._check_entry_crc(entry, np.frombuffer(raw, np.uint8))
        stored_length_crc = int.from_bytes(raw[pos : pos + 4], "little")
        if self.check_crc and unmask(stored_length_crc) != _lengths_crc(lengths):
            raise ChecksumMismatchError("string lengths fail their CRC-32C", path=self.prefix, tensor=name)
        out = np.empty(n, dtype=object)
        pos += 4
        for i, length in enumerate(lengths):
            out[i] = raw[pos : pos + length]
            pos += length
        return out.reshape(entry.shape)

    def strings(self) -> dict[str, np.ndarray]:
        return {name: self.get_strings(name) for name in self._strings}

    @property
    def object_graph(self) -> bytes | None:
        """The serialized ``TrackableObjectGraph`` of a TF2 checkpoint, if any."""
        if OBJECT_GRAPH_KEY not in self._entries:
            return None
        return bytes(self.get_strings(OBJECT_GRAPH_KEY).reshape(-1)[0])

    @property
    def metadata(self) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "prefix": self.prefix,
            "num_shards": self.num_shards,
            "endianness": "big" if self.big_endian else "little",
            "object_based": OBJECT_GRAPH_KEY in self._entries,
            "names": self._names_mode,
        }
        if self._strings:
            meta["string_tensors"] = {k: list(self._entries[k].shape) for k in self._strings}
        if self.state is not None:
            meta["model_checkpoint_path"] = self.state.model_checkpoint_path
            current = os.path.normpath(self.prefix)
            listed = list(self.state.all_model_checkpoint_paths)
            if self.state.model_checkpoint_path and self.state.model_checkpoint_path not in listed:
                listed.append(self.state.model_checkpoint_path)
            checkpoints = []
            for i, p in enumerate(listed):
                full = self.state.resolve(p)  # None: outside the directory, never looked at
                item: dict[str, Any] = {
                    "prefix": p,
                    "exists": full is not None and os.path.isfile(full + ".index"),
                    "current": full is not None and os.path.normpath(full) == current,
                    "latest": p == self.state.model_checkpoint_path,
                }
                if full is None:
                    item["outside_directory"] = True
                if i < len(self.state.timestamps):
                    item["timestamp"] = self.state.timestamps[i]
                checkpoints.append(item)
            meta["checkpoints"] = checkpoints
        for label, candidates in {
            "global_step": ("global_step", "step/.ATTRIBUTES/VARIABLE_VALUE", "global_step/.ATTRIBUTES/VARIABLE_VALUE"),
            "save_counter": ("save_counter/.ATTRIBUTES/VARIABLE_VALUE",),
            "epoch": ("epoch/.ATTRIBUTES/VARIABLE_VALUE", "epoch"),
            "optimizer_iterations": ("optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE",
                                     "optimizer/iter/.ATTRIBUTES/VARIABLE_VALUE"),
        }.items():
            for key in candidates:
                e = self._entries.get(key)
                if e is not None and not e.slices and e.shape == () and e.dtype_code in (3, 9, 1, 2):
                    meta[label] = self._numeric_array(e, ()).item()
                    break
        m = re.search(r"-(\d+)$", os.path.basename(self.prefix))
        if m and "global_step" not in meta:
            meta["step_from_name"] = int(m.group(1))
        return meta

    def verify(self) -> VerifyResult:
        result = VerifyResult(self.path)
        for entry in self._data_entries():
            try:
                self._check_entry_crc(entry, self._raw(entry))
                result.checked += 1
            except CorruptFileError as exc:
                result.failures.append(str(exc))
        return result

    def close(self) -> None:
        for mm in self._maps.values():
            close_mmap(mm)
        for f in self._files.values():
            f.close()
        self._maps.clear()
        self._files.clear()


# -- writer -------------------------------------------------------------------------------------------
def _shape_proto(shape: tuple[int, ...]) -> Writer:
    w = Writer()
    for dim in shape:
        d = Writer()
        if dim:
            d.varint(1, dim)
        w.message(2, d)
    return w


def _entry_proto(code: int, shape: tuple[int, ...], shard: int, offset: int, size: int, crc: int) -> bytes:
    w = Writer().varint(1, code).message(2, _shape_proto(shape))
    if shard:
        w.varint(3, shard)
    if offset:
        w.varint(4, offset)
    if size:
        w.varint(5, size)
    w.fixed32(6, crc)
    return w.tobytes()


def _header_proto(num_shards: int) -> bytes:
    return Writer().varint(1, num_shards).message(3, Writer().varint(1, 1)).tobytes()


def _encode_strings(values: np.ndarray) -> bytes:
    """``WriteStringTensor``: varint lengths, masked CRC of the lengths, then the bytes."""
    items = [v if isinstance(v, bytes) else str(v).encode("utf-8") for v in values.reshape(-1).tolist()]
    lengths = b"".join(encode_varint(len(s)) for s in items)
    length_crc = _lengths_crc(len(s) for s in items)
    return lengths + mask(length_crc).to_bytes(4, "little") + b"".join(items)


def _lengths_crc(lengths: Iterable[int]) -> int:
    crc = 0
    for n in lengths:
        crc = crc32c(n.to_bytes(8 if n > 0xFFFFFFFF else 4, "little"), crc)
    return crc


def _string_data_crc(blob: bytes, count: int) -> int:
    """The entry CRC of a DT_STRING tensor: the lengths as u32le words (not the varints), then the
    stored length CRC and the string bytes."""
    lengths, pos = [], 0
    for _ in range(count):
        n, pos = decode_varint(blob, pos)
        lengths.append(n)
    if pos + 4 + sum(lengths) != len(blob):  # also keeps _lengths_crc from huge (>64-bit) lengths
        raise InvalidOffsetError(
            f"string tensor holds {len(blob)} bytes, its lengths need {pos + 4 + sum(lengths)}"
        )
    return crc32c(blob[pos:], _lengths_crc(lengths))


def _is_string_array(arr: Any) -> bool:
    return isinstance(arr, np.ndarray) and arr.dtype.kind in "OSU"


def _write_state_file(prefix: str, update: bool, fsync: bool = True) -> None:
    directory = os.path.dirname(prefix) or "."
    rel = os.path.basename(prefix)
    paths: list[str] = []
    if update:
        state = CheckpointState.read(directory)
        if state is not None:
            paths = [p for p in state.all_model_checkpoint_paths if p != rel]
    paths.append(rel)
    text = f"model_checkpoint_path: {format_text_string(rel)}\n"
    text += "".join(f"all_model_checkpoint_paths: {format_text_string(p)}\n" for p in paths)
    with atomic_write(os.path.join(directory, "checkpoint"), fsync=fsync) as f:
        f.write(text.encode("utf-8"))


def _destination_prefix(path: str | os.PathLike[str], prefix_name: str) -> str:
    p = os.fspath(path)
    if p.endswith(".index"):
        return p[: -len(".index")]
    if m := _DATA_RE.match(p):
        return m.group("prefix")
    if os.path.isdir(p) or p.endswith(("/", os.sep)):
        os.makedirs(p, exist_ok=True)
        return os.path.join(p, prefix_name)
    return p


class TFBundleFormat(Format):
    name = "tf_bundle"
    description = "TensorFlow checkpoint V2 (.index + .data-*, tf.train.Saver / tf.train.Checkpoint)"
    can_write_strings = True
    read_options: ClassVar[Mapping[str, str]] = {
        "names": "object (the keys as stored, default) or readable (TF2 object paths as names)",
        "check_crc": "check every data block's CRC-32C while reading (default false)",
    }
    write_options: ClassVar[Mapping[str, str]] = {
        "num_shards": "split the data over this many .data files (default 1)",
        "strings": "{name: strings} DT_STRING tensors to add (Python API)",
        "state_file": "write or update the directory's `checkpoint` file (default true)",
        "prefix_name": "checkpoint prefix when the destination is a directory (default ckpt)",
        "fsync": "make the files durable before they appear (default true)",
    }

    @classmethod
    def sniff(cls, path: Path, head: bytes) -> bool:
        p = Path(path)
        if p.is_dir():
            if (p / "checkpoint").is_file() or (p / "variables" / "variables.index").is_file():
                return True
            return any(f.name.endswith(".index") and _has_table_magic(f) for f in p.iterdir() if f.is_file())
        if p.name.endswith(".index"):
            return _has_table_magic(p)
        if _DATA_RE.match(p.name) or not p.exists():
            return _has_table_magic(Path(resolve_prefix(p)[0] + ".index"))
        if p.name == "checkpoint":
            return head.lstrip().startswith(b"model_checkpoint_path")
        return False

    @classmethod
    def open(cls, path: str | os.PathLike[str], **options: Any) -> TFBundleReader:
        return TFBundleReader(path, **options)

    @classmethod
    def write(
        cls,
        path: str | os.PathLike[str],
        tensors: Mapping[str, np.ndarray],
        *,
        metadata: Mapping[str, Any] | None = None,
        num_shards: int = 1,
        strings: Mapping[str, Any] | None = None,
        state_file: bool = True,
        prefix_name: str = "ckpt",
        fsync: bool = True,
        **options: Any,
    ) -> None:
        """Write a bundle at ``path`` (a prefix, a ``.index`` name, or a directory -> ``dir/ckpt``).

        ``num_shards`` splits the data over that many files (contiguously, by bytes);
        ``strings`` adds DT_STRING tensors; ``state_file`` writes/updates the directory's
        ``checkpoint`` file. ``fsync=False`` skips flushing to disk (as TensorFlow does); the files
        still appear atomically. ``metadata`` has no place in a bundle and is not stored.
        """
        from weightvault.formats._common import describe_entry, fetch_array

        if num_shards < 1:
            raise UnsupportedOperationError("num_shards must be at least 1", path=path)
        prefix = _destination_prefix(path, prefix_name)
        names = list(tensors)
        plan: list[tuple[str, str, tuple[int, ...], int]] = []
        for name in names:
            value = tensors[name] if not isinstance(tensors, DescribedTensors) else None
            if value is not None and _is_string_array(value):
                plan.append((name, "string", tuple(value.shape), 0))
                continue
            dtype, shape = describe_entry(tensors, name)
            if dtype == "string":  # a reader's string tensor (object array of bytes)
                plan.append((name, "string", shape, 0))
                continue
            if dtype not in TF_CODES:
                raise UnsupportedOperationError(f"TensorFlow checkpoints have no {dtype} dtype", path=path, tensor=name)
            plan.append((name, dtype, shape, math.prod(shape) * DTYPES[dtype].itemsize))
        for name, value in (strings or {}).items():
            plan.append((name, "string", tuple(np.asarray(value, dtype=object).shape), 0))
        keys = [p[0] for p in plan]
        if len(set(keys)) != len(keys):
            raise UnsupportedOperationError("duplicate tensor names", path=path)
        total = sum(p[3] for p in plan) or 1
        entries: dict[bytes, bytes] = {}
        shard_paths = [data_file_name(prefix, s, num_shards) for s in range(num_shards)]
        with contextlib.ExitStack() as stack:
            files = [stack.enter_context(atomic_write(p, fsync=fsync)) for p in shard_paths]
            offsets = [0] * num_shards
            written = 0
            for name, dtype, shape, nbytes in plan:
                shard = min(num_shards - 1, written * num_shards // total) if nbytes else 0
                written += nbytes
                if dtype == "string":
                    source = (strings or {}).get(name) if name not in tensors else tensors[name]
                    values = np.asarray(source, dtype=object).reshape(shape)
                    blob = _encode_strings(values)
                    crc = _string_data_crc(blob, values.size)
                    files[shard].write(blob)
                    code, size = DT_STRING, len(blob)
                else:
                    arr = fetch_array(tensors, name)
                    if dtype_name(arr.dtype, tensor=name) != dtype or tuple(arr.shape) != shape:
                        arr = np.ascontiguousarray(arr, DTYPES[dtype]).reshape(shape)
                    crc = crc32c(arr)
                    files[shard].write(memoryview(arr.reshape(-1).view(np.uint8)))
                    code, size = TF_CODES[dtype], arr.nbytes
                entries[name.encode("utf-8")] = _entry_proto(code, shape, shard, offsets[shard], size, mask(crc))
                offsets[shard] += size
        # The index goes down last: it is what makes the new data visible to readers.
        index = write_table([(b"", _header_proto(num_shards)), *sorted(entries.items())])
        with atomic_write(prefix + ".index", fsync=fsync) as f:
            f.write(index)
        if state_file:
            _write_state_file(prefix, update=True, fsync=fsync)


def _has_table_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() < 48:
                return False
            f.seek(-8, os.SEEK_END)
            tail = f.read(8)
    except OSError:
        return False
    return int.from_bytes(tail, "little") == TABLE_MAGIC


def ema_names(keys: Iterable[str]) -> dict[str, str]:
    """Re-exported from :mod:`weightvault.core.ema_names` for TF users."""
    from weightvault.core.ema_names import ema_names as _ema_names

    return _ema_names(keys)
