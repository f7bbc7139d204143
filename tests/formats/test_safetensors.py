"""safetensors single files and sharded Hugging Face repositories, against the safetensors library."""

from __future__ import annotations

import json
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

import weightvault
from weightvault.errors import (
    CheckpointNotFoundError,
    HeaderTooLargeError,
    InvalidHeaderError,
    InvalidOffsetError,
    TruncatedFileError,
)
from weightvault.formats.safetensors import INDEX_FILE, SafetensorsFormat, ShardedSafetensorsReader
from weightvault.testing.formats import FormatTests

st_numpy = pytest.importorskip("safetensors.numpy")
from safetensors import safe_open  # noqa: E402

RNG = np.random.default_rng(0)
TENSORS = {
    "embed.weight": RNG.standard_normal((16, 8)).astype(np.float32),
    "layers.0.attn.q.weight": RNG.standard_normal((8, 8)).astype(np.float16),
    "layers.0.attn.q.bias": np.arange(8, dtype=np.int64),
    "layers.1.norm.weight": RNG.standard_normal(8).astype(ml_dtypes.bfloat16),
    "lm_head.weight": RNG.standard_normal((8, 16)).astype(np.float32),
}


def _hf_repo(root: Path) -> Path:
    """A repository laid out as transformers' save_pretrained does, shards written by safetensors."""
    root.mkdir()
    shards = {"model-00001-of-00002.safetensors": ["embed.weight", "layers.0.attn.q.weight", "layers.0.attn.q.bias"],
              "model-00002-of-00002.safetensors": ["layers.1.norm.weight", "lm_head.weight"]}  # fmt: skip
    weight_map = {}
    for file, names in shards.items():
        st_numpy.save_file({n: TENSORS[n] for n in names}, root / file, metadata={"format": "pt"})
        weight_map.update({n: file for n in names})
    total = sum(a.nbytes for a in TENSORS.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (root / INDEX_FILE).write_text(json.dumps(index, indent=2))
    return root


def test_reads_safetensors_library_file(tmp_path: Path) -> None:
    p = tmp_path / "m.safetensors"
    st_numpy.save_file(TENSORS, p, metadata={"format": "pt", "step": "3"})
    with weightvault.open(p) as reader:
        assert reader.format == "safetensors"
        assert sorted(reader.keys()) == sorted(TENSORS)
        assert reader.metadata == {"format": "pt", "step": "3"}
        for name, arr in TENSORS.items():
            np.testing.assert_array_equal(reader.get(name), arr)


def test_safetensors_library_reads_our_file(tmp_path: Path) -> None:
    p = tmp_path / "ours.safetensors"
    SafetensorsFormat.write(p, TENSORS, metadata={"epoch": 2, "name": "x"})
    loaded = st_numpy.load_file(p)
    assert sorted(loaded) == sorted(TENSORS)
    for name, arr in TENSORS.items():
        np.testing.assert_array_equal(loaded[name], arr)
    with safe_open(p, "np") as f:
        assert f.metadata() == {"epoch": "2", "name": "x"}


@pytest.mark.parametrize("via", ["directory", "index"])
def test_reads_sharded_repository(tmp_path: Path, via: str) -> None:
    root = _hf_repo(tmp_path / "repo")
    target = root if via == "directory" else root / INDEX_FILE
    with weightvault.open(target) as reader:
        assert isinstance(reader, ShardedSafetensorsReader)
        assert reader.format == "safetensors"
        assert reader.keys() == sorted(TENSORS)
        assert reader.metadata["total_size"] == sum(a.nbytes for a in TENSORS.values())
        assert reader.metadata["format"] == "pt"
        assert reader.info("lm_head.weight").extra["file"] == "model-00002-of-00002.safetensors"
        for name, arr in TENSORS.items():
            got = reader.get(name)
            assert got.dtype == arr.dtype
            np.testing.assert_array_equal(got, arr)


def test_single_file_repository_without_index(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    st_numpy.save_file(TENSORS, root / "model.safetensors")
    with SafetensorsFormat.open(root) as reader:
        assert sorted(reader.keys()) == sorted(TENSORS)


def test_writes_sharded_repository_the_library_reads(tmp_path: Path) -> None:
    out = tmp_path / "out"
    SafetensorsFormat.write(out, TENSORS, metadata={"source": "test"}, shard_size=600)
    index = json.loads((out / INDEX_FILE).read_text())
    assert index["metadata"]["total_size"] == sum(a.nbytes for a in TENSORS.values())
    assert index["metadata"]["source"] == "test"
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 1
    assert files == sorted(f.name for f in out.glob("*.safetensors"))
    assert all(f.endswith(f"-of-{len(files):05d}.safetensors") for f in files)
    for name, file in index["weight_map"].items():
        with safe_open(out / file, "np") as f:
            assert f.metadata()["format"] == "pt"  # transformers refuses shards without it
            np.testing.assert_array_equal(f.get_tensor(name), TENSORS[name])
    for file in files:  # each shard holds at most shard_size bytes unless one tensor is larger
        sizes = [TENSORS[n].nbytes for n, f in index["weight_map"].items() if f == file]
        assert sum(sizes) <= 600 or len(sizes) == 1
    # and the repository reads back as one checkpoint
    with weightvault.open(out) as reader:
        assert reader.format == "safetensors"
        for name, arr in TENSORS.items():
            np.testing.assert_array_equal(reader.get(name), arr)


def test_native_directory_is_not_claimed(tmp_path: Path) -> None:
    p = tmp_path / "native_ckpt"
    weightvault.save({"a": np.ones(3, np.float32)}, p, single_file=False)
    assert (p / INDEX_FILE).exists()
    assert not SafetensorsFormat.sniff(p, b"")
    with weightvault.open(p) as reader:
        assert reader.format == "native"


def _rewrite_index(root: Path, **changes: str) -> None:
    index = json.loads((root / INDEX_FILE).read_text())
    index["weight_map"].update(changes)
    (root / INDEX_FILE).write_text(json.dumps(index))


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"lm_head.weight": "../outside.safetensors"}, InvalidHeaderError),
        ({"lm_head.weight": "/etc/passwd"}, InvalidHeaderError),
        ({"lm_head.weight": "model-00009-of-00009.safetensors"}, CheckpointNotFoundError),
        ({"lm_head.weight": "model-00001-of-00002.safetensors"}, InvalidHeaderError),
        ({"ghost.weight": "model-00002-of-00002.safetensors"}, InvalidHeaderError),
    ],
)
def test_repository_index_is_validated(tmp_path: Path, change: dict[str, str], error: type[Exception]) -> None:
    root = _hf_repo(tmp_path / "repo")
    st_numpy.save_file({"x": np.ones(1, np.float32)}, tmp_path / "outside.safetensors")
    _rewrite_index(root, **change)
    with pytest.raises(error):
        SafetensorsFormat.open(root)


