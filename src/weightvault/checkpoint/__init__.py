"""Checkpoint runs: a manager for step series, retention policies, and an evaluator-side watcher.

>>> from weightvault.checkpoint import CheckpointManager, KeepBestK, KeepLastN, AnyOf

The watcher is ``weightvault.watch`` (``weightvault.checkpoint.watch.watch``); it is not re-exported
here so that ``weightvault.checkpoint.watch`` stays the module.
"""

from __future__ import annotations

from weightvault.checkpoint.manager import CheckpointInfo, CheckpointManager, CheckpointSaveError
from weightvault.checkpoint.policies import (
    AnyOf,
    CheckpointRecord,
    KeepAll,
    KeepBestK,
    KeepEveryNSteps,
    KeepLastN,
    KeepPeriod,
    RetentionPolicy,
)

__all__ = [
    "AnyOf",
    "CheckpointInfo",
    "CheckpointManager",
    "CheckpointRecord",
    "CheckpointSaveError",
    "KeepAll",
    "KeepBestK",
    "KeepEveryNSteps",
    "KeepLastN",
    "KeepPeriod",
    "RetentionPolicy",
]
