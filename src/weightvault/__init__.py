"""weightvault: persist, recover, convert, inspect and export neural-network weights.

>>> import weightvault
>>> callable(weightvault.save) and callable(weightvault.load)
True
"""

from __future__ import annotations

import importlib
from typing import Any

from weightvault.errors import WeightVaultError

__version__ = "0.1.0"

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
    "EMA": "weightvault.ema",
    "expansion_limit": "weightvault.core.limits",
    "export_hw": "weightvault.export.api",
    "import_hw": "weightvault.export.api",
    "restore": "weightvault.restore",
    "torch": "weightvault.torch",
    "watch": "weightvault.checkpoint.watch",
}

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
    "open",
    "restore",
    "save",
    "torch",
    "verify",
    "watch",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'weightvault' has no attribute {name!r}")
    module_name, _, attr = _LAZY[name].partition(":")
    module = importlib.import_module(module_name)
    # `restore` is a callable module, so weightvault.restore(...) and weightvault.restore.select
    # work whichever import happened first.
    value = module if name in ("torch", "restore") else getattr(module, attr or name)
    globals()[name] = value
    return value