def test_symlinked_shard_leaving_the_directory_is_refused(tmp_path: Path) -> None:
    root = _hf_repo(tmp_path / "repo")
    st_numpy.save_file({"lm_head.weight": TENSORS["lm_head.weight"]}, tmp_path / "elsewhere.safetensors")
    (root / "link.safetensors").symlink_to(tmp_path / "elsewhere.safetensors")
    _rewrite_index(root, **{"lm_head.weight": "link.safetensors"})
    with pytest.raises(InvalidHeaderError, match="outside"):
        SafetensorsFormat.open(root)


def test_bad_index_json(tmp_path: Path) -> None:
    root = _hf_repo(tmp_path / "repo")
    (root / INDEX_FILE).write_text('{"weight_map": [1, 2]}')
    with pytest.raises(InvalidHeaderError):
        SafetensorsFormat.open(root)
    (root / INDEX_FILE).write_text("{not json")
    with pytest.raises(InvalidHeaderError):
        SafetensorsFormat.open(root)


def test_truncated_shard_in_repository(tmp_path: Path) -> None:
    root = _hf_repo(tmp_path / "repo")
    shard = root / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(TruncatedFileError) as exc:
        SafetensorsFormat.open(root)
    assert "model-00002-of-00002" in str(exc.value)


def test_span_longer_than_shape_times_itemsize_is_refused(tmp_path: Path) -> None:
    # 12 bytes for a [2] float32 (8 bytes): contiguous, ends at the file's end, but 4 bytes too long
    raw = b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,12]}}'
    p = tmp_path / "long.safetensors"
    p.write_bytes(len(raw).to_bytes(8, "little") + raw + b"\0" * 12)
    with pytest.raises(InvalidOffsetError, match="does not match shape") as exc:
        SafetensorsFormat.open(p)
    assert exc.value.tensor == "a"


def test_a_tensor_named_metadata_cannot_be_written(tmp_path: Path) -> None:
    from weightvault.errors import UnsupportedOperationError

    for dst in (tmp_path / "x.safetensors", tmp_path / "repo"):
        with pytest.raises(UnsupportedOperationError, match="__metadata__") as exc:
            SafetensorsFormat.write(dst, {"__metadata__": np.ones(2, np.float32)})
        assert exc.value.tensor == "__metadata__"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("content", "error"),
    [
        ((10**9).to_bytes(8, "little") + b"{}", HeaderTooLargeError),
        ((500).to_bytes(8, "little") + b"{}", TruncatedFileError),
        (b"\x02\0\0\0\0\0\0\0{}" + b"\0" * 4, InvalidOffsetError),
        (b"\x30\0\0\0\0\0\0\0" + b'{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}'[:48], InvalidHeaderError),
    ],
)
def test_hostile_single_files(tmp_path: Path, content: bytes, error: type[Exception]) -> None:
    p = tmp_path / "bad.safetensors"
    p.write_bytes(content)
    with pytest.raises(error):
        SafetensorsFormat.open(p)


_ST_DTYPES = ("float32", "float64", "float16", "bfloat16", "int8", "uint8", "int16", "uint16", "int32", "uint32",
              "int64", "uint64", "bool", "complex64", "float8_e4m3fn", "float8_e5m2")  # fmt: skip


class TestSafetensorsFileConformance(FormatTests):
    format_name = "safetensors"
    suffix = ".safetensors"
    dtypes = _ST_DTYPES


class TestSafetensorsRepositoryConformance(FormatTests):
    format_name = "safetensors"
    suffix = ""
    dtypes = _ST_DTYPES
    writer_options = {"shard_size": 64}  # noqa: RUF012 - read-only class attribute
