"""Rule sets whose layouts already match PyTorch: OneFlow (same names and layouts) and gorgonia
(OIHW convolutions; 2-D matrices whose orientation only the program that used them knows)."""

from __future__ import annotations

import re
from typing import Any

from weightvault.abc.format import FormatReader
from weightvault.core.names import strip_wrappers
from weightvault.rules import AmbiguousLayoutError, Hints
from weightvault.transforms import Transpose
from weightvault.transforms.plan import Plan, Step

__all__ = ["gorgonia_to_torch", "oneflow_to_torch"]

# Wrappers that add prefixes to every name (DDP, torch.compile, OneFlow graph/module wrappers).
_PREFIXES = ("module.", "_orig_mod.", "model.")


def oneflow_to_torch(reader: FormatReader, hints: Hints, options: dict[str, Any]) -> Plan:
    """Identity layouts; names lose wrapper prefixes and OneFlow's ``/`` separators become dots."""
    strip = tuple(options.get("strip_prefixes", ("module.", "_orig_mod.")))
    plan = Plan("oneflow-to-torch")
    for name in reader.keys():
        target = strip_wrappers(name.replace("/", "."), strip)
        plan.steps.append(Step(target, (name,)))
    return plan


def gorgonia_to_torch(reader: FormatReader, hints: Hints, options: dict[str, Any]) -> Plan:
    """gorgonia convolutions are OIHW like PyTorch; a dense matrix is ``[in, out]`` when the program
    computes ``x @ w`` and ``[out, in]`` when it computes ``w @ x`` (ToadOCR), so 2-D tensors need
    a hint: ``in_out`` (transposed into Linear.weight) or ``out_in`` (copied)."""
    plan = Plan("gorgonia-to-torch")
    for name in reader.keys():
        info = reader.info(name)
        base = re.sub(r"[^0-9A-Za-z_.]", "_", name)
        if len(info.shape) == 0:
            # gob streams carry training scalars after the tensors (ToadOCR's trainEpoch)
            plan.dropped[name] = "scalar, not a layer weight"
        elif len(info.shape) == 2:
            hint = hints.get(name)
            if hint not in ("in_out", "out_in"):
                raise AmbiguousLayoutError(
                    f"2-D gorgonia tensor {info.shape}: the file does not say whether it is used as x@w "
                    "([in, out]) or w@x ([out, in])",
                    path=reader.path,
                    tensor=name,
                    hint=f"pass --hint {name}=in_out or --hint {name}=out_in (or --hint '*=out_in')",
                )
            transforms = (Transpose((1, 0)),) if hint == "in_out" else ()
            plan.steps.append(Step(f"{base}.weight", (name,), transforms, note=hint))
        elif len(info.shape) == 1:
            plan.steps.append(Step(f"{base}.bias", (name,)))
        else:
            plan.steps.append(Step(f"{base}.weight", (name,), note="OIHW, as PyTorch"))
    return plan
