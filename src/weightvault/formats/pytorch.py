"""PyTorch ``torch.save`` files (``.pt``/``.pth``/``.bin``), read and written without torch.

Reading
-------
Two containers hold the same pickle language:

* the **zip** format (torch >= 1.6): ``<archive>/data.pkl`` plus one stored (uncompressed) record
  ``<archive>/data/<key>`` per storage, every record 64-byte aligned. The file is mmapped once and
  each storage is a zero-copy numpy view of its record's bytes at the record's data offset;
* the **legacy** stream (torch < 1.6, ``_use_new_zipfile_serialization=False``): five pickles
  (magic number, protocol version, sys info, the object, the storage keys) followed by each
  storage as ``int64 numel`` + raw bytes. Storages are again views of the mmapped file.

``data.pkl`` is read with :func:`weightvault.core.unpickler.safe_unpickle`: every global resolves
to a stand-in written here (tensor rebuild functions produce :class:`_TensorRef` descriptors,
storage classes and dtypes produce markers), storages come through ``persistent_load``, and any
other global — a pickled ``nn.Module`` class, ``os.system``, ``builtins.eval`` — raises
:class:`~weightvault.errors.UnsafePickleError` before anything is imported. After unpickling,
every tensor is checked against its storage (record present, record size equal to what the
storage claims, the tensor's last element inside the storage) before any data is touched, so
errors name the file *and* the tensor.

Names: the object is walked like :func:`weightvault.core.tree.flatten` walks a checkpoint
(``model/fc.weight``, ``optimizer/state/0/exp_avg``; a flat state dict keeps its own keys), and
``structure()`` returns the whole object with numpy arrays in place of tensors. When the object
is more than a flat state dict, ``metadata["pytorch"]["tree"]`` carries its tree spec, so
``convert train.pth x.safetensors`` and back rebuilds the same nested checkpoint.

Writing
-------
A protocol-2 pickle emitted by hand with only the opcodes ``torch.load(weights_only=True)``
accepts, inside a zip written by hand (stored records, data 64-byte aligned with torch's ``FB``
padding extra field, ZIP64 end records, real CRC-32s). Tensors that share memory in the input
(overlapping byte ranges of one numpy buffer, or one torch storage) share one storage in the
output, with their offsets and strides, so ``torch.load`` gives back tied tensors.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

import numpy as np

from weightvault.abc.format import (
    ByteSpan,
    DescribedTensors,
    Format,
    FormatReader,
    LazyTensors,
    TensorInfo,
    VerifyResult,
)
from weightvault.core.crc32 import crc32
from weightvault.core.dtypes import DTYPES, dtype_name
from weightvault.core.io import atomic_write, close_mmap, write_span
from weightvault.core.progress import progress_bar
from weightvault.core.strided import StridedView
from weightvault.core.unpickler import BASE_ALLOWED, OrderedDict, safe_unpickle, short_repr
from weightvault.errors import (
    CorruptFileError,
    InvalidHeaderError,
    InvalidOffsetError,
    TruncatedFileError,
    UnknownDtypeError,
    UnsafePickleError,
    UnsupportedObjectError,
    UnsupportedOperationError,
)
from weightvault.formats._carry import MAX_CARRIED_BYTES, decode_carried, encode_carried
from weightvault.formats._common import span_of
from weightvault.formats._zipmember import check_member, inflate, member_data_offset

__all__ = ["PyTorchFormat", "PyTorchReader", "write_pytorch"]

ZIP_MAGIC = b"PK\x03\x04"
#: pickle(PROTO 2, LONG1 0x1950a86a20f9469cfc6c): the first bytes of a legacy torch.save stream
LEGACY_MAGIC = bytes.fromhex("80028a0a6cfc9c46f9206aa85019")
MAX_PICKLE_BYTES = 2 << 30  # data.pkl of a compressed (re-zipped) archive: refuse bombs
ALIGNMENT = 64  # torch's kFieldAlignment / .storage_alignment
#: record holding other formats' metadata (formats._carry); torch.load ignores records it does not know
CARRY_RECORD = "weightvault_metadata.json"

#: torch storage class name -> canonical dtype (None: UntypedStorage, sized in bytes)
STORAGE_DTYPES: dict[str, str | None] = {
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128",
    "UntypedStorage": None,
}
_QUANTIZED_STORAGES = ("QInt8Storage", "QUInt8Storage", "QInt32Storage", "QUInt4x2Storage", "QUInt2x4Storage")

#: torch dtype global name -> canonical dtype
TORCH_DTYPES: dict[str, str] = {
    "float32": "float32", "float": "float32", "float64": "float64", "double": "float64",
    "float16": "float16", "half": "float16", "bfloat16": "bfloat16",
    "int64": "int64", "long": "int64", "int32": "int32", "int": "int32", "int16": "int16",
    "short": "int16", "int8": "int8", "uint8": "uint8", "bool": "bool",
    "complex64": "complex64", "cfloat": "complex64", "complex128": "complex128", "cdouble": "complex128",
    "uint16": "uint16", "uint32": "uint32", "uint64": "uint64",
    "float8_e4m3fn": "float8_e4m3fn", "float8_e5m2": "float8_e5m2", "float8_e4m3fnuz": "float8_e4m3fnuz",
    "float8_e5m2fnuz": "float8_e5m2fnuz", "float8_e8m0fnu": "float8_e8m0fnu",
}  # fmt: skip
_UNSUPPORTED_DTYPES = ("complex32", "chalf", "float4_e2m1fn_x2", "bits8", "bits16", "bits1x8", "bits2x4", "bits4x2",
                       "qint8", "quint8", "qint32", "quint4x2", "quint2x4")  # fmt: skip

#: canonical dtype -> (storage class for _rebuild_tensor_v2, or None: UntypedStorage + v3)
_WRITE_STORAGE: dict[str, str | None] = {
    **{dt: cls for cls, dt in STORAGE_DTYPES.items() if dt is not None},
    **{dt: None for dt in ("uint16", "uint32", "uint64", "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz",
                           "float8_e5m2fnuz", "float8_e8m0fnu")},
}  # fmt: skip

STATE_DICT_HINT = (
    "load it with torch in a trusted environment and save only the tensors: "
    "torch.save(model.state_dict(), 'weights.pt')"
)


# ------------------------------------------------------------------------------------------------
# What the restricted unpickler builds
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _StorageType:
    """Marker for ``torch.FloatStorage`` & co.: the dtype a storage's elements have."""

    dtype: str | None  # None: UntypedStorage (numel counts bytes)


@dataclass(frozen=True)
class _Dtype:
    """Marker for ``torch.float8_e4m3fn`` & co."""

    torch_name: str


class _TypeMarker:
    """Marker for ``torch.Tensor`` / ``torch.nn.Parameter`` as used by ``_rebuild_from_type_v2``."""

    def __init__(self, name: str) -> None:
        self.name = name


@dataclass
class _Storage:
    key: str
    dtype: str | None  # None: untyped (bytes)
    numel: int  # elements of dtype, bytes when untyped
    elem_offset: int = 0  # legacy pre-1.0 storage views: start inside the root storage


@dataclass(eq=False)
class _TensorRef(StridedView):
    """A tensor as the pickle describes it: nothing is read until :meth:`PyTorchReader.get`."""

    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: str


#: numpy (and torch) arrays have at most 64 dimensions
MAX_DIMS = 64


