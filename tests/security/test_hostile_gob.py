"""Hostile gob streams: lengths and counts that lie, types and values nested without end.

Every case must end in a WeightVaultError naming the file, without allocating what the stream
claims (counts are checked against the bytes left in their message) and without recursing into a
RecursionError. Streams are built from the real ToadOCR file or from gob primitives.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from weightvault.errors import InvalidHeaderError, TruncatedFileError, WeightVaultError
from weightvault.formats.gob import (
    T_INT,
    T_INTERFACE,
    GobFormat,
    gob_int,
    gob_string,
    gob_uint,
)


def _message(body: bytes) -> bytes:
    return gob_uint(len(body)) + body


def _slice_type(tid: int, elem: int) -> bytes:
    """A definition message: ``-tid`` then wireType{SliceT: {CommonType{Id: tid}, Elem: elem}}."""
    common = b"\x02" + gob_int(tid) + b"\x00"  # field 1 (Id) only
    return _message(gob_int(-tid) + b"\x02\x01" + common + b"\x01" + gob_int(elem) + b"\x00\x00")


def _open_all(path: Path) -> None:
    with GobFormat.open(path) as reader:
        for name in reader.keys():
            reader.get(name)
        reader.metadata  # noqa: B018 - decodes the trailing values too


def _refused(path: Path, *errors: type[Exception]) -> WeightVaultError:
    with pytest.raises(errors or (WeightVaultError,)) as err:
        _open_all(path)
    assert isinstance(err.value, WeightVaultError)
    assert str(path) in str(err.value)
    return err.value


@pytest.fixture(scope="module")
def toad(fixtures_dir: Path) -> bytes:
    return (fixtures_dir / "gob" / "toadocr_snn_weights").read_bytes()


def test_outer_message_claiming_exabytes(tmp_path: Path, toad: bytes) -> None:
    p = tmp_path / "huge_message.gob"
    p.write_bytes(gob_uint(1 << 62) + toad[1:64])
    _refused(p, TruncatedFileError, InvalidHeaderError)


def test_every_length_prefix_of_the_real_file_lying(tmp_path: Path, toad: bytes) -> None:
    """Each outer message length in turn replaced by 2**40: a clean error every time."""
    offsets, pos = [], 0
    while pos < len(toad):
        offsets.append(pos)
        c = toad[pos]
        n, width = (c, 1) if c < 0x80 else (int.from_bytes(toad[pos + 1 : pos + 1 + 256 - c], "big"), 1 + 256 - c)
        pos += width + n
    assert len(offsets) >= 5
    for i, off in enumerate(offsets):
        c = toad[off]
        width = 1 if c < 0x80 else 1 + 256 - c
        p = tmp_path / f"len{i}.gob"
        p.write_bytes(toad[:off] + gob_uint(1 << 40) + toad[off + width :])
        _refused(p)


def test_slice_count_far_beyond_the_message_is_not_allocated(tmp_path: Path) -> None:
    body = gob_int(65) + b"\x00" + gob_uint(1 << 50) + b"\x02\x04"  # []int claiming 2**50 elements
    p = tmp_path / "count.gob"
    p.write_bytes(_slice_type(65, T_INT) + _message(body))
    tracemalloc.start()
    try:
        err = _refused(p, InvalidHeaderError)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "elements" in str(err)
    assert peak < 16 << 20


def test_map_and_string_lengths_that_lie(tmp_path: Path) -> None:
    string_value = _message(gob_int(6) + b"\x00" + gob_uint(1 << 33) + b"abc")  # string of 8 GiB
    p = tmp_path / "string.gob"
    p.write_bytes(string_value)
    _refused(p, InvalidHeaderError)
    map_type = _message(gob_int(-65) + b"\x04\x01" + b"\x02" + gob_int(65) + b"\x00" + b"\x01" + gob_int(6) + b"\x01" + gob_int(2) + b"\x00\x00")
    p = tmp_path / "map.gob"
    p.write_bytes(map_type + _message(gob_int(65) + b"\x00" + gob_uint(1 << 40)))
    _refused(p, InvalidHeaderError)


def test_self_referencing_slice_type_is_bounded(tmp_path: Path) -> None:
    """type 65 = []type65: a value nests as deep as its bytes allow; names never end."""
    depth = 20_000
    body = gob_int(65) + b"\x00" + b"\x01" * depth + b"\x00"  # each level: a slice of one element
    p = tmp_path / "selfref.gob"
    p.write_bytes(_slice_type(65, 65) + _message(body))
    err = _refused(p, InvalidHeaderError)
    assert "deep" in str(err)


def test_deeply_chained_slice_types(tmp_path: Path) -> None:
    """10 000 distinct types, each a slice of the next: the type name is never built unbounded."""
    n = 10_000
    defs = b"".join(_slice_type(65 + i, 65 + i + 1 if i + 1 < n else T_INT) for i in range(n))
    body = gob_int(65) + b"\x00" + b"\x01" * (n - 1) + b"\x01\x02"
    p = tmp_path / "chain.gob"
    p.write_bytes(defs + _message(body))
    _refused(p, InvalidHeaderError)


def test_interfaces_nested_in_interfaces(tmp_path: Path) -> None:
    """An interface{} value whose concrete value is again an interface{}, thousands deep: each
    level starts a new top-level value, so the depth must be carried across them."""
    depth = 5_000
    level = gob_string("x") + gob_int(T_INTERFACE) + gob_uint(1) + b"\x00"  # name, type id, count, singleton
    body = gob_int(T_INTERFACE) + b"\x00" + level * depth + gob_uint(0)
    p = tmp_path / "iface.gob"
    p.write_bytes(_message(body))
    _refused(p, InvalidHeaderError)


def test_nested_struct_types(tmp_path: Path) -> None:
    """struct{F struct{F ...}} 5 000 deep, each struct defined by id."""
    n = 5_000
    defs = bytearray()
    for i in range(n):
        tid, inner = 65 + i, 65 + i + 1 if i + 1 < n else T_INT
        common = b"\x01" + gob_string(f"S{i}") + b"\x01" + gob_int(tid) + b"\x00"
        fields = b"\x01" + gob_uint(1) + b"\x01" + gob_string("F") + b"\x01" + gob_int(inner) + b"\x00"
        defs += _message(gob_int(-tid) + b"\x03\x01" + common + fields + b"\x00\x00")
    body = gob_int(65) + b"\x01" * n + b"\x02" + b"\x00" * n
    p = tmp_path / "structs.gob"
    p.write_bytes(bytes(defs) + _message(body))
    _refused(p, InvalidHeaderError)


def test_dense_shape_far_larger_than_its_data(tmp_path: Path) -> None:
    """A real Dense whose shape claims 2**40 x 2**40 over 4 stored floats."""
    src = tmp_path / "small.gob"
    GobFormat.write(src, {"a": np.arange(4.0).reshape(2, 2)}, embed_names=False)
    data = src.read_bytes()
    shape = gob_uint(2) + gob_int(2) + gob_int(2)
    at = data.index(shape)
    bad = data[:at] + gob_uint(2) + gob_int(1 << 40) + gob_int(1 << 40) + data[at + len(shape) :]
    # the inner stream and the outer GobEncoder value both grew: fix their length prefixes
    grow = len(bad) - len(data)
    p = tmp_path / "shape.gob"
    p.write_bytes(_patch_lengths(bad, at, grow))
    tracemalloc.start()
    try:
        with pytest.raises(WeightVaultError):
            _open_all(p)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20


def _patch_lengths(data: bytes, at: int, grow: int) -> bytes:
    """Re-encode every gob length prefix that encloses byte ``at`` (outer message, GobEncoder byte
    count, inner message) after the bytes at ``at`` grew by ``grow``."""
    out = bytearray(data)
    pos = 0
    # outer messages
    while pos < len(out):
        c = out[pos]
        width = 1 if c < 0x80 else 1 + 256 - c
        n = c if c < 0x80 else int.from_bytes(out[pos + 1 : pos + width], "big")
        if pos + width <= at < pos + width + n:
            break
        pos += width + n
    stack = [pos]
    # inside the outer message: type id, singleton 0, byte count of the GobEncoder value
    body = pos + (1 if out[pos] < 0x80 else 1 + 256 - out[pos])
    tid_width = 1 if out[body] < 0x80 else 1 + 256 - out[body]
    count_at = body + tid_width + 1
    stack.append(count_at)
    inner = count_at + (1 if out[count_at] < 0x80 else 1 + 256 - out[count_at])
    p = inner
    while True:
        c = out[p]
        width = 1 if c < 0x80 else 1 + 256 - c
        n = c if c < 0x80 else int.from_bytes(out[p + 1 : p + width], "big")
        if p + width <= at < p + width + n:
            stack.append(p)
            break
        p += width + n
    for prefix in reversed(stack):
        c = out[prefix]
        width = 1 if c < 0x80 else 1 + 256 - c
        n = c if c < 0x80 else int.from_bytes(out[prefix + 1 : prefix + width], "big")
        new = gob_uint(n + grow)
        grow += len(new) - width
        out[prefix : prefix + width] = new
    return bytes(out)


def test_random_mutations_of_the_real_file_fail_cleanly(tmp_path: Path, toad: bytes) -> None:
    rng = np.random.default_rng(12)
    head = 4096  # the type definitions and inner headers; the rest is float data
    for i in range(150):
        bad = bytearray(toad)
        for _ in range(int(rng.integers(1, 4))):
            j = int(rng.integers(0, head))
            bad[j] = int(rng.integers(0, 256)) if rng.integers(2) else bad[j] ^ (1 << int(rng.integers(8)))
        p = tmp_path / f"m{i}.gob"
        p.write_bytes(bytes(bad))
        try:
            _open_all(p)
        except WeightVaultError as exc:
            assert str(p) in str(exc)
        p.unlink()
