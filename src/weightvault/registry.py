"""The format registry: one row of data per format, the class imported only when it is needed.

Shaped like fsspec's ``known_implementations``: each :class:`FormatRow` names the class by dotted
path and says, as plain data, what the rest of weightvault needs to know before importing it: the
name, how messages call it, the names people type for it, the file name endings, whether it can be
written, where it comes in detection, and the hint to show when its optional dependency is missing.
Adding a format is one row here. Choosing a destination by its name imports only the chosen
format; opening a file tries the formats its name suggests first and imports the others only when
their sniff is needed. Third-party formats register through the ``weightvault.formats`` entry-point
group or :func:`register_format`.
"""

from __future__ import annotations

import glob
import importlib
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from weightvault.errors import (
    FormatNotFoundError,
    MissingDependencyError,
    UnsupportedOperationError,
)

if TYPE_CHECKING:  # abc.format imports numpy; the table itself must not
    from weightvault.abc.format import Format

__all__ = [
    "ALIASES",
    "ROWS",
    "FormatRow",
    "available_formats",
    "check_options",
    "detect_format",
    "format_for_destination",
    "format_title",
    "get_format",
    "known_formats",
    "register_format",
    "resolve_name",
    "row",
]


@dataclass(frozen=True)
class FormatRow:
    """What the registry knows about a format without importing it."""

    #: registry name (``--format NAME``), also the class's ``name``
    name: str
    #: ``"module:Class"``, imported on first use
    target: str
    #: how messages name the format ("not an ONNX file")
    title: str
    #: detection order: lower sniffs first (a more specific sniff before a looser one)
    priority: int
    #: file name endings, most specific first: sniffed first when a file's name ends so, and
    #: used to pick the writer from a destination's name
    extensions: tuple[str, ...] = ()
    #: whether the format's ``write`` is implemented
    writable: bool = False
    #: other names people type (``--to torch``)
    aliases: tuple[str, ...] = ()
    #: message when importing the class fails for want of an optional dependency
    missing: str = ""

    def matches(self, filename: str) -> bool:
        """Whether ``filename`` ends with one of the row's endings (case-insensitive)."""
        lowered = filename.lower()
        return any(lowered.endswith(ext) for ext in self.extensions)


#: The built-in formats, sorted by name. Priorities: a native file is also a safetensors file; a
#: run directory's `checkpoint` file may name a V1 checkpoint, so tf_v1 comes before tf_bundle.
ROWS: tuple[FormatRow, ...] = (
    FormatRow("gguf", "weightvault.formats.gguf:GGUFFormat", "GGUF", 50, (".gguf",)),
    FormatRow("gob", "weightvault.formats.gob:GobFormat", "gob", 130, (".gob",), True),
    FormatRow(
        "hwexport", "weightvault.export.reader:HWExportFormat", "hardware export", 120
    ),
    FormatRow(
        "keras",
        "weightvault.formats.keras_h5:KerasFormat",
        "Keras HDF5",
        60,
        (".weights.h5", ".keras", ".h5", ".hdf5"),
        True,
        aliases=("h5", "hdf5"),
        missing="Install h5py (pip install 'weightvault[keras]') to read Keras HDF5 files",
    ),
    FormatRow(
        "native",
        "weightvault.formats.native:NativeFormat",
        "weightvault",
        10,
        (".safetensors",),
        True,
        aliases=("weightvault",),
    ),
    FormatRow(
        "numpy",
        "weightvault.formats.numpy_npz:NumpyFormat",
        "NumPy",
        40,
        (".npy", ".npz"),
        True,
        aliases=("npy", "npz"),
    ),
    FormatRow("oneflow", "weightvault.formats.oneflow:OneFlowFormat", "OneFlow", 110, (), True),
    FormatRow("onnx", "weightvault.formats.onnx:OnnxFormat", "ONNX", 100, (".onnx",), True),
    FormatRow(
        "pytorch",
        "weightvault.formats.pytorch:PyTorchFormat",
        "PyTorch",
        30,
        (".pt", ".pth", ".bin", ".ckpt"),
        True,
        aliases=("pt", "pth", "torch"),
    ),
    FormatRow(
        "safetensors",
        "weightvault.formats.safetensors:SafetensorsFormat",
        "safetensors",
        20,
        (".safetensors",),
        True,
        aliases=("hf", "st"),
    ),
    FormatRow(
        "tf_bundle",
        "weightvault.formats.tf_bundle:TFBundleFormat",
        "TensorFlow checkpoint",
        80,
        (".index",),
        True,
        aliases=("tensorflow", "tf"),
    ),
    FormatRow(
        "tf_graph",
        "weightvault.formats.tf_graph:TFGraphFormat",
        "TensorFlow GraphDef",
        90,
        (".pb", ".meta"),
        True,
        aliases=("pb",),
    ),
    FormatRow("tf_v1", "weightvault.formats.tf_v1:TFV1Format", "TensorFlow V1 checkpoint", 70),
    # before native: weightvault's DCP backend writes manifest.json + COMMITTED too
    FormatRow(
        "torch_dcp", "weightvault.formats.torch_dcp:TorchDCPFormat", "torch.distributed checkpoint", 5
    ),    FormatRow(
        "torch_export",
        "weightvault.formats.torch_export:TorchExportFormat",
        "torch.export archive",
        45,
        (".pt2",),
        aliases=("pt2",),
    ),
)
assert [r.name for r in ROWS] == sorted(r.name for r in ROWS), "keep the registry rows sorted"

