"""Exponential moving average (EMA) of a model's weights, kept beside the raw weights.

``EMA(model)`` holds a shadow copy of every floating-point entry of ``model.state_dict()``;
``update()`` after each optimizer step moves the shadows toward the current weights. The shadows
are saved in their own namespace of the training state (``state["ema"]`` via
``weightvault.torch.capture(ema=...)``), never instead of the raw weights, so a resumed run gets
both back (restarting without the EMA state undertrains, Enerzyme#36). For evaluation,
``with ema.applied(): ...`` swaps the averages in and always swaps the raw weights back
(waifu-diffusion#31), and :func:`weightvault.torch.capture` refuses to run inside that block.

``weightvault.restore(model, path, use_ema=True)`` loads the shadows as the model's weights from
our checkpoints, from timm checkpoints (``state_dict_ema`` / ``model_ema``) and from TensorFlow
checkpoints (``<var>/ExponentialMovingAverage``); :func:`ema_source_names` is that mapping.

Non-floating entries (BatchNorm's ``num_batches_tracked``, integer buffers) are copied, not
averaged, as timm and TF do.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from weightvault.core.ema_names import ema_names
from weightvault.core.names import match_names, strip_wrappers

__all__ = ["EMA", "EMA_NAMESPACE", "ema_source_names"]

# Where our shadows live inside a training state: state["ema"]["shadow"][name].
EMA_NAMESPACE = "ema"
_SHADOW = "shadow"


class EMA:
    """Shadow weights ``s = d * s + (1 - d) * w`` updated after each optimizer step.

    Args:
        model: the ``torch.nn.Module`` to average.
        decay: the decay ``d`` once warmed up (0.999 averages over ~1000 updates).
        warmup: number of updates over which the averaging horizon grows linearly from 1 step
            to ``1 / (1 - decay)`` steps, so early shadows are not dominated by the random
            initialisation; 0 uses ``decay`` from the first update.
        device: keep the shadows on this device (e.g. ``"cpu"`` to save GPU memory).

    Example:
        >>> import torch, weightvault
        >>> net = torch.nn.Linear(2, 1)
        >>> ema = weightvault.EMA(net, decay=0.9)
        >>> with torch.no_grad():
        ...     _ = net.weight.add_(1.0)
        >>> ema.update()
        >>> bool(torch.allclose(ema.shadow["weight"], net.weight - 0.9))
        True
    """

    def __init__(
        self, model: Any, decay: float = 0.999, warmup: int = 0, *, device: Any = None
    ) -> None:
        from weightvault.frameworks.torch import torch

        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"decay must be in [0, 1], not {decay}")
        if warmup < 0:
            raise ValueError(f"warmup must be >= 0 updates, not {warmup}")
        self.model = model
        self.decay = float(decay)
        self.warmup = int(warmup)
        self.device = device
        self.num_updates = 0
        self.is_applied = False
        with torch.no_grad():
            self.shadow: dict[str, Any] = {
                name: value.detach().clone().to(device)
                if device is not None
                else value.detach().clone()
                for name, value in model.state_dict().items()
            }

    def current_decay(self) -> float:
        """The decay the next :meth:`update` uses."""
        if self.warmup <= 0:
            return self.decay
        # Ramp the averaging horizon linearly from 1 update (a plain copy) to 1 / (1 - decay)
        # updates over `warmup` updates.
        n = self.num_updates  # updates done before this one
        horizon = 1.0 / (1.0 - self.decay) if self.decay < 1.0 else float("inf")
        if n >= self.warmup:
            return self.decay
        effective = 1.0 + (horizon - 1.0) * n / self.warmup
        return min(self.decay, 1.0 - 1.0 / effective)

    def update(self, model: Any = None) -> None:
        """Move every shadow toward the model's current weights (call after ``optimizer.step()``)."""
        from weightvault.frameworks.torch import torch

        if self.is_applied:
            raise RuntimeError(
                "update() inside ema.applied(): the model holds the averages, not the trained weights"
            )
        source = self.model if model is None else model
        d = self.current_decay()
        with torch.no_grad():
            for name, value in source.state_dict().items():
                shadow = self.shadow.get(name)
                if shadow is None:
                    self.shadow[name] = value.detach().clone().to(self.device or value.device)
                    continue
                value = value.detach().to(shadow.device)
                if shadow.is_floating_point() or shadow.is_complex():
                    shadow.lerp_(value.to(shadow.dtype), 1.0 - d)
                else:
                    shadow.copy_(value)
        self.num_updates += 1

    # -- persistence ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """``{"decay", "warmup", "num_updates", "shadow": {name: tensor}}`` (storable natively)."""
        return {
            "decay": self.decay,
            "warmup": self.warmup,
            "num_updates": self.num_updates,
            _SHADOW: dict(self.shadow),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from :meth:`state_dict` output (torch or numpy arrays, as loaded)."""
        from weightvault.frameworks.torch import torch
        from weightvault.frameworks.torch_state import to_torch

        saved = state[_SHADOW]
        # Shadows of a compiled / DDP-wrapped model ("_orig_mod.x") load into a bare one's EMA.
        names = match_names(saved, self.shadow)
        shadow = {names.get(k, k): v for k, v in saved.items()}
        missing = sorted(set(self.shadow) - set(shadow))
        if missing:
            raise KeyError(
                f"EMA state lacks shadows for {missing[:5]}{'...' if len(missing) > 5 else ''}"
            )
        with torch.no_grad():
            for name, value in to_torch(dict(shadow)).items():
                current = self.shadow.get(name)
                if current is None:
                    self.shadow[name] = value.clone()
                elif tuple(current.shape) != tuple(value.shape):
                    from weightvault.errors import ShapeMismatchError

                    raise ShapeMismatchError(
                        f"EMA shadow has shape {tuple(value.shape)}, model has {tuple(current.shape)}",
                        tensor=name,
                    )
                else:
                    current.copy_(value)
        self.decay = float(state.get("decay", self.decay))
        self.warmup = int(state.get("warmup", self.warmup))
        self.num_updates = int(state.get("num_updates", 0))

    # -- using the averages -----------------------------------------------------------------------
    def copy_to(self, model: Any = None) -> None:
        """Overwrite the model's weights with the averages (for export; see :meth:`applied`)."""
        from weightvault.frameworks.torch import torch

        target = self.model if model is None else model
        with torch.no_grad():
            for name, value in target.state_dict().items():
                if name in self.shadow:
                    value.copy_(self.shadow[name])

    @contextlib.contextmanager
    def applied(self, model: Any = None) -> Iterator[Any]:
        """Evaluate with the averages: swap them in, and always swap the raw weights back."""
        from weightvault.frameworks.torch import torch

        target = self.model if model is None else model
        if self.is_applied:
            raise RuntimeError("ema.applied() is already active")
        with torch.no_grad():
            backup = {name: value.detach().clone() for name, value in target.state_dict().items()}
        self.copy_to(target)
        self.is_applied = True
        try:
            yield target
        finally:
            with torch.no_grad():
                for name, value in target.state_dict().items():
                    value.copy_(backup[name])
            self.is_applied = False

    def __repr__(self) -> str:
        return f"EMA(decay={self.decay}, warmup={self.warmup}, num_updates={self.num_updates}, tensors={len(self.shadow)})"


# -- finding EMA weights in a checkpoint --------------------------------------------------------------


def ema_source_names(keys: Iterable[str]) -> tuple[dict[str, str], str | None]:
    """``({model_name: shadow_key}, convention)`` for the EMA weights among a file's keys.

    Conventions, first match wins:

    * ``weightvault``: our training state, ``ema/shadow/<name>``;
    * ``timm``: a ``state_dict_ema`` or ``model_ema`` group (``/`` or ``.`` separated, with or
      without timm's ``module.`` inside), and ``model_ema.module.<name>`` inside a model;
    * ``tensorflow``: ``<var>/ExponentialMovingAverage``.

    Returns ``({}, None)`` when the file has no EMA weights.
    """
    names = list(keys)
    ours = f"{EMA_NAMESPACE}/{_SHADOW}/"
    mapping = {k[len(ours) :]: k for k in names if k.startswith(ours)}
    if mapping:
        return mapping, "weightvault"
    mapping = ema_names(names)
    for key in names:  # a natively saved {"model_ema": {...}} group ("/"-separated)
        if key.startswith("model_ema/"):
            mapping.setdefault(key[len("model_ema/") :], key)
    if not mapping:
        return {}, None
    convention = (
        "tensorflow" if any("ExponentialMovingAverage" in v for v in mapping.values()) else "timm"
    )
    # timm's ModelEmaV2 wraps the model: "model_ema.module.x" / "state_dict_ema/module.x".
    return {strip_wrappers(raw): shadow for raw, shadow in mapping.items()}, convention

