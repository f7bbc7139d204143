"""GGUF: files written by the real ``gguf`` package (GGUFWriter) are read, hostile headers refused."""

from __future__ import annotations

import struct
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

import weightvault
from weightvault.errors import (
    DuplicateTensorError,
    HeaderTooLargeError,
    InvalidHeaderError,
    InvalidOffsetError,
    TruncatedFileError,
    UnsupportedOperationError,
)
from weightvault.formats.gguf import GGUFFormat

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as Q  # noqa: E402
from gguf.quants import dequantize, quantize  # noqa: E402

RNG = np.random.default_rng(0)
F32 = RNG.standard_normal((3, 64)).astype(np.float32)
Q_SRC = RNG.standard_normal((4, 64)).astype(np.float32)


def _write(path: Path, *, big_endian: bool = False, extra_quant: bool = False) -> dict[str, np.ndarray]:
    kwargs = {"endianess": gguf.GGUFEndian.BIG} if big_endian else {}
    w = gguf.GGUFWriter(str(path), "llama", **kwargs)
    w.add_uint32("llama.context_length", 2048)
    w.add_float32("llama.rope.freq_base", 10000.0)
    w.add_bool("general.flag", True)
    w.add_int64("general.big", -(2**40))
    w.add_string("general.name", "tiny ü")
    w.add_array("tokenizer.ggml.tokens", ["<s>", "</s>", "hello"])
    w.add_array("tokenizer.ggml.scores", [0.0, -1.5, 2.25])
    w.add_array("nested", [[1, 2], [3]])
    q8 = quantize(Q_SRC, Q.Q8_0)
    q4 = quantize(Q_SRC, Q.Q4_0)
    bf = F32.astype(ml_dtypes.bfloat16)
    w.add_tensor("f32", F32)
    w.add_tensor("f16", F32.astype(np.float16))
    w.add_tensor("bf16", bf.view(np.uint16), raw_dtype=Q.BF16)
    w.add_tensor("q8", q8, raw_shape=q8.shape, raw_dtype=Q.Q8_0)
    w.add_tensor("q4", q4, raw_shape=q4.shape, raw_dtype=Q.Q4_0)
    w.add_tensor("i32", np.arange(6, dtype=np.int32).reshape(2, 3))
    if extra_quant:
        w.add_tensor("k4", np.zeros((2, 144), np.uint8), raw_shape=(2, 144), raw_dtype=Q.Q4_K)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return {
        "f32": F32,
        "f16": F32.astype(np.float16),
        "bf16": bf,
        "q8": dequantize(q8, Q.Q8_0),
        "q4": dequantize(q4, Q.Q4_0),
        "i32": np.arange(6, dtype=np.int32).reshape(2, 3),
    }


@pytest.mark.parametrize("big_endian", [False, True])
def test_reads_gguf_writer_output(tmp_path: Path, big_endian: bool) -> None:
    p = tmp_path / "m.gguf"
    expected = _write(p, big_endian=big_endian)
    with weightvault.open(p) as reader:
        assert reader.format == "gguf"
        assert reader.keys() == list(expected)
        for name, arr in expected.items():
            got = reader.get(name)
            assert got.shape == arr.shape, name
            np.testing.assert_array_equal(got, arr, err_msg=name)
        assert reader.get("bf16").dtype == ml_dtypes.bfloat16
        md = reader.metadata
        assert md["gguf"]["version"] == 3
        assert md["gguf"]["endian"] == ("big" if big_endian else "little")
        assert md["general.architecture"] == "llama"
        assert md["llama.context_length"] == 2048
        assert md["general.flag"] is True
        assert md["general.big"] == -(2**40)
        assert md["general.name"] == "tiny ü"
        assert md["tokenizer.ggml.tokens"] == ["<s>", "</s>", "hello"]
        assert md["tokenizer.ggml.scores"] == [0.0, -1.5, 2.25]
        assert md["nested"] == [[1, 2], [3]]


def test_quantized_tensors_report_stored_type_and_dequantize(tmp_path: Path) -> None:
    p = tmp_path / "q.gguf"
    _write(p)
    with GGUFFormat.open(p) as reader:
        info = reader.info("q8")
        assert info.dtype == "float32" and info.shape == (4, 64)
        assert info.extra["ggml_type"] == "Q8_0" and info.extra["quantized"]
        got = reader.get("q8")
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, Q_SRC, atol=np.abs(Q_SRC).max() / 100)  # close to the source


