"""``weightvault.torch_dcp``: the torch.distributed.checkpoint storage backend (imports torch).

See :mod:`weightvault.frameworks.torch_dcp` and docs/distributed.md.
"""

from __future__ import annotations

from weightvault.frameworks.torch_dcp import WeightVaultReader, WeightVaultWriter, load, save

__all__ = ["WeightVaultReader", "WeightVaultWriter", "load", "save"]
