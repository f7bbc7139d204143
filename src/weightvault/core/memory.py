"""A reader over tensors already in memory: a ``{name: tensor}`` dict or a nested state.

``restore`` (a model's state as the target), ``export_hw`` (a mapping as the source) and a
conversion plan applied to a mapping all see in-memory tensors through this one
:class:`~weightvault.abc.format.FormatReader`, so they use the same code as for a file: ``info``
without converting anything, ``get`` as a numpy array, a clear error for a missing name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from weightvault.abc.format import FormatReader, TensorInfo
from weightvault.core.limits import check_depth
from weightvault.core.tensors import describe, is_tensor, to_numpy

__all__ = ["MemoryReader"]


class MemoryReader(FormatReader):
    """Tensors of an in-memory state, by name.

    ``nested=True`` walks dicts, lists and tuples and names each tensor by its path joined with
    ``/`` (``{"model": {"w": t}}`` gives ``model/w``), skipping non-tensor leaves (step counts,
    hyper-parameters); ``nested=False`` takes a flat mapping's keys as they are, every value a
    tensor (numpy, torch, tensorflow..., or anything ``np.asarray`` takes).
    """

    format_name = "memory"

    def __init__(
        self, state: Mapping[Any, Any], *, nested: bool = True, path: str = "<memory>"
    ) -> None:
        super().__init__(path)
        self._flat: Mapping[Any, Any] = state  # flat: looked up on access (it may be lazy)
        if nested:
            found: dict[str, Any] = {}
            self._walk(state, "", 0, found)
            self._flat = found

    def _walk(self, node: Any, prefix: str, depth: int, found: dict[str, Any]) -> None:
        check_depth(depth, path=self.path)
        if isinstance(node, Mapping):
            for k, v in node.items():
                self._walk(v, f"{prefix}/{k}" if prefix else str(k), depth + 1, found)
        elif isinstance(node, (list, tuple)):
            for i, v in enumerate(node):
                self._walk(v, f"{prefix}/{i}" if prefix else str(i), depth + 1, found)
        elif hasattr(node, "shape") and hasattr(node, "dtype"):
            found[prefix] = node

    def keys(self) -> list[str]:
        return list(self._flat)

    def __contains__(self, name: object) -> bool:
        return name in self._flat

    def info(self, name: str) -> TensorInfo:
        self._require(name)
        value = self._flat[name]
        if is_tensor(value):  # dtype and shape from the tensor object: nothing is converted
            desc = describe(value, name=name)
            return TensorInfo(name, desc.dtype, tuple(int(n) for n in desc.shape))
        arr = self.get(name)
        return TensorInfo(name, describe(arr, name=name).dtype, tuple(arr.shape))

    def get(self, name: str) -> np.ndarray:
        self._require(name)
        value = self._flat[name]
        if is_tensor(value):
            return to_numpy(value)
        return np.asarray(value)
