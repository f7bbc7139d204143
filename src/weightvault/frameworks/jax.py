"""JAX adapter: jax arrays to numpy (device_get), identity by object for tied leaves.

jax arrays are immutable, so "tied" can only mean the same array object appearing twice in a
state; that is what the identity records.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from weightvault.core.dtypes import dtype_name
from weightvault.core.tensors import TensorDesc

__all__ = ["describe", "from_numpy", "is_tensor_type", "tensor_to_numpy"]


def is_tensor_type(tp: type) -> bool:
    return issubclass(tp, jax.Array)


def describe(x: Any) -> TensorDesc:
    identity = ("jax", id(x)) if x.size else None
    return TensorDesc(dtype_name(np.dtype(x.dtype)), tuple(x.shape), identity)


def tensor_to_numpy(x: Any) -> np.ndarray:
    arr = np.asarray(jax.device_get(x))
    return arr if arr.flags.c_contiguous else arr.copy(order="C")


def from_numpy(arr: np.ndarray, device: Any = None) -> Any:
    return jax.device_put(arr, device) if device is not None else jax.numpy.asarray(arr)
