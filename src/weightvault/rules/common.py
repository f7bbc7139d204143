"""Name clean-up shared by rule sets (see research B7: decorations to strip before matching)."""

from __future__ import annotations

import re

__all__ = ["OPTIMIZER_MARKERS", "clean_tf_name", "is_optimizer_or_bookkeeping", "to_dotted"]

#: TF optimizer slots and bookkeeping variables: never weights of the model.
OPTIMIZER_MARKERS = re.compile(
    r"(^|/)(Adam|Adam_1|adam_m|adam_v|Momentum|RMSProp|RMSProp_1|Adagrad|Ftrl|Ftrl_1|"
    r"AdamWeightDecayOptimizer(_1)?|beta1_power|beta2_power|global_step|\.OPTIMIZER_SLOT|"
    r"optimizer|save_counter|_CHECKPOINTABLE_OBJECT_GRAPH|keras_api)(/|$)"
)


def clean_tf_name(name: str) -> str:
    """Strip ``:0`` and the TF2 object-graph suffix."""
    name = re.sub(r":\d+$", "", name)
    return name.removesuffix("/.ATTRIBUTES/VARIABLE_VALUE")


def is_optimizer_or_bookkeeping(name: str) -> bool:
    return bool(OPTIMIZER_MARKERS.search(name))


def to_dotted(path: str) -> str:
    """Keras/TF layer path to a PyTorch module path."""
    return path.replace("/", ".")