def _int_tuple(value: Any, what: str, path: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(type(v) is int and v >= 0 for v in value):
        raise InvalidHeaderError(f"tensor {what} {short_repr(value)} is not a tuple of non-negative ints",
                                 path=path)
    if len(value) > MAX_DIMS:
        raise InvalidHeaderError(f"tensor {what} has {len(value)} dimensions, more than {MAX_DIMS}", path=path)
    return tuple(value)


class _Rebuilders:
    """The stand-ins for torch's globals, bound to one file (for error messages)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def _tensor(self, storage: Any, offset: Any, size: Any, stride: Any, dtype: str | None) -> _TensorRef:
        if not isinstance(storage, _Storage):
            raise InvalidHeaderError(f"tensor rebuilt from a {type(storage).__name__}, not a storage", path=self.path)
        if type(offset) is not int or offset < 0:
            raise InvalidHeaderError(f"tensor storage offset {short_repr(offset)} is invalid", path=self.path)
        shape = _int_tuple(size, "size", self.path)
        strides = _int_tuple(stride, "stride", self.path)
        if len(shape) != len(strides):
            raise InvalidHeaderError(f"tensor size {shape} and stride {strides} differ in length", path=self.path)
        if dtype is None:
            raise InvalidHeaderError("tensor over an untyped storage without a dtype", path=self.path)
        if math.prod(d for d in shape if d) * 16 >= 1 << 62:
            # numpy refuses such a shape even with a zero dimension ("array is too big")
            raise InvalidHeaderError(f"tensor size {short_repr(shape)} is too large for any array", path=self.path)
        return _TensorRef(storage, offset, shape, strides, dtype)

    def rebuild_tensor(self, storage: Any, offset: Any, size: Any, stride: Any, *_: Any) -> _TensorRef:
        return self._tensor(storage, offset, size, stride, getattr(storage, "dtype", None))

    def rebuild_tensor_v3(
        self, storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any, hooks: Any, dtype: Any, *_: Any
    ) -> _TensorRef:
        if not isinstance(dtype, _Dtype):
            raise InvalidHeaderError(f"_rebuild_tensor_v3 got dtype {short_repr(dtype)}", path=self.path)
        return self._tensor(storage, offset, size, stride, _canonical_dtype(dtype.torch_name, self.path))

    def rebuild_parameter(self, data: Any, *_: Any) -> Any:
        if not isinstance(data, _TensorRef):
            raise InvalidHeaderError("parameter rebuilt from something that is not a tensor", path=self.path)
        return data

    def rebuild_from_type_v2(self, func: Any, new_type: Any, args: Any, state: Any) -> Any:
        # Tensor subclasses: only plain Tensor/Parameter are plain data; the state dict is ignored.
        if not isinstance(new_type, _TypeMarker) or not callable(func) or not isinstance(args, tuple):
            raise UnsafePickleError(
                f"the pickle rebuilds a tensor of type {short_repr(new_type)}, a tensor subclass we do not know",
                path=self.path,
                hint=STATE_DICT_HINT,
            )
        return func(*args)

    def allowed(self) -> dict[tuple[str, str], Callable[..., Any]]:
        table: dict[tuple[str, str], Callable[..., Any]] = dict(BASE_ALLOWED)
        for name in ("_rebuild_tensor", "_rebuild_tensor_v2"):
            table[("torch._utils", name)] = self.rebuild_tensor
        table[("torch._utils", "_rebuild_tensor_v3")] = self.rebuild_tensor_v3
        table[("torch._utils", "_rebuild_parameter")] = self.rebuild_parameter
        table[("torch._utils", "_rebuild_parameter_with_state")] = self.rebuild_parameter
        table[("torch._tensor", "_rebuild_from_type_v2")] = self.rebuild_from_type_v2
        table[("torch", "Tensor")] = _TypeMarker("torch.Tensor")  # type: ignore[assignment]
        table[("torch.nn.parameter", "Parameter")] = _TypeMarker("torch.nn.Parameter")  # type: ignore[assignment]
        table[("torch", "Size")] = _torch_size
        table[("torch", "device")] = _torch_device
        for cls, dt in STORAGE_DTYPES.items():
            for module in ("torch", "torch.cuda", "torch.storage"):
                table[(module, cls)] = _StorageType(dt)  # type: ignore[assignment]
        table[("torch", "UntypedStorage")] = _StorageType(None)  # type: ignore[assignment]
        for name in TORCH_DTYPES:
            table[("torch", name)] = _Dtype(name)  # type: ignore[assignment]
        return table


def _torch_size(dims: Any = ()) -> tuple[int, ...]:
    if not isinstance(dims, (tuple, list)) or not all(type(d) is int for d in dims):
        raise UnsafePickleError(f"torch.Size called with {type(dims).__name__}")
    return tuple(dims)


def _torch_device(*args: Any) -> str:
    if not args or not all(isinstance(a, (str, int)) for a in args):
        raise UnsafePickleError("torch.device called with unexpected arguments")
    return ":".join(str(a) for a in args)


def _canonical_dtype(torch_name: str, path: str, tensor: str | None = None) -> str:
    if torch_name in TORCH_DTYPES:
        return TORCH_DTYPES[torch_name]
    raise UnknownDtypeError(f"torch dtype {torch_name} is not supported", path=path, tensor=tensor)


def _has_storages(records: set[str], prefix: str) -> bool:
    return any(n.startswith(f"{prefix}/data/") for n in records)


def _refusal(path: str, *, has_storages: bool = True) -> Callable[[str, str], UnsafePickleError]:
    """The error for a global outside the allowlist, worded for what it usually means.

    ``has_storages=False``: the archive holds no tensor data at all (torch.save of
    ``TrainingArguments``, an RNG state, a config): say the file holds no weights.
    """

    def refuse(module: str, name: str) -> UnsafePickleError:
        full = f"{module}.{name}"
        if not has_storages:
            return UnsafePickleError(
                f"the file holds no weights: it is a pickled {full} with no tensor data (a "
                "training argument, RNG state or config object, not a model's state dict); nothing was "
                "imported or executed",
                path=path,
                hint="the weights are in another file (pytorch_model.bin, model.safetensors, a "
                "checkpoint's model .pt)",
            )
        root = module.partition(".")[0]
        if module == "__main__" or module.startswith(("torch.nn.modules", "torch.jit", "torchvision", "transformers")):
            what = (
                f"a pickled model object ({full}): torch.save(model) stores the class by name and "
                "re-imports and runs it on load"
            )
        elif module == "__torch__" or module.startswith("__torch__."):
            what = f"TorchScript code ({full})"
        elif root in ("torch",) and (name in _QUANTIZED_STORAGES or name in _UNSUPPORTED_DTYPES or "qtensor" in name
                                     or "sparse" in name or "nested" in name):
            return UnsafePickleError(
                f"the file holds {full}, a quantized/sparse/nested or unsupported tensor kind that this reader "
                "does not convert; nothing was executed",
                path=path,
                hint="dequantize / densify the tensors with torch and save a plain state dict",
            )
        elif root in ("numpy",):
            what = f"a numpy object ({full}) outside the tensors"
        else:
            what = f"a reference to {full}, which is not a tensor, storage or plain container"
        return UnsafePickleError(
            f"refusing to load: the pickle holds {what}; nothing was imported or executed",
            path=path,
            hint=f"if you trust the file, {STATE_DICT_HINT}",
        )

    return refuse


# ------------------------------------------------------------------------------------------------
# Containers
# ------------------------------------------------------------------------------------------------
@dataclass
class _Record:
    name: str
    data_offset: int
    size: int
    crc: int
    compressed: bool
    info: zipfile.ZipInfo | None = None


def _read_zip_records(f: BinaryIO, buf: Any, file_size: int, path: str) -> dict[str, _Record]:
    """Map record name -> where its bytes are, from the central directory and local headers."""
    try:
        zf = zipfile.ZipFile(f)
    except zipfile.BadZipFile as exc:
        raise TruncatedFileError(
            f"the zip archive has no readable central directory ({exc}); the file is truncated or damaged",
            path=path,
        ) from None
    except (OSError, ValueError, struct.error, NotImplementedError, EOFError, OverflowError) as exc:
        # NotImplementedError: "zip file version 9.9"; OSError/ValueError: offsets outside the file
        raise InvalidHeaderError(f"cannot read the zip directory: {type(exc).__name__}: {exc}", path=path) from None
    records: dict[str, _Record] = {}
    for info in zf.infolist():
        data_offset = member_data_offset(buf, info, file_size, path=path)
        check_member(info, path=path)
        if info.filename in records:
            raise InvalidHeaderError(f"record {info.filename} appears twice in the archive", path=path)
        records[info.filename] = _Record(
            info.filename, data_offset, info.file_size, info.CRC, info.compress_type != zipfile.ZIP_STORED, info
        )
    zf.close()
    return records


class PyTorchReader(FormatReader):
    """A torch.save file (zip or legacy stream), read through the restricted unpickler."""

    format_name = "pytorch"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(path)
        self._file = open(self.path, "rb")
        self._mmap: mmap.mmap | None = None
        self._big_endian = False
        self._storage_cache: dict[str, np.ndarray] = {}
        self._extra: dict[str, Any] = {}
        self._carried: dict[str, Any] = {}  # other formats' metadata kept by our writer
        try:
            self.size = os.fstat(self._file.fileno()).st_size
            if self.size:
                self._mmap = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
            head = self._file.read(len(LEGACY_MAGIC))
            if head[:4] == ZIP_MAGIC:
                self.container = "zip"
                root = self._open_zip()
            elif head == LEGACY_MAGIC:
                self.container = "legacy"
                root = self._open_legacy()
            else:
                raise InvalidHeaderError("not a torch.save file (neither a zip archive nor the legacy stream)",
                                         path=self.path)
            self._root = root
            self._tree, self._names = _name_tensors(root)
            for name, ref in self._names.items():
                self._check(name, ref)
        except BaseException:
            self.close()
            raise

    # -- zip ---------------------------------------------------------------------------------------
    def _open_zip(self) -> Any:
        self._records = _read_zip_records(self._file, self._mmap, self.size, self.path)
        first = next(iter(self._records), "")
        prefix = first.split("/", 1)[0] if "/" in first else ""
        names = set(self._records)
        if f"{prefix}/constants.pkl" in names or any(n.startswith(f"{prefix}/code/") for n in names):
            raise UnsupportedOperationError(
                "this is a TorchScript archive (torch.jit.save): it holds compiled code, not a checkpoint",
                path=self.path,
                hint="in a trusted environment: torch.save(torch.jit.load(path).state_dict(), 'weights.pt')",
            )
        pkl = f"{prefix}/data.pkl"
        if pkl not in self._records:
            raise InvalidHeaderError(f"the zip archive has no {pkl}; it is not a torch.save file", path=self.path)
        self._prefix = prefix
        byteorder = self._small_record(f"{prefix}/byteorder")
        if byteorder not in (None, b"little", b"big"):
            raise InvalidHeaderError(f"byteorder record says {byteorder!r}", path=self.path)
        self._big_endian = byteorder == b"big"
        self._extra = {"container": "zip", "archive": prefix}
        version = self._small_record(f"{prefix}/version") or self._small_record(f"{prefix}/.data/version")
        if version is not None:
            self._extra["version"] = version.decode("ascii", "replace").strip()
        carried = self._records.get(f"{prefix}/{CARRY_RECORD}")
        if carried is not None and carried.size <= MAX_CARRIED_BYTES:
            self._carried = decode_carried(self._record_bytes(carried, MAX_CARRIED_BYTES), "pytorch")
        self._storage_records: dict[str, _Record] = {}
        rebuild = _Rebuilders(self.path)
        seen: dict[str, _Storage] = {}

        def persistent_load(pid: Any) -> _Storage:
            storage = _parse_storage_pid(pid, self.path)
            if storage.key in seen:
                if seen[storage.key].dtype != storage.dtype and storage.dtype is not None:
                    raise InvalidHeaderError(f"storage {storage.key} is used with two dtypes", path=self.path)
                return seen[storage.key]
            record = self._records.get(f"{prefix}/data/{storage.key}")
            if record is None:
                raise InvalidHeaderError(f"the pickle refers to storage data/{storage.key}, which the archive lacks",
                                         path=self.path)
            self._storage_records[storage.key] = record
            seen[storage.key] = storage
            return storage

        data = self._record_bytes(self._records[pkl], MAX_PICKLE_BYTES)
        return safe_unpickle(data, allowed=rebuild.allowed(), persistent_load=persistent_load, path=self.path,
                             what=pkl, encoding="utf-8",
                             refuse=_refusal(self.path, has_storages=_has_storages(names, prefix)))

    def _small_record(self, name: str) -> bytes | None:
        record = self._records.get(name)
        return None if record is None else bytes(self._record_bytes(record, 4096))

    def _record_bytes(self, record: _Record, limit: int) -> bytes | memoryview:
        if record.size > limit:
            raise InvalidHeaderError(f"record {record.name} is {record.size} bytes, over the {limit} cap",
                                     path=self.path)
        if record.compressed:
            return self._read_compressed(record)
        assert self._mmap is not None
        return memoryview(self._mmap)[record.data_offset : record.data_offset + record.size]

    def _read_compressed(self, record: _Record, tensor: str | None = None) -> bytes | bytearray:
        # Not what torch writes, but a re-zipped archive still loads in torch. The declared size was
        # checked against the compressed size at open; inflating stops one byte past it.
        assert self._mmap is not None and record.info is not None
        compressed = memoryview(self._mmap)[record.data_offset : record.data_offset + record.info.compress_size]
        return inflate(compressed, record.info, path=self.path, tensor=tensor)

    # -- legacy stream -----------------------------------------------------------------------------
    def _open_legacy(self) -> Any:
        f = self._file
        f.seek(0)
        plain = dict(BASE_ALLOWED)
        magic = safe_unpickle(f, allowed=plain, path=self.path, what="magic number")
        if magic != 0x1950A86A20F9469CFC6C:
            raise InvalidHeaderError("bad legacy magic number", path=self.path)
        protocol = safe_unpickle(f, allowed=plain, path=self.path, what="protocol version")
        if protocol != 1001:
            raise InvalidHeaderError(f"legacy protocol version {protocol!r} is not 1001", path=self.path)
        sys_info = safe_unpickle(f, allowed=plain, path=self.path, what="sys info", encoding="utf-8")
        little = sys_info.get("little_endian", True) if isinstance(sys_info, dict) else True
        self._big_endian = not little
        self._extra = {"container": "legacy", "protocol_version": protocol}
        rebuild = _Rebuilders(self.path)
        roots: dict[str, _Storage] = {}
        views: list[tuple[_Storage, str]] = []

        def persistent_load(pid: Any) -> Any:
            if isinstance(pid, tuple) and pid and pid[0] == "module":
                raise UnsafePickleError(
                    f"refusing to load: the legacy stream holds a pickled model class ({pid[1]!r}); nothing "
                    "was imported or executed", path=self.path, hint=f"if you trust the file, {STATE_DICT_HINT}",
                )
            storage = _parse_storage_pid(pid[:5] if isinstance(pid, tuple) else pid, self.path)
            view = pid[5] if isinstance(pid, tuple) and len(pid) > 5 else None
            root = roots.setdefault(storage.key, storage)
            if view is None:
                return root
            if (not isinstance(view, tuple) or len(view) != 3 or not isinstance(view[0], str)
                    or type(view[1]) is not int or type(view[2]) is not int or view[1] < 0 or view[2] < 0):
                raise InvalidHeaderError(f"storage view {view!r} is malformed", path=self.path)
            sub = _Storage(storage.key, storage.dtype, view[2], view[1])
            views.append((sub, view[0]))
            return sub

        root = safe_unpickle(f, allowed=rebuild.allowed(), persistent_load=persistent_load, path=self.path,
                             what="checkpoint pickle", encoding="utf-8", refuse=_refusal(self.path))
        keys = safe_unpickle(f, allowed=plain, path=self.path, what="storage key list", encoding="utf-8")
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise InvalidHeaderError("the storage key list is not a list of strings", path=self.path)
        self._legacy_storages: dict[str, tuple[int, int]] = {}  # key -> (data offset, nbytes)
        pos = f.tell()
        order = "<q" if little else ">q"
        for key in keys:
            if key not in roots:
                raise InvalidHeaderError(f"storage {key} is listed but never used, so its size is unknown",
                                         path=self.path)
            if pos + 8 > self.size:
                raise TruncatedFileError(f"file ends before storage {key}", path=self.path)
            f.seek(pos)
            (numel,) = struct.unpack(order, f.read(8))
            itemsize = DTYPES[roots[key].dtype].itemsize if roots[key].dtype else 1
            nbytes = numel * itemsize
            if numel < 0 or pos + 8 + nbytes > self.size:
                raise TruncatedFileError(
                    f"storage {key} claims {numel} elements ({nbytes} bytes) but only {self.size - pos - 8} "
                    "bytes remain in the file", path=self.path,
                )
            self._legacy_storages[key] = (pos + 8, nbytes)
            pos += 8 + nbytes
        return root

    # -- storage bytes -----------------------------------------------------------------------------
    def _storage_span(self, key: str) -> tuple[int, int] | _Record:
        if self.container == "legacy":
            return self._legacy_storages[key]
        return self._storage_records[key]

    def _stored_span(self, key: str) -> tuple[int, int] | None:
        """(file offset, size) of a storage kept verbatim in the file; None for a compressed record."""
        span = self._storage_span(key)
        if isinstance(span, _Record):
            return None if span.compressed else (span.data_offset, span.size)
        return span

    def _storage_nbytes(self, key: str) -> int | None:
        if self.container == "legacy":
            span = self._legacy_storages.get(key)
            return None if span is None else span[1]
        record = self._storage_records.get(key)
        return None if record is None else record.size

    def _check(self, name: str, ref: _TensorRef) -> None:
        """Validate a tensor against its storage before any of its bytes are read."""
        st = ref.storage
        nbytes = self._storage_nbytes(st.key)
        if nbytes is None:
            raise InvalidHeaderError(f"storage {st.key} is missing from the file", path=self.path, tensor=name)
        st_itemsize = DTYPES[st.dtype].itemsize if st.dtype else 1
        claimed = (st.elem_offset + st.numel) * st_itemsize
        if self.container == "zip" and st.elem_offset == 0 and claimed != nbytes:
            raise InvalidOffsetError(
                f"storage data/{st.key} holds {nbytes} bytes but the pickle says {st.numel} elements "
                f"({claimed} bytes)", path=self.path, tensor=name,
            )
        if claimed > nbytes:
            raise InvalidOffsetError(
                f"storage {st.key} holds {nbytes} bytes but a view of it needs {claimed}", path=self.path, tensor=name
            )
        itemsize = DTYPES[ref.dtype].itemsize
        needed = (st.elem_offset * st_itemsize) + ref.extent() * itemsize
        available = st.numel * st_itemsize + st.elem_offset * st_itemsize
        if needed > available:
            raise InvalidOffsetError(
                f"tensor of shape {ref.shape} at offset {ref.offset} with stride {ref.stride} needs "
                f"{needed} bytes of storage {st.key}, which holds {available}",
                path=self.path, tensor=name,
            )

    def _storage_bytes(self, key: str) -> np.ndarray:
        """The whole storage as a read-only uint8 array (a view of the mmapped file)."""
        cached = self._storage_cache.get(key)
        if cached is not None:
            return cached
        span = self._storage_span(key)
        if isinstance(span, _Record):
            if span.compressed:
                arr = np.frombuffer(self._read_compressed(span), np.uint8)
                if arr.size != span.size:
                    raise TruncatedFileError(f"record {span.name} decompressed to {arr.size} bytes", path=self.path)
            else:
                arr = self._view(span.data_offset, span.size)
        else:
            arr = self._view(*span)
        self._storage_cache[key] = arr
        return arr

    def _view(self, offset: int, nbytes: int) -> np.ndarray:
        if nbytes == 0 or self._mmap is None:
            return np.empty(0, np.uint8)
        return np.frombuffer(self._mmap, np.uint8, count=nbytes, offset=offset)

    def _array(self, ref: _TensorRef) -> np.ndarray:
        dt = DTYPES[ref.dtype]
        if ref.numel == 0:
            return np.empty(ref.shape, dt)
        st = ref.storage
        raw = self._storage_bytes(st.key)
        st_itemsize = DTYPES[st.dtype].itemsize if st.dtype else 1
        start = st.elem_offset * st_itemsize + ref.offset * dt.itemsize
        if ref.is_contiguous():
            arr = raw[start : start + ref.numel * dt.itemsize].view(dt).reshape(ref.shape)
        else:
            arr = _strided(raw, start, dt, ref)
        if self._big_endian and dt.itemsize > 1:
            arr = _from_big_endian(arr, dt)
        return arr

    # -- FormatReader ------------------------------------------------------------------------------
    def keys(self) -> list[str]:
        return list(self._names)

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def info(self, name: str) -> TensorInfo:
        self._require(name)
        ref = self._names[name]
        extra: dict[str, Any] = {"storage": ref.storage.key, "storage_offset": ref.offset}
        if not ref.is_contiguous():
            extra["stride"] = list(ref.stride)
        return TensorInfo(name, ref.dtype, ref.shape, extra)

    def get(self, name: str) -> np.ndarray:
        self._require(name)
        return self._array(self._names[name])

    def byte_span(self, name: str) -> ByteSpan | None:
        """The tensor's bytes in the file: a contiguous view of a stored, little-endian storage."""
        self._require(name)
        ref = self._names[name]
        itemsize = DTYPES[ref.dtype].itemsize
        if ref.numel == 0 or not ref.is_contiguous() or (self._big_endian and itemsize > 1):
            return None
        stored = self._stored_span(ref.storage.key)
        if stored is None:
            return None
        st = ref.storage
        start = st.elem_offset * (DTYPES[st.dtype].itemsize if st.dtype else 1) + ref.offset * itemsize
        return ByteSpan(self.path, self._file.fileno(), stored[0] + start, ref.numel * itemsize)

    def buffer_spans(self) -> dict[int, ByteSpan]:
        """File spans of the storage buffers handed out so far, keyed by ``id()`` of the buffer.

        Every array ``get`` returns for a little-endian file is a view of one of these buffers, so
        a writer that finds a view's base buffer here can copy the storage from the file instead
        of through memory (``.pt`` to ``.pt``, where views must stay views of one storage).
        """
        if self._big_endian:
            return {}
        spans = {}
        for key, arr in self._storage_cache.items():
            stored = self._stored_span(key)
            if stored is not None:
                spans[id(arr)] = ByteSpan(self.path, self._file.fileno(), *stored)
        return spans

    def storage_of(self, name: str) -> tuple[str, int, tuple[int, ...]]:
        """(storage key, element offset, strides) of a tensor: how tensors share memory."""
        self._require(name)
        ref = self._names[name]
        return ref.storage.key, ref.offset, ref.stride

    @property
    def metadata(self) -> dict[str, Any]:
        facts: dict[str, Any] = dict(self._extra)
        if self._big_endian:
            facts["byteorder"] = "big"
        sd_meta = getattr(self._root, "__dict__", {}).get("_metadata") if isinstance(self._root, dict) else None
        if isinstance(sd_meta, dict):
            try:
                json.dumps(sd_meta, allow_nan=False)
                facts["state_dict_metadata"] = sd_meta
            except (TypeError, ValueError):
                pass
        if not _is_flat_state_dict(self._root) and self._tree is not None:
            facts["tree"] = self._tree
        return {**self._carried, "pytorch": facts}

    def structure(self) -> Any:
        cache: dict[int, np.ndarray] = {}

        def build(node: Any) -> Any:
            if isinstance(node, _TensorRef):
                if id(node) not in cache:
                    cache[id(node)] = self._array(node)
                return cache[id(node)]
            if isinstance(node, dict):
                return {k: build(v) for k, v in node.items()}
            if isinstance(node, list):
                return [build(v) for v in node]
            if isinstance(node, tuple):
                return tuple(build(v) for v in node)
            return node

        return build(self._root)

    def verify(self) -> VerifyResult:
        result = VerifyResult(self.path)
        crc_ok: set[str] = set()
        if self.container == "zip":
            for key, record in self._storage_records.items():
                if record.crc == 0 and record.size:
                    continue  # written with torch's compute_crc32 off: nothing to check
                actual = crc32(self._storage_bytes(key))
                if actual != record.crc:
                    owners = [n for n, r in self._names.items() if r.storage.key == key]
                    result.failures.append(
                        f"{owners[0] if owners else record.name}: CRC-32 of {record.name} is {actual:08x}, "
                        f"the archive says {record.crc:08x}"
                    )
                else:
                    crc_ok.add(key)
        for name, ref in self._names.items():
            self._array(ref)  # bounds were checked at open; this catches decompression failures
            if ref.storage.key in crc_ok:
                result.checked += 1
            else:
                result.unchecked += 1
        return result

    def close(self) -> None:
        self._storage_cache.clear()
        close_mmap(self._mmap)
        self._file.close()


def _strided(raw: np.ndarray, start: int, dt: np.dtype, ref: _TensorRef) -> np.ndarray:
    # np.ndarray over the storage bytes (not as_strided) keeps ``raw`` as the base, so a writer can
    # see which tensors share a storage; numpy also re-checks that the view stays inside ``raw``.
    # The stride of a dimension of size 0 or 1 is never followed; the file may make it huge, which
    # numpy would refuse with an OverflowError, so it becomes 0.
    strides = tuple(s * dt.itemsize if n > 1 else 0 for n, s in zip(ref.shape, ref.stride))
    return np.ndarray(ref.shape, dtype=dt, buffer=raw, offset=start, strides=strides)


def _from_big_endian(arr: np.ndarray, dt: np.dtype) -> np.ndarray:
    component = dt.itemsize // 2 if dt.kind == "c" else dt.itemsize
    raw = np.ascontiguousarray(arr).reshape(-1).view(np.uint8)
    swapped = raw.view(f">u{component}").astype(f"<u{component}")
    return swapped.view(dt).reshape(arr.shape)


def _parse_storage_pid(pid: Any, path: str) -> _Storage:
    if isinstance(pid, tuple) and pid and isinstance(pid[0], bytes):
        pid = tuple(p.decode("ascii") if isinstance(p, bytes) else p for p in pid)
    if not isinstance(pid, tuple) or len(pid) != 5 or pid[0] != "storage":
        raise UnsafePickleError(f"unexpected persistent id {short_repr(pid)}; only storages are allowed", path=path)
    _, storage_type, key, _location, numel = pid
    if not isinstance(storage_type, _StorageType):
        raise InvalidHeaderError(f"storage {short_repr(key)} has type {short_repr(storage_type)}", path=path)
    if not isinstance(key, str) or not key or "/" in key or ".." in key or "\x00" in key:
        raise InvalidHeaderError(f"storage key {short_repr(key)} is invalid", path=path)
    if type(numel) is not int or numel < 0:
        raise InvalidHeaderError(f"storage {key} has size {short_repr(numel)}", path=path)
    return _Storage(key, storage_type.dtype, numel)


# ------------------------------------------------------------------------------------------------
# Names and the tree spec: the same walk as weightvault.core.tree.flatten, so names agree
# ------------------------------------------------------------------------------------------------
def _name_tensors(root: Any) -> tuple[dict[str, Any] | None, dict[str, _TensorRef]]:
    """Every tensor under a unique path name, and the tree spec (None if the file holds objects
    the spec cannot describe, e.g. sets)."""
    from weightvault.core.tree import flatten

    return flatten(root, is_leaf=lambda node: isinstance(node, _TensorRef), lenient=True)


def _is_flat_state_dict(root: Any) -> bool:
    return isinstance(root, dict) and all(isinstance(k, str) for k in root) and all(
        isinstance(v, _TensorRef) for v in root.values()
    )


# ------------------------------------------------------------------------------------------------
# Writing: protocol-2 pickle limited to the opcodes torch's weights_only loader accepts
# ------------------------------------------------------------------------------------------------
@dataclass(eq=False)
class _OutStorage:
    key: str
    dtype: str
    numel: int
    fetch: Callable[[], Any]  # -> bytes-like of exactly numel * itemsize bytes
    span: ByteSpan | None = None  # the same bytes, verbatim in a source file (streamed across)


@dataclass(eq=False)
class _OutTensor:
    storage: _OutStorage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


class _PickleEmitter:
    """Hand-written protocol 2: PROTO, GLOBAL, REDUCE, BUILD, MARK, TUPLE*, EMPTY_*, SETITEMS,
    APPENDS, BININT*, LONG1, BINFLOAT, BINUNICODE, NONE, NEWTRUE/NEWFALSE, BINPERSID, STOP."""

    def __init__(self) -> None:
        self.out = bytearray(b"\x80\x02")

    def global_(self, module: str, name: str) -> None:
        self.out += b"c" + module.encode() + b"\n" + name.encode() + b"\n"

    def int_(self, v: int) -> None:
        if 0 <= v < 256:
            self.out += b"K" + bytes([v])
        elif 0 <= v < 65536:
            self.out += b"M" + struct.pack("<H", v)
        elif -(2**31) <= v < 2**31:
            self.out += b"J" + struct.pack("<i", v)
        else:
            data = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
            if len(data) > 255:
                raise UnsupportedObjectError(f"integer {v} is too large to store")
            self.out += b"\x8a" + bytes([len(data)]) + data

    def str_(self, v: str) -> None:
        data = v.encode("utf-8", "surrogatepass")
        self.out += b"X" + struct.pack("<I", len(data)) + data

    def tuple_(self, items: list[Callable[[], None]]) -> None:
        if not items:
            self.out += b")"
            return
        if len(items) <= 3:
            for emit in items:
                emit()
            self.out += {1: b"\x85", 2: b"\x86", 3: b"\x87"}[len(items)]
            return
        self.out += b"("
        for emit in items:
            emit()
        self.out += b"t"

    def ordered_dict(self) -> None:
        self.global_("collections", "OrderedDict")
        self.out += b")R"

    def dump(self, obj: Any) -> None:
        out = self.out
        if isinstance(obj, _OutTensor):
            self.tensor(obj)
        elif obj is None:
            out += b"N"
        elif obj is True:
            out += b"\x88"
        elif obj is False:
            out += b"\x89"
        elif isinstance(obj, int):
            self.int_(int(obj))
        elif isinstance(obj, float):
            out += b"G" + struct.pack(">d", obj)
        elif isinstance(obj, str):
            self.str_(obj)
        elif isinstance(obj, (bytes, bytearray)):
            self.global_("_codecs", "encode")
            self.tuple_([lambda: self.str_(bytes(obj).decode("latin1")), lambda: self.str_("latin1")])
            out += b"R"
        elif isinstance(obj, complex):
            self.global_("builtins", "complex")
            self.tuple_([lambda: self.dump(obj.real), lambda: self.dump(obj.imag)])
            out += b"R"
        elif isinstance(obj, (set, frozenset)):
            self.global_("builtins", "set")
            self.tuple_([lambda: self.list_(list(obj))])
            out += b"R"
        elif isinstance(obj, dict):
            if isinstance(obj, OrderedDict) or type(obj).__name__ == "OrderedDict":
                self.ordered_dict()
            else:
                out += b"}"
            if obj:
                out += b"("
                for k, v in obj.items():
                    self.dump(k)
                    self.dump(v)
                out += b"u"
            sd_meta = getattr(obj, "__dict__", {}).get("_metadata")
            if isinstance(obj, OrderedDict) and isinstance(sd_meta, dict):
                out += b"}"
                self.str_("_metadata")
                self.dump(_plain_ordered(sd_meta))
                out += b"sb"  # SETITEM, BUILD
        elif isinstance(obj, list):
            self.list_(obj)
        elif isinstance(obj, tuple):
            self.tuple_([(lambda v: lambda: self.dump(v))(v) for v in obj])
        else:
            raise UnsupportedObjectError(
                f"cannot write a {type(obj).__module__}.{type(obj).__qualname__} into a torch file "
                "that torch.load(weights_only=True) can read"
            )

    def list_(self, items: list[Any]) -> None:
        self.out += b"]"
        if items:
            self.out += b"("
            for v in items:
                self.dump(v)
            self.out += b"e"

    def tensor(self, t: _OutTensor) -> None:
        storage_cls = _WRITE_STORAGE[t.storage.dtype]
        self.global_("torch._utils", "_rebuild_tensor_v2" if storage_cls else "_rebuild_tensor_v3")
        self.out += b"("
        # persistent id ('storage', <type>, key, 'cpu', numel)
        self.out += b"("
        self.str_("storage")
        if storage_cls:
            self.global_("torch", storage_cls)
            numel = t.storage.numel
        else:
            self.global_("torch.storage", "UntypedStorage")
            numel = t.storage.numel * DTYPES[t.storage.dtype].itemsize
        self.str_(t.storage.key)
        self.str_("cpu")
        self.int_(numel)
        self.out += b"tQ"
        self.int_(t.offset)
        self.tuple_([(lambda v: lambda: self.int_(v))(v) for v in t.shape])
        self.tuple_([(lambda v: lambda: self.int_(v))(v) for v in t.stride])
        self.out += b"\x89"  # requires_grad False
        self.ordered_dict()  # backward hooks
        if not storage_cls:
            self.global_("torch", t.storage.dtype)
        self.out += b"tR"

    def finish(self) -> bytes:
        return bytes(self.out + b".")


def _plain_ordered(d: dict[str, Any]) -> OrderedDict:
    out = OrderedDict()
    for k, v in d.items():
        out[k] = _plain_ordered(v) if isinstance(v, dict) else v
    return out


# ------------------------------------------------------------------------------------------------
# Writing: tensors -> storages (with ties)
# ------------------------------------------------------------------------------------------------
@dataclass
class _Leaf:
    """A tensor to write: either an array in memory or a name in a lazy mapping."""

    dtype: str
    shape: tuple[int, ...]
    array: np.ndarray | None = None
    fetch: Callable[[], np.ndarray] | None = None
    span: ByteSpan | None = None  # where a lazy tensor's bytes lie verbatim in its source file
    # memory facts for tie detection (arrays only)
    root: Any = None  # flat uint8 view of the memory the tensor lives in
    root_key: Any = None  # identity of that memory (stable, unlike the view object)
    lo: int = 0
    hi: int = 0
    strides: tuple[int, ...] = ()
    out: _OutTensor | None = field(default=None, repr=False)


def _root_buffer(arr: np.ndarray) -> tuple[np.ndarray, int] | None:
    """The C-contiguous array at the bottom of ``arr``'s base chain as flat bytes, and its id."""
    root = arr
    while True:
        base = root.base
        if not isinstance(base, np.ndarray):
            # as_strided() leaves a shim object between a view and its array
            base = getattr(base, "base", None)
        if not isinstance(base, np.ndarray):
            break
        root = base
    if not root.flags.c_contiguous or not root.size:
        return None
    return root.reshape(-1).view(np.uint8), id(root)


def _torch_leaf(obj: Any, name: str) -> _Leaf:
    """A torch tensor: its whole untyped storage is the memory it may share (lazy torch import)."""
    from weightvault.frameworks.torch import describe as torch_describe, storage_bytes

    t = obj.detach()
    desc = torch_describe(t)
    if t.device.type != "cpu" or t.is_sparse or t.is_quantized or t.is_conj() or t.is_neg():
        arr = _to_numpy_any(t)
        return _array_leaf(arr, name)
    if t.numel() == 0 or any(s < 0 for s in t.stride()):
        return _array_leaf(_to_numpy_any(t), name)
    raw, data_ptr = storage_bytes(t)
    itemsize = t.element_size()
    lo = t.storage_offset() * itemsize
    extent = (t.storage_offset() + sum((s - 1) * st for s, st in zip(t.shape, t.stride())) + 1) * itemsize
    return _Leaf(desc.dtype, tuple(t.shape), array=None, fetch=None, root=raw,
                 root_key=("torch", data_ptr), lo=lo, hi=extent,
                 strides=tuple(s * itemsize for s in t.stride()))


def _to_numpy_any(obj: Any) -> np.ndarray:
    from weightvault.core.tensors import to_numpy

    return to_numpy(obj)


def _array_leaf(arr: np.ndarray, name: str) -> _Leaf:
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    dt = dtype_name(arr.dtype, tensor=name)
    if dt not in _WRITE_STORAGE:
        raise UnsupportedOperationError(f"torch has no dtype for {dt}", tensor=name)
    leaf = _Leaf(dt, tuple(arr.shape), array=arr)
    if arr.size and all(s >= 0 for s in arr.strides):
        found = _root_buffer(arr)
        if found is not None:
            root, leaf.root_key = found
            root_ptr = root.__array_interface__["data"][0]
            ptr = arr.__array_interface__["data"][0]
            extent = sum((n - 1) * s for n, s in zip(arr.shape, arr.strides)) + arr.itemsize
            lo = ptr - root_ptr
            if 0 <= lo and lo + extent <= root.size:
                leaf.root, leaf.lo, leaf.hi, leaf.strides = root, lo, lo + extent, tuple(arr.strides)
    return leaf


def _plan_storages(leaves: list[_Leaf], buffer_spans: Mapping[int, ByteSpan] | None = None) -> list[_OutStorage]:
    """Give every leaf an _OutTensor; leaves overlapping in one buffer share one storage.

    ``buffer_spans`` (id of a root buffer -> where it lies in a file) lets storages cut from
    such buffers be copied from the file (see :meth:`PyTorchReader.buffer_spans`).
    """
    storages: list[_OutStorage] = []

    def span_within(root_key: Any, lo: int, hi: int) -> ByteSpan | None:
        whole = (buffer_spans or {}).get(root_key)
        if whole is None or hi > whole.nbytes or hi <= lo:
            return None
        return ByteSpan(whole.path, whole.fileno, whole.offset + lo, hi - lo)

    def new_storage(dtype: str, numel: int, fetch: Callable[[], Any], span: ByteSpan | None = None) -> _OutStorage:
        st = _OutStorage(str(len(storages)), dtype, numel, fetch, span)
        storages.append(st)
        return st

    def own(leaf: _Leaf) -> None:
        numel = math.prod(leaf.shape)
        span = leaf.span
        if leaf.array is not None:
            arr = leaf.array
            fetch: Callable[[], Any] = lambda a=arr: _contiguous_bytes(a)
            if arr.flags.c_contiguous and leaf.root is not None:
                span = span_within(leaf.root_key, leaf.lo, leaf.hi)
        elif leaf.fetch is not None:
            fetch = (lambda f: lambda: _contiguous_bytes(f()))(leaf.fetch)
        else:  # torch tensor memory not shared with anything: copy just its elements
            root, lo, strides, shape, dt = leaf.root, leaf.lo, leaf.strides, leaf.shape, DTYPES[leaf.dtype]
            fetch = lambda: _strided_bytes(root, lo, shape, strides, dt)
        st = new_storage(leaf.dtype, numel, fetch, span)
        leaf.out = _OutTensor(st, 0, leaf.shape, _contiguous_strides(leaf.shape))

    by_root: dict[Any, list[_Leaf]] = {}
    for leaf in leaves:
        if leaf.root is not None:
            by_root.setdefault(leaf.root_key, []).append(leaf)
    for group in by_root.values():
        group.sort(key=lambda lf: (lf.lo, lf.hi))
        clusters: list[list[_Leaf]] = []
        end = -1
        for leaf in group:
            if clusters and leaf.lo < end:
                clusters[-1].append(leaf)
                end = max(end, leaf.hi)
            else:
                clusters.append([leaf])
                end = leaf.hi
        for cluster in clusters:
            if len(cluster) == 1 and cluster[0].array is not None:
                continue  # nothing shared: written as its own contiguous storage below
            dt = DTYPES[cluster[0].dtype]
            lo = min(lf.lo for lf in cluster)
            hi = max(lf.hi for lf in cluster)
            if any(lf.dtype != cluster[0].dtype or (lf.lo - lo) % dt.itemsize
                   or any(s % dt.itemsize for s in lf.strides) for lf in cluster) or (hi - lo) % dt.itemsize:
                continue  # shared memory seen as different dtypes: torch cannot tie those; copy each
            root = cluster[0].root
            fetch_slice = (lambda r, a, b: lambda: r[a:b])(root, lo, hi)
            st = new_storage(cluster[0].dtype, (hi - lo) // dt.itemsize, fetch_slice,
                             span_within(cluster[0].root_key, lo, hi))
            for lf in cluster:
                lf.out = _OutTensor(st, (lf.lo - lo) // dt.itemsize, lf.shape,
                                    tuple(s // dt.itemsize for s in lf.strides))
    for leaf in leaves:
        if leaf.out is None:
            own(leaf)
    return storages


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, acc = [], 1
    for n in reversed(shape):
        strides.append(acc)
        acc *= n
    return tuple(reversed(strides))


def _strided_bytes(root: np.ndarray, lo: int, shape: tuple[int, ...], strides: tuple[int, ...], dt: np.dtype) -> Any:
    typed = root[lo:][: ((root.size - lo) // dt.itemsize) * dt.itemsize].view(dt)
    return np.ascontiguousarray(np.lib.stride_tricks.as_strided(typed, shape=shape, strides=strides))


def _contiguous_bytes(arr: Any) -> Any:
    from weightvault.core.tensors import to_numpy

    a = to_numpy(np.asarray(arr) if isinstance(arr, (np.generic, int, float, bool)) else arr)
    if a.ndim == 0:
        a = a.reshape(1)
    return a


def _build_leaf(value: Any, name: str, lazy: Mapping[str, Any] | None) -> _Leaf:
    if isinstance(value, _LazyName):
        assert lazy is not None
        info = lazy.info(value.name)  # type: ignore[attr-defined]
        if info.dtype not in _WRITE_STORAGE:
            raise UnsupportedOperationError(f"torch has no dtype for {info.dtype}", tensor=value.name)
        return _Leaf(info.dtype, tuple(info.shape), fetch=(lambda n: lambda: lazy[n])(value.name),
                     span=span_of(lazy, value.name))
    if isinstance(value, np.generic):
        value = np.asarray(value)
    if isinstance(value, np.ndarray):
        return _array_leaf(value, name)
    if type(value).__module__.partition(".")[0] == "torch":
        return _torch_leaf(value, name)
    return _array_leaf(_to_numpy_any(value), name)


@dataclass(frozen=True)
class _LazyName:
    name: str


def _is_tensor_leaf(value: Any) -> bool:
    if isinstance(value, (np.ndarray, np.generic, _LazyName)):
        return True
    from weightvault.core.tensors import is_tensor

    return is_tensor(value)


def _replace_tensors(obj: Any, lazy: Mapping[str, Any] | None, leaves: list[_Leaf], where: str = "") -> Any:
    """Copy of ``obj`` with every tensor replaced by a _Leaf placeholder (collected in ``leaves``)."""
    if _is_tensor_leaf(obj):
        leaf = _build_leaf(obj, where, lazy)
        leaves.append(leaf)
        return leaf
    if isinstance(obj, dict):
        out = OrderedDict() if type(obj).__name__ == "OrderedDict" else {}
        for k, v in obj.items():
            out[k] = _replace_tensors(v, lazy, leaves, f"{where}/{k}" if where else str(k))
        if isinstance(out, OrderedDict) and "_metadata" in getattr(obj, "__dict__", {}):
            out._metadata = obj._metadata  # type: ignore[attr-defined]
        return out
    if isinstance(obj, list):
        return [_replace_tensors(v, lazy, leaves, f"{where}/{i}") for i, v in enumerate(obj)]
    if isinstance(obj, tuple) and type(obj) is tuple:
        return tuple(_replace_tensors(v, lazy, leaves, f"{where}/{i}") for i, v in enumerate(obj))
    return obj


def _finalise(obj: Any) -> Any:
    """Replace _Leaf placeholders by the _OutTensor the planner gave them."""
    if isinstance(obj, _Leaf):
        assert obj.out is not None
        return obj.out
    if isinstance(obj, dict):
        out = OrderedDict() if isinstance(obj, OrderedDict) else {}
        for k, v in obj.items():
            out[k] = _finalise(v)
        if isinstance(out, OrderedDict) and "_metadata" in getattr(obj, "__dict__", {}):
            out._metadata = obj._metadata  # type: ignore[attr-defined]
        return out
    if isinstance(obj, list):
        return [_finalise(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_finalise(v) for v in obj)
    return obj


# ------------------------------------------------------------------------------------------------
# Writing: the zip container
# ------------------------------------------------------------------------------------------------
def _no_progress(nbytes: int) -> None:
    pass


class _ZipWriter:
    """Stored records, 64-byte aligned data (torch's ``FB`` extra field), ZIP64 end records.

    Each local header goes out with CRC 0 and is patched once the record's bytes are down, so
    records stream in one pass; the CRC (ISA-L, ~30 GB/s, see core.crc32) costs little next to
    the write.
    """

    def __init__(self, f: BinaryIO, prefix: str, crc32: bool = True) -> None:
        self.f = f
        self.prefix = prefix
        self.crc32 = crc32
        self.pos = f.tell()
        self.entries: list[tuple[bytes, int, int, int]] = []  # name, header offset, size, crc

    def _write(self, data: Any) -> None:
        self.f.write(data)
        self.pos += memoryview(data).nbytes

    def _header(self, name: str, size: int) -> tuple[bytes, int]:
        """Write a local header with CRC 0; returns the full name and the header's offset."""
        full = f"{self.prefix}/{name}".encode()
        header_offset = self.pos
        zip64 = size >= 0xFFFFFFFF
        z64_extra = struct.pack("<HHQQ", 1, 16, size, size) if zip64 else b""
        fixed = header_offset + 30 + len(full) + len(z64_extra) + 4
        pad = (-fixed) % ALIGNMENT
        extra = z64_extra + b"FB" + struct.pack("<H", pad) + b"Z" * pad
        size32 = 0xFFFFFFFF if zip64 else size
        header = struct.pack("<4sHHHHHIIIHH", ZIP_MAGIC, 45 if zip64 else 20, 0x0800, 0, 0, 0x21,
                             0, size32, size32, len(full), len(extra))
        self._write(header + full + extra)
        return full, header_offset

    def _end_record(self, full: bytes, header_offset: int, size: int, crc: int) -> None:
        if crc:
            end = self.pos
            self.f.seek(header_offset + 14)
            self.f.write(struct.pack("<I", crc))
            self.f.seek(end)
        self.entries.append((full, header_offset, size, crc))

    def record(self, name: str, chunks: Iterator[Any] | list[Any], size: int,
               advance: Callable[[int], None] = _no_progress) -> None:
        full, header_offset = self._header(name, size)
        crc = written = 0
        for chunk in chunks:
            view = memoryview(chunk).cast("B") if not isinstance(chunk, (bytes, bytearray)) else chunk
            if self.crc32:
                crc = crc32(view, crc)
            self._write(view)
            written += len(view)
            advance(len(view))
        if written != size:
            raise UnsupportedOperationError(f"record {name} produced {written} bytes, expected {size}")
        self._end_record(full, header_offset, size, crc)

    def copy_record(self, name: str, span: ByteSpan, advance: Callable[[int], None] = _no_progress) -> None:
        """A record whose bytes lie verbatim in a source file: streamed across, CRC on the way."""
        full, header_offset = self._header(name, span.nbytes)
        state = {"crc": 0}

        def update(chunk: memoryview) -> None:
            if self.crc32:
                state["crc"] = crc32(chunk, state["crc"])
            advance(len(chunk))

        write_span(self.f, span, update)
        self.pos += span.nbytes
        self._end_record(full, header_offset, span.nbytes, state["crc"])

    def finish(self) -> None:
        cd_start = self.pos
        for full, offset, size, crc in self.entries:
            extra = b""
            size32, off32 = size, offset
            values = []
            if size >= 0xFFFFFFFF:
                values += [size, size]
                size32 = 0xFFFFFFFF
            if offset >= 0xFFFFFFFF:
                values.append(offset)
                off32 = 0xFFFFFFFF
            if values:
                extra = struct.pack("<HH", 1, 8 * len(values)) + struct.pack(f"<{len(values)}Q", *values)
            self._write(struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 45, 45 if extra else 20, 0x0800, 0, 0,
                                    0x21, crc, size32, size32, len(full), len(extra), 0, 0, 0, 0, off32)
                        + full + extra)
        cd_size = self.pos - cd_start
        count = len(self.entries)
        eocd64 = self.pos
        self._write(struct.pack("<4sQHHIIQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, count, count, cd_size, cd_start))
        self._write(struct.pack("<4sIQI", b"PK\x06\x07", 0, eocd64, 1))
        self._write(struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, min(count, 0xFFFF), min(count, 0xFFFF),
                                min(cd_size, 0xFFFFFFFF), min(cd_start, 0xFFFFFFFF), 0))


def _byte_view(data: Any) -> memoryview:
    if isinstance(data, np.ndarray):
        return memoryview(np.ascontiguousarray(data).reshape(-1).view(np.uint8))
    return memoryview(data).cast("B")


def _chunks(data: Any, chunk: int = 64 << 20) -> Iterator[memoryview]:
    view = _byte_view(data)
    for start in range(0, len(view), chunk):
        yield view[start : start + chunk]


def _archive_name(path: str | os.PathLike[str]) -> str:
    stem = Path(os.fspath(path)).name.split(".")[0]
    safe = "".join(c if (c.isascii() and c.isalnum()) or c in "_-" else "_" for c in stem)
    return safe or "archive"


def _tree_from_metadata(metadata: Mapping[str, Any] | None) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(tree spec, state-dict _metadata) recorded by our reader, if the metadata carries them."""
    facts = (metadata or {}).get("pytorch")
    if isinstance(facts, str):
        try:
            facts = json.loads(facts)
        except ValueError:
            return None, None
    if not isinstance(facts, dict):
        return None, None
    tree = facts.get("tree") if isinstance(facts.get("tree"), dict) else None
    sd = facts.get("state_dict_metadata") if isinstance(facts.get("state_dict_metadata"), dict) else None
    return tree, sd


def _torch_file_source(tensors: Mapping[str, Any]) -> Any:
    """The reader behind ``tensors`` when they come straight from another torch file whose views
    share storages (a ``.pt``, or a ``.pt2``'s records): it has ``buffer_spans``."""
    if isinstance(tensors, LazyTensors) and callable(getattr(tensors.reader, "buffer_spans", None)):
        return tensors.reader
    return None


def _source_tree_spec(tensors: Mapping[str, Any]) -> dict[str, Any] | None:
    """The tree spec of the reader behind ``tensors`` (a native checkpoint's manifest) when it is
    more than a flat state dict and names exactly the tensors being written (nothing renamed)."""
    from weightvault.core.tree import tensor_names

    if not isinstance(tensors, LazyTensors) or isinstance(tensors.reader, PyTorchReader):
        return None
    manifest = getattr(tensors.reader, "manifest", None)
    spec = manifest.get("tree") if isinstance(manifest, dict) else None
    if not isinstance(spec, dict):
        return None
    if spec.get("t") == "dict" and all(
        node.get("t") == "tensor" and key == ["s", node.get("name")] for key, node in spec["items"]
    ):
        return None  # a flat state dict: written as the usual OrderedDict
    try:
        names = tensor_names(spec)
    except (KeyError, TypeError):
        return None
    return spec if set(names) == set(tensors) else None


def _object_to_write(
    tensors: Mapping[str, Any], structure: Any, metadata: Mapping[str, Any] | None
) -> tuple[Any, Mapping[str, Any] | None]:
    """The object the pickle will hold, with tensors still as arrays/torch tensors/_LazyName."""
    from weightvault.core.tree import tensor_names, unflatten

    is_lazy = isinstance(tensors, DescribedTensors)
    if _torch_file_source(tensors) is not None:
        is_lazy = False  # views of an mmapped file: cheap, and they carry the storage sharing
    if structure is not None:
        return structure, None
    spec, sd_meta = _tree_from_metadata(metadata)
    if spec is not None:
        try:
            names = tensor_names(spec)
            if sorted(names) == sorted(tensors) and len(set(names)) == len(names):
                fetch = (lambda n: _LazyName(n)) if is_lazy else (lambda n: tensors[n])
                return unflatten(spec, fetch), tensors if is_lazy else None
        except (KeyError, ValueError, TypeError):
            pass
    nested = _source_tree_spec(tensors)
    if nested is not None:
        # A native checkpoint of training state (model, optimizer, scheduler, step ...): write the
        # nesting weightvault.load(framework="torch") returns, tensors still read one at a time.
        fetch = (lambda n: _LazyName(n)) if is_lazy else (lambda n: tensors[n])
        return unflatten(nested, fetch), tensors if is_lazy else None
    flat = OrderedDict()
    for name in tensors:
        flat[name] = _LazyName(name) if is_lazy else tensors[name]
    if sd_meta is not None:
        flat._metadata = sd_meta  # type: ignore[attr-defined]
    return flat, tensors if is_lazy else None


def write_pytorch(
    f: BinaryIO,
    obj: Any,
    *,
    lazy: Mapping[str, Any] | None = None,
    archive: str = "archive",
    crc32: bool = True,
    progress: bool | None = None,
    buffer_spans: Mapping[int, ByteSpan] | None = None,
    carried: bytes | None = None,
) -> None:
    """Write ``obj`` (a state dict or nested checkpoint) as a torch zip file into ``f``.

    ``progress``: draw a bar over the tensor bytes (default: on a terminal, for large files).
    ``buffer_spans``: see :func:`_plan_storages`.
    ``carried``: other formats' metadata (``formats._carry``), stored in a record torch ignores.
    """
    leaves: list[_Leaf] = []
    placeholder = _replace_tensors(obj, lazy, leaves)
    storages = _plan_storages(leaves, buffer_spans)
    final = _finalise(placeholder)
    emitter = _PickleEmitter()
    emitter.dump(final)
    pickle_bytes = emitter.finish()
    total = sum(st.numel * DTYPES[st.dtype].itemsize for st in storages)
    with progress_bar(f"writing {archive}.pt", total, enabled=progress) as advance:
        _write_records(_ZipWriter(f, archive, crc32=crc32), pickle_bytes, storages, advance, carried)


def _write_records(zw: _ZipWriter, pickle_bytes: bytes, storages: list[_OutStorage],
                   advance: Callable[[int], None] = _no_progress, carried: bytes | None = None) -> None:
    zw.record("data.pkl", [pickle_bytes], len(pickle_bytes))
    zw.record(".format_version", [b"1"], 1)
    zw.record(".storage_alignment", [b"64"], 2)
    zw.record("byteorder", [b"little"], 6)
    for st in storages:
        nbytes = st.numel * DTYPES[st.dtype].itemsize
        if st.span is not None and st.span.nbytes == nbytes:
            zw.copy_record(f"data/{st.key}", st.span, advance)
            continue
        data = st.fetch() if nbytes else b""
        if nbytes:
            got = _byte_view(data).nbytes
            if got != nbytes:
                raise UnsupportedOperationError(f"storage {st.key} gave {got} bytes, expected {nbytes}")
        zw.record(f"data/{st.key}", _chunks(data) if nbytes else [], nbytes, advance)
        del data
    if carried:
        zw.record(CARRY_RECORD, [carried], len(carried))
    zw.record("version", [b"3\n"], 2)
    zw.finish()


# ------------------------------------------------------------------------------------------------
# The format
# ------------------------------------------------------------------------------------------------
class PyTorchFormat(Format):
    name = "pytorch"
    description = "PyTorch torch.save file (zip or legacy), read with a restricted unpickler"
    read_options: ClassVar[Mapping[str, str]] = {}
    write_options: ClassVar[Mapping[str, str]] = {
        "structure": "a nested object to save instead of the flat state dict (Python API)",
        "crc32": "compute the zip records' CRC-32s (default true)",
        "fsync": "make the file durable before it replaces the destination (default true)",
        "progress": "show a progress bar (default: on a terminal, for large files)",
    }

    @classmethod
    def sniff(cls, path: Path, head: bytes) -> bool:
        if head.startswith(LEGACY_MAGIC):
            return True
        if not head.startswith(ZIP_MAGIC) or len(head) < 30:
            return False
        name_len = int.from_bytes(head[26:28], "little")
        first = head[30 : 30 + name_len]
        return first.endswith((b"/data.pkl", b"/version", b"/byteorder", b"/constants.pkl")) or b"/data.pkl" in head

    @classmethod
    def open(cls, path: str | os.PathLike[str], **options: Any) -> FormatReader:
        return PyTorchReader(path)

    @classmethod
    def write(
        cls,
        path: str | os.PathLike[str],
        tensors: Mapping[str, np.ndarray],
        *,
        metadata: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> None:
        """Write a zip-format torch file.

        Options:
            structure: a nested object (dicts, lists, tuples, scalars, strings, tensors) to save
                instead of the flat ``tensors`` mapping (a full training checkpoint).
            crc32: compute record CRC-32s (default True; torch.load does not check them).
            fsync: make the file durable before it replaces ``path`` (default True).
            progress: show a progress bar (default: on a terminal, for files of 64 MiB or more).
        Without ``structure``, a tree spec recorded by the PyTorch reader in
        ``metadata["pytorch"]["tree"]`` rebuilds the nested checkpoint when its tensor names
        match ``tensors`` exactly; otherwise a flat state dict (an OrderedDict) is written.
        """
        unknown = set(options) - {"structure", "crc32", "fsync", "progress"}
        if unknown:
            raise UnsupportedOperationError(f"unknown pytorch writer option(s): {', '.join(sorted(unknown))}",
                                            path=path)
        obj, lazy = _object_to_write(tensors, options.get("structure"), metadata)
        source = _torch_file_source(tensors)
        buffer_spans = source.buffer_spans() if source is not None else None
        with atomic_write(path, fsync=options.get("fsync", True)) as f:
            try:
                write_pytorch(f, obj, lazy=lazy, archive=_archive_name(path), crc32=options.get("crc32", True),
                              progress=options.get("progress"), buffer_spans=buffer_spans,
                              carried=encode_carried(metadata, "pytorch"))
            except CorruptFileError:
                raise
            except (UnsupportedObjectError, UnsupportedOperationError) as exc:
                if exc.path is None:
                    raise type(exc)(exc.message, path=path, tensor=exc.tensor, hint=exc.hint) from None
                raise
