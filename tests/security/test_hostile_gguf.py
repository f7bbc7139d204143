"""Hostile GGUF files: counts, lengths, nesting and offsets that lie. Each gets a clean error that
names the file, fast, without allocating what the header claims."""

from __future__ import annotations

import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import weightvault
from weightvault.errors import CorruptFileError

gguf = pytest.importorskip("gguf")

U8, U32, STRING, ARRAY = 0, 4, 8, 9


def _str(s: bytes, length: int | None = None) -> bytes:
    return struct.pack("<Q", len(s) if length is None else length) + s


def _kv(key: bytes, vtype: int, value: bytes) -> bytes:
    return _str(key) + struct.pack("<I", vtype) + value


def _tensor_info(name: bytes, dims: list[int], ggml_type: int = 0, offset: int = 0) -> bytes:
    return _str(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims) + struct.pack("<II", ggml_type, 0)[:4] + struct.pack("<Q", offset)


def _gguf(kvs: list[bytes], infos: list[bytes], data: bytes = b"", *, n_tensors: int | None = None,
          n_kv: int | None = None) -> bytes:
    head = b"GGUF" + struct.pack("<IQQ", 3, len(infos) if n_tensors is None else n_tensors,
                                 len(kvs) if n_kv is None else n_kv)
    body = head + b"".join(kvs) + b"".join(infos)
    body += b"\x00" * ((-len(body)) % 32)
    return body + data


def _write(tmp_path: Path, data: bytes) -> Path:
    p = tmp_path / "hostile.gguf"
    p.write_bytes(data)
    return p


def _read_all(path: Path) -> None:
    with weightvault.open(path) as r:
        for name in r.keys():
            np.asarray(r.get(name)).tobytes()
        r.metadata


def test_the_hand_builder_matches_the_gguf_package(tmp_path: Path) -> None:
    # The builder below is trusted only because a file it writes reads like one gguf writes.
    w = gguf.GGUFWriter(str(tmp_path / "real.gguf"), "llama")
    w.add_uint32("n", 3)
    w.add_tensor("t", np.arange(8, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    mine = _write(tmp_path, _gguf([_kv(b"n", U32, struct.pack("<I", 3))], [_tensor_info(b"t", [8])],
                                  np.arange(8, dtype=np.float32).tobytes()))
    with weightvault.open(tmp_path / "real.gguf") as real, weightvault.open(mine) as ours:
        assert real.keys() == ours.keys() == ["t"]
        np.testing.assert_array_equal(real.get("t"), ours.get("t"))
        assert ours.metadata["n"] == real.metadata["n"] == 3


HOSTILE = {
    "tensor count 2^63": lambda: _gguf([], [], n_tensors=1 << 63),
    "kv count 2^64-1": lambda: _gguf([], [], n_kv=(1 << 64) - 1),
    "key length 2^62": lambda: _gguf([_str(b"k", 1 << 62) + struct.pack("<I", U8) + b"\x00"], []),
    "string value length past the file": lambda: _gguf([_kv(b"s", STRING, _str(b"abc", 1 << 40))], []),
    "array count 2^60": lambda: _gguf([_kv(b"a", ARRAY, struct.pack("<IQ", U8, 1 << 60))], []),
    "arrays nested 1000 deep": lambda: _gguf(
        [_kv(b"a", ARRAY, struct.pack("<IQ", ARRAY, 1) * 1000 + struct.pack("<IQ", U8, 0))], []),
    "dims whose product overflows 64 bits": lambda: _gguf([], [_tensor_info(b"t", [1 << 32] * 3)]),
    "more dims than ggml allows": lambda: _gguf([], [_tensor_info(b"t", [1] * 70)]),
    "tensor offset past the end": lambda: _gguf([], [_tensor_info(b"t", [4], offset=1 << 40)], b"\x00" * 16),
    "tensor data cut short": lambda: _gguf([], [_tensor_info(b"t", [1024])], b"\x00" * 16),
    "alignment zero": lambda: _gguf([_kv(b"general.alignment", U32, struct.pack("<I", 0))],
                                    [_tensor_info(b"t", [4])], b"\x00" * 16),
    "alignment not a power of two": lambda: _gguf([_kv(b"general.alignment", U32, struct.pack("<I", 3))],
                                                  [_tensor_info(b"t", [4])], b"\x00" * 16),
    "unknown value type": lambda: _gguf([_kv(b"x", 99, b"\x00" * 8)], []),
    "duplicate tensor names": lambda: _gguf([], [_tensor_info(b"t", [4]), _tensor_info(b"t", [4])], b"\x00" * 32),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_gguf_is_refused_cleanly_without_big_allocations(case: str, tmp_path: Path) -> None:
    path = _write(tmp_path, HOSTILE[case]())
    tracemalloc.start()
    try:
        with pytest.raises(CorruptFileError) as err:
            _read_all(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(path) in str(err.value)
    assert type(err.value).__name__ != "UnexpectedReadError", err.value  # a real check, not the net
    assert peak < 16 << 20, f"{case}: {peak} bytes allocated for a {path.stat().st_size}-byte file"


@pytest.mark.parametrize("case", ["tensor count 2^63", "arrays nested 1000 deep", "tensor offset past the end"])
def test_cli_prints_one_error_line(case: str, tmp_path: Path, cli_run) -> None:
    path = _write(tmp_path, HOSTILE[case]())
    code, out, err = cli_run("ls", path)
    assert code != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[0].startswith("ERROR ") and str(path) in lines[0]
    assert "Traceback" not in err
