"""Check a gate-split preset (``:gru``, ``:lstm``) against what the checkpoint says the tensor is.

A fused recurrent tensor stacks its gates along one axis. The presets only name PyTorch's order on
axis 0, so a wrong preset can split a tensor "successfully" into meaningless parts (a GRU's
``[3H, in]`` weight cut in 4 when H is a multiple of 4). Before splitting, we work out from the
checkpoint itself how many gates the tensor holds, on which axis and in which order:

* **PyTorch** ``nn.RNN/GRU/LSTM`` (and ``*Cell``): ``weight_ih_lK``, ``weight_hh_lK``,
  ``bias_ih_lK``, ``bias_hh_lK`` (``_reverse``). ``weight_hh_lK`` is ``[G*H, H]`` (``[G*H, P]``
  with ``weight_hr_lK`` ``[P, H]`` for an LSTM with projections), so G = rows / H: 1 = RNN,
  3 = GRU (r,z,n), 4 = LSTM (i,f,g,o); gates on axis 0.
* **Keras** ``.../kernel``, ``.../recurrent_kernel``, ``.../bias``: ``recurrent_kernel`` is
  ``[H, G*H]``; GRU order z,r,h, LSTM order i,f,c,o; gates on the last axis.
* **TF1** ``.../lstm_cell/kernel|bias`` without a ``recurrent_kernel`` (``LSTMCell``,
  ``BasicLSTMCell``): 4 gates in order i,j,f,o on the last axis; ``.../gru_cell/gates/...`` holds
  2 gates (r,u) and ``.../gru_cell/candidate/...`` one.

Nothing is guessed from a user-chosen module name such as ``encoder.gru``: only these
framework-made names and the shapes of sibling tensors count.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from weightvault.errors import ShapeMismatchError
from weightvault.export.layout import SplitSpec

__all__ = ["GateLayout", "check_preset_split", "gate_layout"]

ShapeOf = Callable[[str], "tuple[int, ...] | None"]

_KIND_BY_GATES = {1: "RNN", 3: "GRU", 4: "LSTM"}
# Gate orders in PyTorch's names (r,z,n / i,f,g,o), so that equal gates compare equal: Keras
# calls n 'h' (GRU) and g 'c' (LSTM); TF1 calls g 'j' and z 'u'.
_TORCH_ORDER = {3: ("r", "z", "n"), 4: ("i", "f", "g", "o")}
_KERAS_ORDER = {3: ("z", "r", "n"), 4: ("i", "f", "g", "o")}

_TORCH_NAME = re.compile(
    r"^(?P<prefix>.*?)(?:weight|bias)_(?:ih|hh)(?P<suffix>(?:_l\d+)?(?:_reverse)?)$"
)
_KERAS_NAME = re.compile(r"^(?P<scope>.*/)(?:kernel|recurrent_kernel|bias)(?P<tail>:0)?$")
_TF1_LSTM = re.compile(r"(?:^|/)(?:basic_)?lstm_cell/(?:kernel|bias)(?::0)?$")
_TF1_GRU = re.compile(r"(?:^|/)gru_cell/(?P<part>gates|candidate)/(?:kernel|bias)(?::0)?$")


@dataclass(frozen=True)
class GateLayout:
    """What the checkpoint says about one fused recurrent tensor."""

    framework: str  # "PyTorch", "Keras", "TF1"
    kind: str  # "RNN", "GRU", "LSTM", or a description ("GRUCell gates (r,u)")
    gates: int
    axis: int  # non-negative, for this tensor's rank
    hidden: int | None  # H when a sibling tensor tells it
    order: tuple[str, ...] | None  # gate order when the framework fixes it
    evidence: str  # which tensor told us, for the message

    @property
    def span(self) -> int | None:
        return self.gates * self.hidden if self.hidden else None


def gate_layout(name: str, shape: tuple[int, ...], shape_of: ShapeOf) -> GateLayout | None:
    """The gate layout of ``name`` as the checkpoint tells it, or None when it does not."""
    if not shape:
        return None
    return (
        _torch_layout(name, shape, shape_of)
        or _keras_layout(name, shape, shape_of)
        or _tf1_layout(name, shape)
    )


def _torch_layout(name: str, shape: tuple[int, ...], shape_of: ShapeOf) -> GateLayout | None:
    m = _TORCH_NAME.match(name)
    if not m:
        return None
    prefix, suffix = m["prefix"], m["suffix"]
    hh_name = f"{prefix}weight_hh{suffix}"
    hh = shape_of(hh_name)
    if hh is None or len(hh) != 2 or 0 in hh:
        return None
    hr_name = f"{prefix}weight_hr{suffix}"
    hr = shape_of(hr_name)
    # With projections (LSTM proj_size) weight_hh is [4H, P] and weight_hr [P, H].
    if hr is not None and len(hr) == 2 and hr[1] > 0:
        hidden, evidence = hr[1], f"{hh_name} {list(hh)} and {hr_name} {list(hr)}"
    else:
        hidden, evidence = hh[1], f"{hh_name} {list(hh)}"
    if hh[0] % hidden:
        return None
    gates = hh[0] // hidden
    return GateLayout(
        "PyTorch",
        _KIND_BY_GATES.get(gates, f"{gates}-gate cell"),
        gates,
        0,
        hidden,
        _TORCH_ORDER.get(gates),
        evidence,
    )


def _keras_layout(name: str, shape: tuple[int, ...], shape_of: ShapeOf) -> GateLayout | None:
    m = _KERAS_NAME.match(name)
    if not m:
        return None
    rk_name = f"{m['scope']}recurrent_kernel{m['tail'] or ''}"
    rk = shape_of(rk_name)
    if rk is None or len(rk) != 2 or rk[0] == 0 or rk[1] % rk[0]:
        return None
    gates = rk[1] // rk[0]
    return GateLayout(
        "Keras",
        _KIND_BY_GATES.get(gates, f"{gates}-gate cell"),
        gates,
        len(shape) - 1,
        rk[0],
        _KERAS_ORDER.get(gates),
        f"{rk_name} {list(rk)}",
    )


def _tf1_layout(name: str, shape: tuple[int, ...]) -> GateLayout | None:
    last = len(shape) - 1
    if _TF1_LSTM.search(name):
        order = ("i", "g", "f", "o")  # TF1's i,j,f,o
        return GateLayout("TF1", "LSTM", 4, last, None, order, "the TF1 'lstm_cell' scope")
    m = _TF1_GRU.search(name)
    if m is None:
        return None
    scope = f"the TF1 'gru_cell/{m['part']}' scope"
    if m["part"] == "gates":
        return GateLayout("TF1", "GRUCell gates (r,u)", 2, last, None, ("r", "z"), scope)
    return GateLayout("TF1", "GRUCell candidate", 1, last, None, None, scope)


def check_preset_split(
    name: str, shape: tuple[int, ...], spec: SplitSpec, shape_of: ShapeOf
) -> None:
    """Raise :class:`ShapeMismatchError` when the preset of ``spec`` does not fit ``name``.

    When the user gave their own part names (``spec.named``) the preset's gate labels, and so
    the gate order, are not ours to check; the gate count and axis still are.
    """
    axis, parts = spec.axis, spec.parts
    what = f"--split {spec.what()}"
    shown = f"shape {list(shape)}"
    if not shape or not -len(shape) <= axis < len(shape):
        raise ShapeMismatchError(f"{what} cannot split axis {axis} of {shown}", tensor=name)
    axis %= len(shape)
    layout = gate_layout(name, shape, shape_of)
    if layout is None:
        if shape[axis] % len(parts):
            raise ShapeMismatchError(
                f"{what} does not fit {shown}: axis {axis} has {shape[axis]} entries, "
                f"not a multiple of {len(parts)}",
                tensor=name,
                hint=_guess_hint(shape[axis], len(parts)),
            )
        return
    told = f"{layout.framework} {layout.kind} ({layout.evidence})"
    if layout.gates != len(parts):
        raise ShapeMismatchError(
            f"{what} does not fit this {told}: its {shown} holds {layout.gates} gate(s)"
            + (f" of hidden size {layout.hidden}" if layout.hidden else ""),
            tensor=name,
            hint=_fix_hint(layout),
        )
    if axis != layout.axis:
        raise ShapeMismatchError(
            f"{what} on axis {axis} of {shown}, but this {told} stacks its gates on axis "
            f"{layout.axis}",
            tensor=name,
            hint=_fix_hint(layout),
        )
    if layout.span is not None and shape[axis] != layout.span:
        raise ShapeMismatchError(
            f"{what}: axis {axis} of {shown} has {shape[axis]} entries, but this {told} needs "
            f"{layout.gates} x {layout.hidden} = {layout.span}",
            tensor=name,
        )
    if not spec.named and layout.order is not None and tuple(parts) != layout.order:
        raise ShapeMismatchError(
            f"{what} names PyTorch's gate order, but this {told} stores its gates in the order "
            f"{','.join(layout.order)} (in PyTorch's names); the parts would be mislabelled",
            tensor=name,
            hint=_fix_hint(layout),
        )


def _fix_hint(layout: GateLayout) -> str:
    if layout.order is None:
        return f"split it with a count instead: NAME:{layout.axis}:{layout.gates}"
    if layout.framework == "PyTorch" and layout.gates in (3, 4):
        preset = "gru" if layout.gates == 3 else "lstm"
        return f"use the '{preset}' preset: NAME:0:{preset}"
    return f"name the gates yourself: NAME:{layout.axis}:{layout.gates}:{','.join(layout.order)}"


def _guess_hint(size: int, wanted: int) -> str | None:
    others = [(g, kind) for g, kind in ((3, "gru"), (4, "lstm")) if g != wanted and size % g == 0]
    if others:
        g, kind = others[0]
        return f"{size} = {g} x {size // g}: if this is a {kind.upper()} tensor, use ':{kind}'"
    return None
