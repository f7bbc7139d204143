"""One zip member's bytes, with limits: shared by the ``.pt`` and ``.npz`` readers.

``zipfile`` inflates a member fully before it checks anything, trusts the sizes in the central
directory only after the fact, and raises its own exceptions (``BadZipFile``, ``zlib.error``,
``NotImplementedError`` for a "zip file version", ``OSError`` for offsets outside the file). Here a
member is located from its local header, checked (method, position, declared size against its
compressed size with :func:`weightvault.core.limits.check_expansion`) and inflated in chunks that
stop as soon as the stream produces one byte more than declared; the CRC-32 is checked at the end.
"""

from __future__ import annotations

import struct
import zipfile
import zlib
from typing import Any

from weightvault.core.limits import check_expansion
from weightvault.errors import (
    ChecksumMismatchError,
    InvalidHeaderError,
    InvalidOffsetError,
    ResourceLimitError,
    TruncatedFileError,
    UnsupportedOperationError,
)

__all__ = ["MAX_DEFLATE_RATIO", "check_member", "inflate", "member_data_offset"]

LOCAL_MAGIC = b"PK\x03\x04"
#: deflate cannot beat about 1032:1; a larger declared ratio is a lie whatever the limit
MAX_DEFLATE_RATIO = 1032
_CHUNK = 1 << 20
_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate"}


def member_data_offset(
    buf: Any, zi: zipfile.ZipInfo, file_size: int, *, path: str, tensor: str | None = None
) -> int:
    """Offset of the member's (compressed) bytes: after its local header, which must lie in the
    file and carry the zip signature; the bytes must end inside the file."""
    off = zi.header_offset
    if off < 0 or off + 30 > file_size:
        raise InvalidOffsetError(
            f"zip member {zi.filename!r} has its header at {off}, outside the file of "
            f"{file_size} bytes",
            path=path,
            tensor=tensor,
        )
    local = bytes(buf[off : off + 30])
    if local[:4] != LOCAL_MAGIC:
        raise InvalidHeaderError(
            f"zip member {zi.filename!r} has no local header at offset {off}",
            path=path,
            tensor=tensor,
        )
    n_name, n_extra = struct.unpack("<HH", local[26:30])
    start = off + 30 + n_name + n_extra
    if start + zi.compress_size > file_size:
        raise TruncatedFileError(
            f"zip member {zi.filename!r} needs bytes {start}..{start + zi.compress_size} but the "
            "file "
            f"has {file_size}",
            path=path,
            tensor=tensor,
        )
    return start


def check_member(zi: zipfile.ZipInfo, *, path: str, tensor: str | None = None) -> None:
    """Refuse a member we cannot or should not inflate, before inflating anything."""
    if zi.compress_type not in _METHODS:
        raise UnsupportedOperationError(
            f"zip member {zi.filename!r} uses compression method {zi.compress_type}; only stored "
            "and deflate members are read (as torch and numpy write them)",
            path=path,
            tensor=tensor,
        )
    if zi.compress_type == zipfile.ZIP_STORED:
        if zi.compress_size != zi.file_size:
            raise InvalidHeaderError(
                f"stored zip member {zi.filename!r} says {zi.file_size} bytes but holds "
                f"{zi.compress_size}",
                path=path,
                tensor=tensor,
            )
        return
    if zi.file_size > zi.compress_size * MAX_DEFLATE_RATIO + 1024:
        raise InvalidHeaderError(
            f"zip member {zi.filename!r} claims {zi.file_size} bytes from {zi.compress_size} "
            "compressed bytes, more than deflate can produce",
            path=path,
            tensor=tensor,
        )
    what = f"zip member {zi.filename!r}"
    check_expansion(zi.file_size, zi.compress_size, path=path, tensor=tensor, what=what)


def inflate(
    compressed: Any,
    zi: zipfile.ZipInfo,
    *,
    path: str,
    tensor: str | None = None,
    prefix: int | None = None,
) -> bytes | bytearray:
    """The member's bytes from its ``compressed`` bytes (a memoryview of the file).

    With ``prefix``, only the first ``prefix`` bytes (no CRC check); otherwise exactly
    ``zi.file_size`` bytes, or an error as soon as the stream yields more, ends early, or fails
    its CRC-32. Call :func:`check_member` first.
    """
    view = memoryview(compressed)
    declared = zi.file_size
    if zi.compress_type == zipfile.ZIP_STORED:
        data = bytes(view[: declared if prefix is None else min(prefix, declared)])
    else:
        want = declared if prefix is None else min(prefix, declared)
        data = _inflate(
            view, want, stop_at_want=prefix is not None, zi=zi, path=path, tensor=tensor
        )
    if prefix is None and zlib.crc32(data) != zi.CRC:
        raise ChecksumMismatchError(
            f"zip member {zi.filename!r}: CRC-32 is {zlib.crc32(data):08x}, the archive says "
            f"{zi.CRC:08x}",
            path=path,
            tensor=tensor,
        )
    return data


def _inflate(view: memoryview, want: int, *, stop_at_want: bool, zi: zipfile.ZipInfo, path: str,
             tensor: str | None) -> bytearray:
    out = bytearray()
    d = zlib.decompressobj(-15)
    pos = 0
    try:
        while not d.eof:
            if d.unconsumed_tail:
                chunk = d.unconsumed_tail
            elif pos < len(view):
                chunk = view[pos : pos + _CHUNK]
                pos += len(chunk)
            else:
                break
            # max_length want+1: one byte over what is declared proves the header lied
            out += d.decompress(chunk, want + 1 - len(out))
            if len(out) >= want and stop_at_want:
                del out[want:]
                return out
            if len(out) > want:
                raise ResourceLimitError(
                    f"zip member {zi.filename!r} inflates to more than the {zi.file_size} "
                    "bytes its header declares; stopped there",
                    path=path,
                    tensor=tensor,
                )
    except zlib.error as exc:
        raise InvalidHeaderError(
            f"zip member {zi.filename!r} cannot be decompressed: {exc}", path=path, tensor=tensor
        ) from None
    if len(out) != want:
        raise TruncatedFileError(
            f"zip member {zi.filename!r} inflates to {len(out)} bytes, the archive says "
            f"{zi.file_size}",
            path=path,
            tensor=tensor,
        )
    return out
