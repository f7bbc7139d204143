"""NumPy .npy/.npz: numpy writes what we read, np.load reads what we write, hostile files refused."""

from __future__ import annotations

import io
import struct
import zipfile
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest

import weightvault
from weightvault.errors import (
    HeaderTooLargeError,
    InvalidHeaderError,
    TruncatedFileError,
    UnknownDtypeError,
    UnsafePickleError,
    UnsupportedOperationError,
)
from weightvault.formats.numpy_npz import NumpyFormat
from weightvault.testing.formats import FormatTests


def _arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "c_order": rng.standard_normal((3, 4)).astype(np.float32),
        "fortran": np.asfortranarray(rng.standard_normal((2, 3, 4))),
        "big_endian": np.arange(12, dtype=">i4").reshape(3, 4),
        "big_endian_f8": rng.standard_normal(5).astype(">f8"),
        "scalar": np.array(7, np.int16),
        "empty": np.zeros((0, 3), np.float16),
        "flags": np.array([True, False, True]),
        "cplx": (rng.standard_normal(3) + 1j).astype(np.complex64),
        "layer/weight": np.ones((2, 2), np.uint8),
    }


@pytest.mark.parametrize("saver", ["savez", "savez_compressed"])
def test_reads_numpy_npz(tmp_path: Path, saver: str) -> None:
    arrays = _arrays()
    p = tmp_path / "a.npz"
    getattr(np, saver)(p, **arrays)
    with weightvault.open(p) as reader:
        assert reader.format == "numpy"
        assert reader.keys() == list(arrays)
        for name, arr in arrays.items():
            got = reader.get(name)
            assert got.dtype == arr.dtype.newbyteorder("=")
            assert got.shape == arr.shape
            np.testing.assert_array_equal(got, arr)
        assert reader.info("fortran").extra["order"] == "F"
        assert reader.info("big_endian").extra["byteorder"] == "big"
        assert reader.info("c_order").extra["compressed"] is (saver == "savez_compressed")


@pytest.mark.parametrize("version", [(1, 0), (2, 0), (3, 0)])
def test_reads_npy_every_header_version(tmp_path: Path, version: tuple[int, int]) -> None:
    arr = np.asfortranarray(np.arange(24, dtype=">f4").reshape(2, 3, 4))
    p = tmp_path / "w.npy"
    with open(p, "wb") as f:
        np.lib.format.write_array(f, arr, version=version)
    with weightvault.open(p) as reader:
        assert reader.keys() == ["w"]
        np.testing.assert_array_equal(reader.get("w"), arr)


def test_stored_npz_members_are_zero_copy_views(tmp_path: Path) -> None:
    p = tmp_path / "v.npz"
    np.savez(p, a=np.arange(100, dtype=np.float32))
    with NumpyFormat.open(p) as reader:
        got = reader.get("a")
        assert not got.flags.owndata and not got.flags.writeable


def test_numpy_loads_what_we_write(tmp_path: Path) -> None:
    arrays = _arrays()
    p = tmp_path / "out.npz"
    NumpyFormat.write(p, arrays)
    with np.load(p, allow_pickle=False) as z:
        assert list(z.keys()) == list(arrays)
        for name, arr in arrays.items():
            np.testing.assert_array_equal(z[name], arr)
    with NumpyFormat.open(p) as reader:  # our own layout is 64-byte aligned for mmap views
        assert all(reader.get(n).ctypes.data % 64 == 0 for n in reader.keys() if reader.get(n).size)


def test_compressed_and_single_npy_writes(tmp_path: Path) -> None:
    arr = np.arange(1000, dtype=np.float64)
    NumpyFormat.write(tmp_path / "c.npz", {"x": arr}, compress=True)
    with zipfile.ZipFile(tmp_path / "c.npz") as z:
        assert z.getinfo("x.npy").compress_type == zipfile.ZIP_DEFLATED
    np.testing.assert_array_equal(np.load(tmp_path / "c.npz")["x"], arr)
    NumpyFormat.write(tmp_path / "one.npy", {"x": arr})
    np.testing.assert_array_equal(np.load(tmp_path / "one.npy"), arr)
    with pytest.raises(UnsupportedOperationError):
        NumpyFormat.write(tmp_path / "two.npy", {"x": arr, "y": arr})


def test_bfloat16_has_no_npy_code(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedOperationError):
        NumpyFormat.write(tmp_path / "b.npz", {"x": np.ones(2, ml_dtypes.bfloat16)})


def test_object_arrays_are_refused_and_never_unpickled(tmp_path: Path) -> None:
    p = tmp_path / "obj.npy"
    np.save(p, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(UnsafePickleError):
        NumpyFormat.open(p)
    z = tmp_path / "obj.npz"
    np.savez(z, ok=np.ones(2), bad=np.array([object()], dtype=object))
    with NumpyFormat.open(z) as r:  # the numeric member is read, the pickled one listed, not loaded
        assert r.keys() == ["ok"]
        assert "pickle" in r.skipped["bad"]


def _npy(header: str, data: bytes = b"", version: int = 1) -> bytes:
    body = header.encode("latin-1")
    if version == 1:
        return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(body)) + body + data
    return b"\x93NUMPY\x02\x00" + struct.pack("<I", len(body)) + body + data


