"""weightvault: persist, recover, convert, inspect and export neural-network weights.

>>> import weightvault
>>> callable(weightvault.save) and callable(weightvault.load)
True
"""

from __future__ import annotations

import importlib
from typing import Any

from weightvault._version import __version__
from weightvault.errors import WeightVaultError

# Everything but the errors is imported on first attribute access, so `import weightvault` (and
# with it every CLI command, `weightvault --help` included) stays cheap and never imports a
# framework. Names map to their module, or to "module:attribute" when the names differ.
_LAZY = {
    "CheckpointManager": "weightvault.checkpoint.manager",
    "CheckpointReader": "weightvault.abc.format:FormatReader",
    "convert": "weightvault.api",
    "load": "weightvault.api",
    "open": "weightvault.api",
    "save": "weightvault.api",
    "verify": "weightvault.api",
    "EMA": "weightvault.checkpoint.ema",
    "expansion_limit": "weightvault.core.limits",
    "export_hw": "weightvault.export.api",
    "import_hw": "weightvault.export.api",
    "restore": "weightvault.checkpoint.restore",
    "torch": "weightvault.torch",
    "watch": "weightvault.checkpoint.watch",
}

# `open` and `torch` are left out on purpose: `from weightvault import *` must not shadow the
# built-in `open` nor the user's `import torch` (weightvault.open and weightvault.torch stay the
# documented spellings; see docs/api.md).
__all__ = [
    "CheckpointManager",
    "CheckpointReader",
    "EMA",
    "WeightVaultError",
    "__version__",
    "convert",
    "expansion_limit",
    "export_hw",
    "import_hw",
    "load",
    "restore",
    "save",
    "verify",
    "watch",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'weightvault' has no attribute {name!r}")
    module_name, _, attr = _LAZY[name].partition(":")
    module = importlib.import_module(module_name)
    # `torch` is the module weightvault.torch; everything else, `restore` included, is the
    # function or class of that name (its module is weightvault.checkpoint.restore, so no
    # submodule of the package shares the name of the function).
    value = module if name == "torch" else getattr(module, attr or name)
    globals()[name] = value
    return value

