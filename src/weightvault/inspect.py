"""Looking inside weight files: per-tensor statistics and the difference between two files.

Works on any reader from :func:`weightvault.open`; tensors are read one at a time, so memory stays
at about one tensor. Statistics are computed in float64 for float kinds so the mean and standard
deviation of float16/bfloat16 tensors do not overflow or lose precision.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from weightvault.abc.format import FormatReader
from weightvault.core.roles import ROLES, count_by_role, parameter_summary, tensor_role

__all__ = [
    "ROLES",
    "DiffReport",
    "count_by_role",
    "diff",
    "finite_stats",
    "format_values",
    "parameter_summary",
    "tensor_role",
    "tensor_stats",
]

# Reduce in chunks so a large tensor's float64 upcast never needs a second full copy.
_CHUNK = 1 << 22


def _as_numeric(arr: np.ndarray) -> np.ndarray:
    flat = arr.reshape(-1)
    if flat.dtype == np.bool_:
        return flat.astype(np.uint8)
    if flat.dtype.kind == "c":
        return np.abs(flat)
    return flat


def tensor_stats(arr: np.ndarray) -> dict[str, Any]:
    """min, max, mean, std, zeros, NaN and Inf counts of a tensor (complex: of its magnitude).

    min, max, mean and std are over the finite values only (None when there is none); NaN and Inf
    are counted apart.
    """
    if np.asarray(arr).dtype.kind in "OSU":  # a string tensor: no numbers to summarise
        empty = dict.fromkeys(("zeros", "nan", "inf", "min", "max", "mean", "std"))
        return {"numel": int(np.asarray(arr).size), **empty}
    flat = _as_numeric(np.asarray(arr))

    def chunks() -> Iterator[np.ndarray]:
        for start in range(0, flat.size, _CHUNK):
            yield flat[start : start + _CHUNK].astype(np.float64)

    return finite_stats(chunks)


def power_of_two_scale(magnitude: float) -> float:
    """The power of two at or below ``magnitude``: dividing by it is exact and brings values of
    that magnitude into [1, 2)."""
    if not magnitude or not math.isfinite(magnitude):
        return 1.0
    return math.ldexp(1.0, math.frexp(magnitude)[1] - 1)


def finite_stats(make_chunks: Callable[[], Iterator[np.ndarray]]) -> dict[str, Any]:
    """Counts and moments of the float64 chunks ``make_chunks()`` yields (called up to 3 times).

    Sums run on values divided by a power of two near the largest magnitude, so finite values
    near the float64 limit (where a plain sum or ``x - mean`` overflows to Inf) still give a
    finite mean and std, and no overflow warning.
    """
    n = nan = inf = zeros = finite_n = 0
    lo, hi = math.inf, -math.inf
    total = 0.0
    for chunk in make_chunks():
        n += chunk.size
        nan_mask, inf_mask = np.isnan(chunk), np.isinf(chunk)
        nan += int(nan_mask.sum())
        inf += int(inf_mask.sum())
        zeros += int((chunk == 0).sum())
        finite = chunk[~(nan_mask | inf_mask)]
        if finite.size:
            finite_n += finite.size
            lo, hi = min(lo, float(finite.min())), max(hi, float(finite.max()))
            with np.errstate(over="ignore"):
                total += float(finite.sum())
    out: dict[str, Any] = {"numel": n, "zeros": zeros, "nan": nan, "inf": inf}
    if not finite_n:
        out.update(min=None, max=None, mean=None, std=None)
        return out
    scale = power_of_two_scale(max(abs(lo), abs(hi)))
    if math.isfinite(total):
        mean = total / finite_n
    else:  # the plain sum overflowed: average the scaled values instead
        scaled_total = sum(float((c[np.isfinite(c)] / scale).sum()) for c in make_chunks())
        mean = scaled_total / finite_n * scale
    scaled_mean = mean / scale
    squares = 0.0
    for chunk in make_chunks():
        finite = chunk[np.isfinite(chunk)] / scale
        squares += float(((finite - scaled_mean) ** 2).sum())
    with np.errstate(over="ignore"):
        std = float(np.float64(math.sqrt(squares / finite_n)) * scale)
    out.update(min=lo, max=hi, mean=mean, std=std)
    return out


@dataclass
class DiffReport:
    """What differs between two weight files."""

    added: list[str] = field(default_factory=list)  # only in B
    removed: list[str] = field(default_factory=list)  # only in A
    shape_changed: list[dict[str, Any]] = field(default_factory=list)
    dtype_changed: list[dict[str, Any]] = field(default_factory=list)
    value_changed: list[dict[str, Any]] = field(default_factory=list)
    equal: list[str] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return not (
            self.added or self.removed or self.shape_changed or self.dtype_changed or self.value_changed
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "identical": self.identical,
            "added": self.added,
            "removed": self.removed,
            "shape_changed": self.shape_changed,
            "dtype_changed": self.dtype_changed,
            "value_changed": self.value_changed,
            "equal": len(self.equal),
        }


def _compare_values(a: np.ndarray, b: np.ndarray, atol: float, rtol: float) -> dict[str, Any] | None:
    """None when equal within tolerance, else the max absolute and relative difference."""
    if np.asarray(a).dtype.kind in "OSU" or np.asarray(b).dtype.kind in "OSU":  # string tensors
        pairs = zip(np.asarray(a).reshape(-1).tolist(), np.asarray(b).reshape(-1).tolist())
        changed = sum(x != y for x, y in pairs)
        if not changed:
            return None
        return {"max_abs": None, "max_rel": None, "changed": changed, "numel": int(np.asarray(a).size)}
    fa = _as_float(a)
    fb = _as_float(b)
    both_nan = np.isnan(fa) & np.isnan(fb)
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf and nan are handled below
        delta = np.abs(fa - fb)
    delta[both_nan] = 0.0
    inf_same = np.isinf(fa) & (fa == fb)
    delta[inf_same] = 0.0
    with np.errstate(invalid="ignore", over="ignore"):
        bound = atol + rtol * np.abs(np.where(np.isfinite(fb), fb, 0.0))
        bad = ~(delta <= bound)
    if not bad.any():
        return None
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(fb != 0, delta / np.abs(fb), np.where(delta == 0, 0.0, np.inf))
    return {
        "max_abs": float(np.nanmax(delta)) if delta.size else 0.0,
        "max_rel": float(np.nanmax(rel)) if rel.size else 0.0,
        "changed": int(bad.sum()),
        "numel": int(fa.size),
    }


def _as_float(arr: np.ndarray) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.dtype.kind == "c":
        return arr.astype(np.complex128).view(np.float64).reshape(-1)
    return arr.astype(np.float64).reshape(-1)


def diff(a: FormatReader, b: FormatReader, *, atol: float = 0.0, rtol: float = 0.0) -> DiffReport:
    """Compare every tensor of ``a`` with the same-named tensor of ``b``.

    Values are compared as float64 with ``|a - b| <= atol + rtol * |b|``; NaN equals NaN in the
    same place, so a checkpoint compared with its own copy is always identical.
    """
    report = DiffReport()
    keys_a, keys_b = a.keys(), b.keys()
    set_b = set(keys_b)
    set_a = set(keys_a)
    report.removed = [k for k in keys_a if k not in set_b]
    report.added = [k for k in keys_b if k not in set_a]
    for name in keys_a:
        if name not in set_b:
            continue
        ia, ib = a.info(name), b.info(name)
        if ia.shape != ib.shape:
            report.shape_changed.append({"name": name, "a": list(ia.shape), "b": list(ib.shape)})
            continue
        if ia.dtype != ib.dtype:
            report.dtype_changed.append({"name": name, "a": ia.dtype, "b": ib.dtype})
        change = _compare_values(a.get(name), b.get(name), atol, rtol)
        if change is None:
            report.equal.append(name)
        else:
            report.value_changed.append({"name": name, **change})
    return report


def format_values(
    arr: np.ndarray,
    *,
    precision: int = 4,
    linewidth: int = 80,
    threshold: int = 1000,
    edgeitems: int = 3,
    sci: bool | None = None,
) -> str:
    """Print a tensor the way ``torch.set_printoptions`` would: precision, width, summarisation.

    ``sci=None`` lets numpy choose; True forces scientific notation; False forbids it.
    """
    arr = np.asarray(arr)
    if arr.dtype.kind not in "biufcOSU":  # ml_dtypes kinds (bfloat16, float8) print via float32
        arr = arr.astype(np.float32)
    kwargs: dict[str, Any] = {
        "precision": precision,
        "max_line_width": linewidth,
        "threshold": threshold,
        "edgeitems": edgeitems,
    }
    if sci is not None:
        kwargs["suppress_small"] = not sci
        kwargs["floatmode"] = "fixed"
        if sci:
            kwargs["formatter"] = {"float_kind": lambda x: f"{x:.{precision}e}"}
    return np.array2string(arr, separator=", ", **kwargs)