def test_unsupported_quantization_is_listed_and_named(tmp_path: Path) -> None:
    p = tmp_path / "k.gguf"
    _write(p, extra_quant=True)
    with GGUFFormat.open(p) as reader:
        assert "k4" in reader.keys()
        assert reader.info("k4").extra["ggml_type"] == "Q4_K"
        assert reader.info("k4").shape == (2, 256)
        with pytest.raises(UnsupportedOperationError, match="Q4_K"):
            reader.get("k4")


def _minimal(n_tensors: int = 1, n_kv: int = 0, *, name_len: int | None = None, offset: int = 0,
             dims: tuple[int, ...] = (4,), kv: bytes = b"") -> bytes:
    """A hand-built little-endian v3 file with one F32 tensor of 4 elements."""
    head = b"GGUF" + struct.pack("<IQQ", 3, n_tensors, n_kv) + kv
    name = b"w"
    info = struct.pack("<Q", len(name) if name_len is None else name_len) + name
    info += struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
    info += struct.pack("<IQ", 0, offset)
    body = head + info
    body += b"\0" * ((-len(body)) % 32)
    return body + np.arange(4, dtype="<f4").tobytes()


@pytest.mark.parametrize(
    ("content", "error"),
    [
        (_minimal(n_tensors=10**15), HeaderTooLargeError),
        (_minimal(name_len=2**40), HeaderTooLargeError),
        (_minimal(name_len=5000), TruncatedFileError),
        (_minimal(offset=4096), TruncatedFileError),
        (_minimal(offset=3), InvalidOffsetError),
        (_minimal(dims=(4, 1, 1, 1, 1)), InvalidHeaderError),
        (_minimal(dims=(1 << 40,)), TruncatedFileError),
        (_minimal(n_kv=1, kv=struct.pack("<Q", 1) + b"k" + struct.pack("<IIQ", 9, 4, 10**12)), TruncatedFileError),
        (_minimal(n_kv=1, kv=struct.pack("<Q", 1) + b"k" + struct.pack("<I", 77)), InvalidHeaderError),
        (b"GGUF" + struct.pack("<I", 9) + b"\0" * 16, InvalidHeaderError),
        (b"GGUF\x03\0\0\0", TruncatedFileError),
    ],
)
def test_hostile_headers(tmp_path: Path, content: bytes, error: type[Exception]) -> None:
    p = tmp_path / "bad.gguf"
    p.write_bytes(content)
    with pytest.raises(error):
        GGUFFormat.open(p)


def test_minimal_file_is_valid_and_duplicates_are_refused(tmp_path: Path) -> None:
    p = tmp_path / "ok.gguf"
    p.write_bytes(_minimal())
    with GGUFFormat.open(p) as reader:
        np.testing.assert_array_equal(reader.get("w"), np.arange(4, dtype=np.float32))
    kv = struct.pack("<Q", 1) + b"k" + struct.pack("<II", 4, 1)
    p.write_bytes(_minimal(n_kv=2, kv=kv + kv))
    with pytest.raises(DuplicateTensorError):
        GGUFFormat.open(p)


def test_truncated_real_file(tmp_path: Path) -> None:
    p = tmp_path / "m.gguf"
    _write(p)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) - 40])
    with pytest.raises(TruncatedFileError):
        GGUFFormat.open(p)


def test_gguf_is_read_only(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedOperationError):
        GGUFFormat.write(tmp_path / "x.gguf", {"a": np.ones(2, np.float32)})


@pytest.mark.parametrize("big_endian", [False, True])
def test_unquantized_tensors_have_byte_spans(tmp_path: Path, big_endian: bool) -> None:
    import os

    p = tmp_path / "m.gguf"
    _write(p, big_endian=big_endian)
    with weightvault.open(p) as r:
        for name in r.keys():
            span = r.byte_span(name)
            if name in ("q8", "q4") or big_endian:
                assert span is None, name  # dequantized or byte-swapped on read: no verbatim bytes
                continue
            assert span is not None, name
            with open(p, "rb") as f:
                assert os.pread(f.fileno(), span.nbytes, span.offset) == r.get(name).tobytes(), name


def test_gguf_to_safetensors_streams_plain_tensors_and_dequantizes_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from weightvault.formats.gguf import GGUFReader

    p = tmp_path / "m.gguf"
    expected = _write(p)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    weightvault.convert(p, tmp_path / "a" / "m.safetensors", to="safetensors")
    monkeypatch.setattr(GGUFReader, "byte_span", lambda self, name: None)
    weightvault.convert(p, tmp_path / "b" / "m.safetensors", to="safetensors")
    assert (tmp_path / "a" / "m.safetensors").read_bytes() == (tmp_path / "b" / "m.safetensors").read_bytes()
    with weightvault.open(tmp_path / "a" / "m.safetensors") as r:
        for name, want in expected.items():
            assert np.array_equal(r.get(name), want), name
