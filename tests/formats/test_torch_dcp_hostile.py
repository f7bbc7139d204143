"""Hostile and corrupt torch.distributed.checkpoint directories (the ``torch_dcp`` format).

Each case starts from a checkpoint ``dcp.save`` really wrote, then changes its ``.metadata`` (the
test re-pickles torch's own Metadata objects, or writes a payload pickle by hand), its ``.distcp``
chunks or the directory. Every case must end in a WeightVaultError naming the file (and the
tensor, where there is one), run no code, allocate nothing the file does not hold, and read nothing
outside the checkpoint directory.
"""

from __future__ import annotations

import io
import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import weightvault
from weightvault.errors import (
    CheckpointNotFoundError,
    HeaderTooLargeError,
    InvalidHeaderError,
    InvalidOffsetError,
    ResourceLimitError,
    UnsafePickleError,
    UnsupportedOperationError,
    WeightVaultError,
)

torch = pytest.importorskip("torch")
dcp = pytest.importorskip("torch.distributed.checkpoint")
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, MetadataIndex

W = torch.arange(12, dtype=torch.float32).reshape(3, 4)
PAYLOAD_MARK = "weightvault-dcp-payload-ran"


class _Payload:
    """Pickles as a call to os.system; if any reader ran it, the marker file would appear."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def _save(state: dict[str, Any], path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        dcp.save(state, checkpoint_id=path)
    return path


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    return _save({"w": W.clone(), "b": torch.arange(5.0), "step": 3}, tmp_path / "ckpt")


def _metadata(ckpt: Path) -> Any:
    # The test's own file, just written by torch: loading it with pickle here is trusted.
    with open(ckpt / ".metadata", "rb") as f:
        return pickle.load(f)


def _write_metadata(ckpt: Path, md: Any) -> None:
    with open(ckpt / ".metadata", "wb") as f:
        pickle.dump(md, f)


def _info(md: Any, fqn: str, offset: tuple[int, ...] | None = None) -> Any:
    return md.storage_data[MetadataIndex(fqn, offset)]


def _two_chunks(ckpt: Path) -> Any:
    """Rewrite ``w`` as two row chunks (rows 0-1 and row 2) in a second .distcp file, as two ranks
    of an FSDP run would have saved it; returns the metadata (already written)."""
    md = _metadata(ckpt)
    buf = io.BytesIO()
    spans = []
    for rows in (slice(0, 2), slice(2, 3)):
        start = buf.tell()
        torch.save(W[rows].clone(), buf)
        spans.append((start, buf.tell() - start))
    (ckpt / "__1_0.distcp").write_bytes(buf.getvalue())
    entry = md.state_dict_metadata["w"]
    entry.chunks = [
        ChunkStorageMetadata(torch.Size([0, 0]), torch.Size([2, 4])),
        ChunkStorageMetadata(torch.Size([2, 0]), torch.Size([1, 4])),
    ]
    del md.storage_data[MetadataIndex("w", (0, 0))]
    for chunk, (start, length) in zip(entry.chunks, spans, strict=True):
        md.storage_data[MetadataIndex("w", chunk.offsets)] = _StorageInfo(
            "__1_0.distcp", start, length
        )
    _write_metadata(ckpt, md)
    return md


def _refused(
    path: Path,
    error: type[WeightVaultError] = WeightVaultError,
    *,
    tensor: str | None = None,
    match: str | None = None,
) -> WeightVaultError:
    """Open and read everything; the first error must be ``error`` naming a file of the checkpoint."""
    with pytest.raises(error, match=match) as excinfo, weightvault.open(path) as reader:
        for name in reader:
            reader.get(name)
    exc = excinfo.value
    assert exc.path is not None and str(path) in exc.path, exc
    if tensor is not None:
        assert exc.tensor == tensor, exc
    return exc


def test_the_unmodified_checkpoints_read(ckpt: Path) -> None:
    with weightvault.open(ckpt) as reader:
        assert np.array_equal(reader.get("w"), W.numpy())
    _two_chunks(ckpt)
    with weightvault.open(ckpt) as reader:
        assert reader.info("w").extra["chunks"] == 2
        assert np.array_equal(reader.get("w"), W.numpy())


# -- the .metadata pickle --------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["entry", "whole"])
def test_a_payload_in_the_metadata_is_refused_and_never_runs(
    ckpt: Path, tmp_path: Path, where: str
) -> None:
    marker = tmp_path / PAYLOAD_MARK
    if where == "entry":
        md = _metadata(ckpt)
        md.state_dict_metadata["w"] = _Payload(marker)
        _write_metadata(ckpt, md)
    else:
        (ckpt / ".metadata").write_bytes(pickle.dumps(_Payload(marker), protocol=2))
    exc = _refused(ckpt, UnsafePickleError, match="posix.system|os.system|not on the allowlist")
    assert ".metadata" in str(exc.path)
    assert not marker.exists()


def test_other_classes_of_torch_are_not_allowed_either(ckpt: Path) -> None:
    md = _metadata(ckpt)
    md.storage_meta = torch.nn.Linear(2, 2)  # a real class, importable, but not a DCP record
    _write_metadata(ckpt, md)
    _refused(ckpt, UnsafePickleError, match="torch.nn")


def test_truncated_and_garbage_metadata(ckpt: Path) -> None:
    raw = (ckpt / ".metadata").read_bytes()
    (ckpt / ".metadata").write_bytes(raw[: len(raw) // 2])
    _refused(ckpt, InvalidHeaderError)
    (ckpt / ".metadata").write_bytes(pickle.dumps({"not": "metadata"}))
    _refused(ckpt, InvalidHeaderError, match="not DCP Metadata")


def test_metadata_over_the_size_cap(ckpt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from weightvault.formats import torch_dcp

    monkeypatch.setattr(torch_dcp, "MAX_METADATA_BYTES", 100)
    _refused(ckpt, HeaderTooLargeError, match="cap")


def test_a_huge_claimed_shape_is_refused_before_allocating(ckpt: Path) -> None:
    md = _metadata(ckpt)
    entry = md.state_dict_metadata["w"]
    entry.size = torch.Size([1 << 40, 1 << 20])
    entry.chunks = [ChunkStorageMetadata(torch.Size([0, 0]), entry.size)]
    _write_metadata(ckpt, md)
    _refused(ckpt, InvalidOffsetError, tensor="w", match="needs")


def test_chunk_bytes_past_the_end_of_the_file(ckpt: Path) -> None:
    md = _metadata(ckpt)
    info = _info(md, "w", (0, 0))
    info.offset = (ckpt / "__0_0.distcp").stat().st_size - 10
    _write_metadata(ckpt, md)
    _refused(ckpt, InvalidOffsetError, tensor="w", match="__0_0.distcp")


@pytest.mark.parametrize(
    "chunks, error, match",
    [
        ([((0, 0), (2, 4))], InvalidHeaderError, "uncovered"),  # a gap: row 2 is in no chunk
        ([((0, 0), (2, 4)), ((1, 0), (2, 4))], InvalidHeaderError, "overlap"),
        ([((0, 0), (2, 4)), ((2, 0), (2, 4))], InvalidOffsetError, "past"),  # reaches row 3 of 3
        ([((0, 0), (2, 4)), ((2,), (1,))], InvalidHeaderError, "dimensions"),
    ],
)
def test_chunks_that_do_not_tile_the_tensor(
    ckpt: Path, chunks: list[Any], error: type, match: str
) -> None:
    md = _two_chunks(ckpt)
    spots = [
        md.storage_data.pop(MetadataIndex("w", c.offsets))
        for c in md.state_dict_metadata["w"].chunks
    ]
    md.state_dict_metadata["w"].chunks = [
        ChunkStorageMetadata(torch.Size(o), torch.Size(s)) for o, s in chunks
    ]
    for (offsets, _), spot in zip(chunks, spots, strict=False):
        md.storage_data[MetadataIndex("w", offsets)] = spot
    _write_metadata(ckpt, md)
    _refused(ckpt, error, tensor="w", match=match)


def test_a_chunk_without_a_storage_record(ckpt: Path) -> None:
    md = _metadata(ckpt)
    del md.storage_data[MetadataIndex("w", (0, 0))]
    _write_metadata(ckpt, md)
    _refused(ckpt, InvalidHeaderError, tensor="w", match="no storage record")


@pytest.mark.parametrize(
    "rel", ["../outside.distcp", "/etc/hostname", "sub/../../outside.distcp", "a\x00b"]
)
def test_chunk_paths_that_leave_the_directory(ckpt: Path, rel: str) -> None:
    (ckpt.parent / "outside.distcp").write_bytes((ckpt / "__0_0.distcp").read_bytes())
    md = _metadata(ckpt)
    _info(md, "w", (0, 0)).relative_path = rel
    _write_metadata(ckpt, md)
    _refused(ckpt, InvalidHeaderError, tensor="w", match="leaves|NUL")


def test_a_symlink_out_of_the_directory(ckpt: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "data.distcp").write_bytes((ckpt / "__0_0.distcp").read_bytes())
    (ckpt / "link.distcp").symlink_to(elsewhere / "data.distcp")
    md = _metadata(ckpt)
    _info(md, "w", (0, 0)).relative_path = "link.distcp"
    _write_metadata(ckpt, md)
    _refused(ckpt, InvalidHeaderError, tensor="w", match="outside")


def test_a_missing_data_file(ckpt: Path) -> None:
    (ckpt / "__0_0.distcp").unlink()
    _refused(ckpt, CheckpointNotFoundError, match="missing")


def test_transformed_chunks_are_refused_not_misread(ckpt: Path) -> None:
    md = _metadata(ckpt)
    _info(md, "w", (0, 0)).transform_descriptors = ["zstd"]
    _write_metadata(ckpt, md)
    _refused(ckpt, UnsupportedOperationError, tensor="w", match="transforms")


# -- the chunks ----------------------------------------------------------------------------------
def test_a_chunk_that_is_not_what_the_metadata_says(ckpt: Path) -> None:
    md = _metadata(ckpt)
    md.state_dict_metadata["w"].properties.dtype = torch.float64
    _write_metadata(ckpt, md)
    _refused(ckpt, InvalidHeaderError, tensor="w", match="float32")


def test_a_payload_in_a_chunk_archive_never_runs(ckpt: Path, tmp_path: Path) -> None:
    marker = tmp_path / PAYLOAD_MARK
    buf = io.BytesIO()
    torch.save(_Payload(marker), buf)
    (ckpt / "evil.distcp").write_bytes(buf.getvalue())
    md = _metadata(ckpt)
    md.storage_data[MetadataIndex("w", (0, 0))] = _StorageInfo(
        "evil.distcp", 0, len(buf.getvalue())
    )
    md.state_dict_metadata["w"].size = torch.Size([1, 1])
    md.state_dict_metadata["w"].chunks = [
        ChunkStorageMetadata(torch.Size([0, 0]), torch.Size([1, 1]))
    ]
    _write_metadata(ckpt, md)
    _refused(ckpt, UnsafePickleError, tensor="w")
    assert not marker.exists()


def test_a_chunk_slice_that_is_not_an_archive(ckpt: Path) -> None:
    md = _metadata(ckpt)
    info = _info(md, "w", (0, 0))
    info.offset, info.length = info.offset + 7, info.length - 7  # misaligned: the zip is cut
    _write_metadata(ckpt, md)
    _refused(ckpt, WeightVaultError, tensor="w")


def test_a_payload_in_a_non_tensor_entry_is_listed_not_run(ckpt: Path, tmp_path: Path) -> None:
    marker = tmp_path / PAYLOAD_MARK
    buf = io.BytesIO()
    torch.save(_Payload(marker), buf)
    (ckpt / "evil.distcp").write_bytes(buf.getvalue())
    md = _metadata(ckpt)
    md.storage_data[MetadataIndex("step")] = _StorageInfo("evil.distcp", 0, len(buf.getvalue()))
    _write_metadata(ckpt, md)
    with weightvault.open(ckpt) as reader:
        assert np.array_equal(reader.get("w"), W.numpy())
        assert "not read" in reader.skipped["step"] and "allowlist" in reader.skipped["step"]
        assert "step" not in reader.metadata["torch_dcp"].get("objects", {})
    assert not marker.exists()


# -- the other layouts -----------------------------------------------------------------------------
def _hf(tmp_path: Path) -> Path:
    hf = tmp_path / "hf"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        dcp.save(
            {"w": W.clone()},
            storage_writer=dcp.HuggingFaceStorageWriter(str(hf), save_distributed=True),
        )
    return hf


def _set_sharding(shard: Path, text: str) -> None:
    import json
    import struct

    raw = shard.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    header["__metadata__"]["DCP_SHARDING_INFO"] = text
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    shard.write_bytes(struct.pack("<Q", len(head)) + head + raw[8 + n :])


def test_hf_shards_with_overlapping_offsets(tmp_path: Path) -> None:
    hf = _hf(tmp_path)
    shard = next(hf.glob("shard-*.safetensors"))
    second = shard.with_name(shard.name.replace("shard-00001", "shard-00002"))
    second.write_bytes(shard.read_bytes())
    _set_sharding(second, '{"w": {"saved_offsets": [1, 0]}}')  # rows 1..3 again: overlaps rows 1-2
    _refused(hf, InvalidHeaderError, tensor="w", match="overlap")
    _set_sharding(second, '{"w": {"saved_offsets": "x"}}')
    _refused(hf, InvalidHeaderError, tensor="w", match="saved_offsets")


def _wv(tmp_path: Path) -> Path:
    from weightvault.torch_dcp import WeightVaultWriter

    wv = tmp_path / "wv"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        dcp.save({"w": W.clone(), "step": 2}, storage_writer=WeightVaultWriter(wv))
    return wv


@pytest.mark.parametrize(
    "edit, error, match",
    [
        (lambda c: c.update(file="../rank-00000.safetensors"), InvalidHeaderError, "leaves"),
        (lambda c: c.update(key="nope"), InvalidHeaderError, "no float32"),
        (lambda c: c.update(sizes=[3, 5]), InvalidHeaderError, "no float32"),
        (lambda c: c.update(offsets=[1, 0]), InvalidOffsetError, "past"),
    ],
)
def test_weightvault_dcp_manifest_lies(tmp_path: Path, edit: Any, error: type, match: str) -> None:
    import json

    wv = _wv(tmp_path)
    manifest = json.loads((wv / "manifest.json").read_text())
    edit(manifest["entries"]["w"]["chunks"][0])
    (wv / "manifest.json").write_text(json.dumps(manifest))
    _refused(wv, error, tensor="w", match=match)


def test_too_many_chunk_boundaries_are_refused(ckpt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from weightvault.formats import torch_dcp

    _two_chunks(ckpt)
    monkeypatch.setattr(torch_dcp, "MAX_GRID_CELLS", 1)
    _refused(ckpt, ResourceLimitError, tensor="w", match="blocks")


def test_another_file_is_not_taken_for_its_directory(ckpt: Path) -> None:
    other = ckpt / "notes.pt"
    other.write_bytes(b"not a checkpoint")
    with pytest.raises(InvalidHeaderError, match="open its directory"):
        weightvault.open(other, format="torch_dcp")


@pytest.mark.parametrize(
    "planner_data",
    [
        {"w": ("a",), "b": ("a", "x"), "step": ("s",)},  # a path through a leaf
        {"w": ("a",), "b": ("a",), "step": ("s",)},  # two entries at one place
        {"w": ("a",), "b": (1.5,), "step": ("s",)},  # a key that is not a name or index
        {"w": ("a",)},  # entries it does not place
        "not a dict",
    ],
)
def test_planner_data_that_is_not_a_tree_gives_flat_names(ckpt: Path, planner_data: Any) -> None:
    md = _metadata(ckpt)
    md.planner_data = planner_data
    _write_metadata(ckpt, md)
    with weightvault.open(ckpt) as reader:
        assert reader.structure() is None
    assert sorted(weightvault.load(ckpt)) == ["b", "w"]
