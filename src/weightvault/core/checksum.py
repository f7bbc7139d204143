"""Per-tensor checksums. xxh3-64 runs at memory speed, so checksumming costs little next to I/O."""

from __future__ import annotations

import xxhash

__all__ = ["ALGORITHM", "PLACEHOLDER", "StreamingChecksum", "checksum"]

ALGORITHM = "xxh3_64"
#: same length as a real checksum, so a header can be rewritten in place once the data is down
PLACEHOLDER = f"{ALGORITHM}:{'0' * 16}"


def checksum(data: bytes | memoryview) -> str:
    return f"{ALGORITHM}:{xxhash.xxh3_64_hexdigest(data)}"


class StreamingChecksum:
    """The same checksum over bytes that arrive in pieces (equal to ``checksum`` of them joined)."""

    def __init__(self) -> None:
        self._hash = xxhash.xxh3_64()

    def update(self, data: bytes | memoryview) -> None:
        self._hash.update(data)

    def value(self) -> str:
        return f"{ALGORITHM}:{self._hash.hexdigest()}"