_rows: dict[str, FormatRow] = {r.name: r for r in ROWS}
ROW_NAMES = frozenset(_rows)

#: Kept for callers of the older table: name -> {"class": "module:Class", "err": hint}.
_known: dict[str, dict[str, str]] = {r.name: {"class": r.target, "err": r.missing} for r in ROWS}

#: The names people type for a format (``--to torch``, ``--format tf``): alias -> registry name.
#: Registry names work too, and ``-`` and ``_`` are interchangeable (``tf-bundle``, ``tf-v1``).
ALIASES: dict[str, str] = dict(sorted((a, r.name) for r in ROWS for a in r.aliases))

#: Formats whose sniff is more specific are tried first (a native file is also a safetensors file).
DETECTION_ORDER = tuple(r.name for r in sorted(ROWS, key=lambda r: r.priority))

known_formats = MappingProxyType(_known)
_loaded: dict[str, type[Format]] = {}
_entry_points_loaded = False

HEAD_BYTES = 4096
#: where formats registered at run time (plugins) come in detection: after every built-in one
_PLUGIN_PRIORITY = 1000


def row(name: str) -> FormatRow | None:
    """The registry row of a registered format (None for a plugin not imported yet)."""
    return _rows.get(name)


def register_format(name: str, cls: type[Format] | str, *, clobber: bool = False) -> None:
    """Register a format class (or ``"module:Class"`` path) under ``name``.

    A class gives its row its own ``extensions`` and ``can_write``; a path is imported the first
    time its row is needed (its endings are unknown until then).
    """
    if name in _known and not clobber:
        raise ValueError(f"format {name!r} is already registered; pass clobber=True to replace it")
    _loaded.pop(name, None)
    _rows.pop(name, None)
    if isinstance(cls, str):
        _known[name] = {"class": cls, "err": ""}
    else:
        _known[name] = {"class": f"{cls.__module__}:{cls.__qualname__}", "err": ""}
        _loaded[name] = cls
        _rows[name] = _row_of_class(name, cls)


def _row_of_class(name: str, cls: type[Format]) -> FormatRow:
    return FormatRow(
        name,
        _known[name]["class"],
        name,
        _PLUGIN_PRIORITY,
        tuple(getattr(cls, "extensions", ()) or ()),
        bool(getattr(cls, "can_write", False)),
    )


def _row_of(name: str) -> FormatRow | None:
    """The row of ``name``, importing a plugin registered by path to learn it (None if it fails)."""
    if name in _rows:
        return _rows[name]
    try:
        cls = get_format(name)
    except (MissingDependencyError, AttributeError):
        return None
    _rows[name] = _row_of_class(name, cls)
    return _rows[name]


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
    key = name.strip().lower()
    found = _lookup(key)
    if found is None:
        _load_entry_points()  # only a name that is no built-in format pays for the plugin scan
        found = name if name in _known else _lookup(key)
    if found is not None:
        return found
    import difflib

    choices = format_choices(writable=writable)
    close = difflib.get_close_matches(key, choices, n=3, cutoff=0.6)
    guess = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise FormatNotFoundError(
        f"unknown format {name!r}{guess}",
        hint=f"known formats: {', '.join(choices)} (`weightvault formats` describes them)",
    )


def _lookup(key: str) -> str | None:
    for candidate in (key, key.replace("-", "_")):
        if candidate in _known:
            return candidate
        if candidate in ALIASES and ALIASES[candidate] in _known:
            return ALIASES[candidate]
    return None


def format_choices(*, writable: bool = False) -> list[str]:
    """Every name ``--format`` (with ``writable``: ``--to``) accepts: registry names and aliases.

    Built-in formats answer from their rows; only a plugin's class is imported to ask it.
    """
    _load_entry_points()
    names = sorted(set(_known) | {a for a, n in ALIASES.items() if n in _known})
    if not writable:
        return names
    can = {n for n in _known if _writable(n)}
    return [n for n in names if (ALIASES.get(n, n) if n not in _known else n) in can]


def _writable(name: str) -> bool:
    found = _row_of(name)
    return bool(found and found.writable)


