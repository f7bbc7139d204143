"""Turning framework tensors into numpy without importing any framework here.

A tensor is recognised by the module its type comes from; the matching adapter in
``weightvault.frameworks`` is imported only when such a tensor is actually seen. ``describe(obj)``
gives the facts a header needs (dtype, shape, an identity used to find tied weights) without
copying anything; ``to_numpy(obj)`` produces the contiguous little-endian bytes, and is called by
writers one tensor at a time so a model on a GPU never needs a second full copy in host memory.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from weightvault.core.dtypes import dtype_name

if TYPE_CHECKING:
    import numpy as np

__all__ = ["TensorDesc", "describe", "is_tensor", "to_numpy"]



@dataclass(frozen=True)
class TensorDesc:
    """What a writer needs to know before it asks for the bytes."""

    dtype: str
    shape: tuple[int, ...]
    #: equal identities mean "the same tensor" (same storage, offset, shape, strides, dtype)
    identity: tuple[Any, ...] | None


def _adapter_for(obj: Any) -> Any | None:
    # module prefix of a tensor type -> its adapter (weightvault.frameworks.ADAPTERS, lazy)
    from weightvault.frameworks import ADAPTERS

    root = type(obj).__module__.partition(".")[0]
    if root not in ADAPTERS:
        return None
    adapter = ADAPTERS[root]
    return adapter if adapter.is_tensor_type(type(obj)) else None


def is_tensor(obj: Any) -> bool:
    """True for numpy arrays and for tensors of any framework we have an adapter for."""
    # Without numpy imported nothing can be an ndarray: answering without importing it keeps
    # header-only commands (``ls``) free of numpy's start-up cost.
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(obj, numpy.ndarray):
        return True
    return _adapter_for(obj) is not None


def describe(obj: Any, *, name: str | None = None) -> TensorDesc:
    import numpy as np

    if isinstance(obj, np.ndarray):
        identity = None
        if obj.size:  # empty arrays share dummy pointers: never treat them as tied
            ptr = obj.__array_interface__["data"][0]
            identity = ("numpy", ptr, obj.shape, obj.strides, obj.dtype.str)
        return TensorDesc(dtype_name(obj.dtype, tensor=name), tuple(obj.shape), identity)
    adapter = _adapter_for(obj)
    if adapter is None:
        raise TypeError(f"not a tensor: {type(obj)!r}")
    desc: TensorDesc = adapter.describe(obj)
    return desc


def to_numpy(obj: Any) -> np.ndarray:
    """Contiguous little-endian host array with the exact dtype (a view where possible)."""
    import numpy as np

    if isinstance(obj, np.ndarray):
        arr = obj
        if arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        return arr if arr.flags.c_contiguous else arr.copy(order="C")
    adapter = _adapter_for(obj)
    if adapter is None:
        raise TypeError(f"not a tensor: {type(obj)!r}")
    arr2: np.ndarray = adapter.tensor_to_numpy(obj)
    return arr2
