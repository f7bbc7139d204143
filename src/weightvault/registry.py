"""The format registry: a sorted table of known formats, imported lazily on first use.

Shaped like fsspec's ``known_implementations``: each entry names the class by dotted path and the
hint to show when its optional dependency is missing. Third-party formats register through the
``weightvault.formats`` entry-point group or :func:`register_format`. Core code never lists formats
by hand: detection walks this table in ``DETECTION_ORDER``.
"""

from __future__ import annotations

import glob
import importlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from weightvault.abc.format import Format
from weightvault.errors import (
    FormatNotFoundError,
    MissingDependencyError,
    UnsupportedOperationError,
)

__all__ = [
    "ALIASES",
    "available_formats",
    "check_options",
    "detect_format",
    "format_for_destination",
    "format_title",
    "get_format",
    "known_formats",
    "register_format",
    "resolve_name",
]

_known: dict[str, dict[str, str]] = {
    "gguf": {"class": "weightvault.formats.gguf:GGUFFormat", "err": ""},
    "gob": {"class": "weightvault.formats.gob:GobFormat", "err": ""},
    "hwexport": {"class": "weightvault.export.reader:HWExportFormat", "err": ""},
    "keras": {
        "class": "weightvault.formats.keras_h5:KerasFormat",
        "err": "Install h5py (pip install 'weightvault[keras]') to read Keras HDF5 files",
    },
    "native": {"class": "weightvault.formats.native:NativeFormat", "err": ""},
    "numpy": {"class": "weightvault.formats.numpy_npz:NumpyFormat", "err": ""},
    "oneflow": {"class": "weightvault.formats.oneflow:OneFlowFormat", "err": ""},
    "onnx": {"class": "weightvault.formats.onnx:OnnxFormat", "err": ""},
    "pytorch": {"class": "weightvault.formats.pytorch:PyTorchFormat", "err": ""},
    "safetensors": {"class": "weightvault.formats.safetensors:SafetensorsFormat", "err": ""},
    "tf_bundle": {"class": "weightvault.formats.tf_bundle:TFBundleFormat", "err": ""},
    "tf_graph": {"class": "weightvault.formats.tf_graph:TFGraphFormat", "err": ""},
    "tf_v1": {"class": "weightvault.formats.tf_v1:TFV1Format", "err": ""},
    "torch_dcp": {"class": "weightvault.formats.torch_dcp:TorchDCPFormat", "err": ""},
}
assert list(_known) == sorted(_known), "keep the registry table sorted"

#: The names people type for a format (``--to torch``, ``--format tf``): alias -> registry name.
#: Registry names work too, and ``-`` and ``_`` are interchangeable (``tf-bundle``, ``tf-v1``).
ALIASES: dict[str, str] = {
    "h5": "keras",
    "hdf5": "keras",
    "hf": "safetensors",
    "npy": "numpy",
    "npz": "numpy",
    "pb": "tf_graph",
    "pt": "pytorch",
    "pth": "pytorch",
    "st": "safetensors",
    "tensorflow": "tf_bundle",
    "tf": "tf_bundle",
    "torch": "pytorch",
    "weightvault": "native",
}
assert list(ALIASES) == sorted(ALIASES), "keep the alias table sorted"

#: How messages name a format ("not an ONNX file"); the registry name otherwise.
_TITLES = {
    "gguf": "GGUF",
    "gob": "gob",
    "hwexport": "hardware export",
    "keras": "Keras HDF5",
    "native": "weightvault",
    "numpy": "NumPy",
    "oneflow": "OneFlow",
    "onnx": "ONNX",
    "pytorch": "PyTorch",
    "safetensors": "safetensors",
    "tf_bundle": "TensorFlow checkpoint",
    "tf_graph": "TensorFlow GraphDef",
    "tf_v1": "TensorFlow V1 checkpoint",
    "torch_dcp": "torch.distributed checkpoint",
}

