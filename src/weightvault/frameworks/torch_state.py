"""PyTorch training state: capture it as plain nested data, save it natively, put it back exactly.

``capture(...)`` returns a dict of state dicts (model, optimizer, LR scheduler, AMP GradScaler,
EMA), every RNG a run draws from (python ``random``, numpy's global RNG, torch CPU and, when
available, every CUDA device), and the run counters (epoch, step, metrics). Everything in it is
something :func:`weightvault.save` stores natively: tensors, dicts (optimizer state keeps its
int keys), lists, tuples and scalars. RNG states are turned into arrays and dicts, never pickled
objects, so a checkpoint never needs code to be loaded.

``apply(state, ...)`` is the inverse. It accepts the state as loaded with either
``framework="torch"`` or ``framework="numpy"`` (arrays are converted with their exact dtypes, so a
resumed run continues bit for bit).

What ``capture`` cannot know is where a data loader was inside an epoch. A shuffling
``DataLoader`` without a ``generator`` draws its permutation from the global torch RNG when each
epoch's iterator is created, so restoring the RNG mid-epoch cannot recreate that permutation.
The recipe that makes a resume bit-identical (used by ``examples/digits/train.py`` and the tests):
give the loader its own generator seeded per epoch (:func:`epoch_generator`) and, on resume, skip
the batches of the current epoch that were already consumed (``step % batches_per_epoch``).
"""

from __future__ import annotations

import os
import random
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from weightvault.errors import WeightVaultUserWarning
from weightvault.frameworks.torch import torch

__all__ = [
    "STATE_FORMAT",
    "apply",
    "capture",
    "capture_rng",
    "epoch_generator",
    "load_training_state",
    "restore_rng",
    "save_training_state",
    "to_torch",
]

STATE_FORMAT = "weightvault.torch/1"


# -- RNG -------------------------------------------------------------------------------------------


def capture_rng(cuda: bool | None = None) -> dict[str, Any]:
    """The state of every global RNG as storable data (arrays, ints, floats, None).

    Args:
        cuda: include the CUDA generators (default: when CUDA is available and initialised).
    """
    version, internal, gauss_next = random.getstate()
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": {
            "version": int(version),
            # 625 uint32 words (624 MT words + position); int64 keeps them exactly.
            "state": np.asarray(internal, dtype=np.int64),
            "gauss_next": gauss_next,
        },
        "numpy": _numpy_state_to_data(np_state),
        "torch": torch.get_rng_state(),
    }
    if cuda is None:
        cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    if cuda and torch.cuda.is_available():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def _numpy_state_to_data(np_state: Mapping[str, Any]) -> dict[str, Any]:
    # np.random.get_state(legacy=False) is a dict: {"bit_generator", "state": {"key", "pos"},
    # "has_gauss", "gauss"}; the key array is the only non-scalar.
    inner = np_state["state"]
    return {
        "bit_generator": str(np_state["bit_generator"]),
        "key": np.asarray(inner["key"], dtype=np.uint32).copy(),
        "pos": int(inner["pos"]),
        "has_gauss": int(np_state["has_gauss"]),
        "gauss": float(np_state["gauss"]),
    }


