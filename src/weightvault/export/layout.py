"""Selecting, shaping, splitting and packing tensors into memory words.

Order of operations for each selected tensor (the same order the sidecar records):

1. **split** ``NAME:AXIS:PARTS[:names]`` cuts a fused tensor into equal parts along AXIS, named
   ``NAME.<part>`` (``PARTS`` may be a number or a preset: ``gru`` = ``r,z,n`` and ``lstm`` =
   ``i,f,g,o``, PyTorch's gate order on axis 0);
2. **transpose** ``NAME:PERM`` (``1,0``), then **reshape** ``NAME:SHAPE`` (``-1`` allowed); NAME is a
   glob and matches split parts too;
3. **flatten** in C (row-major, last axis fastest) or Fortran (first axis fastest) order;
4. **pack** ``lanes`` values per word: lane ``i`` of word ``k`` holds flat element ``k*lanes+i``.
   With ``lane_order="lsb"`` lane 0 sits in bits ``[b-1:0]``; with ``"msb"`` lane 0 sits in the
   highest lane, bits ``[lanes*b-1:(lanes-1)*b]``. Bits above ``lanes*b`` (when the word is wider)
   and lanes past the end of the tensor are zero.

Words are Python ints (any width); a memory is a list of words plus the segments it holds.

Selection, split, transpose and reshape are :mod:`weightvault.transforms` steps (``Split``,
``Transpose``, ``Reshape``) and the include/exclude rule of :func:`weightvault.core.tree.name_filter`,
as in ``convert``; ``export.json`` records each tensor's steps under ``transforms``.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from weightvault.core.tree import name_filter
from weightvault.errors import ShapeMismatchError, UnsupportedOperationError
from weightvault.transforms.base import Reshape, Split, Transpose

__all__ = [
    "SPLIT_PRESETS",
    "Memory",
    "Segment",
    "SplitSpec",
    "apply_reshape",
    "apply_transpose",
    "flatten",
    "pack",
    "parse_perm_spec",
    "parse_split",
    "selected",
    "split_part",
    "split_tensor",
    "unflatten",
    "unpack",
]

SPLIT_PRESETS = {"gru": ("r", "z", "n"), "lstm": ("i", "f", "g", "o")}


def selected(name: str, include: Sequence[str] | None, exclude: Sequence[str] | None) -> bool:
    """A name is exported when it matches some include glob (or there is none) and no exclude:
    the rule of partial saves and selective restores (:func:`weightvault.core.tree.name_filter`)."""
    keep = name_filter(include, exclude)
    return keep is None or keep(name)


@dataclass(frozen=True)
class SplitSpec:
    pattern: str
    axis: int
    parts: tuple[str, ...]
    preset: str | None = None  # "gru" / "lstm" when PARTS named a preset
    named: bool = False  # the user gave the part names

    def matches(self, name: str) -> bool:
        return fnmatch.fnmatchcase(name, self.pattern)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"axis": self.axis, "parts": list(self.parts)}
        if self.preset:
            out["preset"] = self.preset
        return out

    def what(self) -> str:
        """How the split reads in a message: ``preset 'gru'`` or ``3 parts``."""
        if self.preset:
            return f"preset '{self.preset}' ({len(self.parts)} gates {','.join(self.parts)})"
        return f"{len(self.parts)} parts"


def parse_split(text: str | SplitSpec) -> SplitSpec:
    """``NAME:AXIS:PARTS[:names]``; PARTS is a count or ``gru``/``lstm``; names comma-separated."""
    if isinstance(text, SplitSpec):
        return text
    # The name may itself contain ':'? Tensor names do not in practice; split from the right.
    bits = text.rsplit(":", 3)
    if len(bits) == 4 and not _is_int(bits[1]):
        bits = text.rsplit(":", 2)
    if len(bits) < 3:
        raise UnsupportedOperationError(f"--split {text!r}: expected NAME:AXIS:PARTS[:names]")
    name, axis_s, parts_s = bits[0], bits[1], bits[2]
    names_s = bits[3] if len(bits) == 4 else None
    if not _is_int(axis_s):
        raise UnsupportedOperationError(f"--split {text!r}: AXIS must be an integer")
    preset = parts_s.lower() if parts_s.lower() in SPLIT_PRESETS else None
    if preset:
        parts = SPLIT_PRESETS[preset]
    elif _is_int(parts_s) and int(parts_s) > 0:
        parts = tuple(str(i) for i in range(int(parts_s)))
    else:
        raise UnsupportedOperationError(
            f"--split {text!r}: PARTS must be a positive count, 'gru' or 'lstm'"
        )
    if names_s:
        given = tuple(n.strip() for n in names_s.split(","))
        if len(given) != len(parts) or len(set(given)) != len(given) or not all(given):
            raise UnsupportedOperationError(
                f"--split {text!r}: give {len(parts)} distinct part names, not {names_s!r}"
            )
        parts = given
    return SplitSpec(name, int(axis_s), parts, preset, bool(names_s))


def _is_int(s: str) -> bool:
    try:
        int(s)
    except ValueError:
        return False
    return True


def split_tensor(name: str, arr: np.ndarray, spec: SplitSpec) -> list[tuple[str, np.ndarray]]:
    """Equal parts along ``spec.axis`` (``np.split`` semantics, as ``torch.chunk`` for gates)."""
    if arr.ndim == 0 or not -arr.ndim <= spec.axis < arr.ndim:
        raise ShapeMismatchError(
            f"--split {spec.what()}: cannot split axis {spec.axis} of shape {list(arr.shape)}",
            tensor=name,
        )
    size = arr.shape[spec.axis]
    if size % len(spec.parts):
        raise ShapeMismatchError(
            f"--split {spec.what()}: axis {spec.axis} of shape {list(arr.shape)} has {size} "
            f"entries, not divisible into {len(spec.parts)} parts",
            tensor=name,
        )
    return [
        (f"{name}.{part}", split_part(spec, i).apply(arr)) for i, part in enumerate(spec.parts)
    ]


def split_part(spec: SplitSpec, index: int) -> Split:
    """The transform that keeps part ``index`` of a ``--split`` (equal parts along the axis)."""
    return Split(spec.axis, len(spec.parts), index)


def parse_perm_spec(text: str, what: str) -> tuple[str, tuple[int, ...]]:
    """``NAME:1,0`` for --transpose, ``NAME:96,-1`` for --reshape."""
    name, sep, nums = text.rpartition(":")
    if not sep or not name:
        raise UnsupportedOperationError(
            f"--{what} {text!r}: expected NAME:{'PERM' if what == 'transpose' else 'SHAPE'}"
        )
    try:
        values = tuple(int(v) for v in nums.replace("x", ",").split(",") if v.strip())
    except ValueError:
        raise UnsupportedOperationError(f"--{what} {text!r}: numbers separated by commas") from None
    return name, values


def apply_transpose(name: str, arr: np.ndarray, perm: tuple[int, ...]) -> np.ndarray:
    if sorted(perm) != list(range(arr.ndim)):
        raise ShapeMismatchError(
            f"transpose {perm} is not a permutation of the {arr.ndim} axes of shape {arr.shape}",
            tensor=name,
        )
    return Transpose(perm).apply(arr)


def apply_reshape(name: str, arr: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    try:
        return Reshape(shape, tuple(arr.shape)).apply(arr)
    except ValueError:
        raise ShapeMismatchError(
            f"cannot reshape {tuple(arr.shape)} ({arr.size} values) to {shape}", tensor=name
        ) from None


def flatten(arr: np.ndarray, order: str) -> np.ndarray:
    if order not in ("C", "F"):
        raise UnsupportedOperationError(f"order must be 'C' or 'F', not {order!r}")
    return np.ravel(arr, order=order)  # type: ignore[call-overload]


def unflatten(flat: np.ndarray, shape: Sequence[int], order: str) -> np.ndarray:
    return np.reshape(flat, tuple(shape), order=order)  # type: ignore[call-overload]


# -- packing --------------------------------------------------------------------------------------
def pack(stored: np.ndarray, bits: int, lanes: int, word_width: int, lane_order: str) -> list[int]:
    """Pack unsigned ``bits``-wide values ``lanes`` to a word (see module docstring)."""
    _check_packing(bits, lanes, word_width, lane_order)
    flat = np.asarray(stored, dtype=np.uint64).ravel()
    words = math.ceil(flat.size / lanes)
    padded = np.zeros(words * lanes, np.uint64)
    padded[: flat.size] = flat
    grid = padded.reshape(words, lanes)
    if lanes == 1:
        return [int(v) for v in grid[:, 0]]
    shifts = _lane_shifts(bits, lanes, lane_order)
    if lanes * bits <= 64:
        acc = np.zeros(words, np.uint64)
        for lane, shift in enumerate(shifts):
            acc |= grid[:, lane] << np.uint64(shift)
        return [int(v) for v in acc]
    # Wider than 64 bits: Python ints (object arrays) do the shifts exactly.
    obj = grid.astype(object)
    acc_o = np.zeros(words, dtype=object)
    for lane, shift in enumerate(shifts):
        acc_o = acc_o | (obj[:, lane] << shift)
    return [int(v) for v in acc_o]


def unpack(words: Iterable[int], bits: int, lanes: int, count: int, lane_order: str) -> np.ndarray:
    """Inverse of :func:`pack`: the first ``count`` stored values (uint64)."""
    mask = (1 << bits) - 1
    shifts = _lane_shifts(bits, lanes, lane_order)
    out = np.empty(count, np.uint64)
    i = 0
    for word in words:
        for shift in shifts:
            if i == count:
                return out
            out[i] = (int(word) >> shift) & mask
            i += 1
    if i != count:
        raise ShapeMismatchError(f"memory holds {i} values, the sidecar says {count}")
    return out


def _lane_shifts(bits: int, lanes: int, lane_order: str) -> list[int]:
    if lane_order == "lsb":
        return [i * bits for i in range(lanes)]
    return [(lanes - 1 - i) * bits for i in range(lanes)]


def _check_packing(bits: int, lanes: int, word_width: int, lane_order: str) -> None:
    if lane_order not in ("lsb", "msb"):
        raise UnsupportedOperationError(f"lane order must be 'lsb' or 'msb', not {lane_order!r}")
    if lanes < 1:
        raise UnsupportedOperationError(f"lanes must be at least 1, not {lanes}")
    if lanes * bits > word_width:
        raise UnsupportedOperationError(
            f"{lanes} lanes of {bits} bits need a {lanes * bits}-bit word; word width is {word_width}"
        )


# -- memories -------------------------------------------------------------------------------------
@dataclass
class Segment:
    """One tensor's words inside a memory."""

    name: str
    base: int
    words: int
    shape: tuple[int, ...]
    number: str
    scales: str | None = None  # affine formats: "per-tensor" or "per-channel axis N"

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "base": self.base,
            "words": self.words,
            "shape": list(self.shape),
            "format": self.number,
        }
        if self.scales:
            out["scales"] = self.scales
        return out


