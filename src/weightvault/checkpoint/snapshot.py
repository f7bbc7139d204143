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
page-locked or even pageable allocations cost more than the copy itself on large states (every
new page faults and is zeroed by the kernel: 2-4x the memcpy); reuse makes every snapshot after
the first a pure memcpy. :func:`prepare_snapshot` allocates and touches the buffers for a state
*ahead* of the first snapshot (on a helper thread, while training goes on), so the first save
stalls no longer than the later ones. Tied tensors are copied once and stay tied.

torch is imported only when a torch tensor is actually seen.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from weightvault.core.shards import FlatState, split_ties
from weightvault.core.tensors import to_numpy
from weightvault.core.tree import flatten, unflatten

__all__ = ["SnapshotCache", "prepare_snapshot", "snapshot_flat", "take_snapshot"]


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

    def create(self, key: tuple[Any, ...], make: Any) -> Any:
        """A new buffer for ``key``; None if one exists (it may be in use by a write)."""
        self._used.add(key)
        if key in self._buffers:
            return None
        buf = self._buffers[key] = make()
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


def snapshot_flat(state: Any, cache: SnapshotCache | None = None) -> FlatState:
    """A copy of ``state`` taken apart once: its tree spec, each distinct tensor copied once into
    host memory owned by the snapshot, and the tied names (what the writer stores as aliases)."""
    spec, found = flatten(state)
    unique, aliases = split_ties(found)
    cuda_devices: set[Any] = set()
    copies = {name: _copy(name, obj, cache, cuda_devices) for name, obj in unique.items()}
    if cuda_devices:
        from weightvault.frameworks.torch import sync_devices

        sync_devices(cuda_devices)
    if cache is not None:
        cache.prune()
    return FlatState(spec, copies, aliases)


def take_snapshot(state: Any, cache: SnapshotCache | None = None) -> Any:
    """A deep copy of ``state`` whose tensors live in host memory owned by the snapshot."""
    flat = snapshot_flat(state, cache)
    return unflatten(flat.spec, lambda name: flat.tensors[flat.aliases.get(name, name)])


def prepare_snapshot(state: Any, cache: SnapshotCache) -> int:
    """Allocate and touch the buffers a snapshot of ``state`` will use; copies no values.

    Touching every page now (a fill) is what makes the first snapshot a plain memcpy: the page
    faults and kernel zeroing of fresh memory otherwise happen inside the copy, while training
    waits. Returns the bytes prepared. Safe to run on a helper thread while the state changes
    (only shapes and dtypes are read).
    """
    _, found = flatten(state)
    unique, _ = split_ties(found)
    prepared = 0
    for name, obj in unique.items():
        made = _new_staging_buffer(name, obj, cache)
        if made is not None:
            _touch(made)
            prepared += _nbytes(made)
    return prepared


def _touch(buf: Any) -> None:
    if isinstance(buf, np.ndarray):
        buf.fill(0)
    else:
        buf.zero_()


def _new_staging_buffer(name: str, obj: Any, cache: SnapshotCache) -> Any:
    """A new cached buffer a snapshot of ``obj`` will copy into; None if it exists already
    (never touch those: the write in flight may be reading them) or is not staged (jax...)."""
    if isinstance(obj, np.ndarray):
        return cache.create(_np_key(name, obj), lambda: np.empty(obj.shape, obj.dtype))
    if type(obj).__module__.partition(".")[0] == "torch":
        from weightvault.frameworks.torch import host_buffer_key

        key, make = host_buffer_key(name, obj)
        return None if key is None else cache.create(key, make)
    return None


def _np_key(name: str, obj: np.ndarray) -> tuple[Any, ...]:
    return ("np", name, obj.dtype.str, obj.shape)


def _np_buffer(name: str, obj: np.ndarray, cache: SnapshotCache) -> np.ndarray:
    return cache.get(_np_key(name, obj), lambda: np.empty(obj.shape, obj.dtype))


def _copy(name: str, obj: Any, cache: SnapshotCache | None, cuda_devices: set[Any]) -> Any:
    if isinstance(obj, np.ndarray):
        if cache is None:
            return np.array(obj, copy=True)
        buf = _np_buffer(name, obj, cache)
        np.copyto(buf, obj)
        return buf
    if type(obj).__module__.partition(".")[0] == "torch":
        from weightvault.frameworks.torch import host_copy

        return host_copy(name, obj, cache.get if cache is not None else None, cuda_devices)
    # jax / TensorFlow: the adapter hands over host bytes; copy them so the snapshot owns them.
    return np.array(to_numpy(obj), copy=True)
