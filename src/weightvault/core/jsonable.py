"""Nested values as plain JSON data: the one walker behind metadata, reports and listings.

:func:`jsonable` turns dicts into dicts with string keys, lists and tuples into lists, numpy
arrays into nested lists and numpy scalars into Python numbers, and bytes into text (UTF-8, or
hex when they are not UTF-8). A caller with values of its own (Go structs, tensor leaves) passes
``special``: it sees every value first and returns :data:`NOT_SPECIAL` for the ones it leaves to
the walker.

>>> import numpy as np
>>> jsonable({1: (np.float32(0.5), b"ok", b"\\xff"), "a": np.arange(3)})
{'1': [0.5, 'ok', 'ff'], 'a': [0, 1, 2]}
>>> jsonable([b"x", 2], lambda v: v.decode() + "!" if isinstance(v, bytes) else NOT_SPECIAL)
['x!', 2]
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

__all__ = ["NOT_SPECIAL", "jsonable"]

NOT_SPECIAL: Any = object()


def jsonable(value: Any, special: Callable[[Any], Any] | None = None) -> Any:
    """``value`` as JSON-able Python data (see the module docstring); other values pass as is."""
    if special is not None:
        out = special(value)
        if out is not NOT_SPECIAL:
            return out
    if isinstance(value, dict):
        return {str(k): jsonable(v, special) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v, special) for v in value]
    np = sys.modules.get("numpy")  # without numpy imported there are no numpy values: no import
    if np is not None and isinstance(value, np.ndarray):
        items = value.tolist() if value.ndim else value.item()
        return jsonable(items, special)
    if np is not None and isinstance(value, np.generic):
        return jsonable(value.item(), special)
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value.hex()
    return value
