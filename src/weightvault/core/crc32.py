"""CRC-32 (the zip/gzip polynomial) at hardware speed.

torch zip records carry a CRC-32 of their bytes, so writing a 1 GB ``.pt`` means checksumming 1 GB.
``zlib.crc32`` runs at about 4 GB/s; ISA-L's carry-less-multiply kernel, through the ``isal``
package, at about 30 GB/s, which makes the CRC vanish next to the copy. ``isal`` is a declared
dependency; zlib stays as the fallback for platforms without a wheel. Both give identical values.
"""

from __future__ import annotations

from typing import Any

try:
    from isal.isal_zlib import crc32 as _crc32
except ImportError:  # pragma: no cover - a declared dependency
    from zlib import crc32 as _crc32

__all__ = ["crc32"]


def crc32(data: Any, value: int = 0) -> int:
    """CRC-32 of a bytes-like ``data`` (no copy), continuing from ``value``."""
    return _crc32(data, value) & 0xFFFFFFFF
