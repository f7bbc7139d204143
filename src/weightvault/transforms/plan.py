"""A conversion plan: which target tensor comes from which sources, through which transforms.

The plan is data. ``Plan.apply(reader)`` returns a lazy mapping of target tensors that writers
pull one at a time (so a conversion streams, like ``convert``); ``Plan.to_dict()`` is what goes
into the output manifest; ``Plan.inverse()`` exists when every step has one source and only
invertible transforms.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from weightvault.abc.format import ByteSpan, FormatReader, TensorInfo
from weightvault.core.memory import MemoryReader
from weightvault.transforms.base import Combine, Transform, transform_from_dict

__all__ = ["Plan", "Step"]


@dataclass(frozen=True)
class Step:
    """Produce ``target`` from ``sources`` (combined by ``combine`` when there are several)."""

    target: str
    sources: tuple[str, ...]
    transforms: tuple[Transform, ...] = ()
    combine: Combine | None = None
    note: str = ""

    def run(self, fetch: Any) -> np.ndarray:
        arrays = [np.asarray(fetch(s)) for s in self.sources]
        if self.combine is not None:
            x = self.combine.combine(arrays)
        elif len(arrays) == 1:
            x = arrays[0]
        else:
            raise ValueError(f"step for {self.target!r} has {len(arrays)} sources and no combiner")
        for t in self.transforms:
            x = t.apply(x)
        return x

    def resolve_info(self, infos: list[TensorInfo]) -> TensorInfo:
        """dtype and shape of ``run``'s output from its sources' (in ``sources`` order), without
        data: what each transform's ``resolve_info`` says, step by step."""
        if self.combine is not None:
            info = self.combine.resolve_info(infos)
        elif len(infos) == 1:
            info = infos[0]
        else:
            raise ValueError(f"step for {self.target!r} has {len(infos)} sources and no combiner")
        for t in self.transforms:
            info = t.resolve_info(info)
        return TensorInfo(self.target, info.dtype, tuple(info.shape))

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "target": self.target,
            "sources": list(self.sources),
            "transforms": [t.to_dict() for t in self.transforms],
        }
        if self.combine is not None:
            d["combine"] = self.combine.to_dict()
        if self.note:
            d["note"] = self.note
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Step:
        return cls(
            target=d["target"],
            sources=tuple(d["sources"]),
            transforms=tuple(transform_from_dict(t) for t in d.get("transforms", [])),
            combine=transform_from_dict(d["combine"]) if d.get("combine") else None,
            note=d.get("note", ""),
        )

    def describe(self) -> str:
        parts = [self.combine.describe()] if self.combine else []
        parts += [t.describe() for t in self.transforms]
        return " -> ".join(parts) if parts else "copy"


@dataclass
class Plan:
    """An ordered list of steps plus what was dropped and why, and notes for the report."""

    rules: str
    steps: list[Step] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rules": self.rules,
            "steps": [s.to_dict() for s in self.steps],
            "dropped": dict(self.dropped),
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Plan:
        return cls(
            rules=d["rules"],
            steps=[Step.from_dict(s) for s in d["steps"]],
            dropped=dict(d.get("dropped", {})),
            notes=list(d.get("notes", [])),
        )

    def inverse(self) -> Plan:
        """The plan that undoes this one (when every step is 1:1 and invertible)."""
        steps = []
        for step in self.steps:
            if len(step.sources) != 1 or step.combine is not None:
                raise ValueError(f"step for {step.target!r} combines several sources; it has no inverse")
            inv = tuple(t.inverse() for t in reversed(step.transforms))
            steps.append(Step(step.sources[0], (step.target,), inv))
        return Plan(f"inverse of {self.rules}", steps)

    def apply(self, reader: FormatReader | Mapping[str, np.ndarray]) -> PlannedTensors:
        return PlannedTensors(self, reader)

    def check_targets_unique(self) -> None:
        seen: set[str] = set()
        for step in self.steps:
            if step.target in seen:
                raise ValueError(f"two rules produce {step.target!r}")
            seen.add(step.target)


class PlannedTensors(Mapping[str, np.ndarray]):
    """Target tensors of a plan, computed on access (writers pull one at a time).

    ``info`` reads no data (each transform resolves its output's dtype and shape), so a writer
    that lays out its header first and then pulls each tensor reads every source once.
    """

    def __init__(self, plan: Plan, source: FormatReader | Mapping[str, np.ndarray]) -> None:
        self.plan = plan
        self.source = (
            source if isinstance(source, FormatReader) else MemoryReader(source, nested=False)
        )
        self._steps = {s.target: s for s in plan.steps}
        self._infos: dict[str, TensorInfo] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        return self._steps[name].run(self.source.get)

    def __iter__(self) -> Iterator[str]:
        return iter(self._steps)

    def __len__(self) -> int:
        return len(self._steps)

    def _passthrough(self, name: str) -> str | None:
        """The source name when the step hands one tensor over unchanged (a rename), else None."""
        step = self._steps[name]
        if len(step.sources) == 1 and not step.transforms and step.combine is None:
            return step.sources[0]
        return None

    def info(self, name: str) -> TensorInfo:
        if name not in self._infos:
            step = self._steps[name]
            self._infos[name] = step.resolve_info([self.source.info(s) for s in step.sources])
        return self._infos[name]

    def byte_span(self, name: str) -> ByteSpan | None:
        """A renamed tensor keeps its source's bytes, so writers may stream them across."""
        source = self._passthrough(name)
        return self.source.byte_span(source) if source is not None else None
