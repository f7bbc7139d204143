"""Retention policies: which checkpoints of a run to keep, and why.

Each policy is a small frozen dataclass with one method, ``keep(checkpoints)``, returning
``{step: [reason, ...]}`` for the checkpoints it wants to keep. Policies compose with
:class:`AnyOf`: a checkpoint is kept when any member keeps it, and it carries every member's
reason, so ``weightvault runs`` can say *why* each surviving checkpoint is still there.

Policies are pure functions of the committed checkpoints (step, time, metrics). They hold no
state of their own, so retention decisions survive restarts: a resumed run recomputes exactly the
same kept set from what is on disk (Lightning loses its top-k bookkeeping on resume, PL#4911).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

__all__ = [
    "AnyOf",
    "CheckpointRecord",
    "KeepAll",
    "KeepBestK",
    "KeepEveryNSteps",
    "KeepLastN",
    "KeepPeriod",
    "RetentionPolicy",
]


@dataclass(frozen=True)
class CheckpointRecord:
    """What a policy may look at: the step, when it was saved (unix seconds) and its metrics."""

    step: int
    time: float
    metrics: Mapping[str, Any] = field(default_factory=dict)


class RetentionPolicy(Protocol):
    def keep(self, checkpoints: Sequence[CheckpointRecord]) -> dict[int, list[str]]:
        """Steps to keep, each with the human-readable reasons."""
        ...


@dataclass(frozen=True)
class KeepAll:
    """Never delete anything (``max_to_keep=None``)."""

    def keep(self, checkpoints: Sequence[CheckpointRecord]) -> dict[int, list[str]]:
        return {c.step: ["keep all"] for c in checkpoints}


@dataclass(frozen=True)
class KeepLastN:
    """The ``n`` highest steps."""

    n: int

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"KeepLastN needs n >= 1, not {self.n}")

    def keep(self, checkpoints: Sequence[CheckpointRecord]) -> dict[int, list[str]]:
        newest = sorted((c.step for c in checkpoints), reverse=True)[: self.n]
        return {step: [f"latest {self.n}"] for step in newest}


def _metric_value(record: CheckpointRecord, metric: str) -> float | None:
    value = record.metrics.get(metric)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


@dataclass(frozen=True)
class KeepBestK:
    """The ``k`` best checkpoints by ``metric``; ``mode`` is ``"max"`` or ``"min"``.

    Checkpoints without the metric (or with a NaN/inf value) are never "best"; other policies
    decide about them. Ties keep the earlier step, so a plateau does not churn the kept set.
    """

    metric: str
    mode: Literal["max", "min"] = "max"
    k: int = 1

    def __post_init__(self) -> None:
        if self.mode not in ("max", "min"):
            raise ValueError(f"KeepBestK mode must be 'max' or 'min', not {self.mode!r}")
        if self.k < 1:
            raise ValueError(f"KeepBestK needs k >= 1, not {self.k}")

    def ranked(self, checkpoints: Sequence[CheckpointRecord]) -> list[CheckpointRecord]:
        """Checkpoints that carry the metric, best first."""
        scored = [(v, c) for c in checkpoints if (v := _metric_value(c, self.metric)) is not None]
        sign = -1.0 if self.mode == "max" else 1.0
        scored.sort(key=lambda vc: (sign * vc[0], vc[1].step))
        return [c for _, c in scored]

    def keep(self, checkpoints: Sequence[CheckpointRecord]) -> dict[int, list[str]]:
        best = self.ranked(checkpoints)[: self.k]
        return {
            c.step: [f"best #{rank} by {self.metric} ({self.mode})"] for rank, c in enumerate(best, 1)
        }


@dataclass(frozen=True)
class KeepEveryNSteps:
    """Every checkpoint whose step is a multiple of ``n`` (long-term snapshots)."""

    n: int

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"KeepEveryNSteps needs n >= 1, not {self.n}")

    def keep(self, checkpoints: Sequence[CheckpointRecord]) -> dict[int, list[str]]:
        return {c.step: [f"every {self.n} steps"] for c in checkpoints if c.step % self.n == 0}


@dataclass(frozen=True)
class KeepPeriod:
    """One checkpoint per ``hours`` of wall-clock time: the earliest in each window.

    Windows are counted from the run's earliest checkpoint. The earliest checkpoint of a window
    stays the earliest however many later ones are deleted, so the choice is stable.
    """

    hours: float

    def __post_init__(self) -> None:
        if not self.hours > 0:
            raise ValueError(f"KeepPeriod needs hours > 0, not {self.hours}")

    def keep(self, checkpoints: Sequence[CheckpointRecord]) -> dict[int, list[str]]:
        if not checkpoints:
            return {}
        ordered = sorted(checkpoints, key=lambda c: (c.time, c.step))
        origin = ordered[0].time
        period = self.hours * 3600.0
        kept: dict[int, list[str]] = {}
        seen: set[int] = set()
        for c in ordered:
            window = int((c.time - origin) // period)
            if window not in seen:
                seen.add(window)
                kept[c.step] = [f"every {self.hours:g}h"]
        return kept


@dataclass(frozen=True)
class AnyOf:
    """Keep what any of ``policies`` keeps; reasons are merged."""

    policies: tuple[RetentionPolicy, ...]

    def __init__(self, *policies: RetentionPolicy) -> None:
        object.__setattr__(self, "policies", tuple(policies))

    def keep(self, checkpoints: Sequence[CheckpointRecord]) -> dict[int, list[str]]:
        merged: dict[int, list[str]] = {}
        for policy in self.policies:
            for step, reasons in policy.keep(checkpoints).items():
                have = merged.setdefault(step, [])
                have.extend(r for r in reasons if r not in have)
        return merged