@pytest.mark.parametrize(
    ("content", "error"),
    [
        (_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000,), }\n", b"\0" * 16), TruncatedFileError),
        (_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (-1,), }\n"), InvalidHeaderError),
        (_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }\n", b"\0" * 4), TruncatedFileError),
        (_npy("__import__('os').system('echo pwned')"), InvalidHeaderError),
        (_npy("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,), }\n", b"\0" * 4), UnknownDtypeError),
        (_npy("{'descr': '<f16', 'fortran_order': False, 'shape': (1,), }\n", b"\0" * 16), UnknownDtypeError),
        (b"\x93NUMPY\x02\x00" + struct.pack("<I", 50_000_000) + b"{", HeaderTooLargeError),
        (b"\x93NUMPY\x02\x00" + struct.pack("<I", 900), TruncatedFileError),
        (b"\x93NUMPY\x07\x00\x10\x00", InvalidHeaderError),
    ],
)
def test_hostile_npy_headers(tmp_path: Path, content: bytes, error: type[Exception]) -> None:
    p = tmp_path / "bad.npy"
    p.write_bytes(content)
    with pytest.raises(error):
        NumpyFormat.open(p)


def test_deflated_member_claiming_impossible_size_is_refused(tmp_path: Path) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, a=np.zeros(100_000, np.float32))
    data = bytearray(buf.getvalue())
    # central directory uncompressed-size field of the only member -> 4 GB - 1
    cd = data.rindex(b"PK\x01\x02")
    data[cd + 24 : cd + 28] = struct.pack("<I", 0xFFFFFFF0)
    p = tmp_path / "bomb.npz"
    p.write_bytes(bytes(data))
    with pytest.raises(InvalidHeaderError):
        NumpyFormat.open(p)


def test_truncated_npz_is_rejected(tmp_path: Path) -> None:
    p = tmp_path / "t.npz"
    np.savez(p, a=np.arange(10_000, dtype=np.float32))
    p.write_bytes(p.read_bytes()[:20_000])
    with pytest.raises(InvalidHeaderError):  # the zip directory at the end is gone
        NumpyFormat.open(p)


class TestNpzConformance(FormatTests):
    format_name = "numpy"
    suffix = ".npz"
    dtypes = ("float32", "float64", "float16", "int8", "uint8", "int16", "uint16", "int32", "uint32",
              "int64", "uint64", "bool", "complex64", "complex128")  # fmt: skip


# -- non-numeric members are listed in ``skipped``, never refused whole (#13.1) --------------------
def test_npz_with_text_and_object_members_reads_the_numbers(tmp_path: Path) -> None:
    p = tmp_path / "mixed.npz"
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.savez(p, w=w, labels=np.array(["cat", "dog"]), meta=np.array([{"a": 1}], dtype=object),
             rec=np.zeros(2, dtype=[("a", "<f4"), ("b", "<i4")]), when=np.array(["2020-01-01"], "M8[D]"))
    compressed = tmp_path / "mixed_c.npz"
    np.savez_compressed(compressed, w=w, labels=np.array(["cat", "dog"]), meta=np.array([None], dtype=object))
    for path in (p, compressed):
        with NumpyFormat.open(path) as r:
            assert r.keys() == ["w"]
            np.testing.assert_array_equal(r.get("w"), w)
            skipped = r.skipped
            assert "<U3" in skipped["labels"]
            assert "pickle" in skipped["meta"]
    with NumpyFormat.open(p) as r:
        assert set(r.skipped) == {"labels", "meta", "rec", "when"}


def test_plain_npy_of_text_is_a_clear_error(tmp_path: Path) -> None:
    p = tmp_path / "labels.npy"
    np.save(p, np.array(["cat", "dog"]))
    with pytest.raises(UnknownDtypeError, match="<U3"):
        NumpyFormat.open(p)


# -- Python 2 headers (#13.12) ---------------------------------------------------------------------------
@pytest.mark.parametrize("shape_text", ["(2L,)", "(2L, 3L)", "(2L, 3)", "()"])
def test_python2_npy_header(tmp_path: Path, shape_text: str) -> None:
    shape = tuple(int(d.strip().rstrip("Ll")) for d in shape_text.strip("()").split(",") if d.strip())
    data = np.arange(int(np.prod(shape)), dtype="<f4").reshape(shape)
    p = tmp_path / "py2.npy"
    p.write_bytes(_npy("{'descr': '<f4', 'fortran_order': False, 'shape': %s, }\n" % shape_text, data.tobytes()))
    with NumpyFormat.open(p) as r:
        np.testing.assert_array_equal(r.get("py2"), data)
    with pytest.warns(UserWarning, match="Python 2") if "L" in shape_text.upper() else _no_warning():
        np.testing.assert_array_equal(np.load(p), data)  # numpy agrees


def _no_warning() -> Any:
    import contextlib

    return contextlib.nullcontext()


@pytest.mark.parametrize("header", [
    "{'descr': '<f4', 'fortran_order': False, 'shape': (__import__('os').system('touch pwned')L,), }",
    "{'descr': '<f4L', 'fortran_order': False, 'shape': (2,), }",
    "{'descr': '<f4', 'fortran_order': False, 'shape': (2LL,), }",
])
def test_python2_header_fix_runs_no_code(tmp_path: Path, header: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    p = tmp_path / "evil.npy"
    p.write_bytes(_npy(header + "\n", b"\0" * 8))
    with pytest.raises((InvalidHeaderError, UnknownDtypeError)):
        NumpyFormat.open(p)
    assert not (tmp_path / "pwned").exists()