#: Formats whose sniff is more specific are tried first (a native file is also a safetensors file).
DETECTION_ORDER = (
    "torch_dcp",  # before native: weightvault's DCP backend writes manifest.json + COMMITTED too
    "native",
    "safetensors",
    "pytorch",
    "numpy",
    "gguf",
    "keras",
    "tf_v1",  # before tf_bundle: a run directory's `checkpoint` file may name a V1 file
    "tf_bundle",
    "tf_graph",
    "onnx",
    "oneflow",
    "hwexport",
    "gob",
)

known_formats = MappingProxyType(_known)
_loaded: dict[str, type[Format]] = {}
_entry_points_loaded = False

HEAD_BYTES = 4096


def register_format(name: str, cls: type[Format] | str, *, clobber: bool = False) -> None:
    """Register a format class (or ``"module:Class"`` path) under ``name``."""
    if name in _known and not clobber:
        raise ValueError(f"format {name!r} is already registered; pass clobber=True to replace it")
    if isinstance(cls, str):
        _known[name] = {"class": cls, "err": ""}
        _loaded.pop(name, None)
    else:
        _known[name] = {"class": f"{cls.__module__}:{cls.__qualname__}", "err": ""}
        _loaded[name] = cls


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    # importlib.metadata scans every installed distribution: paid only when a name or a file is
    # not one of the built-in formats (plugins never replace a built-in name).
    from importlib.metadata import entry_points

    for ep in entry_points(group="weightvault.formats"):
        if ep.name not in _known:
            _known[ep.name] = {"class": ep.value, "err": ""}


def resolve_name(name: str, *, writable: bool = False) -> str:
    """The registry name for what a user typed: a registry name, an alias, any case, ``-`` or ``_``.

    Raises :class:`FormatNotFoundError` with the closest names ("did you mean") otherwise.
    """
    if name in _known:
        return name
    _load_entry_points()  # only a name that is no built-in format pays for the plugin scan
    if name in _known:
        return name
    key = name.strip().lower()
    for candidate in (key, key.replace("-", "_")):
        if candidate in _known:
            return candidate
        if candidate in ALIASES and ALIASES[candidate] in _known:
            return ALIASES[candidate]
    import difflib

    choices = format_choices(writable=writable)
    close = difflib.get_close_matches(key, choices, n=3, cutoff=0.6)
    guess = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise FormatNotFoundError(
        f"unknown format {name!r}{guess}",
        hint=f"known formats: {', '.join(choices)} (`weightvault formats` describes them)",
    )


def format_choices(*, writable: bool = False) -> list[str]:
    """Every name ``--format`` (with ``writable``: ``--to``) accepts: registry names and aliases.

    ``writable`` looks at ``can_write``, which imports the format classes (cheap: no framework).
    """
    _load_entry_points()
    names = sorted(set(_known) | {a for a, n in ALIASES.items() if n in _known})
    if not writable:
        return names
    can = {n for n in _known if _writable(n)}
    return [n for n in names if (ALIASES.get(n, n) if n not in _known else n) in can]


def _writable(name: str) -> bool:
    try:
        return bool(get_format(name).can_write)
    except (MissingDependencyError, AttributeError, ImportError):
        return False


def format_title(name: str) -> str:
    """How messages name a format: ``ONNX``, ``PyTorch``..."""
    return _TITLES.get(name, name)


def check_options(
    fmt: type[Format], options: Mapping[str, Any], kind: str, *, path: Any = None
) -> None:
    """Refuse option keys the format does not declare (``read_options`` / ``write_options``).

    ``kind`` is ``"read"`` or ``"write"``. A format that declares nothing (None: a third-party
    format written before the declarations existed) is not checked.
    """
    declared = getattr(fmt, f"{kind}_options", None)
    if declared is None:
        return
    unknown = sorted(set(options) - set(declared))
    if not unknown:
        return
    flag = "-o" if kind == "read" else "-w"
    valid = ", ".join(sorted(declared)) or "none"
    raise UnsupportedOperationError(
        f"unknown {fmt.name} {kind} option(s): {', '.join(unknown)}; valid: {valid}",
        path=path,
        hint=f"`weightvault formats {fmt.name}` lists the {flag} options with what each does",
    )