def restore_rng(rng: Mapping[str, Any]) -> None:
    """Set every global RNG from :func:`capture_rng`'s data (missing parts are left alone)."""
    if "python" in rng:
        py = rng["python"]
        words = tuple(int(x) for x in _as_numpy(py["state"]).tolist())
        gauss = py.get("gauss_next")
        random.setstate((int(py["version"]), words, None if gauss is None else float(gauss)))
    if "numpy" in rng:
        npd = rng["numpy"]
        np.random.set_state(
            (
                str(npd["bit_generator"]),
                _as_numpy(npd["key"]).astype(np.uint32),
                int(npd["pos"]),
                int(npd["has_gauss"]),
                float(npd["gauss"]),
            )
        )
    if "torch" in rng:
        torch.set_rng_state(_as_torch(rng["torch"]).to(torch.uint8).cpu())
    if rng.get("cuda"):
        states = [_as_torch(s).to(torch.uint8).cpu() for s in rng["cuda"]]
        if not torch.cuda.is_available():
            warnings.warn(
                "the checkpoint carries CUDA RNG states but CUDA is not available; they are not restored",
                WeightVaultUserWarning,
                stacklevel=3,
            )
        elif len(states) != torch.cuda.device_count():
            warnings.warn(
                f"the checkpoint carries {len(states)} CUDA RNG state(s) but {torch.cuda.device_count()} "
                "device(s) are visible; restoring the common ones",
                WeightVaultUserWarning,
                stacklevel=3,
            )
            for i, s in enumerate(states[: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(s, i)
        else:
            torch.cuda.set_rng_state_all(states)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator for one epoch's data order that depends only on ``(seed, epoch)``.

    Pass it as ``DataLoader(..., shuffle=True, generator=epoch_generator(seed, epoch))``: the
    permutation (and the workers' base seed) then no longer come from the global RNG, so a run
    resumed mid-epoch rebuilds the same order and skips the batches it already consumed.
    """
    g = torch.Generator()
    # Mix so that (seed, epoch) pairs do not collide for small values (seed 1 epoch 0 vs 0/1).
    g.manual_seed((int(seed) * 1_000_003 + int(epoch)) % (2**63))
    return g


# -- conversions -----------------------------------------------------------------------------------


def _as_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        from weightvault.frameworks.torch import tensor_to_numpy

        return tensor_to_numpy(x)
    return np.asarray(x)


def _as_torch(x: Any, device: Any = None) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x if device is None else x.to(device)
    from weightvault.frameworks.torch import from_numpy

    return from_numpy(np.asarray(x), device)


def to_torch(tree: Any, device: Any = None) -> Any:
    """``tree`` with every numpy array / numpy scalar-array turned into a torch tensor (exact dtype).

    Python scalars stay as they are; numpy scalars (``np.float32(1)``) become 0-d tensors only
    when they were stored as arrays, since optimizers keep e.g. ``step`` as a tensor.
    """
    if isinstance(tree, (np.ndarray, torch.Tensor)):
        return _as_torch(tree, device)
    if isinstance(tree, np.generic):
        return tree.item()
    if isinstance(tree, dict):
        return {k: to_torch(v, device) for k, v in tree.items()}
    if isinstance(tree, list):
        return [to_torch(v, device) for v in tree]
    if isinstance(tree, tuple):
        return tuple(to_torch(v, device) for v in tree)
    return tree


# -- capture / apply -------------------------------------------------------------------------------


def capture(
    *,
    model: torch.nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    scaler: Any = None,
    ema: Any = None,
    epoch: int | None = None,
    step: int | None = None,
    metrics: Mapping[str, Any] | None = None,
    extra: Any = None,
    rng: bool = True,
    generators: Mapping[str, torch.Generator] | None = None,
) -> dict[str, Any]:
    """Everything needed to resume training, as nested data :func:`weightvault.save` stores.

    Args:
        model: its ``state_dict()`` goes under ``"model"``.
        optimizer, scheduler, scaler: their ``state_dict()`` under ``"optimizer"``,
            ``"scheduler"``, ``"scaler"`` (AMP ``torch.amp.GradScaler``).
        ema: a :class:`weightvault.EMA`; its shadow weights go under ``"ema"`` (their own
            namespace, so ``restore(..., use_ema=True)`` finds them).
        epoch, step, metrics: run counters; metrics values are converted to Python numbers.
        extra: any further storable data (dicts, lists, tensors, scalars) under ``"extra"``.
        rng: capture the global RNGs (python, numpy, torch CPU, CUDA when initialised).
        generators: named ``torch.Generator`` objects whose states to keep too.

    Raises:
        ValueError: ``ema`` currently has its averages swapped into the model (capturing then
            would save the EMA weights as the raw ones, nequip#590).
    """
    state: dict[str, Any] = {"format": STATE_FORMAT}
    if ema is not None and getattr(ema, "is_applied", False):
        raise ValueError(
            "the EMA weights are swapped into the model (inside ema.applied()); capture the "
            "training state outside that block, or the raw weights would be lost"
        )
    if model is not None:
        state["model"] = model.state_dict()
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    if scheduler is not None:
        state["scheduler"] = scheduler.state_dict()
    if scaler is not None:
        state["scaler"] = scaler.state_dict()
    if ema is not None:
        state["ema"] = ema.state_dict()
    if epoch is not None:
        state["epoch"] = int(epoch)
    if step is not None:
        state["step"] = int(step)
    if metrics is not None:
        state["metrics"] = {str(k): _plain_number(v) for k, v in metrics.items()}
    if extra is not None:
        state["extra"] = extra
    if rng:
        state["rng"] = capture_rng()
    if generators:
        state["generators"] = {name: g.get_state() for name, g in generators.items()}
    return state


def _plain_number(v: Any) -> Any:
    if isinstance(v, (torch.Tensor, np.ndarray, np.generic)):
        return v.item()
    return v


def apply(
    state: Mapping[str, Any],
    *,
    model: torch.nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    scaler: Any = None,
    ema: Any = None,
    rng: bool = True,
    generators: Mapping[str, torch.Generator] | None = None,
    strict: bool = True,
) -> dict[str, Any]:
    """Put a captured state back into the given objects; returns the counters.

    ``state`` may come from ``weightvault.load(path, framework="torch")`` or
    ``framework="numpy"``. Objects passed as None are left alone; an object passed whose part is
    absent from the state raises ``KeyError`` (a silent partial resume is how runs go wrong).

    Returns:
        ``{"epoch": ..., "step": ..., "metrics": ..., "extra": ...}`` (None where not saved).
    """
    parts = {
        "model": model,
        "optimizer": optimizer,
        "scheduler": scheduler,
        "scaler": scaler,
        "ema": ema,
    }
    for name, obj in parts.items():
        if obj is not None and name not in state:
            raise KeyError(
                f"the training state has no {name!r} entry (it has: {', '.join(map(str, state))})"
            )
    if model is not None:
        model.load_state_dict(_for_module(to_torch(state["model"]), model), strict=strict)
    if optimizer is not None:
        # Optimizer.load_state_dict moves the state to each parameter's device and dtype itself.
        optimizer.load_state_dict(to_torch(state["optimizer"]))
    if scheduler is not None:
        scheduler.load_state_dict(_plain(state["scheduler"]))
    if scaler is not None:
        scaler.load_state_dict(_plain(state["scaler"]))
    if ema is not None:
        ema.load_state_dict(state["ema"])
    if rng and "rng" in state:
        restore_rng(state["rng"])
    if generators:
        saved = state.get("generators") or {}
        for name, g in generators.items():
            if name not in saved:
                raise KeyError(f"the training state has no generator {name!r}")
            g.set_state(_as_torch(saved[name]).to(torch.uint8).cpu())
    return {key: state.get(key) for key in ("epoch", "step", "metrics", "extra")}


def _for_module(saved: Mapping[str, Any], module: torch.nn.Module) -> dict[str, Any]:
    """``saved`` under the module's own names where they differ only by wrapper prefixes.

    A state captured from a ``torch.compile``d model (``_orig_mod.x``) or a DDP one
    (``module.x``) loads into the bare model and the other way round, exactly as
    :func:`weightvault.restore` matches them (the same :func:`~weightvault.core.names.match_names`).
    Names without a counterpart are passed on unchanged, so ``strict`` still reports them.
    """
    from weightvault.core.names import match_names

    names = match_names(saved, module.state_dict())
    return {names.get(k, k): v for k, v in saved.items()}


def _plain(tree: Any) -> Any:
    """Scheduler/scaler state: numbers as Python numbers (tensors where they were tensors)."""
    if isinstance(tree, np.ndarray):
        return _as_torch(tree)
    if isinstance(tree, np.generic):
        return tree.item()
    if isinstance(tree, dict):
        return {k: _plain(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_plain(v) for v in tree]
    if isinstance(tree, tuple):
        return tuple(_plain(v) for v in tree)
    return tree


# -- convenience -------------------------------------------------------------------------------------


def save_training_state(
    path: str | os.PathLike[str],
    *,
    metadata: Mapping[str, Any] | None = None,
    **objects: Any,
) -> os.PathLike[str]:
    """``weightvault.save(capture(**objects), path, metadata)``; returns the path written."""
    from weightvault.api import save

    return save(capture(**objects), path, metadata=metadata)


def load_training_state(
    path: str | os.PathLike[str],
    *,
    device: Any = None,
    **objects: Any,
) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_training_state` and :func:`apply` it.

    ``device`` is where the loaded tensors are put before they are copied into the objects
    (the objects keep their own devices). Returns the counters (epoch, step, metrics, extra).
    """
    from weightvault.api import load

    state = load(path, framework="torch", device=device)
    return apply(state, **objects)
