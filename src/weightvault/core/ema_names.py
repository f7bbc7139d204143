"""Find exponential-moving-average (EMA) shadow copies of weights among checkpoint keys.

Conventions recognised (shadow -> raw):

* TensorFlow ``tf.train.ExponentialMovingAverage``: ``layer/weights/ExponentialMovingAverage``
  (also the TF2 object-graph spelling ``.../ExponentialMovingAverage/.ATTRIBUTES/VARIABLE_VALUE``);
* timm ``ModelEmaV2/V3`` inside a model: ``model_ema.module.x`` (and ``model_ema.x``);
* timm training checkpoints: ``state_dict_ema/x`` or ``state_dict_ema.x`` (the ``state_dict_ema``
  entry flattened with ``/`` or ``.``).

:func:`ema_names` returns ``{raw_name: shadow_name}`` for every shadow whose raw weight is also
present, so ``restore(..., use_ema=True)`` can load ``tensors[shadow]`` under ``raw``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["ema_names", "raw_name_of"]

_TF_SUFFIX = "/ExponentialMovingAverage"
_TF2_ATTR = "/.ATTRIBUTES/VARIABLE_VALUE"
_PREFIXES = re.compile(r"^(?:model_ema\.module\.|model_ema\.|state_dict_ema[./]|ema\.module\.)")


def raw_name_of(shadow: str) -> str | None:
    """The weight a shadow name stands for, or None if ``shadow`` is not an EMA name."""
    name = shadow
    attr = ""
    if name.endswith(_TF2_ATTR):
        name, attr = name[: -len(_TF2_ATTR)], _TF2_ATTR
    if name.endswith(_TF_SUFFIX):
        return name[: -len(_TF_SUFFIX)] + attr
    m = _PREFIXES.match(shadow)
    if m:
        return shadow[m.end():]
    return None


def ema_names(keys: Iterable[str]) -> dict[str, str]:
    """``{raw_name: shadow_name}`` for each EMA shadow in ``keys`` whose raw weight is also there.

    When the raw weight is absent (an EMA-only export), the shadow is still mapped, to its raw
    name, so loading with ``use_ema`` yields the expected names.
    """
    names = list(keys)
    out: dict[str, str] = {}
    for shadow in names:
        raw = raw_name_of(shadow)
        if raw is not None and raw not in out:
            out[raw] = shadow
    return out
