"""Read a hardware export folder back into tensors, guided by its ``export.json`` sidecar.

``weightvault.open(outdir)``, ``weightvault ls/show OUTDIR`` and ``weightvault import-hw`` use
this. The memory files themselves are parsed (COE, MIF, ``$readmem`` text, C headers, npy, text),
never trusted from the sidecar, so a round trip proves what the files hold.

What ``get()`` returns: by default the **dequantized values as float32** (what the codes stand
for; float32 loses bits only for fixed formats wider than 24 bits). Open with ``values="codes"``
(``-o values=codes`` on the command line) to get the **integer codes** instead: signed codes in
the smallest integer dtype for fixed point and affine formats, IEEE bit patterns as unsigned
integers for float formats. ``info(name).extra`` always carries the raw format (number format,
bits, scale, zero point, file, base address, words).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from weightvault.abc.format import Format, FormatReader, TensorInfo
from weightvault.errors import (
    InvalidHeaderError,
    ShapeMismatchError,
    UnsupportedOperationError,
)
from weightvault.export import layout as L
from weightvault.export.files import WORD_READERS, WRITERS, read_text
from weightvault.export.numbers import (
    dequantize,
    from_stored,
    parse_number_format,
    round_divide,
)

__all__ = ["HWExportFormat", "HWExportReader", "codes_from_values"]

SIDECAR = "export.json"
MARKER = "weightvault-hw-export"
MAX_SIDECAR = 64 << 20


#: the fields each sidecar entry must have for the reader to use it, with their JSON types
_TENSOR_FIELDS: dict[str, type] = {
    "name": str, "file": str, "memory": str, "order": str, "lane_order": str, "shape": list,
    "number": dict, "bits": int, "count": int, "lanes": int, "base": int, "words": int,
}  # fmt: skip
_MEMORY_FIELDS: dict[str, type] = {"name": str, "file": str, "width": int}
_FILE_FORMATS = WRITERS.names()


def _load_sidecar(path: Path) -> dict[str, Any]:
    from weightvault.core.safetensors_io import load_json

    side = path / SIDECAR
    try:
        size = side.stat().st_size
    except OSError:
        raise InvalidHeaderError(f"no {SIDECAR} in this folder", path=path) from None
    if size > MAX_SIDECAR:
        raise InvalidHeaderError(
            f"{SIDECAR} is {size} bytes, over the {MAX_SIDECAR} limit", path=side
        )
    data = load_json(side.read_bytes(), path=side, what=SIDECAR)  # depth-bounded, no NaN
    if not isinstance(data, dict) or data.get("format") != MARKER:
        raise InvalidHeaderError(f"{SIDECAR} is not a weightvault hardware export", path=side)
    if not isinstance(data.get("tensors"), list) or not isinstance(data.get("memories"), list):
        raise InvalidHeaderError(f"{SIDECAR} lacks 'tensors' or 'memories'", path=side)
    if data.get("file_format") not in _FILE_FORMATS:
        raise InvalidHeaderError(f"unknown export file format {data.get('file_format')!r}", path=side)
    if data.get("radix") not in (None, 2, 8, 10, 16):
        raise InvalidHeaderError(f"radix {data.get('radix')!r} is not 2, 8, 10 or 16", path=side)
    for entry in data["tensors"]:
        _check_fields(entry, _TENSOR_FIELDS, "tensor entry", side)
        _check_tensor_entry(entry, side)
    for entry in data["memories"]:
        _check_fields(entry, _MEMORY_FIELDS, "memory entry", side)
        if not 1 <= entry["width"] <= 4096:
            raise InvalidHeaderError(f"memory width {entry['width']} is out of range", path=side)
    return data


def _check_fields(entry: Any, fields: dict[str, type], what: str, side: Path) -> None:
    """Every field the reader uses is there with its JSON type (ints whole and not negative)."""
    if not isinstance(entry, dict):
        raise InvalidHeaderError(f"a {what} is not an object", path=side)
    name = entry.get("name") if isinstance(entry.get("name"), str) else None
    for key, kind in fields.items():
        value = entry.get(key)
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if ok and kind is int:
            ok = value >= 0
        if not ok:
            raise InvalidHeaderError(
                f"{what}: field {key!r} must be a {'non-negative int' if kind is int else kind.__name__}, "
                f"not {short_json(value)}", path=side, tensor=name,
            )


def _check_tensor_entry(entry: dict[str, Any], side: Path) -> None:
    shape, number = entry["shape"], entry["number"]
    if len(shape) > 64 or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise InvalidHeaderError(f"shape {short_json(shape)} is not a list of sizes", path=side,
                                 tensor=entry["name"])
    if not (1 <= entry["bits"] <= 64 and 1 <= entry["lanes"] <= 64):
        raise InvalidHeaderError(
            f"{entry['bits']} bits x {entry['lanes']} lanes is not a layout export-hw writes",
            path=side, tensor=entry["name"],
        )
    if entry["count"] != math.prod(shape):  # the count sizes every buffer the reader allocates
        raise InvalidHeaderError(
            f"count {entry['count']} is not the number of elements of shape {shape}",
            path=side, tensor=entry["name"],
        )
    if entry["order"] not in ("C", "F") or not isinstance(number.get("name"), str):
        raise InvalidHeaderError("order or number format is malformed", path=side, tensor=entry["name"])
    for key in ("scale", "zero_point"):
        value = number.get(key)
        values = value if isinstance(value, list) else [value]
        if key in number and not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) < 2**62 for v in values
        ):
            raise InvalidHeaderError(f"number {key} {short_json(value)} is not numeric", path=side,
                                     tensor=entry["name"])
    axis = number.get("axis")
    if not isinstance(axis, (int, type(None))) or isinstance(axis, bool):
        raise InvalidHeaderError("number axis is not an int", path=side, tensor=entry["name"])
    channels = shape[axis] if axis is not None and -len(shape) <= axis < len(shape) else None
    for key in ("scale", "zero_point"):  # one per channel along axis, or one for the tensor
        value = number.get(key)
        if isinstance(value, list) and len(value) != channels:
            raise InvalidHeaderError(
                f"number {key} has {len(value)} values, axis {axis} of {shape} has {channels}",
                path=side, tensor=entry["name"],
            )


def short_json(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _load_npy(p: Path) -> np.ndarray:
    """A ``.npy`` of the export, through weightvault's own NumPy reader (headers checked against
    the file before anything is allocated, never a pickle) rather than ``np.load``."""
    from weightvault.formats.numpy_npz import NumpyFormat

    with NumpyFormat.open(p) as reader:
        names = reader.keys()
        if len(names) != 1:
            raise InvalidHeaderError("not a single-array .npy file", path=p)
        return np.array(reader.get(names[0]))


_read_text = read_text  # the readers of each kind use it too (weightvault.export.files)


def npy_words(p: Path, memory: dict[str, Any], radix: int) -> list[int]:
    """The words of a ``.npy`` memory file (``WORD_READERS["npy"]``)."""
    return [int(v) for v in _load_npy(p).ravel()]


def codes_from_values(values: np.ndarray, number: dict[str, Any]) -> np.ndarray:
    """Integer codes for values read from text (exact when the text was exact)."""
    fmt = parse_number_format(number["name"])
    vals = np.asarray(values, dtype=np.float64)
    if fmt.kind == "float":
        bits = np.uint32 if fmt.bits == 32 else np.uint16
        return vals.astype(fmt.float_dtype).view(bits).astype(np.int64)
    if fmt.kind == "fixed":
        return round_divide(vals, np.ldexp(1.0, -fmt.frac_bits), "half-even").astype(np.int64)
    scale = np.asarray(number["scale"], dtype=np.float64)
    zp = np.asarray(number["zero_point"], dtype=np.int64)
    axis = number.get("axis")
    if axis is not None and scale.ndim:
        shape = [1] * vals.ndim
        shape[axis] = -1
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    return (round_divide(vals, scale, "half-even") + zp).astype(np.int64)


class HWExportReader(FormatReader):
    format_name = "hwexport"

    def __init__(self, path: str | os.PathLike[str], *, values: str = "dequantized") -> None:
        super().__init__(path)
        if values not in ("dequantized", "codes"):
            raise UnsupportedOperationError(
                f"values must be 'dequantized' or 'codes', not {values!r}", path=path
            )
        self.values = values
        self.root = Path(path)
        self.sidecar = _load_sidecar(self.root)
        self._entries = {t["name"]: t for t in self.sidecar["tensors"]}
        self._memories = {m["name"]: m for m in self.sidecar["memories"]}
        self._words: dict[str, Any] = {}

    # -- interface --------------------------------------------------------------------------------
    def keys(self) -> list[str]:
        return list(self._entries)

    def entry(self, name: str) -> dict[str, Any]:
        self._require(name)
        return self._entries[name]

    @property
    def metadata(self) -> dict[str, Any]:
        keep = (
            "source",
            "file_format",
            "number",
            "word_width",
            "lanes",
            "lane_order",
            "order",
            "one_memory",
            "bram_depth",
            "radix",
            "created_by",
            "created",
            "conventions",
        )
        return {k: self.sidecar.get(k) for k in keep}

    def info(self, name: str) -> TensorInfo:
        e = self.entry(name)
        fmt = parse_number_format(e["number"]["name"])
        dtype = "float32" if self.values == "dequantized" else str(self._code_dtype(fmt))
        extra = {
            "number": e["number"],
            "file": e["file"],
            "memory": e["memory"],
            "base": e["base"],
            "words": e["words"],
            "lanes": e["lanes"],
            "raw_dtype": str(self._code_dtype(fmt)),
            "returns": self.values,
        }
        return TensorInfo(name, dtype, tuple(e["shape"]), extra)

    def get(self, name: str) -> np.ndarray:
        codes = self.codes(name)
        if self.values == "codes":
            return codes.astype(
                self._code_dtype(parse_number_format(self.entry(name)["number"]["name"]))
            )
        return self.dequantized(name).astype(np.float32)

    # -- extras -----------------------------------------------------------------------------------
    @staticmethod
    def _code_dtype(fmt: Any) -> np.dtype:
        return fmt.container()

    def dequantized(self, name: str) -> np.ndarray:
        e = self.entry(name)
        n = e["number"]
        return dequantize(
            self.codes(name),
            n["name"],
            scale=n.get("scale"),
            zero_point=n.get("zero_point"),
            axis=n.get("axis"),
        )

    def codes(self, name: str) -> np.ndarray:
        """The integer codes the files hold for ``name`` (int64, exported shape)."""
        e = self.entry(name)
        fmt = parse_number_format(e["number"]["name"])
        shape = tuple(int(d) for d in e["shape"])
        count = int(e["count"])
        if math.prod(shape) != count:
            raise ShapeMismatchError(
                f"sidecar shape {shape} does not hold {count} values", path=self.root, tensor=name
            )
        mem = self._memories.get(e["memory"])
        if mem is None:
            raise InvalidHeaderError(
                f"sidecar names unknown memory {e['memory']!r}", path=self.root, tensor=name
            )
        kind = self.sidecar.get("file_format")
        if kind == "txt":
            values = self._text_values(e)
            if values.size != count:
                raise ShapeMismatchError(
                    f"text holds {values.size} values, sidecar says {count}",
                    path=self.root / e["file"],
                    tensor=name,
                )
            return codes_from_values(values.reshape(shape), e["number"])
        if mem.get("layout") == "typed":
            flat = self._typed_codes(e, mem, fmt)
        else:
            words = self._memory_words(mem)
            base, nwords, lanes = int(e["base"]), int(e["words"]), int(e["lanes"])
            if base < 0 or base + nwords > len(words) or nwords * lanes < count:
                raise ShapeMismatchError(
                    f"words {base}..{base + nwords} with {lanes} lanes cannot hold {count} values; "
                    f"the memory file has {len(words)} words",
                    path=self.root / mem["file"],
                    tensor=name,
                )
            stored = L.unpack(
                words[base : base + nwords], int(e["bits"]), lanes, count, e["lane_order"]
            )
            flat = from_stored(stored, int(e["bits"]), fmt.signed and fmt.kind != "float")
        if flat.size != count:
            raise ShapeMismatchError(
                f"file holds {flat.size} values, sidecar says {count}",
                path=self.root / e["file"],
                tensor=name,
            )
        return L.unflatten(flat, shape, e["order"])

    # -- file parsing -----------------------------------------------------------------------------
    def _file(self, name: str) -> Path:
        from weightvault.formats._common import safe_relative

        p = Path(safe_relative(self.root, name, path=self.root / SIDECAR))
        if p.resolve().parent != self.root.resolve():  # exports are flat: no subfolders either
            raise InvalidHeaderError(
                f"sidecar file name {name!r} leaves the export folder", path=self.root
            )
        return p

    def _text_values(self, e: dict[str, Any]) -> np.ndarray:
        from weightvault.export.text import parse_text

        p = self._file(e["file"])
        return parse_text(_read_text(p, "utf-8"), path=str(p))

    def _typed_codes(self, e: dict[str, Any], mem: dict[str, Any], fmt: Any) -> np.ndarray:
        p = self._file(mem["file"])
        kind = self.sidecar.get("file_format")
        if kind == "npy":
            arr = _load_npy(p)
            if arr.dtype.kind == "f":
                bits = np.uint32 if arr.dtype.itemsize == 4 else np.uint16
                arr = arr.view(bits)
            return arr.ravel(order=e["order"]).astype(np.int64)
        from weightvault.export.c_header import parse_c_array

        tokens = parse_c_array(_read_text(p, "ascii"), e["c_identifier"], path=str(p))
        if fmt.name == "float32":
            vals = np.array([float(t) for t in tokens], dtype=np.float32)
            return vals.view(np.uint32).astype(np.int64)
        return np.array(tokens, dtype=np.int64)

    def _memory_words(self, mem: dict[str, Any]) -> list[int]:
        key = mem["file"]
        if key in self._words:
            return self._words[key]
        p = self._file(key)
        kind = self.sidecar.get("file_format")
        radix = int(self.sidecar.get("radix") or 16)
        width = int(mem["width"])
        if kind not in WORD_READERS:
            raise InvalidHeaderError(f"unknown export file format {kind!r}", path=self.root)
        words: list[int] = WORD_READERS[kind](p, mem, radix)
        too_wide = [w for w in words if w < 0 or w >> width]
        if too_wide:
            raise InvalidHeaderError(f"word {too_wide[0]:#x} is wider than {width} bits", path=p)
        self._words[key] = words
        return words


class HWExportFormat(Format):
    """A folder written by ``weightvault export-hw`` (read-only)."""

    name = "hwexport"
    description = "hardware export folder (COE/MIF/mem/C/txt/npy + export.json), read-only"
    read_options: ClassVar[Mapping[str, str]] = {
        "values": "dequantized (real values, default) or codes (the stored integers)",
    }
    write_options: ClassVar[Mapping[str, str]] = {}

    @classmethod
    def sniff(cls, path: Path, head: bytes) -> bool:
        side = Path(path) / SIDECAR
        if not side.is_file():
            return False
        try:
            with open(side, "rb") as f:
                start = f.read(4096)
        except OSError:
            return False
        return MARKER.encode() in start

    @classmethod
    def open(cls, path: str | os.PathLike[str], **options: Any) -> HWExportReader:
        return HWExportReader(path, **options)
