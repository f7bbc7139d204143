"""LevelDB-format tables ("SSTables") as TensorFlow uses them for checkpoint ``.index`` files.

Layout (LevelDB ``doc/table_format.md``; TF's copy in ``tsl/lib/io/table_builder.cc``)::

    [data block][trailer] ... [metaindex block][trailer] [index block][trailer] [footer: 48 bytes]

* block = prefix-compressed entries ``shared, non_shared, value_len (varints), key_delta, value``,
  then ``u32le restart offsets`` and ``u32le num_restarts``;
* trailer = ``type:u8`` (0 raw, 1 snappy) + ``masked crc32c(contents + type):u32le``;
* footer = two block handles (varint offset, varint size) zero-padded to 40 bytes + 8-byte magic.

The reader checks every block's CRC (the whole ``.index`` is small) and every handle against the
file size before slicing. The writer follows TF's ``TableBuilder`` exactly (block size 256 KiB,
restart interval 16 for data blocks and 1 for the index block, shortest-separator index keys,
no compression), so that given the same entries it reproduces a TF-written ``.index`` byte for byte.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Iterator
from typing import Any

from weightvault.core.crc32c import crc32c, mask, unmask
from weightvault.core.protobuf import decode_varint, encode_varint
from weightvault.errors import (
    ChecksumMismatchError,
    InvalidHeaderError,
    InvalidOffsetError,
    TruncatedFileError,
)

__all__ = ["TABLE_MAGIC", "TableWriter", "block_entries", "read_table", "snappy_decompress", "write_table"]

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48
BLOCK_TRAILER_SIZE = 5
#: TF's ``table::Options().block_size`` (LevelDB's default is 4096; TF raised it)
TF_BLOCK_SIZE = 262144
_NO_COMPRESSION, _SNAPPY = 0, 1


def _varint(buf: bytes, pos: int, end: int, path: Any, what: str) -> tuple[int, int]:
    return decode_varint(buf, pos, end, path=path, what=f"table {what}:", error=InvalidHeaderError)


# -- reading ----------------------------------------------------------------------------------------
def _read_handle(buf: bytes, pos: int, end: int, path: Any, what: str) -> tuple[int, int, int]:
    offset, pos = _varint(buf, pos, end, path, what)
    size, pos = _varint(buf, pos, end, path, what)
    return offset, size, pos


def _block(data: bytes, offset: int, size: int, path: Any, what: str, verify: bool) -> bytes:
    limit = len(data) - FOOTER_SIZE
    if offset < 0 or size < 0 or offset + size + BLOCK_TRAILER_SIZE > limit:
        raise InvalidOffsetError(
            f"table {what} at [{offset}, {offset + size}) + trailer lies outside the file "
            f"({len(data)} bytes)",
            path=path,
        )
    contents = data[offset : offset + size]
    kind = data[offset + size]
    if verify:
        stored = int.from_bytes(data[offset + size + 1 : offset + size + 5], "little")
        actual = crc32c(data[offset : offset + size + 1])
        if unmask(stored) != actual:
            raise ChecksumMismatchError(
                f"table {what} at offset {offset}: block CRC-32C is {actual:#010x}, the file "
                f"records {unmask(stored):#010x}",
                path=path,
            )
    if kind == _SNAPPY:
        return snappy_decompress(contents, path=path)
    if kind != _NO_COMPRESSION:
        raise InvalidHeaderError(f"table {what}: unknown block compression type {kind}", path=path)
    return contents


def block_entries(block: bytes, path: Any = None, what: str = "block") -> Iterator[tuple[bytes, bytes]]:
    """Decode the (key, value) pairs of one uncompressed block."""
    if len(block) < 4:
        raise InvalidHeaderError(f"table {what} is shorter than its restart count", path=path)
    num_restarts = int.from_bytes(block[-4:], "little")
    end = len(block) - 4 - 4 * num_restarts
    if end < 0:
        raise InvalidHeaderError(f"table {what} claims {num_restarts} restart points", path=path)
    pos = 0
    key = b""
    while pos < end:
        shared, pos = _varint(block, pos, end, path, what)
        non_shared, pos = _varint(block, pos, end, path, what)
        value_len, pos = _varint(block, pos, end, path, what)
        if shared > len(key) or pos + non_shared + value_len > end:
            raise InvalidHeaderError(f"table {what}: entry runs past the block", path=path)
        key = key[:shared] + block[pos : pos + non_shared]
        pos += non_shared
        yield key, block[pos : pos + value_len]
        pos += value_len


def read_table(
    data: bytes, *, path: str | os.PathLike[str] | None = None, verify_checksums: bool = True
) -> list[tuple[bytes, bytes]]:
    """All ``(key, value)`` pairs of a table held in memory, in key order.

    Raises :class:`TruncatedFileError` (shorter than a footer), :class:`InvalidHeaderError` (bad
    magic or block encoding), :class:`InvalidOffsetError` (a handle outside the file) and
    :class:`ChecksumMismatchError` (a block whose CRC does not match).
    """
    if len(data) < FOOTER_SIZE:
        raise TruncatedFileError(
            f"table file has {len(data)} bytes, fewer than its {FOOTER_SIZE}-byte footer", path=path
        )
    footer_at = len(data) - FOOTER_SIZE
    lo, hi = struct.unpack_from("<II", data, len(data) - 8)
    if (hi << 32) | lo != TABLE_MAGIC:
        raise InvalidHeaderError(
            "not a TensorFlow/LevelDB table: bad magic number in the footer (truncated or "
            "overwritten file?)",
            path=path,
        )
    _, _, pos = _read_handle(data, footer_at, footer_at + 40, path, "footer")  # metaindex (unused)
    index_off, index_size, _ = _read_handle(data, pos, footer_at + 40, path, "footer")
    index = _block(data, index_off, index_size, path, "index block", verify_checksums)
    entries: list[tuple[bytes, bytes]] = []
    previous: bytes | None = None
    for _, handle in block_entries(index, path, "index block"):
        off, size, _ = _read_handle(handle, 0, len(handle), path, "index entry")
        block = _block(data, off, size, path, "data block", verify_checksums)
        for key, value in block_entries(block, path, "data block"):
            if previous is not None and key <= previous:
                raise InvalidHeaderError(f"table keys out of order at {key!r}", path=path)
            previous = key
            entries.append((key, value))
    return entries


def snappy_decompress(data: bytes, *, path: Any = None) -> bytes:
    """Raw (unframed) snappy, as LevelDB compresses blocks. TF never writes it; old files may."""
    n, pos = _varint(data, 0, len(data), path, "snappy block")
    if n > 64 * len(data) + 64:  # snappy expands at most ~64x; refuse absurd claims before allocating
        raise InvalidHeaderError(f"snappy block claims {n} bytes from {len(data)}", path=path)
    out = bytearray()
    end = len(data)
    while pos < end:
        tag = data[pos]
        pos += 1
        kind = tag & 3
        if kind == 0:  # literal
            length = tag >> 2
            if length >= 60:
                extra = length - 59
                if pos + extra > end:
                    raise InvalidHeaderError("snappy literal length runs past the block", path=path)
                length = int.from_bytes(data[pos : pos + extra], "little")
                pos += extra
            length += 1
            if pos + length > end or len(out) + length > n:
                raise InvalidHeaderError("snappy literal runs past the block", path=path)
            out += data[pos : pos + length]
            pos += length
            continue
        if pos + (1, 2, 4)[kind - 1] > end:
            raise InvalidHeaderError("snappy copy runs past the block", path=path)
        if kind == 1:
            length = ((tag >> 2) & 7) + 4
            offset = ((tag >> 5) << 8) | data[pos]
            pos += 1
        elif kind == 2:
            length = (tag >> 2) + 1
            offset = int.from_bytes(data[pos : pos + 2], "little")
            pos += 2
        else:
            length = (tag >> 2) + 1
            offset = int.from_bytes(data[pos : pos + 4], "little")
            pos += 4
        if offset == 0 or offset > len(out):
            raise InvalidHeaderError("snappy copy refers before the start of the block", path=path)
        if len(out) + length > n:
            raise InvalidHeaderError(f"snappy block decodes past its {n} bytes", path=path)
        for _ in range(length):  # copies may overlap their own output
            out.append(out[-offset])
    if len(out) != n:
        raise InvalidHeaderError(f"snappy block decodes to {len(out)} bytes, not {n}", path=path)
    return bytes(out)


# -- writing ----------------------------------------------------------------------------------------
class _BlockBuilder:
    def __init__(self, restart_interval: int) -> None:
        self.restart_interval = restart_interval
        self.buf = bytearray()
        self.restarts = [0]
        self.counter = 0
        self.last_key = b""

    def empty(self) -> bool:
        return not self.buf

    def add(self, key: bytes, value: bytes) -> None:
        shared = 0
        if self.counter < self.restart_interval:
            limit = min(len(self.last_key), len(key))
            while shared < limit and self.last_key[shared] == key[shared]:
                shared += 1
        else:
            self.restarts.append(len(self.buf))
            self.counter = 0
        self.buf += encode_varint(shared)
        self.buf += encode_varint(len(key) - shared)
        self.buf += encode_varint(len(value))
        self.buf += key[shared:]
        self.buf += value
        self.last_key = key
        self.counter += 1

    def size_estimate(self) -> int:
        return len(self.buf) + 4 * len(self.restarts) + 4

    def finish(self) -> bytes:
        out = bytes(self.buf) + b"".join(struct.pack("<I", r) for r in self.restarts)
        return out + struct.pack("<I", len(self.restarts))

    def reset(self) -> None:
        self.__init__(self.restart_interval)  # type: ignore[misc]


def _shortest_separator(start: bytes, limit: bytes) -> bytes:
    n = min(len(start), len(limit))
    i = 0
    while i < n and start[i] == limit[i]:
        i += 1
    if i >= n:  # one is a prefix of the other
        return start
    byte = start[i]
    if byte < 0xFF and byte + 1 < limit[i]:
        return start[:i] + bytes((byte + 1,))
    return start


def _short_successor(key: bytes) -> bytes:
    for i, byte in enumerate(key):
        if byte != 0xFF:
            return key[:i] + bytes((byte + 1,))
    return key


def _handle(offset: int, size: int) -> bytes:
    out = bytearray()
    out += encode_varint(offset)
    out += encode_varint(size)
    return bytes(out)


class TableWriter:
    """Builds a table in memory; ``add`` keys in strictly increasing byte order, then ``finish``."""

    def __init__(self, *, block_size: int = TF_BLOCK_SIZE, restart_interval: int = 16) -> None:
        self.block_size = block_size
        self._out = bytearray()
        self._data = _BlockBuilder(restart_interval)
        self._index = _BlockBuilder(1)
        self._last_key: bytes | None = None
        self._pending: tuple[int, int] | None = None

    def add(self, key: bytes, value: bytes) -> None:
        if self._last_key is not None and key <= self._last_key:
            raise ValueError(f"table keys must be strictly increasing: {key!r} after {self._last_key!r}")
        if len(key) + len(value) >= 2 * self.block_size and not self._data.empty():
            self._flush()  # a huge entry starts a block of its own (TF's table builder does this)
        if self._pending is not None:
            assert self._last_key is not None
            self._index.add(_shortest_separator(self._last_key, key), _handle(*self._pending))
            self._pending = None
        self._last_key = key
        self._data.add(key, value)
        if self._data.size_estimate() >= self.block_size:
            self._flush()

    def add_all(self, entries: Iterable[tuple[bytes, bytes]]) -> TableWriter:
        for key, value in entries:
            self.add(key, value)
        return self

    def _write_block(self, contents: bytes) -> tuple[int, int]:
        offset = len(self._out)
        trailer_type = bytes((_NO_COMPRESSION,))
        crc = mask(crc32c(contents + trailer_type))
        self._out += contents + trailer_type + struct.pack("<I", crc)
        return offset, len(contents)

    def _flush(self) -> None:
        if self._data.empty():
            return
        assert self._pending is None
        self._pending = self._write_block(self._data.finish())
        self._data.reset()

    def finish(self) -> bytes:
        self._flush()
        metaindex = self._write_block(_BlockBuilder(16).finish())
        if self._pending is not None:
            assert self._last_key is not None
            self._index.add(_short_successor(self._last_key), _handle(*self._pending))
            self._pending = None
        index = self._write_block(self._index.finish())
        footer = _handle(*metaindex) + _handle(*index)
        footer += bytes(40 - len(footer)) + struct.pack("<II", TABLE_MAGIC & 0xFFFFFFFF, TABLE_MAGIC >> 32)
        return bytes(self._out) + footer


def write_table(entries: Iterable[tuple[bytes, bytes]], *, block_size: int = TF_BLOCK_SIZE) -> bytes:
    return TableWriter(block_size=block_size).add_all(entries).finish()