def format_title(name: str) -> str:
    """How messages name a format: ``ONNX``, ``PyTorch``..."""
    found = _rows.get(name)
    return found.title if found else name


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
    """Every registered format that can be imported here (imports them all: for listings)."""
    _load_entry_points()
    found = {}
    for name in _known:
        try:
            found[name] = get_format(name)
        except (MissingDependencyError, AttributeError):
            continue
    return found


def _ordered_names(first: Iterable[str] = ()) -> Iterator[str]:
    """Format names in detection order: ``first`` (in their order), then the other built-in
    formats by priority, then plugins (the entry-point scan only when reached)."""
    seen = set()
    for name in (*first, *DETECTION_ORDER):
        if name in _known and name not in seen:
            seen.add(name)
            yield name
    extra = sorted(n for n in _rows if n not in seen and n not in DETECTION_ORDER)
    yield from extra
    seen.update(extra)
    _load_entry_points()
    yield from sorted(n for n in _known if n not in seen)


def _by_ending(filename: str, *, writable: bool = False) -> list[str]:
    """Built-in (and already known plugin) formats whose endings ``filename`` has, by priority;
    no import. The longest matching ending decides among them (``.weights.h5`` over ``.h5``)."""
    rows = [r for r in _rows.values() if r.matches(filename) and (r.writable or not writable)]
    return [r.name for r in sorted(rows, key=lambda r: r.priority)]


def _read_head(path: Path) -> bytes:
    if path.is_dir():
        return b""
    with open(path, "rb") as f:
        return f.read(HEAD_BYTES)


def _sniffers(names: Iterable[str]) -> Iterator[type[Format]]:
    """The classes of ``names`` that import here (each imported only when reached)."""
    for name in names:
        try:
            yield get_format(name)
        except (MissingDependencyError, AttributeError):
            continue


def detect_format(path: str | os.PathLike[str]) -> type[Format]:
    """Pick the format of ``path``: magic bytes / layout first, then the file name ending.

    The formats the name's ending suggests sniff first, so opening ``m.safetensors`` imports the
    safetensors family only; the others follow in priority order when those say no.
    """
    p = Path(path)
    if not p.exists() and not _tf_prefix_exists(p):
        raise FormatNotFoundError("no such file or directory", path=p)
    head = _read_head(p) if p.exists() else b""
    tried = []
    for fmt in _sniffers(_ordered_names(first=_by_ending(p.name))):
        tried.append(fmt.name)
        if fmt.sniff(p, head):
            return fmt
    # Nothing claims the content: the name's ending decides (a truncated file gets its format's
    # own error rather than "not a weight file").
    for fmt in _sniffers([*_by_ending(p.name), *_plugin_endings(p.name)]):
        return fmt
    raise FormatNotFoundError(
        f"not a weight file weightvault recognises (tried: {', '.join(sorted(tried, key=_rank))})",
        path=p,
        hint="pass --format NAME if you know the format; `weightvault formats` lists them",
    )


def _rank(name: str) -> tuple[int, str]:
    found = _rows.get(name)
    return (found.priority if found else _PLUGIN_PRIORITY, name)


def sniff_format(path: str | os.PathLike[str]) -> str | None:
    """The format ``path``'s content claims (magic bytes / layout), never its name; None if none."""
    p = Path(path)
    head = _read_head(p) if p.exists() else b""
    for fmt in _sniffers(_ordered_names()):
        if fmt.sniff(p, head):
            return fmt.name
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
    """The writable format for a destination: ``to`` if given, else from the file name ending.

    Only the chosen format is imported: the rows say which formats write which endings.
    """
    if to:
        fmt = get_format(resolve_name(to, writable=True))
    else:
        name = os.fspath(path)
        matches = [n for n in _by_ending(name, writable=True) if _importable(n)]
        if not matches:
            matches = _plugin_matches(name)
        if not matches:
            # A path with no recognised ending is a native checkpoint (file or sharded directory).
            return get_format("native")
        fmt = get_format(matches[0])
    if not fmt.can_write:
        raise FormatNotFoundError(
            f"format {fmt.name!r} cannot be written",
            path=path,
            hint=f"writable formats: {', '.join(format_choices(writable=True))}",
        )
    return fmt


def _importable(name: str) -> bool:
    try:
        get_format(name)
    except (MissingDependencyError, AttributeError):
        return False
    return True


def _plugin_matches(filename: str) -> list[str]:
    """Plugins registered by path or entry point whose class writes ``filename``'s ending."""
    return [n for n in _plugin_endings(filename) if _writable(n)]


def _plugin_endings(filename: str) -> list[str]:
    """Plugins (rows learnt from their classes) whose endings ``filename`` has."""
    _load_entry_points()
    found = [_row_of(n) for n in sorted(_known) if n not in ROW_NAMES]
    return [r.name for r in found if r is not None and r.matches(filename)]
