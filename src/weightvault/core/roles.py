"""What a tensor of a checkpoint is: model weight, optimizer slot, EMA copy, running statistic,
counter.

Names, dtypes and shapes decide, so this needs no tensor data and no numpy: ``ls`` counts
parameters from headers alone.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

__all__ = ["ROLES", "count_by_role", "parameter_summary", "tensor_role"]

# -- what a tensor is: model weight, optimizer slot, EMA copy, running statistic, counter ------------

#: the roles :func:`tensor_role` gives, in the order they are reported
ROLES = ("model", "buffer", "optimizer", "ema", "other")

# Checkpoints keep more than the model: an optimizer's moments (Adam doubles or triples the
# count), EMA shadow copies, normalisation running statistics, RNG states and step counters.
# "N parameters" must count only the model; the rest is reported beside it. Names decide, since
# every framework names these the same way whatever the model is.
_OPTIMIZER_SCOPES = {
    "optimizer", "optimizers", "optimizer_state", "optimizer_states", "optimizer_state_dict",
    "opt_state", "optim", "optim_state", "opt", ".optimizer_slot", "optimizer_weights",
}  # fmt: skip
# TF1 slot variables (layer/kernel/Adam), torch optimizer state (state/0/exp_avg), optax names
_SLOT_NAMES = {
    "adam", "adam_1", "adamw", "adamw_1", "nadam", "nadam_1", "adamax", "adamax_1", "momentum",
    "rmsprop", "rmsprop_1", "adagrad", "adadelta", "adadelta_1", "ftrl", "ftrl_1", "lamb", "lamb_1",
    "exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer", "square_avg", "acc_delta",
}  # fmt: skip
# Short slot names that are also plausible layer names (attention "v"): a slot only right after a
# variable's own name (dense/kernel/m, not attn/v).
_SHORT_SLOT_NAMES = {"m", "v", "mu", "nu", "velocity", "accumulator", "sum"}
_VARIABLE_NAMES = {"kernel", "bias", "weight", "weights", "biases", "embeddings", "gamma", "beta", "scale"}
_EMA_NAMES = {"ema", "ema_model", "model_ema", "ema_state_dict", "ema_params", "shadow_params", "ema_state"}
_BUFFER_NAMES = {"running_mean", "running_var", "moving_mean", "moving_variance"}
# Step and epoch counters, schedules (scalars): state of training, not of the model
_COUNTER_NAMES = {
    "global_step", "step", "steps", "iterations", "_iterations", "iteration", "iter", "epoch",
    "num_batches_tracked", "save_counter", "learning_rate", "_learning_rate", "lr", "beta1_power",
    "beta2_power", "counter", "count",
}  # fmt: skip
# Random-number generator states, of any size (torch_rng is 5056 bytes)
_RNG_NAMES = {"random_state", "seed", "generator", "rng_state"}
_PART_SEPARATORS = re.compile(r"[/.:]")
_TF2_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
_TORCH_OPTIMIZER_STATE = re.compile(r"(^|[/.])state[/.]\d+[/.]")


def _parts(name: str) -> list[str]:
    if name.endswith(_TF2_SUFFIX):  # TF2 object checkpoints: path/.ATTRIBUTES/VARIABLE_VALUE
        name = name[: -len(_TF2_SUFFIX)]
    name = name.replace("/.OPTIMIZER_SLOT/", "/.optimizer_slot/")
    return [p for p in _PART_SEPARATORS.split(name.lower()) if p] or [""]


def tensor_role(name: str, dtype: str = "float32", shape: Iterable[int] = (2,)) -> str:
    """What a tensor of a checkpoint is, from its name (and dtype and shape for counters).

    * ``"ema"``: an exponential-moving-average copy (``.../ExponentialMovingAverage``, ``ema.*``);
    * ``"other"``: RNG state, step/epoch counters, learning rates, and any integer or bool tensor
      of fewer than 2 elements;
    * ``"optimizer"``: anything under an ``optimizer``-like scope (``optimizer/...``,
      ``optimizer_state``, TF2 ``.OPTIMIZER_SLOT``), TF1 slots (``.../Adam``, ``.../Adam_1``,
      ``.../Momentum``) and torch optimizer state (``state/N/exp_avg``);
    * ``"buffer"``: running statistics of normalisation layers (``running_mean``, ``moving_variance``);
    * ``"model"``: everything else.

    TF2 ``optimizer/_trainable_variables/N`` are the model's own variables, tracked by the
    optimizer under a second path: they count as ``"model"``.
    """
    parts = _parts(name)
    last = parts[-1]
    if any(p.endswith("exponentialmovingaverage") or p in _EMA_NAMES for p in parts):
        return "ema"
    numel = 1
    for dim in shape:
        numel *= int(dim)
    small_int = dtype.startswith(("int", "uint", "bool")) and numel < 2
    if (last in _COUNTER_NAMES and numel < 2) or small_int:
        return "other"
    if last in _RNG_NAMES or any("rng" in p or "seed_generator" in p for p in parts):
        return "other"
    if "_trainable_variables" in parts:
        return "model"
    if any(p in _OPTIMIZER_SCOPES for p in parts) or _TORCH_OPTIMIZER_STATE.search(name.lower()):
        return "optimizer"
    if len(parts) > 1 and last in _SLOT_NAMES:
        return "optimizer"
    if len(parts) > 2 and last in _SHORT_SLOT_NAMES and parts[-2] in _VARIABLE_NAMES:
        return "optimizer"
    if last in _BUFFER_NAMES:
        return "buffer"
    return "model"


def count_by_role(infos: Iterable[Any]) -> dict[str, int]:
    """Elements per role (see :func:`tensor_role`) of ``TensorInfo``-like objects."""
    counts = dict.fromkeys(ROLES, 0)
    for info in infos:
        if info.dtype == "string":  # string tensors hold text, not parameters
            continue
        counts[tensor_role(info.name, info.dtype, info.shape)] += int(info.numel)
    return counts


def parameter_summary(counts: dict[str, int]) -> str:
    """``1,234 model parameters (+32 buffers, 2,468 optimizer, 3 other)``: the model first."""
    labels = {"buffer": "buffers", "optimizer": "optimizer", "ema": "EMA", "other": "other"}
    rest = [f"{counts[role]:,} {label}" for role, label in labels.items() if counts.get(role)]
    return f"{counts['model']:,} model parameters" + (f" (+{', '.join(rest)})" if rest else "")
