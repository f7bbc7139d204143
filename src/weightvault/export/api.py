"""``export_hw`` / ``import_hw``: checkpoint -> BRAM/ROM/C initialisation files and back.

Pipeline per tensor (each step recorded in the ``export.json`` sidecar):
select (globs) -> split -> transpose -> reshape -> quantize (:mod:`.numbers`) -> flatten (C/F) ->
mask to the value width (two's complement) -> pack lanes into words (:mod:`.layout`) -> place in a
memory (one per tensor, or one shared memory with a memory map) -> write the file.

The output directory is built under a temporary name and renamed into place, so it is complete or
absent. It always contains ``export.json``, which makes the folder self-describing:
:class:`weightvault.export.reader.HWExportFormat` reads it back (``weightvault.open(outdir)``).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from weightvault.abc.format import FormatReader
from weightvault.core.io import atomic_dir
from weightvault.core.memory import MemoryReader
from weightvault.errors import (
    CheckpointExistsError,
    ShapeMismatchError,
    UnsupportedOperationError,
    WeightVaultError,
)
from weightvault.export import layout as L
from weightvault.export.gates import check_preset_split
from weightvault.export.numbers import (
    NumberFormat,
    Quantized,
    parse_number_format,
    quantize,
    to_stored,
)
from weightvault.transforms.base import Reshape, Transform, Transpose

if TYPE_CHECKING:
    from weightvault.export.files import MemoryFile

__all__ = [
    "FILE_FORMATS",
    "MARKER",
    "SIDECAR",
    "ExportItem",
    "ExportReport",
    "export_hw",
    "import_hw",
]

SIDECAR = "export.json"
MARKER = "weightvault-hw-export"
SIDECAR_VERSION = 1
MAP_FILES = ("memory_map.json", "memory_map.h", "memory_map.vh")

#: --format -> file extension
FILE_FORMATS = {
    "coe": ".coe",
    "mif": ".mif",
    "mem": ".mem",
    "hex": ".hex",
    "c": ".h",
    "txt": ".txt",
    "npy": ".npy",
}

PathLike = str | os.PathLike[str]


@dataclass
class ExportItem:
    """One exported tensor (or split part) and where it went."""

    name: str
    source: str
    dtype: str
    source_shape: tuple[int, ...]
    shape: tuple[int, ...]
    order: str
    quant: Quantized
    flat_codes: np.ndarray
    lanes: int
    lane_order: str
    split: dict[str, Any] | None = None
    transpose: tuple[int, ...] | None = None
    reshape: tuple[int, ...] | None = None
    #: split, transpose and reshape as transform steps, in order (``export.json`` "transforms")
    steps: tuple[Transform, ...] = ()
    ident: str = ""
    memory: str = ""
    file: str = ""
    base: int = 0
    words: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "dtype": self.dtype,
            "source_shape": list(self.source_shape),
            "split": self.split,
            "transpose": list(self.transpose) if self.transpose else None,
            "reshape": list(self.reshape) if self.reshape else None,
            "transforms": [t.to_dict() for t in self.steps],
            "shape": list(self.shape),
            "order": self.order,
            "number": self.quant.describe(),
            "bits": self.quant.fmt.bits,
            "count": int(self.flat_codes.size),
            "lanes": self.lanes,
            "lane_order": self.lane_order,
            "memory": self.memory,
            "file": self.file,
            "base": self.base,
            "words": self.words,
            "c_identifier": self.ident,
            "error": self.quant.error(),
            **self.extra,
        }


@dataclass
class ExportReport:
    """What :func:`export_hw` wrote: per-tensor errors, memories, warnings."""

    outdir: Path
    format: str
    tensors: list[dict[str, Any]]
    memories: list[dict[str, Any]]
    warnings: list[str]
    notes: list[str] = field(default_factory=list)  # decisions worth knowing, not problems

    @property
    def saturated(self) -> int:
        return sum(t["error"]["saturated"] for t in self.tensors)

    def to_dict(self) -> dict[str, Any]:
        return {
            "outdir": str(self.outdir),
            "format": self.format,
            "tensors": self.tensors,
            "memories": self.memories,
            "warnings": self.warnings,
            "notes": self.notes,
        }

    COLUMNS = (
        "name",
        "shape",
        "number",
        "max_abs_err",
        "rms_err",
        "saturated",
        "memory",
        "base",
        "words",
    )

    def rows(self) -> list[list[Any]]:
        out = []
        for t in self.tensors:
            e = t["error"]
            out.append(
                [
                    t["name"],
                    "x".join(map(str, t["shape"])) or "scalar",
                    t["number"]["name"] + _scale_suffix(t),
                    f"{e['max_abs']:.3g}",
                    f"{e['rms']:.3g}",
                    e["saturated"],
                    t["memory"],
                    t["base"],
                    t["words"],
                ]
            )
        return out


def _scale_suffix(entry: dict[str, Any]) -> str:
    scope = entry.get("scales")
    if scope is None:
        return ""
    return f" ({scope})"


# -- source ---------------------------------------------------------------------------------------
def _open_source(src: Any) -> tuple[Any, bool, str]:
    if isinstance(src, FormatReader):
        return src, False, src.path
    if isinstance(src, Mapping):
        return MemoryReader(src, nested=False, path="<mapping>"), False, "<mapping>"
    import weightvault

    return weightvault.open(src), True, os.fspath(src)


# -- naming ---------------------------------------------------------------------------------------
def _file_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name).strip(".") or "tensor"


def _unique(base: str, taken: set[str]) -> str:
    candidate, n = base, 2
    while candidate.lower() in taken:
        candidate = f"{base}_{n}"
        n += 1
    taken.add(candidate.lower())
    return candidate


# -- main entry -----------------------------------------------------------------------------------
def export_hw(
    src: Any,
    outdir: PathLike,
    *,
    file_format: str = "coe",
    number: str | NumberFormat = "float32",
    rounding: str = "half-even",
    overflow: str = "saturate",
    per_channel: int | None = None,
    symmetric: bool = True,
    radix: int | None = None,
    word_width: int | None = None,
    lanes: int | None = None,
    lane_order: str = "lsb",
    bram_depth: int | None = None,
    one_memory: str | None = None,
    align: int = 1,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    split: Sequence[str | L.SplitSpec] = (),
    transpose: Sequence[str] = (),
    reshape: Sequence[str] = (),
    order: str = "C",
    precision: int | None = None,
    linewidth: int = 80,
    threshold: int | None = None,
    edgeitems: int = 3,
    sci: bool | None = None,
    c_typedefs: bool = False,
    c_align: int = 16,
    format: str | None = None,  # noqa: A002 - deprecated spelling of file_format
) -> ExportReport:
    """Export tensors of ``src`` (a path, an open reader or a ``{name: array}`` mapping) to
    hardware initialisation files in ``outdir``. See ``docs/export-hw.md`` for every convention.

    >>> weights = {"fc.weight": np.array([[0.5, -0.25], [1.0, 0.0]], np.float32)}
    >>> report = weightvault.export_hw(weights, tmp_path / "hw", file_format="mem", number="Q1.7")
    >>> sorted(p.name for p in (tmp_path / "hw").iterdir())
    ['export.json', 'fc.weight.mem']
    >>> report.tensors[0]["error"]["saturated"]  # 1.0 is above Q1.7's largest value
    1

    Args:
        file_format: the output files: ``coe``, ``mif``, ``mem``, ``hex`` (both ``$readmemh/b``),
            ``c``, ``txt``, ``npy``. (``format=`` is its deprecated spelling: in
            :func:`weightvault.open` ``format`` names the *input* format; see docs/api.md.)
        number: ``float32|float16|bfloat16``, ``Q1.15``, ``UQ8.8``, ``ap_fixed<16,1>``, ``int8``,
            ``int4``, ``uint8`` ...
        rounding / overflow: see :data:`weightvault.export.numbers.ROUNDING_MODES`.
        per_channel: axis for per-channel affine scales (int formats); None = per tensor.
        symmetric: affine zero point 0 (True) or computed (False).
        radix: 2, 10 or 16 for COE, 2/8/10/16 for MIF, 2 (``$readmemb``) or 16 for mem/hex.
        word_width: bits per memory word; default ``lanes * bits``. Given without ``lanes``, as
            many values as fit are packed per word.
        lanes: values per word; ``lane_order`` ``lsb`` puts lane 0 in the least significant bits.
        bram_depth: words available per memory: exceeding it is an error; files are padded to it.
        one_memory: put every tensor into one memory of this name (with a memory map).
        align: base address alignment (words) of tensors in a shared memory.
        split/transpose/reshape: ``NAME:AXIS:PARTS[:names]``, ``NAME:PERM``, ``NAME:SHAPE``.
        order: flatten order, ``C`` (row-major) or ``F`` (column-major).
        precision/linewidth/threshold/edgeitems/sci: text output (``show``'s options).
        c_typedefs: emit hls4ml-style ``ap_fixed`` typedefs in C headers.

    Returns:
        An :class:`ExportReport`; saturation is reported in ``warnings``, not raised.
    """
    file_format = _file_format_argument(file_format, format)
    fmt_name = file_format.lower()
    if fmt_name not in FILE_FORMATS:
        raise UnsupportedOperationError(
            f"unknown export file format {file_format!r}; choose one of {', '.join(FILE_FORMATS)}"
        )
    if fmt_name == "txt" and one_memory:
        raise UnsupportedOperationError(
            "txt holds values per tensor; --one-memory needs a memory "
            "format (coe, mif, mem, hex, c, npy)"
        )
    nf = parse_number_format(number)
    if per_channel is not None and nf.kind != "affine":
        raise UnsupportedOperationError(
            f"--per-channel gives each channel its own scale, but {nf.name} has one fixed scale; "
            "use an integer format (int8, int4, uint8 ...) or drop --per-channel"
        )
    radix = _check_radix(fmt_name, radix)
    if lanes is None:
        lanes = max(1, word_width // nf.bits) if word_width else 1
    width = word_width if word_width is not None else lanes * nf.bits
    L._check_packing(nf.bits, lanes, width, lane_order)  # fail before reading anything
    if fmt_name in ("c", "npy") and (lanes > 1 or one_memory) and width > 64:
        raise UnsupportedOperationError(
            f"{fmt_name} output holds words of at most 64 bits, not {width}"
        )
    splits = [L.parse_split(s) for s in split]
    transposes = [L.parse_perm_spec(t, "transpose") for t in transpose]
    reshapes = [L.parse_perm_spec(r, "reshape") for r in reshape]

    reader, owned, source = _open_source(src)
    try:
        items = _collect(
            reader,
            include,
            exclude,
            splits,
            transposes,
            reshapes,
            order,
            nf,
            rounding,
            overflow,
            per_channel,
            symmetric,
            lanes,
            lane_order,
        )
    except WeightVaultError as exc:
        # Shape and split errors know the tensor; the message should name the file too.
        if exc.path is None and not isinstance(reader, MemoryReader):
            exc.path = source
        raise
    finally:
        if owned:
            reader.close()
    memories = _place(items, fmt_name, nf, width, lanes, lane_order, one_memory, align, bram_depth)
    warnings = _warnings(items)
    notes = _notes(items, per_channel)
    sidecar = _sidecar(
        source,
        fmt_name,
        radix,
        nf,
        width,
        lanes,
        lane_order,
        order,
        one_memory,
        bram_depth,
        items,
        memories,
        warnings,
        notes,
    )
    out = Path(outdir)
    _check_outdir(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    options = {
        "precision": precision,
        "linewidth": linewidth,
        "threshold": threshold,
        "edgeitems": edgeitems,
        "sci": sci,
        "c_typedefs": c_typedefs,
        "c_align": c_align,
    }
    with atomic_dir(out) as tmp:
        _write_files(tmp, fmt_name, radix, memories, items, source, options, sidecar)
        (tmp / SIDECAR).write_text(json.dumps(sidecar, indent=1) + "\n", encoding="utf-8")
    return ExportReport(out, fmt_name, sidecar["tensors"], sidecar["memories"], warnings, notes)


def _file_format_argument(file_format: str, deprecated_format: str | None) -> str:
    """``file_format``, or the value of the deprecated ``format=`` keyword (with a warning)."""
    if deprecated_format is None:
        return file_format
    warnings.warn(
        "export_hw(format=...) is deprecated; pass file_format=... (format= names the input "
        "format elsewhere in weightvault, e.g. weightvault.open)",
        DeprecationWarning,
        stacklevel=3,
    )
    if file_format not in ("coe", deprecated_format):  # both given, and they disagree
        raise TypeError(
            f"export_hw() got file_format={file_format!r} and format={deprecated_format!r}; "
            "pass file_format only"
        )
    return deprecated_format


def _check_radix(fmt_name: str, radix: int | None) -> int:
    allowed = {"coe": (2, 10, 16), "mif": (2, 8, 10, 16), "mem": (2, 16), "hex": (2, 16)}
    if fmt_name not in allowed:
        return radix or 16
    radix = 16 if radix is None else int(radix)
    if radix not in allowed[fmt_name]:
        raise UnsupportedOperationError(
            f"{fmt_name} files take radix {', '.join(map(str, allowed[fmt_name]))}, not {radix}"
        )
    return radix


def _check_outdir(out: Path) -> None:
    # atomic_dir replaces the directory: never let that delete something that is not an export.
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not _is_export(out))):
        raise CheckpointExistsError(
            "exists and is not a weightvault hardware export; refusing to replace it",
            path=out,
            hint="choose a new or empty output directory",
        )


def _is_export(path: Path) -> bool:
    try:
        data = json.loads((path / SIDECAR).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("format") == MARKER


def _first_match(name: str, specs: Sequence[tuple[str, tuple[int, ...]]]) -> tuple[int, ...] | None:
    import fnmatch

    for pattern, values in specs:
        if fnmatch.fnmatchcase(name, pattern):
            return values
    return None


def _collect(
    reader: Any,
    include: Sequence[str] | None,
    exclude: Sequence[str] | None,
    splits: list[L.SplitSpec],
    transposes: list[tuple[str, tuple[int, ...]]],
    reshapes: list[tuple[str, tuple[int, ...]]],
    order: str,
    nf: NumberFormat,
    rounding: str,
    overflow: str,
    per_channel: int | None,
    symmetric: bool,
    lanes: int,
    lane_order: str,
) -> list[ExportItem]:
    from weightvault.core.dtypes import dtype_name

    names = [n for n in reader.keys() if L.selected(n, include, exclude)]  # noqa: SIM118
    if not names:
        raise UnsupportedOperationError(
            "no tensor matches the --include/--exclude patterns", path=getattr(reader, "path", None)
        )
    items: list[ExportItem] = []
    seen: set[str] = set()
    shape_of = _shape_lookup(reader)
    for name in names:
        spec = next((s for s in splits if s.matches(name)), None)
        if spec is not None and spec.preset:
            # Before reading the data: the checkpoint may say this preset cannot be right.
            known = shape_of(name)
            if known is not None:
                check_preset_split(name, known, spec, shape_of)
        arr = np.asarray(reader.get(name))
        if (
            arr.dtype.kind not in "biuf"
            and arr.dtype.name not in ("bfloat16",)
            and not arr.dtype.name.startswith("float8")
        ):
            raise UnsupportedOperationError(f"dtype {arr.dtype} cannot be exported", tensor=name)
        if spec is not None and spec.preset:
            check_preset_split(name, tuple(arr.shape), spec, shape_of)
        parts: list[tuple[str, np.ndarray, dict[str, Any] | None, list[Transform]]]
        if spec is None:
            parts = [(name, arr, None, [])]
        else:
            parts = [
                (pname, piece, {**spec.describe(), "part": part}, [L.split_part(spec, i)])
                for i, ((pname, piece), part) in enumerate(
                    zip(L.split_tensor(name, arr, spec), spec.parts, strict=True)
                )
            ]
        for pname, piece, split_info, steps in parts:
            if pname in seen:
                raise UnsupportedOperationError("two exported tensors get this name", tensor=pname)
            seen.add(pname)
            shaped = piece
            perm = _first_match(pname, transposes)
            if perm is not None:
                shaped = L.apply_transpose(pname, shaped, perm)
                steps.append(Transpose(perm))
            new_shape = _first_match(pname, reshapes)
            if new_shape is not None:
                steps.append(Reshape(new_shape, tuple(shaped.shape)))
                shaped = L.apply_reshape(pname, shaped, new_shape)
            axis = _channel_axis(pname, tuple(shaped.shape), per_channel)
            q = quantize(
                shaped,
                nf,
                rounding=rounding,
                overflow=overflow,
                axis=axis,
                symmetric=symmetric,
            )
            scales: dict[str, Any] = {}
            if nf.kind == "affine":
                scales["scales"] = "per-tensor" if axis is None else f"per-channel axis {axis}"
            items.append(
                ExportItem(
                    name=pname,
                    source=name,
                    dtype=dtype_name(arr.dtype) if arr.dtype.kind != "b" else "bool",
                    source_shape=tuple(arr.shape),
                    shape=tuple(shaped.shape),
                    order=order,
                    quant=q,
                    flat_codes=L.flatten(q.codes, order),
                    lanes=lanes,
                    lane_order=lane_order,
                    split=split_info,
                    transpose=perm,
                    reshape=new_shape,
                    steps=tuple(steps),
                    extra=scales,
                )
            )
    return items


def _shape_lookup(reader: Any) -> Any:
    """``name -> shape`` of any tensor in the checkpoint (None if absent), without reading data."""
    keys = set(reader.keys())
    cache: dict[str, tuple[int, ...] | None] = {}

    def shape_of(name: str) -> tuple[int, ...] | None:
        if name not in keys:
            return None
        if name not in cache:
            try:
                shape = reader.info(name).shape
                cache[name] = tuple(int(d) for d in shape)
            except (WeightVaultError, TypeError, ValueError):
                cache[name] = None
        return cache[name]

    return shape_of


def _channel_axis(name: str, shape: tuple[int, ...], per_channel: int | None) -> int | None:
    """The per-channel axis for this tensor, or None for one scale (scalars and 1-D tensors).

    A 1-D tensor (a bias, a norm scale) along its only axis would get one scale per value, which
    stores nothing but the values themselves in the scales: such tensors are quantized per tensor
    and :func:`_notes` says so. On a tensor of 2+ dims an axis it does not have is a mistake.
    """
    if per_channel is None or len(shape) < 2:
        return None
    if not -len(shape) <= per_channel < len(shape):
        raise ShapeMismatchError(
            f"--per-channel {per_channel}: the exported tensor has shape {list(shape)} "
            f"({len(shape)} axes)",
            tensor=name,
            hint="choose an axis every selected tensor has (0 = output channels in PyTorch, "
            "-1 = output channels in Keras/TF), or select tensors with --include/--exclude",
        )
    return per_channel % len(shape)


def _place(
    items: list[ExportItem],
    fmt_name: str,
    nf: NumberFormat,
    width: int,
    lanes: int,
    lane_order: str,
    one_memory: str | None,
    align: int,
    bram_depth: int | None,
) -> list[L.Memory]:
    from weightvault.export.c_header import c_identifier

    ext = FILE_FORMATS[fmt_name]
    taken_files = {f.lower() for f in (SIDECAR, *MAP_FILES)}
    taken_idents: set[str] = set()
    for item in items:
        item.ident = _unique(c_identifier(item.name), taken_idents)
    memories: list[L.Memory] = []
    if one_memory:
        shared = L.Memory(one_memory, width)
        shared.file = _unique(_file_stem(one_memory), taken_files - {"memory_map"}) + ext
        memories.append(shared)
    for item in items:
        words = L.pack(to_stored(item.flat_codes, nf.bits), nf.bits, lanes, width, lane_order)
        if one_memory:
            mem = memories[0]
        else:
            mem = L.Memory(item.name, width)
            mem.file = _unique(_file_stem(item.name), taken_files) + ext
            memories.append(mem)
        seg = mem.place(
            item.name,
            words,
            item.shape,
            nf.name,
            align if one_memory else 1,
            scales=item.extra.get("scales"),
        )
        item.memory, item.file, item.base, item.words = mem.name, mem.file, seg.base, seg.words
    for mem in memories:
        mem.check_depth(bram_depth)
    return memories


def _warnings(items: list[ExportItem]) -> list[str]:
    out = []
    for item in items:
        q = item.quant
        if q.saturated:
            what = (
                "wrapped around" if q.overflow == "wrap" and q.fmt.kind == "fixed" else "saturated"
            )
            lo, hi = _value_range(q)
            out.append(
                f"{item.name}: {q.saturated} of {q.codes.size} values out of range "
                f"[{lo:g}, {hi:g}] of {q.fmt.name} and {what}"
            )
        if q.nonfinite:
            out.append(
                f"{item.name}: {q.nonfinite} NaN/Inf values (NaN exported as 0 in "
                f"non-float formats)"
            )
    return out


def _notes(items: list[ExportItem], per_channel: int | None) -> list[str]:
    """Decisions the user did not spell out but should know about."""
    if per_channel is None:
        return []
    flat = [it.name for it in items if len(it.shape) < 2]
    if not flat:
        return []
    shown = ", ".join(flat[:4]) + (f" and {len(flat) - 4} more" if len(flat) > 4 else "")
    return [
        f"--per-channel {per_channel}: {len(flat)} tensor(s) with fewer than 2 dimensions "
        f"({shown}) quantized per tensor, one scale each (a scale per value would store the "
        "values themselves); see 'scales' in export.json"
    ]


def _value_range(q: Quantized) -> tuple[float, float]:
    if q.fmt.kind == "fixed":
        return q.fmt.code_min * 2.0**-q.fmt.frac_bits, q.fmt.code_max * 2.0**-q.fmt.frac_bits
    if q.fmt.kind == "float":
        fi = np.finfo(q.fmt.float_dtype)
        return float(fi.min), float(fi.max)
    return float(q.fmt.code_min), float(q.fmt.code_max)


def _sidecar(
    source: str,
    fmt_name: str,
    radix: int,
    nf: NumberFormat,
    width: int,
    lanes: int,
    lane_order: str,
    order: str,
    one_memory: str | None,
    bram_depth: int | None,
    items: list[ExportItem],
    memories: list[L.Memory],
    warnings: list[str],
    notes: list[str],
) -> dict[str, Any]:
    from weightvault._version import __version__
    from weightvault.export.c_header import is_typed

    mems = []
    for mem in memories:
        members = [it for it in items if it.memory == mem.name]
        typed = fmt_name in ("c", "npy") and is_typed(mem, members)
        mems.append({**mem.describe(), "layout": "typed" if typed else "words"})
    return {
        "format": MARKER,
        "version": SIDECAR_VERSION,
        "created_by": f"weightvault {__version__}",
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "source": source,
        "file_format": fmt_name,
        "radix": radix,
        "number": nf.name,
        "word_width": width,
        "lanes": lanes,
        "lane_order": lane_order,
        "order": order,
        "one_memory": one_memory,
        "bram_depth": bram_depth,
        "conventions": {
            "negative": "two's complement masked to the value width",
            "lanes": "lane i of word k holds flat element k*lanes+i; lane 0 in the "
            + ("least" if lane_order == "lsb" else "most")
            + " significant bits; "
            "unused bits and lanes are zero",
            "flatten": "C = row-major (last axis fastest), F = column-major",
            "address": "word addresses from 0",
        },
        "tensors": [it.describe() for it in items],
        "memories": mems,
        "warnings": warnings,
        "notes": notes,
    }


# -- writing --------------------------------------------------------------------------------------
def _file_comments(
    source: str, mem: L.Memory, nf: NumberFormat, lanes: int, lane_order: str, order: str
) -> list[str]:
    lines = [
        f"generated by weightvault export-hw from {Path(source).name}; see export.json",
        f"memory {mem.name}: {mem.width}-bit words, depth {mem.declared_depth} "
        + f"({len(mem.words)} used)",
        nf.comment(),
        "negative values: two's complement masked to the value width",
    ]
    if lanes > 1:
        lines.append(
            f"{lanes} values per word, lane 0 in the "
            f"{'least' if lane_order == 'lsb' else 'most'} significant bits, "
            "unused bits zero"
        )
    lines.append(
        f"tensors flattened in {order} order ({'row-major' if order == 'C' else 'column-major'})"
    )
    return lines


def _write_files(
    tmp: Path,
    fmt_name: str,
    radix: int,
    memories: list[L.Memory],
    items: list[ExportItem],
    source: str,
    options: dict[str, Any],
    sidecar: dict[str, Any],
) -> None:
    from weightvault.export import c_header
    from weightvault.export.files import WRITERS, MemoryFile

    write = WRITERS[fmt_name]
    nf = items[0].quant.fmt
    lanes, lane_order, order = items[0].lanes, items[0].lane_order, items[0].order
    for mem, mem_desc in zip(memories, sidecar["memories"], strict=True):
        members = [it for it in items if it.memory == mem.name]
        comments = _file_comments(source, mem, nf, lanes, lane_order, order)
        write(MemoryFile(tmp / mem.file, mem, members, mem_desc, radix, comments, options, sidecar))
    if len(memories) == 1 and sidecar["one_memory"]:
        mmap = {"memories": sidecar["memories"]}
        (tmp / MAP_FILES[0]).write_text(json.dumps(mmap, indent=1) + "\n", encoding="utf-8")
        h, vh = c_header.write_map_header(
            memories, [f"memory map written by weightvault export-hw from {Path(source).name}"]
        )
        (tmp / MAP_FILES[1]).write_text(h, encoding="ascii")
        (tmp / MAP_FILES[2]).write_text(vh, encoding="ascii")


def write_npy_file(job: MemoryFile) -> None:
    """``WRITERS["npy"]``: one memory as a ``.npy`` array (typed when the memory is)."""
    typed = job.description["layout"] == "typed"
    np.save(job.target, _npy_array(job.memory, job.members, typed), allow_pickle=False)


def write_text_file(job: MemoryFile) -> None:
    """``WRITERS["txt"]``: one tensor's dequantized values as text; records in export.json
    whether reading the text back gives the codes exactly."""
    from weightvault.export import text

    item = job.members[0]
    q = item.quant
    header = [
        f"{item.name}  shape {list(item.shape)}  {q.fmt.name}",
        *job.comments[2:3],
        "values = dequantized codes; see export.json",
    ]
    options = job.options
    body = text.write_text(
        q.dequantized(),
        header,
        precision=options["precision"],
        linewidth=options["linewidth"],
        threshold=options["threshold"],
        edgeitems=options["edgeitems"],
        sci=options["sci"],
    )
    job.target.write_text(body, encoding="utf-8")
    back = _text_codes_exact(body, item)
    item.extra["text_exact"] = back
    for t in job.sidecar["tensors"]:
        if t["name"] == item.name:
            t["text_exact"] = back


def _text_codes_exact(body: str, item: ExportItem) -> bool:
    from weightvault.export.reader import codes_from_values
    from weightvault.export.text import parse_text

    try:
        values = parse_text(body)
    except ValueError:
        return False
    if values.size != item.flat_codes.size:
        return False
    codes = codes_from_values(values.reshape(item.shape), item.quant.describe())
    return bool(np.array_equal(codes, item.quant.codes))


def _npy_array(mem: L.Memory, members: list[ExportItem], typed: bool) -> np.ndarray:
    if typed:
        item = members[0]
        fmt = item.quant.fmt
        codes = item.quant.codes
        if fmt.name in ("float32", "float16"):
            bits = np.uint32 if fmt.bits == 32 else np.uint16
            return codes.astype(bits).view(fmt.float_dtype)
        return codes.astype(fmt.container())
    size = next(s for s in (8, 16, 32, 64) if mem.width <= s)
    return np.array(mem.padded_words(), dtype=f"uint{size}")


# -- import ---------------------------------------------------------------------------------------
def import_hw(
    path: PathLike, *, values: str = "dequantized", layout: str | None = None
) -> dict[str, np.ndarray]:
    """Read an export folder (or one file inside it) back into ``{name: array}``.

    ``values="dequantized"`` gives the values the codes stand for; ``"codes"`` gives the integer
    codes exactly as stored (signed, in the smallest integer dtype; IEEE bit patterns as unsigned
    integers for float formats).

    ``layout="source"`` (the default for values) undoes the export's split, transpose and reshape
    and casts to the source dtype: split parts are concatenated back under the source name and
    shape, so ``weightvault diff source imported --atol A`` is clean with ``A`` the export's
    error (the returned dict's ``bounds`` holds it per tensor). ``layout="exported"`` (the only
    layout for codes, which belong to the memories) returns the exported tensors as float32.

    >>> weights = {"fc.weight": np.array([[0.5, -0.25], [1.0, 0.0]], np.float32)}
    >>> _ = weightvault.export_hw(weights, tmp_path / "hw", file_format="mem", number="Q1.7")
    >>> weightvault.import_hw(tmp_path / "hw")["fc.weight"].tolist()
    [[0.5, -0.25], [0.9921875, 0.0]]
    >>> weightvault.import_hw(tmp_path / "hw", values="codes")["fc.weight"].tolist()
    [[64, -32], [127, 0]]
    """
    from weightvault.export.reader import HWExportReader
    from weightvault.export.rejoin import restore_source_layout

    if values not in ("dequantized", "codes"):
        raise UnsupportedOperationError(
            f"values must be 'dequantized' or 'codes', not {values!r}", path=path
        )
    layout = layout or ("source" if values == "dequantized" else "exported")
    if layout not in ("source", "exported"):
        raise UnsupportedOperationError(
            f"layout must be 'source' or 'exported', not {layout!r}", path=path
        )
    if layout == "source" and values == "codes":
        raise UnsupportedOperationError(
            "integer codes are read as exported (each part keeps its own scale); "
            "layout='source' rebuilds values only",
            path=path,
            hint="drop --codes, or add --as-exported",
        )
    p = Path(path)
    only_file = None
    if p.is_file():
        only_file, p = p.name, p.parent
    with HWExportReader(p, values=values) as reader:
        names = [n for n in reader if only_file is None or reader.entry(n)["file"] == only_file]
        if only_file is not None and not names:
            raise UnsupportedOperationError(
                f"export.json lists no tensor in {only_file}", path=path
            )
        if layout == "exported":
            return {n: np.array(reader.get(n)) for n in names}
        return restore_source_layout(
            [reader.entry(n) for n in names],
            reader.dequantized,
            path=p / SIDECAR,
            only_file=only_file,
        )
