"""TensorFlow adapter: eager tensors and variables to numpy."""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from weightvault.core.dtypes import dtype_name
from weightvault.core.tensors import TensorDesc

__all__ = ["describe", "is_tensor_type", "tensor_to_numpy"]


def is_tensor_type(tp: type) -> bool:
    return issubclass(tp, (tf.Tensor, tf.Variable))


def describe(x: Any) -> TensorDesc:
    shape = tuple(int(d) for d in x.shape)
    dtype = dtype_name(np.dtype(x.dtype.as_numpy_dtype))
    identity = ("tf", id(x)) if isinstance(x, tf.Variable) else None
    return TensorDesc(dtype, shape, identity)


def tensor_to_numpy(x: Any) -> np.ndarray:
    arr = np.asarray(x.numpy())
    return arr if arr.flags.c_contiguous else arr.copy(order="C")
