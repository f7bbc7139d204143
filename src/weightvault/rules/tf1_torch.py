"""tf1-to-torch: TF1 graph-mode checkpoints (``layer/weights``, slim, ``tf.layers``, RNN cells).

* ``weights``/``kernel`` 2-D: Dense ``[in, out]`` -> ``.weight`` transposed; 3/4/5-D: convolution
  (slim/tf.layers name depthwise kernels ``depthwise_weights``/``depthwise_kernel``, so a plain
  ``weights`` is a convolution; conv and transposed conv share the permutation);
* ``biases``/``bias`` -> ``.bias``; BatchNorm ``gamma/beta/moving_mean/moving_variance`` (slim's
  default ``scale=False`` stores no gamma: filled with ones);
* ``LSTMCell``/``BasicLSTMCell`` fused ``kernel (in+H, 4H)`` = ``[W_x; W_h]`` with gates
  ``i,j,f,o`` and a run-time ``forget_bias`` (1.0 unless hinted ``SCOPE=forget_bias:X``);
  ``MultiRNNCell`` ``cell_N`` become PyTorch layers ``_lN``, ``fw``/``bw`` the ``_reverse`` ones;
* ``GRUCell`` applies the reset gate before the matmul: refused (not exactly convertible);
* EMA: with ``use_ema`` the ``X/ExponentialMovingAverage`` shadow replaces ``X``; otherwise shadows
  are dropped and listed. Optimizer slots and ``global_step`` are dropped.
"""

from __future__ import annotations

import re
from typing import Any

from weightvault.abc.format import FormatReader
from weightvault.errors import UnsupportedOperationError
from weightvault.rules import Hints
from weightvault.rules.common import clean_tf_name, is_optimizer_or_bookkeeping, to_dotted
from weightvault.transforms import AddConstant, Full, ReorderGates, Split, Transpose
from weightvault.transforms.plan import Plan, Step

__all__ = ["tf1_to_torch"]

EMA_SUFFIX = "/ExponentialMovingAverage"
_CONV_PERM = {3: (2, 1, 0), 4: (3, 2, 0, 1), 5: (4, 3, 0, 1, 2)}
_RENAME = {
    "weights": "weight",
    "kernel": "weight",
    "biases": "bias",
    "bias": "bias",
    "gamma": "weight",
    "beta": "bias",
    "moving_mean": "running_mean",
    "moving_variance": "running_var",
    "embeddings": "weight",
}


def _sources(reader: FormatReader, plan: Plan, use_ema: bool) -> dict[str, str]:
    """Clean variable name -> stored tensor to read (the EMA shadow when asked)."""
    names = {clean_tf_name(n): n for n in reader.keys()}
    chosen: dict[str, str] = {}
    for clean, stored in names.items():
        if clean.endswith(EMA_SUFFIX):
            if not use_ema:
                plan.dropped[stored] = "EMA shadow variable (pass use_ema to use it)"
            continue
        if is_optimizer_or_bookkeeping(clean):
            plan.dropped[stored] = "optimizer slot or bookkeeping"
            continue
        shadow = names.get(clean + EMA_SUFFIX)
        if use_ema and shadow is not None:
            chosen[clean] = shadow
        else:
            chosen[clean] = stored
    if use_ema:
        used = sum(1 for c, s in chosen.items() if clean_tf_name(s).endswith(EMA_SUFFIX))
        plan.notes.append(f"EMA: {used} of {len(chosen)} variables taken from their shadow")
    return chosen


def _rnn_target(scope: str) -> tuple[str, str]:
    """``rnn/multi_rnn_cell/cell_1/lstm_cell`` -> (``rnn``, ``_l1``); fw/bw -> ``_reverse``."""
    layer = 0
    reverse = False
    parts = []
    for part in scope.split("/"):
        if m := re.fullmatch(r"cell_(\d+)", part):
            layer = int(m.group(1))
        elif part in ("bw", "backward"):
            reverse = True
        elif part in ("fw", "forward", "multi_rnn_cell") or part.endswith("lstm_cell") or part.endswith("gru_cell"):
            continue
        else:
            parts.append(part)
    return to_dotted("/".join(parts)), f"_l{layer}" + ("_reverse" if reverse else "")