@dataclass
class Memory:
    """A memory image: ``width``-bit words from address 0, and the segments placed in it."""

    name: str
    width: int
    words: list[int] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)
    depth: int | None = None  # declared depth (BRAM size); None = len(words)
    file: str = ""

    @property
    def declared_depth(self) -> int:
        return self.depth if self.depth is not None else len(self.words)

    def place(
        self,
        seg_name: str,
        words: list[int],
        shape: tuple[int, ...],
        number: str,
        align: int = 1,
        scales: str | None = None,
    ) -> Segment:
        """Append ``words`` at the next address that is a multiple of ``align``."""
        base = len(self.words)
        if align > 1 and base % align:
            pad = align - base % align
            self.words.extend([0] * pad)
            base += pad
        self.words.extend(words)
        seg = Segment(seg_name, base, len(words), tuple(shape), number, scales)
        self.segments.append(seg)
        return seg

    def check_depth(self, bram_depth: int | None) -> None:
        if bram_depth is None:
            return
        if len(self.words) > bram_depth:
            names = ", ".join(s.name for s in self.segments[:4])
            raise UnsupportedOperationError(
                f"memory {self.name!r} needs {len(self.words)} words but the BRAM depth is "
                f"{bram_depth} (holds {names}{'...' if len(self.segments) > 4 else ''})",
                tensor=self.segments[0].name if len(self.segments) == 1 else None,
                hint="raise --bram-depth, pack more lanes per word, or export fewer tensors per memory",
            )
        self.depth = bram_depth

    def padded_words(self) -> list[int]:
        """Words out to the declared depth, zero-filled."""
        return self.words + [0] * (self.declared_depth - len(self.words))

    def address_digits(self) -> int:
        return max(1, math.ceil(max(self.declared_depth - 1, 1).bit_length() / 4))

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "file": self.file,
            "width": self.width,
            "depth": self.declared_depth,
            "used_words": len(self.words),
            "map": [s.describe() for s in self.segments],
        }
