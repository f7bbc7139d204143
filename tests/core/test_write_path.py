"""The write path's building blocks: fast CRC-32, streaming checksums, write-behind for durable files."""

from __future__ import annotations

import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from weightvault.core import io as wv_io
from weightvault.core.checksum import StreamingChecksum, checksum
from weightvault.core.crc32 import crc32


@pytest.mark.parametrize("size", [0, 1, 7, 64, 4095, 65_537, 3_000_001])
def test_crc32_equals_zlib_on_views_and_chained(size: int) -> None:
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8)
    view = memoryview(data)
    assert crc32(view) == zlib.crc32(view) & 0xFFFFFFFF
    cut = size // 3
    assert crc32(view[cut:], crc32(view[:cut])) == zlib.crc32(data.tobytes()) & 0xFFFFFFFF
    floats = data[: size // 4 * 4].view(np.float32)  # a non-byte view, as tensors arrive
    assert crc32(memoryview(floats).cast("B")) == zlib.crc32(floats.tobytes()) & 0xFFFFFFFF


def test_crc32_is_the_hardware_kernel() -> None:
    # isal is a declared dependency: if this falls back to zlib, .pt writing is ~7x slower in CRC
    import weightvault.core.crc32 as mod

    assert mod._crc32.__module__.startswith("isal")


def test_streaming_checksum_equals_one_shot() -> None:
    data = np.random.default_rng(3).integers(0, 256, 1_000_003, dtype=np.uint8).tobytes()
    s = StreamingChecksum()
    for lo in range(0, len(data), 65_536):
        s.update(memoryview(data)[lo : lo + 65_536])
    assert s.value() == checksum(data)
    assert StreamingChecksum().value() == checksum(b"")


def _record_write_behind(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int, int]]:
    calls: list[tuple[int, int, int]] = []

    def fake(fd: int, offset: int, nbytes: int, flags: int) -> int:
        calls.append((offset, nbytes, flags))
        return 0

    monkeypatch.setattr(wv_io, "_sync_file_range", lambda: fake)
    monkeypatch.setattr(wv_io, "WRITE_BEHIND_BYTES", 1000)
    return calls


def test_durable_writes_start_writeback_as_they_go(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _record_write_behind(monkeypatch)
    chunks = [bytes([i]) * n for i, n in enumerate([300, 800, 5000, 10, 2500, 999])]
    with wv_io.atomic_write(tmp_path / "f.bin", fsync=True) as f:
        for chunk in chunks:
            f.write(chunk)
    assert (tmp_path / "f.bin").read_bytes() == b"".join(chunks)
    # contiguous ranges from byte 0, each at least the step, none past what was written
    assert calls and calls[0][0] == 0
    for (off, n, flags), (next_off, _, _) in zip(calls, calls[1:]):
        assert off + n == next_off
    assert all(n >= 1000 and flags == 2 for _, n, flags in calls)
    assert calls[-1][0] + calls[-1][1] <= sum(map(len, chunks))


def test_page_cache_writes_do_not_force_writeback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _record_write_behind(monkeypatch)
    with wv_io.atomic_write(tmp_path / "f.bin", fsync=False) as f:
        f.write(b"x" * 10_000)
    assert calls == [] and (tmp_path / "f.bin").stat().st_size == 10_000


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sync_file_range is Linux-only")
def test_sync_file_range_is_found_on_linux(tmp_path: Path) -> None:
    fn = wv_io._sync_file_range()
    assert fn is not None
    with open(tmp_path / "g.bin", "wb") as f:
        f.write(b"y" * 8192)
        f.flush()
        assert fn(f.fileno(), 0, 8192, 2) == 0