def tf1_to_torch(reader: FormatReader, hints: Hints, options: dict[str, Any]) -> Plan:
    plan = Plan("tf1-to-torch")
    sources = _sources(reader, plan, bool(options.get("use_ema")))
    scopes: dict[str, dict[str, str]] = {}
    for clean, stored in sources.items():
        scope, _, var = clean.rpartition("/")
        scopes.setdefault(scope, {})[var] = stored
    for scope, variables in scopes.items():
        if re.search(r"(^|/)(gates|candidate)$", scope) or scope.endswith("gru_cell/gates"):
            raise UnsupportedOperationError(
                f"{scope!r} is a TF1 GRUCell: it applies the reset gate before the recurrent matmul, "
                "which PyTorch's GRU cannot reproduce exactly",
                path=reader.path,
                tensor=next(iter(variables.values())),
            )
        if re.search(r"(basic_)?lstm_cell$", scope):
            _lstm_cell(plan, reader, scope, variables, hints)
        else:
            _plain_scope(plan, reader, scope, variables)
    return plan


def _plain_scope(plan: Plan, reader: FormatReader, scope: str, variables: dict[str, str]) -> None:
    module = to_dotted(scope)
    prefix = f"{module}." if module else ""
    for var, stored in variables.items():
        shape = reader.info(stored).shape
        if var in ("weights", "kernel") and len(shape) == 2:
            plan.steps.append(Step(f"{prefix}weight", (stored,), (Transpose((1, 0)),), note="[in, out] -> [out, in]"))
        elif var in ("weights", "kernel") and len(shape) in _CONV_PERM:
            plan.steps.append(Step(f"{prefix}weight", (stored,), (Transpose(_CONV_PERM[len(shape)]),), note="conv"))
        elif var in _RENAME:
            plan.steps.append(Step(f"{prefix}{_RENAME[var]}", (stored,)))
        else:
            plan.steps.append(Step(f"{prefix}{var}", (stored,), note="kept as is"))
    if "moving_mean" in variables and "gamma" not in variables:
        shape = reader.info(variables["moving_mean"]).shape
        plan.steps.append(Step(f"{prefix}weight", (), (), Full(shape, 1.0), note="slim batch_norm scale=False"))
    if "moving_mean" in variables:
        plan.steps.append(Step(f"{prefix}num_batches_tracked", (), (), Full((), 0, "int64")))


def _lstm_cell(plan: Plan, reader: FormatReader, scope: str, variables: dict[str, str], hints: Hints) -> None:
    module, sfx = _rnn_target(scope)
    kernel = variables["kernel"]
    rows, cols = reader.info(kernel).shape
    hidden = cols // 4
    inputs = rows - hidden
    hint = hints.get(scope) or ""
    forget_bias = float(hint.split(":", 1)[1]) if hint.startswith("forget_bias:") else 1.0
    gates = ReorderGates("ijfo", "ifjo", 0)
    plan.steps.append(Step(f"{module}.weight_ih{sfx}", (kernel,), (Split(0, (inputs, hidden), 0), Transpose((1, 0)), gates)))
    plan.steps.append(Step(f"{module}.weight_hh{sfx}", (kernel,), (Split(0, (inputs, hidden), 1), Transpose((1, 0)), gates)))
    if "bias" in variables:
        # PyTorch order i,f,g,o: the forget block is rows [H, 2H).
        plan.steps.append(
            Step(f"{module}.bias_ih{sfx}", (variables["bias"],), (gates, AddConstant(forget_bias, hidden, 2 * hidden)), note=f"forget_bias {forget_bias} folded in")
        )
        plan.steps.append(Step(f"{module}.bias_hh{sfx}", (), (), Full((4 * hidden,), 0.0, reader.info(variables["bias"]).dtype)))
    plan.notes.append(f"{scope}: TF1 LSTMCell gates i,j,f,o -> i,f,g,o; forget_bias={forget_bias} added to the forget bias")
