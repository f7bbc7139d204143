"""Every way a native/safetensors file can be broken raises its own error, naming file and tensor."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

import weightvault
from weightvault import errors
from weightvault.formats.native import COMMIT_MARKER, MANIFEST_FILE


def _raw_file(path: Path, header: dict, data: bytes, n_override: int | None = None) -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", n_override if n_override is not None else len(raw)) + raw + data)
    return path


def _read_all(path: Path) -> None:
    with weightvault.open(path) as r:
        for name in r.keys():
            np.asarray(r.get(name)).sum()


@pytest.fixture
def good(tmp_path: Path) -> Path:
    return weightvault.save(
        {"a": np.arange(16, dtype=np.float32), "b": np.ones((2, 3), np.float64)}, tmp_path / "good.safetensors"
    )


def test_header_length_over_cap(tmp_path: Path) -> None:
    p = _raw_file(tmp_path / "x.safetensors", {}, b"", n_override=200_000_000)
    with pytest.raises(errors.HeaderTooLargeError, match="over the"):
        weightvault.open(p, format="safetensors")


def test_header_longer_than_file(tmp_path: Path) -> None:
    p = _raw_file(tmp_path / "x.safetensors", {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"", n_override=5000)
    with pytest.raises(errors.TruncatedFileError) as exc:
        weightvault.open(p, format="safetensors")
    assert str(p) in str(exc.value)


def test_truncated_data(good: Path) -> None:
    data = good.read_bytes()
    good.write_bytes(data[:-10])
    with pytest.raises(errors.TruncatedFileError, match="file has"):
        weightvault.open(good)


def test_trailing_bytes_are_rejected(good: Path) -> None:
    good.write_bytes(good.read_bytes() + b"\x00" * 8)
    with pytest.raises(errors.InvalidOffsetError, match="unexplained bytes"):
        weightvault.open(good)


def test_bad_json(tmp_path: Path) -> None:
    p = tmp_path / "x.safetensors"
    raw = b'{"a": {"dtype": '
    p.write_bytes(struct.pack("<Q", len(raw)) + raw)
    with pytest.raises(errors.InvalidHeaderError, match="JSON"):
        weightvault.open(p, format="safetensors")


def test_duplicate_names(tmp_path: Path) -> None:
    p = tmp_path / "x.safetensors"
    raw = b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}'
    p.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\x00" * 8)
    with pytest.raises(errors.DuplicateTensorError) as exc:
        weightvault.open(p, format="safetensors")
    assert exc.value.tensor == "a"


def test_unknown_dtype(tmp_path: Path) -> None:
    p = _raw_file(tmp_path / "x.safetensors", {"q": {"dtype": "Q4_K", "shape": [4], "data_offsets": [0, 4]}}, b"\x00" * 4)
    with pytest.raises(errors.UnknownDtypeError, match="Q4_K") as exc:
        weightvault.open(p, format="safetensors")
    assert exc.value.tensor == "q"


@pytest.mark.parametrize(
    ("entries", "error", "message"),
    [
        ({"a": [0, 8], "b": [4, 12]}, errors.InvalidOffsetError, "overlaps"),
        ({"a": [0, 8], "b": [12, 20]}, errors.InvalidOffsetError, "hole"),
        ({"a": [4, 12], "b": [12, 20]}, errors.InvalidOffsetError, "hole"),
    ],
)
def test_lying_offsets(tmp_path: Path, entries: dict, error: type, message: str) -> None:
    header = {k: {"dtype": "F32", "shape": [2], "data_offsets": v} for k, v in entries.items()}
    end = max(v[1] for v in entries.values())
    p = _raw_file(tmp_path / "x.safetensors", header, b"\x00" * end)
    with pytest.raises(error, match=message):
        weightvault.open(p, format="safetensors")


def test_shape_that_lies_about_size_is_caught_before_allocation(tmp_path: Path) -> None:
    # 2**40 elements would be 4 TiB; the check must fail on arithmetic, not on an allocation.
    header = {"huge": {"dtype": "F32", "shape": [2**20, 2**20], "data_offsets": [0, 16]}}
    p = _raw_file(tmp_path / "x.safetensors", header, b"\x00" * 16)
    with pytest.raises(errors.InvalidOffsetError, match="does not match shape") as exc:
        weightvault.open(p, format="safetensors")
    assert exc.value.tensor == "huge"


def test_negative_or_bad_shapes(tmp_path: Path) -> None:
    header = {"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}
    with pytest.raises(errors.InvalidHeaderError, match="non-negative"):
        weightvault.open(_raw_file(tmp_path / "x.safetensors", header, b"\x00" * 4), format="safetensors")


def test_metadata_must_be_strings(tmp_path: Path) -> None:
    header = {"__metadata__": {"step": 5}}
    with pytest.raises(errors.InvalidHeaderError, match="strings"):
        weightvault.open(_raw_file(tmp_path / "x.safetensors", header, b""), format="safetensors")


def test_bit_flip_is_caught_by_checksum(good: Path) -> None:
    data = bytearray(good.read_bytes())
    data[-3] ^= 0x10  # inside tensor data, header untouched
    good.write_bytes(bytes(data))
    _read_all(good)  # structurally valid: only the checksum can tell
    with pytest.raises(errors.ChecksumMismatchError) as exc:
        weightvault.verify(good)
    assert str(good) in str(exc.value)
    with pytest.raises(errors.ChecksumMismatchError):
        weightvault.load(good, verify=True)


def test_manifest_disagreeing_with_shard_header(tmp_path: Path) -> None:
    p = weightvault.save({"w": np.ones(4, np.float32)}, tmp_path / "d")
    manifest = json.loads((p / MANIFEST_FILE).read_text())
    manifest["tensors"]["w"]["shape"] = [2, 2]
    (p / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(errors.InvalidHeaderError, match=r"manifest says .* \[2, 2\]") as exc:
        weightvault.load(p)
    assert exc.value.tensor == "w"


def test_missing_shard_and_escaping_shard_name(tmp_path: Path) -> None:
    p = weightvault.save({"w": np.ones(4, np.float32)}, tmp_path / "d")
    shard = next(p.glob("model-*.safetensors"))
    manifest = json.loads((p / MANIFEST_FILE).read_text())
    manifest["tensors"]["w"]["file"] = "../outside.safetensors"
    (p / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(errors.InvalidHeaderError, match="leaves the checkpoint"):
        weightvault.load(p)
    manifest["tensors"]["w"]["file"] = shard.name
    (p / MANIFEST_FILE).write_text(json.dumps(manifest))
    shard.unlink()
    with pytest.raises(errors.CheckpointNotFoundError, match="missing"):
        weightvault.load(p)


def test_uncommitted_directory_is_not_a_checkpoint(tmp_path: Path) -> None:
    p = weightvault.save({"w": np.ones(4, np.float32)}, tmp_path / "d")
    (p / COMMIT_MARKER).unlink()
    with pytest.raises(errors.CheckpointNotFoundError, match="incomplete checkpoint"):
        weightvault.load(p)


def test_newer_format_version_is_refused_with_a_hint(tmp_path: Path) -> None:
    p = weightvault.save({"w": np.ones(4, np.float32)}, tmp_path / "d")
    manifest = json.loads((p / MANIFEST_FILE).read_text())
    manifest["format_version"] = 99
    (p / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(errors.InvalidHeaderError, match="newer") as exc:
        weightvault.open(p)
    assert exc.value.hint == "upgrade weightvault"


def test_errors_share_one_hierarchy_and_builtin_bases() -> None:
    assert issubclass(errors.TruncatedFileError, errors.CorruptFileError)
    assert issubclass(errors.CorruptFileError, (errors.WeightVaultError, ValueError))
    assert issubclass(errors.TensorNotFoundError, KeyError)
    assert issubclass(errors.CheckpointNotFoundError, FileNotFoundError)
    e = errors.TensorNotFoundError("gone", path="/x/y.pt", tensor="fc.w")
    assert str(e) == "/x/y.pt: tensor 'fc.w': gone"
