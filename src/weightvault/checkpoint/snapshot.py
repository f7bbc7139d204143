"""Host snapshots of training state for asynchronous saves.

An async save must copy the state before the caller goes on training, or the background writer
would persist tensors that the next optimizer step is already changing (pytorch#144657). The
snapshot is the only part the training thread waits for, so it is kept to plain memory copies:

* numpy arrays and CPU torch tensors are copied into host buffers;
* CUDA tensors are copied into *pinned* host buffers with ``non_blocking=True``, all copies are
  queued first and each device's stream is synchronised once at the end, so the device-to-host
  transfers overlap and run at full PCIe speed;
* other tensors (jax, TensorFlow, other torch devices) go through their adapter's ``to_numpy``.

Buffers are cached by tensor name, dtype and shape and reused by the next snapshot (the manager
allows one save in flight, so the previous write is finished before they are overwritten). Fresh
page-locked or even pageable allocations cost more than the copy itself on large states; reuse
makes every snapshot after the first a pure memcpy. Tied tensors are copied once and stay tied.

torch is imported only when a torch tensor is actually seen.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from weightvault.core.tensors import describe, to_numpy
from weightvault.core.tree import flatten, unflatten

__all__ = ["SnapshotCache", "take_snapshot"]


class SnapshotCache:
    """Host buffers kept between snapshots, keyed by (kind, name, dtype, shape)."""

    def __init__(self) -> None:
        self._buffers: dict[tuple[Any, ...], Any] = {}
        self._used: set[tuple[Any, ...]] = set()

    def get(self, key: tuple[Any, ...], make: Any) -> Any:
        self._used.add(key)
        buf = self._buffers.get(key)
        if buf is None:
            buf = make()
            self._buffers[key] = buf
        return buf

    def prune(self) -> None:
        """Drop buffers the last snapshot did not use (the state's shapes changed)."""
        for key in set(self._buffers) - self._used:
            del self._buffers[key]
        self._used.clear()

    def clear(self) -> None:
        self._buffers.clear()
        self._used.clear()

    @property
    def nbytes(self) -> int:
        return sum(_nbytes(b) for b in self._buffers.values())


def _nbytes(buf: Any) -> int:
    if isinstance(buf, np.ndarray):
        return int(buf.nbytes)
    return int(buf.numel() * buf.element_size())


def take_snapshot(state: Any, cache: SnapshotCache | None = None) -> Any:
    """A deep copy of ``state`` whose tensors live in host memory owned by the snapshot."""
    spec, found = flatten(state)
    copies: dict[str, Any] = {}
    first_by_identity: dict[tuple[Any, ...], str] = {}
    cuda_devices: set[Any] = set()
    for name, obj in found.items():
        identity = describe(obj, name=name).identity
        if identity is not None and identity in first_by_identity:
            copies[name] = copies[first_by_identity[identity]]
            continue
        if identity is not None:
            first_by_identity[identity] = name
        copies[name] = _copy(name, obj, cache, cuda_devices)
    if cuda_devices:
        _sync_cuda(cuda_devices)
    if cache is not None:
        cache.prune()
    return unflatten(spec, copies.__getitem__)


def _copy(name: str, obj: Any, cache: SnapshotCache | None, cuda_devices: set[Any]) -> Any:
    if isinstance(obj, np.ndarray):
        if cache is None:
            return np.array(obj, copy=True)
        buf = cache.get(("np", name, obj.dtype.str, obj.shape), lambda: np.empty(obj.shape, obj.dtype))
        np.copyto(buf, obj)
        return buf
    if type(obj).__module__.partition(".")[0] == "torch":
        return _copy_torch(name, obj, cache, cuda_devices)
    # jax / TensorFlow: the adapter hands over host bytes; copy them so the snapshot owns them.
    return np.array(to_numpy(obj), copy=True)


def _copy_torch(name: str, t: Any, cache: SnapshotCache | None, cuda_devices: set[Any]) -> Any:
    import torch

    t = t.detach()
    if t.layout != torch.strided:
        t = t.to_dense()
    if t.is_conj():
        t = t.resolve_conj()
    if t.is_neg():
        t = t.resolve_neg()
    device = t.device
    if device.type not in ("cpu", "cuda"):
        return t.to("cpu", copy=True)
    pinned = device.type == "cuda"
    key = ("torch-pinned" if pinned else "torch", name, str(t.dtype), tuple(t.shape))

    def make() -> Any:
        return torch.empty(t.shape, dtype=t.dtype, pin_memory=pinned)

    buf = cache.get(key, make) if cache is not None else make()
    buf.copy_(t, non_blocking=pinned)
    if pinned:
        cuda_devices.add(device)
    return buf


def _sync_cuda(devices: set[Any]) -> None:
    import torch

    # The non-blocking copies were queued on each device's current stream; wait for all of them.
    for device in devices:
        torch.cuda.current_stream(device).synchronize()
