"""OneFlow model directories, all three on-disk layouts (formats.md section 2).

* **pickle** (OneFlow 0.6-1.0 ``flow.save(obj, dir)``): ``pickled_data`` holds
  ``{"protocol_version": 1, "data": obj}`` where every tensor was pickled as
  ``oneflow[.nn].Tensor/Parameter`` with state ``{"path": "tensor_<N>"}``, and ``<dir>/tensor_<N>/``
  holds ``meta`` + ``out``. Read through :func:`weightvault.core.unpickler.safe_unpickle`: the
  OneFlow tensor globals become :class:`TensorRef` stand-ins that only remember their path,
  ``collections.OrderedDict`` is allowed, and classes under ``oneflow.nn.modules`` (a pickled whole
  module) become inert :class:`ModuleStandIn` objects whose ``_parameters`` / ``_buffers`` /
  ``_modules`` give state-dict names. Nothing from the file is imported or run.
* **legacy** (0.3-0.5 ``flow.checkpoint.save``, also ``nn.Graph`` saves): one directory per
  variable, named by its key, holding ``meta`` (text ``VariableMetaInfo``) and ``out`` (raw C-order
  little-endian bytes), plus an empty ``snapshot_done`` (absent for graph saves: noted in metadata).
* **snapshot** (<= 0.3 C++ snapshot): ``<name>/out`` only. Shapes come from the ``shapes`` option
  (``{"name": [dims]}`` with ``dtype``, default float32) or from a ``template`` weight file/dir
  whose tensors have the same names.

Every tensor path is resolved with :func:`weightvault.formats._common.safe_relative`, so names
with ``/``, ``..`` or absolute paths are refused on read and on write, and a ``path`` in
``pickled_data`` cannot leave the directory. ``out`` sizes are checked against shape x dtype
before mapping. The writer produces the pickle layout (default) or the legacy layout, only in the
8 dtypes OneFlow 0.9 can load. :func:`validate_oneflow_dir` repeats the checks OneFlow's loader
makes, for testing our output without OneFlow (it cannot be installed on CPython 3.11).
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from weightvault.abc.format import Format, FormatReader, TensorInfo
from weightvault.core.dtypes import dtype_from_name
from weightvault.core.io import atomic_dir, atomic_write
from weightvault.core.protobuf import ProtobufDecodeError, parse_text
from weightvault.core.unpickler import BASE_ALLOWED, StandInMeta, safe_unpickle
from weightvault.errors import (
    DuplicateTensorError,
    InvalidHeaderError,
    InvalidOffsetError,
    ResourceLimitError,
    TruncatedFileError,
    UnknownDtypeError,
    UnsafePickleError,
    UnsupportedOperationError,
)
from weightvault.formats._common import describe_entry, fetch_array, jsonable, safe_relative

__all__ = ["OneFlowFormat", "OneFlowReader", "validate_oneflow_dir"]

PICKLED = "pickled_data"
DONE = "snapshot_done"
MAX_META = 1 << 16
MAX_PICKLE = 1 << 28

#: OneFlow DataType enum (oneflow/core/common/data_type.proto) -> canonical dtype, for reading.
_READ_DTYPES = {
    "kChar": "int8", "kFloat": "float32", "kDouble": "float64", "kInt8": "int8", "kInt32": "int32",
    "kInt64": "int64", "kUInt8": "uint8", "kFloat16": "float16", "kBFloat16": "bfloat16", "kBool": "bool",
    "kUInt16": "uint16", "kUInt32": "uint32", "kUInt64": "uint64", "kInt16": "int16",
    "kComplex64": "complex64", "kComplex128": "complex128",
}  # fmt: skip
_ENUM_NUMBERS = {
    1: "kChar", 2: "kFloat", 3: "kDouble", 4: "kInt8", 5: "kInt32", 6: "kInt64", 7: "kUInt8", 9: "kFloat16",
    11: "kBFloat16", 12: "kBool", 13: "kUInt16", 14: "kUInt32", 15: "kUInt64", 17: "kInt16",
    20: "kComplex64", 21: "kComplex128",
}  # fmt: skip
#: The 8 dtypes OneFlow 0.9's numpy bridge can load, and their enum names (for writing).
WRITE_DTYPES = {
    "bool": "kBool", "float16": "kFloat16", "float32": "kFloat", "float64": "kDouble",
    "int8": "kInt8", "int32": "kInt32", "int64": "kInt64", "uint8": "kUInt8",
}  # fmt: skip
_TENSOR_GLOBALS = (
    ("oneflow", "Tensor"),
    ("oneflow.nn", "Parameter"),
    ("oneflow._oneflow_internal", "Tensor"),
    ("oneflow._oneflow_internal.nn", "Parameter"),
    ("oneflow.framework.tensor", "Tensor"),
)


# ------------------------------------------------------------------------------------------------
# pickle stand-ins
class TensorRef(metaclass=StandInMeta):
    """Stand-in for a pickled OneFlow Tensor/Parameter: remembers the directory it points to."""

    def __init__(self, *args: Any) -> None:
        self.path: str | None = None
        self.parameter = False

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict) or not isinstance(state.get("path"), str):
            raise UnsafePickleError(
                "a OneFlow tensor in pickled_data has no 'path' (only flow.save output is supported)"
            )
        self.path = state["path"]


class ParameterRef(TensorRef):
    def __init__(self, *args: Any) -> None:
        super().__init__()
        self.parameter = True


class ModuleStandIn(metaclass=StandInMeta):
    """Inert stand-in for a pickled ``oneflow.nn.Module`` subclass: only keeps its attributes."""

    qualname = "Module"

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, dict):
            self.__dict__.update({str(k): v for k, v in state.items()})


class _OneFlowAllowed(Mapping[tuple[str, str], Any]):
    """Allowlist: base containers, the tensor globals, and module classes as inert stand-ins."""

    def __init__(self) -> None:
        self._fixed: dict[tuple[str, str], Any] = dict(BASE_ALLOWED)
        for module, name in _TENSOR_GLOBALS:
            self._fixed[(module, name)] = ParameterRef if name == "Parameter" else TensorRef
        self.modules: list[str] = []

    def get(self, key: tuple[str, str], default: Any = None) -> Any:  # type: ignore[override]
        if key in self._fixed:
            return self._fixed[key]
        module, name = key
        if module.startswith("oneflow.nn.modules.") and name.isidentifier() and name[:1].isupper():
            self.modules.append(f"{module}.{name}")
            return type(name, (ModuleStandIn,), {"qualname": f"{module}.{name}"})
        return default

    def __getitem__(self, key: tuple[str, str]) -> Any:
        found = self.get(key)
        if found is None:
            raise KeyError(key)
        return found

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._fixed)

    def __len__(self) -> int:
        return len(self._fixed)


def _walk(obj: Any, prefix: str, out: dict[str, TensorRef], extra: dict[str, Any], depth: int = 0) -> None:
    """Name every TensorRef like a state dict would; keep plain values as metadata."""
    if depth > 64:
        raise InvalidHeaderError("pickled_data nests too deeply")
    if isinstance(obj, TensorRef):
        name = prefix.rstrip(".")
        if name in out:
            raise DuplicateTensorError("two tensors get the same name", tensor=name)
        out[name] = obj
    elif isinstance(obj, ModuleStandIn):
        d = obj.__dict__
        for group in ("_parameters", "_buffers"):
            items = d.get(group)
            if isinstance(items, dict):
                for k, v in items.items():
                    if v is not None:
                        _walk(v, f"{prefix}{k}.", out, extra, depth + 1)
        children = d.get("_modules")
        if isinstance(children, dict):
            for k, v in children.items():
                if v is not None:
                    _walk(v, f"{prefix}{k}.", out, extra, depth + 1)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _walk(v, f"{prefix}{k}.", out, extra, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _walk(v, f"{prefix}{i}.", out, extra, depth + 1)
    elif isinstance(obj, (int, float, str, bool, type(None))) and prefix:
        extra[prefix.rstrip(".")] = obj


# ------------------------------------------------------------------------------------------------
# meta files
def parse_meta(path: Path, *, tensor: str | None = None) -> tuple[str, tuple[int, ...]]:
    """(canonical dtype, shape) from a ``meta`` file (text VariableMetaInfo, or its binary form)."""
    try:
        return _parse_meta(path, tensor=tensor)
    except RecursionError:
        raise ResourceLimitError("meta is nested too deeply to parse", path=path, tensor=tensor) from None


def _parse_meta(path: Path, *, tensor: str | None) -> tuple[str, tuple[int, ...]]:
    size = path.stat().st_size
    if size > MAX_META:
        raise InvalidHeaderError(f"meta file of {size} bytes is too large", path=path, tensor=tensor)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
        msg = parse_text(text, path=path)
        shapes = msg.get("shape") or []
        if len(shapes) != 1 or not isinstance(shapes[0], dict) or "data_type" not in msg:
            raise InvalidHeaderError("meta needs one shape and a data_type", path=path, tensor=tensor)
        dims = shapes[0].get("dim", [])
        dt = msg["data_type"][-1]
    except (UnicodeDecodeError, ProtobufDecodeError):
        dims, dt = _parse_binary_meta(raw, path=path, tensor=tensor)
    if isinstance(dt, int):
        dt = _ENUM_NUMBERS.get(dt, str(dt))
    if dt not in _READ_DTYPES:
        raise UnknownDtypeError(f"OneFlow data_type {dt!r} is not supported", path=path, tensor=tensor)
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in dims):
        raise InvalidHeaderError(f"shape dims {dims!r} are not non-negative integers", path=path, tensor=tensor)
    return _READ_DTYPES[dt], tuple(dims)


def _parse_binary_meta(raw: bytes, *, path: Path, tensor: str | None) -> tuple[list[int], int]:
    from weightvault.core.protobuf import get_int, get_message, get_packed, parse

    msg = parse(raw, path=path)
    shape = get_message(msg, 2, path=path)
    if shape is None or 3 not in msg:
        raise InvalidHeaderError("binary meta lacks shape or data_type", path=path, tensor=tensor)
    return [int(d) for d in get_packed(shape, 1, "int64", path=path)], get_int(msg, 3)


def format_meta(dtype: str, shape: tuple[int, ...]) -> bytes:
    """``text_format.MessageToString(VariableMetaInfo)`` exactly as OneFlow writes it."""
    dims = "".join(f"  dim: {d}\n" for d in shape)
    return f"shape {{\n{dims}}}\ndata_type: {WRITE_DTYPES[dtype]}\n".encode()


def _check_name(name: str, *, path: Any) -> str:
    # A name is one directory entry: any separator, "." / ".." or NUL would leave or alias it.
    if not isinstance(name, str) or name in ("", ".", "..") or any(c in name for c in "/\\\x00"):
        raise InvalidHeaderError(
            f"tensor name {name!r} cannot be a OneFlow directory name (no '/', '..' or absolute paths)",
            path=path,
            tensor=str(name),
        )
    return name


# ------------------------------------------------------------------------------------------------
class _Entry:
    __slots__ = ("dir", "dtype", "shape")

    def __init__(self, d: str, dtype: str, shape: tuple[int, ...]) -> None:
        self.dir, self.dtype, self.shape = d, dtype, shape


class OneFlowReader(FormatReader):
    format_name = "oneflow"

    def __init__(self, path: str | os.PathLike[str], *, shapes: Mapping[str, Any] | None = None,
                 dtype: str = "float32", template: str | os.PathLike[str] | None = None) -> None:
        super().__init__(path)
        root = Path(self.path)
        if not root.is_dir():
            raise InvalidHeaderError("a OneFlow model is a directory", path=root)
        self._entries: dict[str, _Entry] = {}
        self._meta: dict[str, Any] = {}
        if (root / PICKLED).is_file():
            self._read_pickle(root)
        elif any((root / c / "meta").is_file() for c in _subdirs(root)):
            self._read_legacy(root)
        else:
            self._read_snapshot(root, shapes, dtype, template)

    # -- layouts ----------------------------------------------------------------------------------------
    def _inside(self, file: Path, *, tensor: str | None = None) -> Path:
        """``file`` (under the model directory) after checking that it resolves to a regular file
        inside the directory: a ``meta``/``out``/``pickled_data`` that is a link to a file
        elsewhere, or a directory, is refused before anything is read."""
        root = Path(self.path)
        rel = os.path.relpath(file, root)
        return Path(safe_relative(root, rel.replace(os.sep, "/"), path=file, tensor=tensor))

    def _read_pickle(self, root: Path) -> None:
        pk = self._inside(root / PICKLED)
        if pk.stat().st_size > MAX_PICKLE:
            raise InvalidHeaderError("pickled_data is implausibly large", path=pk)
        allowed = _OneFlowAllowed()
        obj = safe_unpickle(pk.read_bytes(), allowed=allowed, path=pk, what="OneFlow pickled_data")
        if not isinstance(obj, dict) or obj.get("protocol_version") != 1 or "data" not in obj:
            raise InvalidHeaderError("pickled_data is not {'protocol_version': 1, 'data': ...}", path=pk)
        refs: dict[str, TensorRef] = {}
        extra: dict[str, Any] = {}
        _walk(obj["data"], "", refs, extra)
        for name, ref in refs.items():
            assert ref.path is not None
            d = safe_relative(root, ref.path, path=pk, tensor=name, directory=True)
            self._add(name, Path(d))
        self._meta = {"layout": "pickle", "values": jsonable(extra)}
        if allowed.modules:
            self._meta["note"] = (
                f"pickled_data holds a whole module ({', '.join(sorted(set(allowed.modules)))}); "
                "its tensors are named as in its state_dict and no module code was run"
            )

    def _read_legacy(self, root: Path) -> None:
        for child in _subdirs(root):
            if (root / child / "meta").is_file():
                _check_name(child, path=root)
                self._add(child, Path(safe_relative(root, child, path=root, tensor=child, directory=True)))
        self._meta = {"layout": "legacy"}
        if not (root / DONE).is_file():
            self._meta["note"] = "no snapshot_done (an nn.Graph save?): flow.load would refuse this directory"

    def _read_snapshot(self, root: Path, shapes: Mapping[str, Any] | None, dtype: str,
                       template: str | os.PathLike[str] | None) -> None:
        names = [c for c in _subdirs(root) if (root / c / "out").is_file()]
        if not names:
            raise InvalidHeaderError("not a OneFlow directory: no pickled_data, meta or out files", path=root)
        specs: dict[str, tuple[str, tuple[int, ...]]] = {}
        if template is not None:
            import weightvault

            with weightvault.open(template) as t:
                for info in t.infos():
                    specs[info.name] = (info.dtype, tuple(info.shape))
        for name, shp in dict(shapes or {}).items():
            specs[name] = (dtype, tuple(int(d) for d in shp))
        if not specs:
            raise UnsupportedOperationError(
                "a OneFlow C++ snapshot stores no shapes", path=root,
                hint="pass -o shapes='{\"name\": [dims]}' (and -o dtype=...) or -o template=FILE with the same tensors "
                "(shapes=/dtype=/template= in Python)",
            )
        missing = [n for n in names if n not in specs]
        if missing:
            raise UnsupportedOperationError(f"no shape given for {', '.join(missing[:5])}", path=root)
        for name in names:
            _check_name(name, path=root)
            dt, shp = specs[name]
            dtype_from_name(dt, path=self.path, tensor=name)
            self._entries[name] = _Entry(safe_relative(root, name, path=root, tensor=name, directory=True), dt, shp)
            self._check_size(name)
        self._meta = {"layout": "snapshot", "complete": (root / DONE).is_file()}

    def _add(self, name: str, d: Path) -> None:
        if name in self._entries:
            raise DuplicateTensorError("tensor listed twice", path=self.path, tensor=name)
        meta, out = d / "meta", d / "out"
        if not meta.is_file() or not out.is_file():
            raise TruncatedFileError(f"{d.name} lacks its meta or out file", path=d, tensor=name)
        meta = self._inside(meta, tensor=name)
        dt, shape = parse_meta(meta, tensor=name)
        self._entries[name] = _Entry(os.fspath(d), dt, shape)
        self._check_size(name)

    def _check_size(self, name: str) -> None:
        e = self._entries[name]
        out = self._inside(Path(e.dir) / "out", tensor=name)
        if not out.is_file():
            raise TruncatedFileError("the out file is missing", path=out, tensor=name)
        want = math.prod(e.shape) * dtype_from_name(e.dtype).itemsize
        have = out.stat().st_size
        if have < want:
            raise TruncatedFileError(f"out holds {have} bytes, shape {list(e.shape)} x {e.dtype} needs {want}",
                                     path=out, tensor=name)
        if have != want:
            raise InvalidOffsetError(f"out holds {have} bytes, shape {list(e.shape)} x {e.dtype} needs {want}",
                                     path=out, tensor=name)

    # -- FormatReader -------------------------------------------------------------------------------------
    def keys(self) -> list[str]:
        return list(self._entries)

    def info(self, name: str) -> TensorInfo:
        self._require(name)
        e = self._entries[name]
        return TensorInfo(name, e.dtype, e.shape, {"dir": os.path.relpath(e.dir, self.path)})

    def get(self, name: str) -> np.ndarray:
        self._require(name)
        e = self._entries[name]
        self._check_size(name)
        dt = dtype_from_name(e.dtype)
        if math.prod(e.shape) == 0:
            return np.zeros(e.shape, dt)
        out = self._inside(Path(e.dir) / "out", tensor=name)
        try:
            return np.fromfile(out, dtype=dt).reshape(e.shape)
        except (OSError, ValueError) as exc:  # changed under us since the size check
            raise TruncatedFileError(f"cannot read out: {exc}", path=out, tensor=name) from None

    @property
    def metadata(self) -> dict[str, Any]:
        return dict(self._meta)


def _subdirs(root: Path) -> list[str]:
    return sorted(c.name for c in root.iterdir() if c.is_dir() and ".wvtmp-" not in c.name)


# ------------------------------------------------------------------------------------------------
# writing
def _pickle_str(s: str) -> bytes:
    raw = s.encode("utf-8")
    return b"X" + struct.pack("<I", len(raw)) + raw


def _pickled_data(entries: list[tuple[str, str]]) -> bytes:
    """``pickle.dumps({"protocol_version": 1, "data": OrderedDict(name -> Tensor)})``, protocol 2,
    with the globals OneFlow 0.8-1.0 uses (``oneflow.Tensor`` rebuilt from ``{"path": dir}``)."""
    out = bytearray(b"\x80\x02}(")
    out += _pickle_str("protocol_version") + b"K\x01" + _pickle_str("data")
    out += b"ccollections\nOrderedDict\n)R"
    if entries:
        out += b"("
        for name, d in entries:
            out += _pickle_str(name) + b"coneflow\nTensor\n)\x81}" + _pickle_str("path") + _pickle_str(d) + b"sb"
        out += b"u"
    out += b"u."
    return bytes(out)


class OneFlowFormat(Format):
    name = "oneflow"
    description = "OneFlow model directory (pickled_data + tensor_N/, legacy meta/out dirs, C++ snapshot)"
    read_options: ClassVar[Mapping[str, str]] = {
        "shapes": "{name: shape} for a C++ snapshot, which stores no shapes",
        "dtype": "element type of a C++ snapshot's tensors (default float32)",
        "template": "a OneFlow model directory to take the snapshot's shapes and dtypes from",
    }
    write_options: ClassVar[Mapping[str, str]] = {
        "layout": "pickle (pickled_data + tensor_<i>/, default) or legacy (<name>/meta,out)",
    }

    @classmethod
    def sniff(cls, path: Path, head: bytes) -> bool:
        if not path.is_dir():
            return False
        if (path / PICKLED).is_file():
            return any((path / c / "meta").is_file() for c in _subdirs(path)) or _pickle_mentions_oneflow(path)
        subs = _subdirs(path)
        if subs and all((path / c / "meta").is_file() and (path / c / "out").is_file() for c in subs):
            return True
        return (path / DONE).is_file() and any((path / c / "out").is_file() for c in subs)

    @classmethod
    def open(cls, path: str | os.PathLike[str], **options: Any) -> OneFlowReader:
        unknown = set(options) - {"shapes", "dtype", "template"}
        if unknown:
            raise UnsupportedOperationError(f"unknown oneflow option(s): {', '.join(sorted(unknown))}", path=path)
        return OneFlowReader(path, **options)

    @classmethod
    def write(cls, path: str | os.PathLike[str], tensors: Mapping[str, np.ndarray], *,
              metadata: Mapping[str, Any] | None = None, layout: str = "pickle", **options: Any) -> None:
        """Write a directory loadable by ``oneflow.load`` (0.6-1.0): ``layout="pickle"`` (default,
        ``pickled_data`` + ``tensor_<i>/``) or ``layout="legacy"`` (``<name>/{meta,out}`` +
        ``snapshot_done``). Only bool, float16/32/64, int8/32/64 and uint8 are written."""
        if options:
            raise UnsupportedOperationError(f"unknown oneflow option(s): {', '.join(sorted(options))}", path=path)
        if layout not in ("pickle", "legacy"):
            raise UnsupportedOperationError("layout must be 'pickle' or 'legacy'", path=path)
        names = list(tensors)
        for name in names:
            _check_name(name, path=path)
            dtype, _ = describe_entry(tensors, name)
            if dtype not in WRITE_DTYPES:
                raise UnknownDtypeError(
                    f"OneFlow 0.9 cannot load {dtype} tensors", path=path, tensor=name,
                    hint=f"cast to one of {', '.join(WRITE_DTYPES)}",
                )
        with atomic_dir(path) as tmp:
            entries = []
            for i, name in enumerate(names):
                d = f"tensor_{i}" if layout == "pickle" else name
                arr = fetch_array(tensors, name)
                (tmp / d).mkdir()
                with atomic_write(tmp / d / "meta", fsync=False) as f:
                    f.write(format_meta(str(arr.dtype) if arr.dtype != bool else "bool", tuple(arr.shape)))
                with atomic_write(tmp / d / "out") as f:
                    f.write(memoryview(np.ascontiguousarray(arr).reshape(-1).view(np.uint8)))
                entries.append((name, d))
                del arr
            if layout == "pickle":
                with atomic_write(tmp / PICKLED) as f:
                    f.write(_pickled_data(entries))
            else:
                with atomic_write(tmp / DONE) as f:
                    pass


def _pickle_mentions_oneflow(path: Path) -> bool:
    with open(path / PICKLED, "rb") as f:
        return b"protocol_version" in f.read(4096)


# ------------------------------------------------------------------------------------------------
def validate_oneflow_dir(path: str | os.PathLike[str]) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Repeat the checks ``oneflow.load`` (0.9, ``check_point_v2``) makes; returns name -> (dtype,
    shape) or raises :class:`InvalidHeaderError` / :class:`TruncatedFileError`.

    * with ``pickled_data``: it unpickles to ``{"protocol_version": 1, "data": ...}`` (OneFlow asserts
      the version) and every tensor ``path`` names a directory inside ``path``;
    * without: ``snapshot_done`` must exist (OneFlow asserts it) and every sub-directory is a variable;
    * every variable directory has a ``meta`` that parses as ``VariableMetaInfo`` with a data type the
      0.9 numpy bridge maps, and an ``out`` of exactly prod(shape) x itemsize bytes.
    """
    root = Path(path)
    if not root.is_dir():
        raise InvalidHeaderError("flow.load needs a directory", path=root)
    if not (root / PICKLED).is_file() and not (root / DONE).is_file():
        raise InvalidHeaderError("no pickled_data and no snapshot_done: flow.load refuses it", path=root)
    with OneFlowReader(root) as reader:
        found = {}
        for name in reader.keys():
            info = reader.info(name)
            if info.dtype not in WRITE_DTYPES:
                raise UnknownDtypeError(f"OneFlow 0.9 cannot load {info.dtype}", path=root, tensor=name)
            meta = (root / info.extra["dir"] / "meta").read_text()
            if parse_meta(root / info.extra["dir"] / "meta", tensor=name) != (info.dtype, info.shape) or not meta:
                raise InvalidHeaderError("meta does not round-trip", path=root, tensor=name)
            found[name] = (info.dtype, tuple(info.shape))
    return found
