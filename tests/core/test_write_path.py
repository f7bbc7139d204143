"""The write path's building blocks: fast CRC-32, streaming checksums, write-behind for durable files."""

from __future__ import annotations

import os
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


# -- replacing a file: the old file's cached pages are handed back first ----------------------


def _record_fadvise(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int, int, int]]:
    """Record (inode, offset, length, advice) of every posix_fadvise call, then make it for real."""
    calls: list[tuple[int, int, int, int]] = []
    real = os.posix_fadvise

    def spy(fd: int, offset: int, length: int, advice: int) -> None:
        calls.append((os.fstat(fd).st_ino, offset, length, advice))
        real(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", spy)
    return calls


needs_fadvise = pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="no posix_fadvise here")


@needs_fadvise
def test_replacing_a_file_drops_the_old_files_cache_before_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    final = tmp_path / "ckpt.bin"
    final.write_bytes(b"old" * 1000)
    old_inode = final.stat().st_ino
    calls = _record_fadvise(monkeypatch)
    with wv_io.atomic_write(final, fsync=False) as f:
        assert calls == [(old_inode, 0, 0, os.POSIX_FADV_DONTNEED)]  # before the first byte
        f.write(b"new")
    assert final.read_bytes() == b"new" and len(calls) == 1


@needs_fadvise
def test_a_fresh_file_drops_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _record_fadvise(monkeypatch)
    with wv_io.atomic_write(tmp_path / "fresh.bin") as f:
        f.write(b"x")
    with wv_io.atomic_dir(tmp_path / "fresh_dir") as d:
        (d / "a").write_bytes(b"y")
    assert calls == []


@needs_fadvise
def test_a_symlink_or_fifo_destination_is_replaced_without_touching_its_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "elsewhere.bin"
    target.write_bytes(b"keep")
    link = tmp_path / "link.bin"
    link.symlink_to(target)
    fifo = tmp_path / "fifo.bin"
    os.mkfifo(fifo)  # opening it for reading without O_NONBLOCK would hang the save
    calls = _record_fadvise(monkeypatch)
    for dest in (link, fifo):
        with wv_io.atomic_write(dest, fsync=False) as f:
            f.write(b"new")
        assert not dest.is_symlink() and dest.read_bytes() == b"new"
    assert target.read_bytes() == b"keep" and calls == []


@needs_fadvise
def test_replacing_a_directory_drops_the_cache_of_every_file_in_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    final = tmp_path / "ckpt"
    (final / "sub").mkdir(parents=True)
    files = [final / "a.safetensors", final / "sub" / "b.bin"]
    for p in files:
        p.write_bytes(b"old")
    (final / "outside").symlink_to(tmp_path)  # a symlink inside is not followed
    calls = _record_fadvise(monkeypatch)
    with wv_io.atomic_dir(final, fsync=False) as d:
        assert sorted(c[0] for c in calls) == sorted(p.stat().st_ino for p in files)
        (d / "a.safetensors").write_bytes(b"new")
    assert (final / "a.safetensors").read_bytes() == b"new" and not (final / "sub").exists()


def _resident_pages(path: Path) -> int:
    """How many of the file's pages are in the page cache (mincore on a mapping not touched)."""
    import ctypes
    import mmap

    libc = ctypes.CDLL(None, use_errno=True)
    size = path.stat().st_size
    with open(path, "rb") as f, mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY) as m:
        pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
        vec = (ctypes.c_ubyte * pages)()
        addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
        if libc.mincore(ctypes.c_void_p(addr), ctypes.c_size_t(size), vec) != 0:
            pytest.skip("mincore failed")
        return sum(v & 1 for v in vec)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mincore and fadvise are Linux's")
def test_the_old_files_pages_really_leave_the_cache_and_its_bytes_survive_a_failed_save(
    tmp_path: Path,
) -> None:
    final = tmp_path / "ckpt.bin"
    old = np.random.default_rng(0).integers(0, 256, 4 << 20, dtype=np.uint8).tobytes()
    final.write_bytes(old)
    with open(final, "rb+") as f:
        os.fsync(f.fileno())  # dirty pages are never dropped; a saved checkpoint is clean
        assert f.read() == old  # and cached
    probe = tmp_path / "probe.bin"  # does this filesystem drop clean pages at all? (tmpfs: no)
    probe.write_bytes(old)
    with open(probe, "rb") as f:
        os.fsync(f.fileno())
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    if _resident_pages(probe) > 0:
        pytest.skip("this filesystem keeps clean pages on POSIX_FADV_DONTNEED")
    before = _resident_pages(final)
    assert before > 0

    with open(final, "rb") as reader:  # a reader holding the old file open loses nothing either
        with pytest.raises(RuntimeError, match="boom"), wv_io.atomic_write(final) as f:
            f.write(b"partial")
            raise RuntimeError("boom")
        assert _resident_pages(final) < before // 2
        assert reader.read() == old
    assert final.read_bytes() == old  # only cache was dropped, the bytes are all there
    assert [p.name for p in tmp_path.iterdir() if wv_io.TMP_MARK in p.name] == []
