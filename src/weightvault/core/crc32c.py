"""CRC-32C (Castagnoli) with TensorFlow/LevelDB masking, at hardware speed without copies.

``google_crc32c`` computes the CRC in C (SSE4.2), but its Python entry points accept only immutable
``bytes`` objects, so checking a 1 GB tensor through it would first copy the tensor. Its wheel ships
the C library (``libcrc32c``) next to the extension, so we call ``crc32c_extend`` on the buffer's
address through ctypes (which also releases the GIL). If that library cannot be found we fall back to
the Python API on bounded chunks (one copy per chunk). ``zlib.crc32`` is a different CRC and is
never used.
"""

from __future__ import annotations

import ctypes
import glob
import os
from typing import Any

import numpy as np

__all__ = ["crc32c", "mask", "unmask"]

_MASK_DELTA = 0xA282EAD8
_CHUNK = 64 << 20


def mask(crc: int) -> int:
    """LevelDB/TF masked CRC, stored so that a CRC of data containing CRCs is not degenerate."""
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


def unmask(masked: int) -> int:
    rot = (masked - _MASK_DELTA) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


def _load_c_extend() -> Any:
    try:
        import google_crc32c
    except ImportError:  # pragma: no cover - a declared dependency
        return None
    base = os.path.dirname(os.path.dirname(google_crc32c.__file__))
    for lib in sorted(glob.glob(os.path.join(base, "google_crc32c.libs", "libcrc32c*.so*"))):
        try:
            fn = ctypes.CDLL(lib).crc32c_extend
        except (OSError, AttributeError):
            continue
        fn.argtypes = [ctypes.c_uint32, ctypes.c_void_p, ctypes.c_size_t]
        fn.restype = ctypes.c_uint32
        if fn(0, b"123456789", 9) == 0xE3069283:  # the standard check value
            return fn
    return None


_c_extend = _load_c_extend()


def _as_uint8(data: Any) -> np.ndarray:
    if isinstance(data, np.ndarray):
        arr = data if data.flags.c_contiguous else np.ascontiguousarray(data)
        return arr.reshape(-1).view(np.uint8)
    return np.frombuffer(data, dtype=np.uint8)


def crc32c(data: Any, crc: int = 0) -> int:
    """CRC-32C of ``data`` (bytes, memoryview, mmap, contiguous numpy array), extending ``crc``."""
    if isinstance(data, bytes):
        if _c_extend is not None:
            return int(_c_extend(crc, data, len(data)))
        import google_crc32c

        return int(google_crc32c.extend(crc, data))
    arr = _as_uint8(data)
    n = arr.size
    if n == 0:
        return crc
    if _c_extend is not None:
        return int(_c_extend(crc, arr.ctypes.data, n))
    import google_crc32c

    for start in range(0, n, _CHUNK):
        crc = google_crc32c.extend(crc, arr[start : start + _CHUNK].tobytes())
    return int(crc)
