"""``torch.export.save`` archives (``.pt2``), read-only, without torch and without unpickling.

What torch 2.6+ (checked on 2.13) writes, one zip with every member under one root folder
(``<root>/``, the archive's stem), stored uncompressed and 64-byte aligned:

* ``archive_format`` (``pt2``), ``archive_version``, ``byteorder`` (``little``/``big``),
  ``.data/version``;
* ``models/<model>.json``: the serialized ``ExportedProgram`` (its graph is read by
  :mod:`weightvault.graph.torch_export`); ``torch.export.save`` names its one program ``model``;
* ``data/weights/<model>_weights_config.json`` and ``data/constants/<model>_constants_config.json``:
  ``{"config": {fqn: {"path_name", "is_param", "use_pickle", "tensor_meta"}}}``. ``tensor_meta``
  has ``dtype`` (the serde ``ScalarType`` code), ``sizes``, ``strides`` and ``storage_offset``
  (``{"as_int": n}``, in elements), ``layout`` (7 = strided), ``requires_grad`` and ``device``;
* ``data/weights/weight_<i>`` and ``data/constants/tensor_<i>``: the raw bytes of one *storage*
  each. Tensors that share a storage (tied weights, views of one buffer) name the same record, and
  each is ``as_strided(record, sizes, strides, storage_offset)`` of it, as ``torch.export.load``
  builds them;
* ``data/sample_inputs/<model>.pt``: the example inputs, a ``torch.save`` pickle: never read.

Pickled members are never run. A tensor subclass (``use_pickle``), a TorchScript object
(``custom_obj_*``), an opaque Python object (``opaque_obj_*``), the legacy pickled weights file
(``data/weights/<model>.pt``) and a fake tensor's empty record are listed in :attr:`skipped` with
the reason (``convert`` refuses them by name unless told to skip them).

Names: the FQNs of the state dict and the constants (``fc.weight``, ``bn.running_mean``, ``c``).
An archive with several programs (``torch.export.pt2_archive`` packages) names them
``<model>/<fqn>`` except for the program called ``model``.

Checks, before anything is allocated: every member's name (no ``..``, absolute or NUL names), its
local header and size (:mod:`weightvault.formats._zipmember`), JSON members' size and nesting,
each tensor's dtype, layout, sizes/strides/offset (plain non-negative integers), its extent against
its record's bytes, a record shared with two dtypes, and broadcast (zero-stride) tensors with
:func:`weightvault.core.limits.check_expansion`.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import re
import struct
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from weightvault.abc.format import ByteSpan, Format, FormatReader, TensorInfo, VerifyResult
from weightvault.core.crc32 import crc32
from weightvault.core.dtypes import DTYPES
from weightvault.core.io import close_mmap
from weightvault.core.limits import check_expansion
from weightvault.core.strided import StridedView
from weightvault.errors import (
    DuplicateTensorError,
    HeaderTooLargeError,
    InvalidHeaderError,
    InvalidOffsetError,
    ResourceLimitError,
    TruncatedFileError,
    UnknownDtypeError,
    UnsupportedOperationError,
)
from weightvault.formats._zipmember import check_member, inflate, member_data_offset

__all__ = ["SCALAR_TYPES", "TorchExportFormat", "TorchExportReader"]

ZIP_MAGIC = b"PK\x03\x04"
#: torch/_export/serde/schema.py ScalarType -> canonical dtype name (None: no numpy dtype)
SCALAR_TYPES: dict[int, str | None] = {
    1: "uint8", 2: "int8", 3: "int16", 4: "int32", 5: "int64", 6: "float16", 7: "float32",
    8: "float64", 9: None, 10: "complex64", 11: "complex128", 12: "bool", 13: "bfloat16",
    28: "uint16", 29: "float8_e4m3fn", 30: "float8_e5m2", 31: "float8_e4m3fnuz",
    32: "float8_e5m2fnuz", 33: "float8_e8m0fnu", 34: "uint32", 35: "uint64",
}  # fmt: skip
_STRIDED = 7
MAX_DIMS = 64
#: the weights/constants configs (a few hundred bytes per tensor) and small text records
MAX_CONFIG_BYTES = 64 << 20
_SMALL = 4096
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_.\-]+")
_KINDS = {"weights": ("weight_", "parameter"), "constants": ("tensor_", "constant")}


@dataclass(frozen=True)
class _Record:
    name: str
    data_offset: int
    size: int
    info: zipfile.ZipInfo

    @property
    def compressed(self) -> bool:
        return self.info.compress_type != zipfile.ZIP_STORED


@dataclass
class _Entry(StridedView):
    """One tensor of the archive: a strided view of a record."""

    name: str
    model: str
    fqn: str
    kind: str  # parameter | buffer | constant
    record: _Record
    dtype: str
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int  # elements
    extra: dict[str, Any] = field(default_factory=dict)


def _zip_records(f: Any, buf: Any, size: int, path: str) -> dict[str, _Record]:
    try:
        zf = zipfile.ZipFile(f)
    except zipfile.BadZipFile as exc:
        raise TruncatedFileError(
            f"the zip archive has no readable central directory ({exc}); the file is truncated or "
            "damaged",
            path=path,
        ) from None
    except (OSError, ValueError, struct.error, NotImplementedError, EOFError, OverflowError) as exc:
        raise InvalidHeaderError(
            f"cannot read the zip directory: {type(exc).__name__}: {exc}", path=path
        ) from None
    records: dict[str, _Record] = {}
    with zf:
        for info in zf.infolist():
            name = info.filename
            _check_member_name(name, path)
            if name in records:
                raise InvalidHeaderError(f"zip member {name!r} appears twice", path=path)
            offset = member_data_offset(buf, info, size, path=path)
            check_member(info, path=path)
            records[name] = _Record(name, offset, info.file_size, info)
    return records


def _check_member_name(name: str, path: str) -> None:
    parts = name.replace("\\", "/").split("/")
    if (
        "\x00" in name
        or name.startswith(("/", "\\"))
        or (len(name) > 1 and name[1] == ":")
        or ".." in parts
    ):
        raise InvalidHeaderError(f"zip member {name!r} names a path outside the archive", path=path)


def _int_of(value: Any, what: str, path: str, tensor: str) -> int:
    """``{"as_int": n}`` with a plain non-negative int; symbolic sizes are refused."""
    if not isinstance(value, dict) or set(value) != {"as_int"}:
        raise InvalidHeaderError(
            f"{what} is {_short(value)}, not a concrete integer", path=path, tensor=tensor
        )
    n = value["as_int"]
    if type(n) is not int or n < 0:
        raise InvalidHeaderError(
            f"{what} is {_short(n)}, not a non-negative integer", path=path, tensor=tensor
        )
    return n


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class TorchExportReader(FormatReader):
    """The parameters, buffers and constants of a ``torch.export.save`` archive."""

    format_name = "torch_export"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(path)
        self._file = open(self.path, "rb")  # noqa: SIM115 - closed in close()
        self._mmap: mmap.mmap | None = None
        self._storages: dict[str, np.ndarray] = {}  # record name -> its bytes
        self._entries: dict[str, _Entry] = {}
        self._skipped: dict[str, str] = {}
        try:
            self.size = os.fstat(self._file.fileno()).st_size
            if self.size < 22:
                raise TruncatedFileError(
                    f"file has {self.size} bytes, too few for a zip archive", path=self.path
                )
            self._mmap = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
            if self._mmap[:4] != ZIP_MAGIC:
                raise InvalidHeaderError(
                    "not a torch.export archive (not a zip file)", path=self.path
                )
            self._records = _zip_records(self._file, self._mmap, self.size, self.path)
            self._parse()
        except BaseException:
            self.close()
            raise

    # -- layout ------------------------------------------------------------------------------------
    def _parse(self) -> None:
        first = next(iter(self._records), "")
        root = first.split("/", 1)[0] if "/" in first else ""
        if not root or any(not n.startswith(root + "/") for n in self._records):
            raise InvalidHeaderError(
                "not a torch.export archive: its members do not share one root folder",
                path=self.path,
            )
        self._root = root
        fmt = self._small_text("archive_format")
        if fmt != "pt2":
            raise InvalidHeaderError(
                f"not a torch.export archive: {root}/archive_format is {fmt!r}, not 'pt2'",
                path=self.path,
            )
        byteorder = self._small_text("byteorder")
        if byteorder not in (None, "little", "big"):
            raise InvalidHeaderError(f"{root}/byteorder says {byteorder!r}", path=self.path)
        self._big_endian = byteorder == "big"
        self._version = self._small_text("archive_version")
        models = sorted(
            n[len(root) + len("/models/") : -len(".json")]
            for n in self._records
            if n.startswith(f"{root}/models/") and n.endswith(".json") and n.count("/") == 2
        )
        if not models:
            aoti = any(n.startswith(f"{root}/data/aotinductor/") for n in self._records)
            raise UnsupportedOperationError(
                "this .pt2 archive holds no exported program (models/*.json)"
                + (
                    "; it is an AOTInductor package: compiled code, its weights inside the .so"
                    if aoti
                    else ""
                ),
                path=self.path,
            )
        self._models = sorted(models, key=lambda m: (m != "model", m))
        for model in self._models:
            self._read_model(model)

    def _member(self, rel: str) -> _Record | None:
        return self._records.get(f"{self._root}/{rel}")

    def _small_text(self, rel: str) -> str | None:
        record = self._member(rel)
        if record is None:
            return None
        return bytes(self._bytes(record, _SMALL)).decode("utf-8", "replace").strip()

    def _bytes(
        self, record: _Record, limit: int, tensor: str | None = None
    ) -> bytes | bytearray | memoryview:
        if record.size > limit:
            raise HeaderTooLargeError(
                f"zip member {record.name} is {record.size:,} bytes, over the {limit:,} cap",
                path=self.path,
                tensor=tensor,
            )
        assert self._mmap is not None
        if record.compressed:
            compressed = memoryview(self._mmap)[
                record.data_offset : record.data_offset + record.info.compress_size
            ]
            return inflate(compressed, record.info, path=self.path, tensor=tensor)
        return memoryview(self._mmap)[record.data_offset : record.data_offset + record.size]

    def _json(self, record: _Record) -> Any:
        raw = bytes(self._bytes(record, MAX_CONFIG_BYTES))
        try:
            return json.loads(raw)
        except RecursionError:
            raise ResourceLimitError(
                f"{record.name} is nested too deeply", path=self.path
            ) from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidHeaderError(f"{record.name} is not JSON: {exc}", path=self.path) from None

    def _read_model(self, model: str) -> None:
        legacy = self._member(f"data/weights/{model}.pt")
        prefix = "" if model == "model" else f"{model}/"
        if legacy is not None:
            self._skipped[f"{prefix}<weights>"] = (
                f"{legacy.name} is the legacy pickled state dict (torch < 2.7); weightvault does not "
                "unpickle it here"
            )
        for folder in ("weights", "constants"):
            record = self._member(f"data/{folder}/{model}_{folder}_config.json")
            if record is None:
                if folder == "weights" and legacy is None:
                    raise InvalidHeaderError(
                        f"program {model!r} has no data/weights/{model}_weights_config.json",
                        path=self.path,
                    )
                continue
            config = self._json(record)
            entries = config.get("config") if isinstance(config, dict) else None
            if not isinstance(entries, dict):
                raise InvalidHeaderError(f"{record.name} has no 'config' object", path=self.path)
            for fqn, meta in entries.items():
                self._add(model, prefix + fqn, fqn, folder, meta)
        self._check_shared_records()

    def _add(self, model: str, name: str, fqn: str, folder: str, meta: Any) -> None:
        if name in self._entries or name in self._skipped:
            raise DuplicateTensorError(
                "the archive names this tensor twice", path=self.path, tensor=name
            )
        if not isinstance(meta, dict):
            raise InvalidHeaderError(
                f"its config entry is {_short(meta)}", path=self.path, tensor=name
            )
        path_name = meta.get("path_name")
        if (
            not isinstance(path_name, str)
            or not _PLAIN_NAME.fullmatch(path_name)
            or path_name in (".", "..")
        ):
            raise InvalidHeaderError(
                f"path_name {_short(path_name)} is not a plain member name of data/{folder}/",
                path=self.path,
                tensor=name,
            )
        record = self._member(f"data/{folder}/{path_name}")
        if record is None:
            raise InvalidHeaderError(
                f"its data, data/{folder}/{path_name}, is not in the archive",
                path=self.path,
                tensor=name,
            )
        why = self._pickled(meta, path_name, record)
        if why:
            self._skipped[name] = why
            return
        entry = self._entry(model, name, fqn, folder, meta, record)
        if entry is not None:
            self._entries[name] = entry

    def _pickled(self, meta: dict[str, Any], path_name: str, record: _Record) -> str | None:
        """Why an entry is a pickle weightvault will not run, or None for raw bytes."""
        if path_name.startswith("custom_obj_"):
            return f"{record.name} is a pickled TorchScript object (torch.load would run it)"
        if path_name.startswith("opaque_obj_"):
            return f"{record.name} is a pickled Python object (torch.load would run it)"
        if meta.get("use_pickle") is not False:
            return (
                f"{record.name} is a pickled tensor subclass (use_pickle); weightvault does not run "
                "pickles from a .pt2"
            )
        return None

    def _entry(
        self, model: str, name: str, fqn: str, folder: str, meta: dict[str, Any], record: _Record
    ) -> _Entry | None:
        tm = meta.get("tensor_meta")
        if not isinstance(tm, dict):
            raise InvalidHeaderError("its tensor_meta is missing", path=self.path, tensor=name)
        code = tm.get("dtype")
        if type(code) is not int or code not in SCALAR_TYPES:
            raise UnknownDtypeError(
                f"dtype code {_short(code)} is not a torch ScalarType", path=self.path, tensor=name
            )
        dtype = SCALAR_TYPES[code]
        if dtype is None:
            self._skipped[name] = "complex32 (torch.chalf) has no numpy dtype"
            return None
        if tm.get("layout", _STRIDED) != _STRIDED:
            raise UnsupportedOperationError(
                f"layout {_short(tm.get('layout'))} is not strided (sparse tensors are not read)",
                path=self.path,
                tensor=name,
            )
        sizes, strides = tm.get("sizes"), tm.get("strides")
        if (
            not isinstance(sizes, list)
            or not isinstance(strides, list)
            or len(sizes) != len(strides)
        ):
            raise InvalidHeaderError(
                "sizes and strides are not two lists of one length", path=self.path, tensor=name
            )
        if len(sizes) > MAX_DIMS:
            raise InvalidHeaderError(
                f"{len(sizes)} dimensions (at most {MAX_DIMS})", path=self.path, tensor=name
            )
        shape = tuple(_int_of(s, "a size", self.path, name) for s in sizes)
        stride = tuple(_int_of(s, "a stride", self.path, name) for s in strides)
        offset = _int_of(tm.get("storage_offset"), "storage_offset", self.path, name)
        kind = (
            "constant"
            if folder == "constants"
            else ("parameter" if meta.get("is_param") else "buffer")
        )
        extra: dict[str, Any] = {
            "kind": kind,
            "record": record.name.split("/", 1)[1],
            "storage_offset": offset,
        }
        if model != "model":
            extra["model"] = model
        device = tm.get("device")
        if (
            isinstance(device, dict)
            and isinstance(device.get("type"), str)
            and device["type"] != "cpu"
        ):
            extra["device"] = device["type"][:32]
        if tm.get("requires_grad") is True:
            extra["requires_grad"] = True
        entry = _Entry(name, model, fqn, kind, record, dtype, shape, stride, offset, extra)
        if not entry.is_contiguous():
            extra["stride"] = list(stride)
        return entry if self._check_extent(entry) else None

    def _check_extent(self, e: _Entry) -> bool:
        """Check the tensor against its record's bytes; False when it has no values (skipped)."""
        itemsize = DTYPES[e.dtype].itemsize
        if e.record.size % itemsize:
            raise InvalidHeaderError(
                f"{e.record.name} holds {e.record.size} bytes, not a whole number of {e.dtype} elements",
                path=self.path,
                tensor=e.name,
            )
        if e.numel and e.record.size == 0:
            # torch saves fake and meta tensors as empty records; torch.export.load gives zeros
            self._skipped[e.name] = (
                f"{e.record.name} is empty: no values were saved (a fake or meta tensor)"
            )
            return False
        needed = e.extent()
        if needed > e.record.size // itemsize:
            raise InvalidOffsetError(
                f"shape {list(e.shape)} with stride {list(e.stride)} at offset {e.offset} reaches element "
                f"{needed - 1} of {e.record.name}, which holds {e.record.size // itemsize}",
                path=self.path,
                tensor=e.name,
            )
        # a zero stride repeats stored elements (torch's expand): more out than stored
        check_expansion(
            e.numel * itemsize,
            e.record.size,
            path=self.path,
            tensor=e.name,
            what=f"shape {list(e.shape)} over {e.record.name}",
        )
        return True

    def _check_shared_records(self) -> None:
        dtypes: dict[str, tuple[str, str]] = {}
        for e in self._entries.values():
            seen = dtypes.setdefault(e.record.name, (e.dtype, e.name))
            if seen[0] != e.dtype:
                raise InvalidHeaderError(
                    f"{e.record.name} is read as {e.dtype} here and as {seen[0]} by {seen[1]!r}",
                    path=self.path,
                    tensor=e.name,
                )

    # -- data --------------------------------------------------------------------------------------
    def _record_array(self, e: _Entry) -> np.ndarray:
        """The record's bytes as uint8: a view of the mmapped file (inflated if compressed), one
        array per record, so the tensors of one storage are views of one base (a ``.pt`` writer
        keeps them one storage: tied weights stay tied)."""
        record = e.record
        cached = self._storages.get(record.name)
        if cached is not None:
            return cached
        if record.compressed:
            # not what torch writes, but a re-zipped archive still loads in torch
            data = self._bytes(record, record.size, tensor=e.name)
            cached = np.frombuffer(bytes(data), np.uint8)
        else:
            assert self._mmap is not None
            cached = np.frombuffer(
                self._mmap, np.uint8, count=record.size, offset=record.data_offset
            )
        self._storages[record.name] = cached
        return cached

    def buffer_spans(self) -> dict[int, ByteSpan]:
        """File spans of the record arrays handed out so far, keyed by ``id()`` of the array (what
        the ``.pt`` writer uses to copy a shared storage from the file, see the pytorch reader)."""
        if self._big_endian:
            return {}
        return {
            id(arr): ByteSpan(
                self.path, self._file.fileno(), self._records[key].data_offset, arr.nbytes
            )
            for key, arr in self._storages.items()
            if not self._records[key].compressed
        }

    # -- FormatReader ------------------------------------------------------------------------------
    def keys(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def info(self, name: str) -> TensorInfo:
        self._require(name)
        e = self._entries[name]
        return TensorInfo(name, e.dtype, e.shape, dict(e.extra))

    def get(self, name: str) -> np.ndarray:
        self._require(name)
        e = self._entries[name]
        dt = DTYPES[e.dtype]
        if e.numel == 0:
            return np.empty(e.shape, dt)
        raw = self._record_array(e)
        # np.ndarray over the record (not as_strided) keeps it as the base and re-checks bounds.
        # A stride of a dimension of size 1 is never followed; the file may make it huge.
        strides = tuple(
            s * dt.itemsize if n > 1 else 0 for n, s in zip(e.shape, e.stride, strict=True)
        )
        arr = np.ndarray(
            e.shape, dtype=dt, buffer=raw, offset=e.offset * dt.itemsize, strides=strides
        )
        if self._big_endian and dt.itemsize > 1:
            component = dt.itemsize // 2 if dt.kind == "c" else dt.itemsize
            flat = np.ascontiguousarray(arr).reshape(-1).view(np.uint8)
            arr = flat.view(f">u{component}").astype(f"<u{component}").view(dt).reshape(e.shape)
        return arr

    def byte_span(self, name: str) -> ByteSpan | None:
        """A contiguous little-endian tensor of a stored record lies verbatim in the file."""
        self._require(name)
        e = self._entries[name]
        itemsize = DTYPES[e.dtype].itemsize
        if (
            e.numel == 0
            or not e.is_contiguous()
            or e.record.compressed
            or (self._big_endian and itemsize > 1)
        ):
            return None
        return ByteSpan(
            self.path,
            self._file.fileno(),
            e.record.data_offset + e.offset * itemsize,
            e.numel * itemsize,
        )

    def verify(self) -> VerifyResult:
        """Check each record's CRC-32 against the zip directory, then read every tensor."""
        result = VerifyResult(self.path)
        crc_ok: set[str] = set()
        for record in {e.record.name: e.record for e in self._entries.values()}.values():
            if record.compressed:
                continue  # inflate() checks the CRC of what it inflates
            assert self._mmap is not None
            data = memoryview(self._mmap)[record.data_offset : record.data_offset + record.size]
            actual = crc32(data)
            if actual == record.info.CRC:
                crc_ok.add(record.name)
                continue
            owners = [n for n, e in self._entries.items() if e.record is record]
            result.failures.append(
                f"{owners[0]}: CRC-32 of {record.name} is {actual:08x}, the archive says "
                f"{record.info.CRC:08x}"
            )
        for name, e in self._entries.items():
            self.get(name)
            if e.record.name in crc_ok or e.record.compressed:
                result.checked += 1
            else:
                result.unchecked += 1
        return result

    @property
    def aliases(self) -> dict[str, str]:
        """Names that are the same view of the same record as an earlier name (tied weights)."""
        first: dict[tuple[Any, ...], str] = {}
        out: dict[str, str] = {}
        for name, e in self._entries.items():
            key = (e.record.name, e.dtype, e.shape, e.stride, e.offset)
            if key in first:
                out[name] = first[key]
            else:
                first[key] = name
        return out

    @property
    def skipped(self) -> dict[str, str]:
        return dict(self._skipped)

    @property
    def metadata(self) -> dict[str, Any]:
        kinds: dict[str, int] = {}
        for e in self._entries.values():
            kinds[e.kind] = kinds.get(e.kind, 0) + 1
        facts: dict[str, Any] = {
            "archive": self._root,
            "archive_version": self._version,
            "byteorder": "big" if self._big_endian else "little",
            "programs": list(self._models),
            "tensors": kinds,
        }
        return {"torch_export": facts}

    def close(self) -> None:
        self._storages.clear()
        close_mmap(self._mmap)
        self._mmap = None
        self._file.close()


class TorchExportFormat(Format):
    name = "torch_export"
    description = (
        "torch.export archive (.pt2): parameters, buffers, constants; read-only, no pickle run"
    )
    read_options: ClassVar[Mapping[str, str]] = {}
    write_options: ClassVar[Mapping[str, str]] = {}

    @classmethod
    def sniff(cls, path: Path, head: bytes) -> bool:
        if not head.startswith(ZIP_MAGIC) or len(head) < 30:
            return False
        name_len = int.from_bytes(head[26:28], "little")
        first = head[30 : 30 + name_len].decode("utf-8", "replace")
        rest = first.split("/", 1)[1] if "/" in first else ""
        return rest.startswith(
            ("data/weights/", "data/constants/", "models/", "archive_format", "data/aotinductor/")
        )

    @classmethod
    def open(cls, path: str | os.PathLike[str], **options: Any) -> TorchExportReader:
        return TorchExportReader(path)