def get_format(name: str) -> type[Format]:
    """The format class registered as ``name`` (or an alias of it), imported on first use."""
    if name in _loaded:
        return _loaded[name]
    name = resolve_name(name)
    if name in _loaded:
        return _loaded[name]
    entry = _known[name]
    module_name, _, qualname = entry["class"].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise MissingDependencyError(entry["err"] or f"format {name!r} cannot be imported: {exc}") from exc
    obj: Any = module
    for part in qualname.split("."):
        obj = getattr(obj, part)
    _loaded[name] = obj
    return obj


def available_formats() -> dict[str, type[Format]]:
    """Every registered format that can be imported here."""
    _load_entry_points()
    found = {}
    for name in _known:
        try:
            found[name] = get_format(name)
        except (MissingDependencyError, AttributeError):
            continue
    return found


def _ordered_names() -> Iterator[str]:
    """Built-in formats in detection order, then plugins (loaded only when reached)."""
    yield from (n for n in DETECTION_ORDER if n in _known)
    _load_entry_points()
    yield from sorted(n for n in _known if n not in DETECTION_ORDER)


def _read_head(path: Path) -> bytes:
    if path.is_dir():
        return b""
    with open(path, "rb") as f:
        return f.read(HEAD_BYTES)


def detect_format(path: str | os.PathLike[str]) -> type[Format]:
    """Pick the format of ``path``: magic bytes / layout first, then the file name ending."""
    p = Path(path)
    if not p.exists() and not _tf_prefix_exists(p):
        raise FormatNotFoundError("no such file or directory", path=p)
    head = _read_head(p) if p.exists() else b""
    tried = []
    for name in _ordered_names():
        try:
            fmt = get_format(name)
        except (MissingDependencyError, AttributeError):
            continue
        tried.append(name)
        if fmt.sniff(p, head):
            return fmt
    for name in _ordered_names():
        try:
            fmt = get_format(name)
        except (MissingDependencyError, AttributeError):
            continue
        if any(p.name.lower().endswith(ext) for ext in fmt.extensions):
            return fmt
    raise FormatNotFoundError(
        f"not a weight file weightvault recognises (tried: {', '.join(tried)})",
        path=p,
        hint="pass --format NAME if you know the format; `weightvault formats` lists them",
    )


def sniff_format(path: str | os.PathLike[str]) -> str | None:
    """The format ``path``'s content claims (magic bytes / layout), never its name; None if none."""
    p = Path(path)
    head = _read_head(p) if p.exists() else b""
    for name in _ordered_names():
        try:
            fmt = get_format(name)
        except (MissingDependencyError, AttributeError):
            continue
        if fmt.sniff(p, head):
            return name
    return None


def _tf_prefix_exists(p: Path) -> bool:
    # A TensorFlow checkpoint is named by a prefix that is not itself a file (model.ckpt-1000),
    # or a sharded V1 checkpoint by its shards' pattern (model.ckpt-?????-of-00002) or prefix.
    if p.with_name(p.name + ".index").exists():
        return True
    if not p.parent.is_dir():
        return False
    name = glob.escape(p.name)
    shards = name.replace("[?]", "?"), name + "-[0-9][0-9][0-9][0-9][0-9]-of-*"
    return any(any(p.parent.glob(pattern)) for pattern in shards)


def format_for_destination(path: str | os.PathLike[str], to: str | None = None) -> type[Format]:
    """The writable format for a destination: ``to`` if given, else from the file name ending."""
    if to:
        fmt = get_format(resolve_name(to, writable=True))
    else:
        name = os.fspath(path).lower()
        candidates = [
            get_format(n)
            for n in _ordered_names()
            if n in available_formats() and get_format(n).can_write
        ]
        matches = [f for f in candidates if any(name.endswith(e) for e in f.extensions)]
        if not matches:
            # A path with no recognised ending is a native checkpoint (file or sharded directory).
            return get_format("native")
        fmt = matches[0]
    if not fmt.can_write:
        raise FormatNotFoundError(
            f"format {fmt.name!r} cannot be written",
            path=path,
            hint=f"writable formats: {', '.join(format_choices(writable=True))}",
        )
    return fmt
