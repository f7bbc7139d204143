"""PyTorch training state, the public spelling: ``import weightvault.torch as wvt``.

The code lives in :mod:`weightvault.frameworks.torch_state` (torch is imported under
``weightvault/frameworks`` only); this module re-exports its public names unchanged.

>>> import weightvault.torch as wvt
>>> wvt.STATE_FORMAT
'weightvault.torch/1'
"""

from __future__ import annotations

from weightvault.frameworks.torch_state import (
    STATE_FORMAT,
    apply,
    capture,
    capture_rng,
    epoch_generator,
    load_training_state,
    restore_rng,
    save_training_state,
    to_torch,
)

__all__ = [
    "STATE_FORMAT",
    "apply",
    "capture",
    "capture_rng",
    "epoch_generator",
    "load_training_state",
    "restore_rng",
    "save_training_state",
    "to_torch",
]
