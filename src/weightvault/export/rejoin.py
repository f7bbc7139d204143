"""Undo an export's split / transpose / reshape, so imported tensors line up with the source.

``export.json`` records, for every exported tensor, its ``source`` name, ``source_shape`` and
``dtype``, the ``split`` (axis, parts, this part), ``transpose`` and ``reshape``. Reading the
folder back "as the source" runs the pipeline backwards per tensor (reshape back, inverse
transpose), concatenates the parts of each split in the recorded part order, and casts to the
source dtype. The sidecar is input like any other: every field is checked before use.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from weightvault.errors import InvalidHeaderError

__all__ = ["Restored", "restore_source_layout"]


class Restored(dict[str, np.ndarray]):
    """``{source name: array}`` plus ``bounds``: per tensor, how far a value may be from the
    source (the export's max abs error plus what casting to the source dtype moved it)."""

    bounds: dict[str, float]


def restore_source_layout(
    entries: list[dict[str, Any]],
    values: Callable[[str], np.ndarray],
    *,
    path: Path,
    only_file: str | None = None,
) -> Restored:
    """``entries`` are the sidecar's tensor records to import; ``values(name)`` their float64
    values in the exported layout."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for e in entries:
        source = e.get("source")
        if not isinstance(source, str) or not source:
            raise InvalidHeaderError(
                "export.json tensor lacks its 'source' name", path=path, tensor=str(e.get("name"))
            )
        groups.setdefault(source, []).append(e)
    out = Restored()
    out.bounds = {}
    for source, members in groups.items():
        whole = _rejoin(source, members, values, path, only_file)
        restored, moved = _cast(whole, _source_dtype(members[0], path))
        out[source] = restored
        out.bounds[source] = max(_max_abs(m) for m in members) + moved
    return out


def _max_abs(e: dict[str, Any]) -> float:
    err = e.get("error")
    value = err.get("max_abs") if isinstance(err, dict) else None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def _int_list(value: Any, what: str, path: Path, tensor: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        raise InvalidHeaderError(
            f"export.json '{what}' is not a list of integers", path=path, tensor=tensor
        )
    return tuple(value)


def _unshape(
    e: dict[str, Any], arr: np.ndarray, piece_shape: tuple[int, ...], path: Path
) -> np.ndarray:
    """Exported tensor -> the (split part of the) source tensor: undo reshape, then transpose."""
    name = str(e["name"])
    perm = e.get("transpose")
    transposed_shape = piece_shape
    if perm is not None:
        perm_t = _int_list(perm, "transpose", path, name)
        if sorted(perm_t) != list(range(len(piece_shape))):
            raise InvalidHeaderError(
                f"export.json transpose {list(perm_t)} does not permute the axes of "
                f"{list(piece_shape)}",
                path=path,
                tensor=name,
            )
        transposed_shape = tuple(piece_shape[i] for i in perm_t)
    if arr.size != math.prod(transposed_shape):
        raise InvalidHeaderError(
            f"export.json shape {list(arr.shape)} does not hold the "
            f"{math.prod(transposed_shape)} values of source shape {list(piece_shape)}",
            path=path,
            tensor=name,
        )
    arr = arr.reshape(transposed_shape)  # reshape was applied in C order, after transpose
    if perm is not None:
        arr = np.transpose(arr, np.argsort(perm_t))
    return arr


def _rejoin(
    source: str,
    members: list[dict[str, Any]],
    values: Callable[[str], np.ndarray],
    path: Path,
    only_file: str | None,
) -> np.ndarray:
    source_shape = _int_list(members[0].get("source_shape"), "source_shape", path, source)
    if any(d < 0 for d in source_shape):
        raise InvalidHeaderError(
            f"export.json source shape {list(source_shape)} is negative", path=path, tensor=source
        )
    if any(m.get("source_shape") != list(source_shape) for m in members):
        raise InvalidHeaderError(
            "export.json parts disagree on the source shape", path=path, tensor=source
        )
    split = members[0].get("split")
    if split is None:
        if len(members) != 1:
            raise InvalidHeaderError(
                "export.json lists this unsplit source more than once", path=path, tensor=source
            )
        return _unshape(members[0], values(members[0]["name"]), source_shape, path)
    if not isinstance(split, dict) or not isinstance(split.get("axis"), int):
        raise InvalidHeaderError("export.json 'split' lacks its axis", path=path, tensor=source)
    axis = split["axis"]
    parts = split.get("parts")
    if (
        not isinstance(parts, list)
        or not parts
        or not all(isinstance(p, str) for p in parts)
        or len(set(parts)) != len(parts)
        or not source_shape
        or not -len(source_shape) <= axis < len(source_shape)
        or source_shape[axis] % len(parts)
    ):
        raise InvalidHeaderError(
            f"export.json split {split} does not fit source shape {list(source_shape)}",
            path=path,
            tensor=source,
        )
    by_part: dict[str, dict[str, Any]] = {}
    for m in members:
        s = m.get("split")
        if not isinstance(s, dict) or s.get("axis") != axis or s.get("parts") != parts:
            raise InvalidHeaderError(
                "export.json parts disagree on the split", path=path, tensor=source
            )
        if s.get("part") not in parts or s["part"] in by_part:
            raise InvalidHeaderError(
                f"export.json split part {s.get('part')!r} is unknown or repeated",
                path=path,
                tensor=source,
            )
        by_part[s["part"]] = m
    missing = [p for p in parts if p not in by_part]
    if missing:
        where = f" in {only_file}" if only_file else ""
        raise InvalidHeaderError(
            f"only {len(by_part)} of the {len(parts)} split parts are{where} "
            f"(missing {', '.join(f'{source}.{p}' for p in missing)}), so the source tensor "
            "cannot be rebuilt",
            path=path,
            tensor=source,
            hint="read the parts as exported: import-hw --as-exported (layout='exported')",
        )
    piece_shape = list(source_shape)
    piece_shape[axis] //= len(parts)
    pieces = [
        _unshape(by_part[p], values(by_part[p]["name"]), tuple(piece_shape), path) for p in parts
    ]
    return np.concatenate(pieces, axis=axis)


def _source_dtype(e: dict[str, Any], path: Path) -> np.dtype:
    from weightvault.core.dtypes import dtype_from_name

    name = e.get("dtype")
    if name == "bool":
        return np.dtype(bool)
    if not isinstance(name, str):
        raise InvalidHeaderError(
            "export.json tensor lacks its source dtype", path=path, tensor=str(e.get("source"))
        )
    return dtype_from_name(name, path=str(path), tensor=str(e.get("source")))


def _cast(arr: np.ndarray, dtype: np.dtype) -> tuple[np.ndarray, float]:
    """``arr`` (float64) in the source dtype, and the largest change the cast made."""
    vals = np.asarray(arr, np.float64)
    if dtype.kind == "b":
        out = vals != 0
    elif dtype.kind in "iu":
        info = np.iinfo(dtype)
        clean = np.where(np.isfinite(vals), vals, 0.0)
        out = np.clip(np.rint(clean), info.min, info.max).astype(dtype)
    else:
        with np.errstate(over="ignore"):  # a value beyond float16 becomes inf, like the source
            out = vals.astype(dtype)
    back = out.astype(np.float64)
    finite = np.isfinite(vals) & np.isfinite(back)
    moved = float(np.max(np.abs(back - vals), where=finite, initial=0.0))
    return out, moved
