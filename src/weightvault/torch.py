"""PyTorch training state, the public spelling: ``import weightvault.torch as wvt``.

The code lives in :mod:`weightvault.frameworks.torch_state` (torch is imported under
``weightvault/frameworks`` only); this module re-exports its public names unchanged.

>>> import weightvault.torch as wvt
>>> wvt.STATE_FORMAT, wvt.capture is weightvault.frameworks.torch_state.capture
('weightvault.torch/1', True)
"""

from __future__ import annotations

from weightvault.frameworks import torch_state as _state
from weightvault.frameworks.torch_state import *  # noqa: F403 - the public spelling of it all

__all__ = list(_state.__all__)
