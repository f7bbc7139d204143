"""PyTorch adapter: torch tensors to and from numpy, without copies where the dtypes allow.

torch is imported here and nowhere else (the training state, EMA, snapshots and the pickle
writer reach it through this module). dtypes numpy lacks (bfloat16, float8, the wide
unsigned ints on older numpy bridges) cross as same-width integer views, so no value is rounded.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from weightvault.core.dtypes import DTYPES, dtype_name
from weightvault.core.tensors import TensorDesc

__all__ = ["describe", "from_numpy", "is_tensor_type", "numpy_dtype", "tensor_to_numpy", "torch_dtype"]

_TORCH_BY_NAME: dict[str, torch.dtype] = {
    "bool": torch.bool,
    "uint8": torch.uint8,
    "int8": torch.int8,
    "uint16": torch.uint16,
    "int16": torch.int16,
    "uint32": torch.uint32,
    "int32": torch.int32,
    "uint64": torch.uint64,
    "int64": torch.int64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
    "complex64": torch.complex64,
    "complex128": torch.complex128,
    "float8_e4m3fn": torch.float8_e4m3fn,
    "float8_e5m2": torch.float8_e5m2,
    "float8_e4m3fnuz": torch.float8_e4m3fnuz,
    "float8_e5m2fnuz": torch.float8_e5m2fnuz,
    "float8_e8m0fnu": torch.float8_e8m0fnu,
}
_NAME_BY_TORCH = {v: k for k, v in _TORCH_BY_NAME.items()}
# Same-width integer carrier for dtypes numpy's torch bridge cannot hand over directly.
_CARRIER = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_DIRECT = {
    torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
    torch.float16, torch.float32, torch.float64, torch.complex64, torch.complex128,
}  # fmt: skip


def is_tensor_type(tp: type) -> bool:
    return issubclass(tp, torch.Tensor)


def torch_dtype(name: str) -> torch.dtype:
    return _TORCH_BY_NAME[name]


def numpy_dtype(dt: torch.dtype) -> np.dtype:
    return DTYPES[_NAME_BY_TORCH[dt]]


def _plain(t: torch.Tensor) -> torch.Tensor:
    """``t`` detached, dense, with lazy conjugation/negation resolved (what its values are)."""
    t = t.detach()
    if t.layout != torch.strided:
        t = t.to_dense()
    if t.is_conj():
        t = t.resolve_conj()
    if t.is_neg():
        t = t.resolve_neg()
    return t


def tensor_to_numpy(t: torch.Tensor) -> np.ndarray:
    """A numpy view of a CPU tensor (contiguous copy first if needed), with the exact dtype."""
    t = _plain(t)
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.contiguous()
    target = numpy_dtype(t.dtype)
    if t.dtype in _DIRECT:
        return t.numpy()
    carrier = _CARRIER[t.element_size()]
    return t.view(carrier).numpy().view(target)


def describe(t: torch.Tensor) -> TensorDesc:
    identity = None
    if t.numel() > 0 and t.layout == torch.strided:
        identity = (
            "torch",
            t.device.type,
            t.untyped_storage().data_ptr(),
            t.storage_offset(),
            tuple(t.shape),
            tuple(t.stride()),
            str(t.dtype),
        )
    return TensorDesc(_NAME_BY_TORCH[t.dtype], tuple(t.shape), identity)


def from_numpy(arr: np.ndarray, device: Any = None) -> torch.Tensor:
    """A torch tensor with the exact dtype of ``arr`` (shares memory when ``arr`` is writable)."""
    name = dtype_name(arr.dtype)
    target = _TORCH_BY_NAME[name]
    if not arr.flags.writeable:
        arr = arr.copy()
    if target in _DIRECT:
        t = torch.from_numpy(arr)
    else:
        t = torch.from_numpy(_np_carrier(arr))
        t = t.view(target)
    if device is not None:
        t = t.to(device)
    return t


def _np_carrier(arr: np.ndarray) -> np.ndarray:
    return arr.view({1: np.uint8, 2: np.int16, 4: np.int32, 8: np.int64}[arr.dtype.itemsize])


def empty_like_info(
    dtype: str, shape: tuple[int, ...], *, pin_memory: bool = False
) -> tuple[torch.Tensor, np.ndarray]:
    """An uninitialised CPU tensor and a writable numpy view of its bytes, for reading into.

    ``pin_memory`` allocates page-locked memory, so the later copy to a GPU can run
    asynchronously (and at full PCIe speed) instead of through a pageable bounce buffer.
    """
    t = torch.empty(shape, dtype=_TORCH_BY_NAME[dtype], pin_memory=pin_memory)
    return t, tensor_to_numpy(t)


def wants_pinned(device: Any) -> bool:
    """True when loading to a CUDA device (staging through pinned memory pays off)."""
    return device is not None and torch.device(device).type == "cuda" and torch.cuda.is_available()


def to_device(tensors: dict[str, torch.Tensor], device: Any) -> dict[str, torch.Tensor]:
    """Move host tensors to ``device``; from pinned memory the copies overlap, then one sync."""
    moved = {k: v.to(device, non_blocking=v.is_pinned()) for k, v in tensors.items()}
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    return moved


def storage_bytes(t: torch.Tensor) -> tuple[np.ndarray, int]:
    """The whole untyped storage under ``t`` as a uint8 numpy view, and its data pointer."""
    storage = t.untyped_storage()
    return torch.empty(0, dtype=torch.uint8).set_(storage).numpy(), storage.data_ptr()


# -- host snapshots (checkpoint.snapshot) -----------------------------------------------------------


def host_buffer_key(name: str, t: torch.Tensor) -> tuple[Any, Any]:
    """Cache key and allocator of the host buffer for a tensor (None, None for other devices)."""
    if t.device.type not in ("cpu", "cuda"):
        return None, None
    pinned = t.device.type == "cuda"
    key = ("torch-pinned" if pinned else "torch", name, str(t.dtype), tuple(t.shape))

    def make() -> torch.Tensor:
        return torch.empty(tuple(t.shape), dtype=t.dtype, pin_memory=pinned)

    return key, make


def host_copy(name: str, t: torch.Tensor, get_buffer: Any, cuda_devices: set[Any]) -> torch.Tensor:
    """A host copy of ``t`` in ``get_buffer(key, make)``'s buffer (or a new one when None).

    CUDA tensors are copied into pinned memory without blocking; their devices are added to
    ``cuda_devices`` for one :func:`sync_devices` after all copies are queued.
    """
    t = _plain(t)
    device = t.device
    key, make = host_buffer_key(name, t)
    if key is None:
        return t.to("cpu", copy=True)
    pinned = device.type == "cuda"
    buf = get_buffer(key, make) if get_buffer is not None else make()
    buf.copy_(t, non_blocking=pinned)
    if pinned:
        cuda_devices.add(device)
    return buf


def sync_devices(devices: set[Any]) -> None:
    """Wait for the copies queued on each device's current stream."""
    for device in devices:
        torch.cuda.current_stream(device).synchronize()
