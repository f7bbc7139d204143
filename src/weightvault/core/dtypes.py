"""Canonical dtypes.

Everywhere inside weightvault a dtype is a ``numpy.dtype`` (ml_dtypes supplies bfloat16 and the
float8 kinds) and its canonical *name* is the numpy name (``"float32"``, ``"bfloat16"``,
``"float8_e4m3fn"``). Formats translate their own codes to and from these names in one table each.

String tensors (TensorFlow's DT_STRING: vocabularies, file names, a step's tag) have the canonical
dtype name ``"string"`` (:data:`STRING`). They are not numbers, so they are not in :data:`DTYPES`:
a reader returns them as numpy *object* arrays of ``bytes`` with the tensor's shape, and only
formats that can hold them (native, TF bundle) write them; the others refuse them by name (see
``Format.can_write_strings``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np

from weightvault.errors import UnknownDtypeError

__all__ = [
    "DTYPES",
    "STRING",
    "as_string_array",
    "dtype_from_name",
    "dtype_name",
    "is_float",
    "is_string_array",
    "itemsize",
]

#: canonical dtype name of string tensors (object arrays of ``bytes``)
STRING = "string"

#: numpy's own dtypes, by canonical name.
_NUMPY: dict[str, np.dtype] = {
    "bool": np.dtype(np.bool_),
    "uint8": np.dtype(np.uint8),
    "int8": np.dtype(np.int8),
    "uint16": np.dtype(np.uint16),
    "int16": np.dtype(np.int16),
    "uint32": np.dtype(np.uint32),
    "int32": np.dtype(np.int32),
    "uint64": np.dtype(np.uint64),
    "int64": np.dtype(np.int64),
    "float16": np.dtype(np.float16),
    "float32": np.dtype(np.float32),
    "float64": np.dtype(np.float64),
    "complex64": np.dtype(np.complex64),
    "complex128": np.dtype(np.complex128),
}
#: canonical name -> ml_dtypes attribute. ml_dtypes costs more to import than numpy itself, so it
#: is imported only when one of these is looked up (or an unknown numpy dtype is named).
_ML_DTYPES = {
    "bfloat16": "bfloat16",
    "float8_e4m3fn": "float8_e4m3fn",
    "float8_e5m2": "float8_e5m2",
    "float8_e4m3fnuz": "float8_e4m3fnuz",
    "float8_e5m2fnuz": "float8_e5m2fnuz",
    "float8_e8m0fnu": "float8_e8m0fnu",
}
_ORDER = (*list(_NUMPY)[:10], "bfloat16", *list(_NUMPY)[10:], *list(_ML_DTYPES)[1:])


class _Dtypes(Mapping[str, np.dtype]):
    """The table of :data:`DTYPES`: names known up front, ml_dtypes' values made on first use."""

    def __init__(self) -> None:
        self._table: dict[str, np.dtype] = dict(_NUMPY)

    def _load_ml_dtypes(self) -> None:
        import ml_dtypes

        for name, attr in _ML_DTYPES.items():
            dt = np.dtype(getattr(ml_dtypes, attr))
            self._table[name] = dt
            _BY_DTYPE[dt] = name

    def __getitem__(self, name: str) -> np.dtype:
        if name in _ML_DTYPES and name not in self._table:
            self._load_ml_dtypes()
        return self._table[name]

    def __contains__(self, name: object) -> bool:
        return name in _NUMPY or name in _ML_DTYPES

    def __iter__(self) -> Iterator[str]:
        return iter(_ORDER)

    def __len__(self) -> int:
        return len(_ORDER)


#: Every dtype weightvault can hold, by canonical name. Byte order is always little-endian on disk.
DTYPES: Mapping[str, np.dtype] = _Dtypes()

_BY_DTYPE: dict[np.dtype, str] = {dt: name for name, dt in _NUMPY.items()}


def dtype_from_name(name: str, *, path: str | None = None, tensor: str | None = None) -> np.dtype:
    """Return the numpy dtype for a canonical name, or raise :class:`UnknownDtypeError`."""
    try:
        return DTYPES[name]
    except KeyError:
        raise UnknownDtypeError(
            f"unknown dtype {name!r}; known: {', '.join(DTYPES)}", path=path, tensor=tensor
        ) from None


def is_string_array(value: object) -> bool:
    """A numpy array of byte strings: dtype ``S`` (fixed width) or an object array of ``bytes``."""
    if not isinstance(value, np.ndarray):
        return False
    if value.dtype.kind == "S":
        return True
    return value.dtype.kind == "O" and all(isinstance(v, bytes) for v in value.reshape(-1).tolist())


def as_string_array(value: np.ndarray) -> np.ndarray:
    """An object array of ``bytes`` (what readers return for :data:`STRING`), same shape.

    ``S`` arrays drop trailing NULs (numpy's own rule), so store object arrays when they matter."""
    if value.dtype.kind == "O":
        return value
    out = np.empty(value.shape, dtype=object)
    out.reshape(-1)[:] = value.reshape(-1).tolist()
    return out


def dtype_name(dtype: np.dtype | type, *, tensor: str | None = None) -> str:
    """Return the canonical name of a numpy dtype (native byte order is normalised first)."""
    dt = np.dtype(dtype)
    if dt.byteorder == ">":
        dt = dt.newbyteorder("<")
    if dt not in _BY_DTYPE and dt.kind == "V":
        DTYPES["bfloat16"]  # ml_dtypes' types are kind "V": make their names known
    try:
        return _BY_DTYPE[dt]
    except KeyError:
        raise UnknownDtypeError(
            f"dtype {dt} cannot be stored (object, string, structured and datetime arrays are "
            "not weights)",
            tensor=tensor,
        ) from None


def is_float(dtype: np.dtype) -> bool:
    """True for every real floating dtype, including bfloat16 and the float8 kinds."""
    name = dtype_name(dtype)
    return name.startswith(("float", "bfloat"))


def itemsize(name: str) -> int:
    """Bytes per element of a canonical dtype name."""
    return dtype_from_name(name).itemsize
