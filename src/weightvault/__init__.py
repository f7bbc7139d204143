"""weightvault: persist, recover, convert, inspect and export neural-network weights.

>>> import weightvault
>>> sorted(weightvault.__all__)[:3]
['CheckpointReader', 'WeightVaultError', '__version__']
"""

from __future__ import annotations

from weightvault.abc.format import FormatReader as CheckpointReader
from weightvault.api import convert, load, open, save, verify
from weightvault.errors import WeightVaultError

__version__ = "0.1.0"

__all__ = [
    "CheckpointReader",
    "WeightVaultError",
    "__version__",
    "convert",
    "load",
    "open",
    "save",
    "verify",
]
