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
from typing import TYPE_CHECKING

from weightvault.errors import UnknownDtypeError

if TYPE_CHECKING:
    import numpy as np

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

#: numpy's own dtypes: canonical name -> bytes per element. The numpy dtype objects are made on
#: first use, so that commands reading only headers (``ls``, ``--help``) never import numpy.
_NUMPY_ITEMSIZE = {
    "bool": 1,
    "uint8": 1,
    "int8": 1,
    "uint16": 2,
    "int16": 2,
    "uint32": 4,
    "int32": 4,
    "uint64": 8,
    "int64": 8,
    "float16": 2,
    "float32": 4,
    "float64": 8,
    "complex64": 8,
    "complex128": 16,
}
#: canonical name -> (ml_dtypes attribute, bytes per element). ml_dtypes costs more to import
#: than numpy itself, so it is imported only when one of these is looked up (or an unknown numpy
#: dtype is named).
_ML_DTYPES = {
    "bfloat16": ("bfloat16", 2),
    "float8_e4m3fn": ("float8_e4m3fn", 1),
    "float8_e5m2": ("float8_e5m2", 1),
    "float8_e4m3fnuz": ("float8_e4m3fnuz", 1),
    "float8_e5m2fnuz": ("float8_e5m2fnuz", 1),
    "float8_e8m0fnu": ("float8_e8m0fnu", 1),
}
_NUMPY_NAMES = list(_NUMPY_ITEMSIZE)
_ORDER = (*_NUMPY_NAMES[:10], "bfloat16", *_NUMPY_NAMES[10:], *list(_ML_DTYPES)[1:])


class _Dtypes(Mapping[str, "np.dtype"]):
    """The table of :data:`DTYPES`: names known up front, dtype objects made on first use."""

    def __init__(self) -> None:
        self._table: dict[str, np.dtype] = {}
        #: numpy dtype -> canonical name, filled as the table is
        self.by_dtype: dict[np.dtype, str] = {}

    def _load_numpy(self) -> None:
        import numpy as np

        for name in _NUMPY_ITEMSIZE:
            dt = np.dtype(name)
            self._table[name] = dt
            self.by_dtype[dt] = name

    def _load_ml_dtypes(self) -> None:
        import ml_dtypes
        import numpy as np

        for name, (attr, _size) in _ML_DTYPES.items():
            dt = np.dtype(getattr(ml_dtypes, attr))
            self._table[name] = dt
            self.by_dtype[dt] = name

    def __getitem__(self, name: str) -> np.dtype:
        if name not in self._table:
            if name in _NUMPY_ITEMSIZE:
                self._load_numpy()
            elif name in _ML_DTYPES:
                self._load_ml_dtypes()
        return self._table[name]

    def __contains__(self, name: object) -> bool:
        return name in _NUMPY_ITEMSIZE or name in _ML_DTYPES

    def __iter__(self) -> Iterator[str]:
        return iter(_ORDER)

    def __len__(self) -> int:
        return len(_ORDER)


#: Every dtype weightvault can hold, by canonical name. Byte order is always little-endian on disk.
DTYPES: Mapping[str, np.dtype] = _Dtypes()


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
    import numpy as np

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
    import numpy as np

    out = np.empty(value.shape, dtype=object)
    out.reshape(-1)[:] = value.reshape(-1).tolist()
    return out


def dtype_name(dtype: np.dtype | type, *, tensor: str | None = None) -> str:
    """Return the canonical name of a numpy dtype (native byte order is normalised first)."""
    import numpy as np

    dt = np.dtype(dtype)
    if dt.byteorder == ">":
        dt = dt.newbyteorder("<")
    by_dtype = DTYPES.by_dtype  # type: ignore[attr-defined]
    if dt not in by_dtype:
        DTYPES["float32"]  # numpy's names
        if dt.kind == "V":
            DTYPES["bfloat16"]  # ml_dtypes' types are kind "V": make their names known
    try:
        return by_dtype[dt]
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
    """Bytes per element of a canonical dtype name (without importing numpy)."""
    if name in _NUMPY_ITEMSIZE:
        return _NUMPY_ITEMSIZE[name]
    if name in _ML_DTYPES:
        return _ML_DTYPES[name][1]
    return dtype_from_name(name).itemsize  # raises UnknownDtypeError naming the known ones
