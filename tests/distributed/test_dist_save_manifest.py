"""Chunked rows of the native manifest (what a distributed save writes), read without
torch.distributed: whole tensors assembled, regions read from just the overlapping byte runs,
hostile manifests refused before anything is allocated."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import weightvault
from weightvault.core import chunks as chunks_mod
from weightvault.core.checksum import checksum
from weightvault.core.chunks import Box, byte_runs, check_tiling, intersect
from weightvault.core.safetensors_io import TensorSource, write_safetensors
from weightvault.errors import (
    CheckpointNotFoundError,
    InvalidHeaderError,
    InvalidOffsetError,
    ResourceLimitError,
)
from weightvault.formats import native
from weightvault.formats.native import NativeReader


def grid_boxes(shape: tuple[int, ...], cuts: list[list[int]]) -> list[Box]:
    """The boxes a grid of cut points (per dimension, inner cuts) makes of ``shape``."""
    bounds = [[0, *c, n] for c, n in zip(cuts, shape, strict=True)]
    boxes = [Box((), ())]
    for b in bounds:
        boxes = [
            Box((*box.offsets, lo), (*box.sizes, hi - lo))
            for box in boxes
            for lo, hi in zip(b, b[1:], strict=False)
        ]
    return boxes


def write_chunked(root: Path, tensors: dict[str, tuple[np.ndarray, list[Box]]], files: int = 2) -> Path:
    """A committed native directory whose tensors are stored as the given chunks, spread over
    ``files`` rank files, as a distributed save lays them out."""
    root.mkdir()
    per_file: list[list[TensorSource]] = [[] for _ in range(files)]
    rows: dict[str, Any] = {}
    for name, (arr, boxes) in tensors.items():
        row: dict[str, Any] = {"dtype": str(arr.dtype), "shape": list(arr.shape), "chunks": []}
        for i, box in enumerate(boxes):
            part = np.ascontiguousarray(arr[box.slices()])
            key = f"{name}@{','.join(map(str, box.offsets))}"
            f = i % files
            per_file[f].append(TensorSource(key, str(arr.dtype), part.shape, (lambda p: lambda: p)(part)))
            row["chunks"].append({
                "offsets": list(box.offsets), "sizes": list(box.sizes), "file": f"rank-{f}.safetensors",
                "key": key, "checksum": checksum(part.tobytes()),
            })  # fmt: skip
        rows[name] = row
    for f, sources in enumerate(per_file):
        with open(root / f"rank-{f}.safetensors", "wb") as fh:
            offsets = write_safetensors(fh, sources, {"format": "pt"})
        for row in rows.values():
            for c in row["chunks"]:
                if c["file"] == f"rank-{f}.safetensors":
                    c["data_offsets"] = list(offsets[c["key"]])
    manifest = {
        "format": "weightvault", "format_version": 2, "library_version": "test", "created": "now",
        "tensors": rows, "aliases": {},
        "tree": {"t": "dict", "items": [[["s", n], {"t": "tensor", "name": n}] for n in rows]},
        "metadata": {},
    }  # fmt: skip
    (root / "manifest.json").write_text(json.dumps(manifest))
    (root / "COMMITTED").write_text("{}")
    return root


def edit_manifest(root: Path, change: Any) -> None:
    manifest = json.loads((root / "manifest.json").read_text())
    change(manifest)
    (root / "manifest.json").write_text(json.dumps(manifest))


W = np.arange(7 * 6, dtype=np.float32).reshape(7, 6)
W_BOXES = grid_boxes((7, 6), [[3], [2, 5]])  # 6 uneven chunks


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    b = np.arange(5, dtype=np.int64)
    return write_chunked(tmp_path / "ck", {"w": (W, W_BOXES), "b": (b, grid_boxes((5,), [[2, 4]]))})


# -- arithmetic -------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_byte_runs_pick_exactly_the_sub_box(data: st.DataObject) -> None:
    shape = tuple(data.draw(st.lists(st.integers(1, 5), min_size=0, max_size=4)))
    offsets = tuple(data.draw(st.integers(0, n - 1)) for n in shape)
    sizes = tuple(data.draw(st.integers(1, n - o)) for n, o in zip(shape, offsets, strict=True))
    chunk = np.arange(math.prod(shape)).reshape(shape)
    part = Box(offsets, sizes)
    starts, run = byte_runs(shape, part)
    got = np.concatenate([chunk.reshape(-1)[s : s + run] for s in starts.tolist()])
    assert np.array_equal(got, chunk[part.slices()].reshape(-1))
    assert len(starts) * run == part.numel  # nothing around the box is read


def test_intersect() -> None:
    assert intersect(Box((0, 0), (4, 4)), Box((2, 3), (4, 4))) == Box((2, 3), (2, 1))
    assert intersect(Box((0,), (2,)), Box((2,), (2,))) is None


@pytest.mark.parametrize(
    ("boxes", "error"),
    [
        ([Box((0,), (3,)), Box((2,), (3,))], InvalidHeaderError),  # overlap, volumes add up wrong
        ([Box((0,), (3,)), Box((2,), (2,))], InvalidHeaderError),  # overlap and a gap, volume 5
        ([Box((0,), (2,)), Box((1,), (2,)), Box((4,), (1,))], InvalidHeaderError),  # overlap, sum 5
        ([Box((0,), (2,)), Box((3,), (2,))], InvalidHeaderError),  # gap
        ([Box((0,), (5,)), Box((4,), (2,))], InvalidOffsetError),  # outside
        ([Box((0, 0), (5, 1))], InvalidHeaderError),  # wrong rank
    ],
)
def test_check_tiling_refuses(boxes: list[Box], error: type[Exception]) -> None:
    with pytest.raises(error):
        check_tiling((5,), boxes, path="p", tensor="t")


# -- reading -------------------------------------------------------------------------------------------


def test_get_and_load_assemble_whole_tensors(ckpt: Path) -> None:
    with weightvault.open(ckpt) as r:
        assert r.info("w").extra["chunks"] == 6
        assert np.array_equal(r.get("w"), W)
        assert np.array_equal(r.get("b"), np.arange(5))
    loaded = weightvault.load(ckpt, verify=True)
    assert np.array_equal(loaded["w"], W) and loaded["w"].dtype == np.float32
    assert weightvault.verify(ckpt).checked == 6 + 3


@pytest.mark.parametrize("small_run_bytes", [0, 1 << 20], ids=["pread-runs", "mmap-copy"])
def test_read_region_reads_only_the_overlap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_run_bytes: int
) -> None:
    """Every box of the tensor, through both read paths (a pread per run, a copy from the mmap
    for short runs): the right values, and exactly the box's bytes counted."""
    monkeypatch.setattr(native, "_SMALL_RUN_BYTES", small_run_bytes)
    root = write_chunked(tmp_path / "ck", {"w": (W, W_BOXES)})
    with NativeReader(root) as r:
        for lo0, lo1 in itertools.product(range(7), range(6)):
            for n0, n1 in itertools.product(range(7 - lo0 + 1), range(6 - lo1 + 1)):
                before = r.bytes_read
                got = r.read_region("w", (lo0, lo1), (n0, n1))
                assert np.array_equal(got, W[lo0 : lo0 + n0, lo1 : lo1 + n1])
                assert r.bytes_read - before == n0 * n1 * 4


def test_verify_names_the_bad_chunk(ckpt: Path) -> None:
    data = bytearray((ckpt / "rank-1.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (ckpt / "rank-1.safetensors").write_bytes(bytes(data))
    with NativeReader(ckpt) as r:
        result = r.verify()
    assert len(result.failures) == 1 and "chunk at" in result.failures[0]


@pytest.mark.parametrize(
    ("change", "error", "words"),
    [
        (lambda m: m["tensors"]["w"]["chunks"].pop(), InvalidHeaderError, "missing"),
        (lambda m: m["tensors"]["w"]["chunks"][0].update(offsets=[1, 0]), InvalidHeaderError, "overlap"),
        (lambda m: m["tensors"]["w"]["chunks"][0].update(offsets=[True, 0]), InvalidHeaderError, "non-negative"),
        (lambda m: m["tensors"]["w"]["chunks"][0].update(sizes=[3, -2]), InvalidHeaderError, "non-negative"),
        (lambda m: m["tensors"]["w"].update(chunks="x"), InvalidHeaderError, "not a list"),
        (lambda m: m["tensors"]["w"].update(shape=[70000, 6]), InvalidHeaderError, "missing"),
        (lambda m: m["tensors"]["w"]["chunks"][0].update(file=7), InvalidHeaderError, "not a string"),
        (lambda m: m["tensors"]["w"].update(file="rank-0.safetensors"), InvalidHeaderError, "chunked row"),
        (lambda m: m.update(layout="torch_dcp"), InvalidHeaderError, "layout"),
        (lambda m: m.update(format_version=3), InvalidHeaderError, "newer"),
    ],
)
def test_hostile_manifest_refused_at_open(ckpt: Path, change: Any, error: type[Exception], words: str) -> None:
    edit_manifest(ckpt, change)
    with pytest.raises(error, match=words) as info:
        NativeReader(ckpt)
    assert "manifest.json" in str(info.value)


@pytest.mark.parametrize(
    ("change", "error", "words"),
    [
        (lambda m: m["tensors"]["w"]["chunks"][0].update(key="nope"), InvalidHeaderError, "not in the shard"),
        (lambda m: m["tensors"]["w"]["chunks"][0].update(data_offsets=[4, 16]), InvalidOffsetError, "data bytes"),
        (lambda m: m["tensors"]["w"].update(dtype="float64"), InvalidHeaderError, "the shard holds"),
        (lambda m: m["tensors"]["w"]["chunks"][0].update(file="../x.safetensors"), InvalidHeaderError, "leaves"),
        (lambda m: m["tensors"]["w"]["chunks"][0].update(file="gone.safetensors"), CheckpointNotFoundError, "missing"),
    ],
)
def test_hostile_chunk_refused_before_reading(
    ckpt: Path, change: Any, error: type[Exception], words: str
) -> None:
    edit_manifest(ckpt, change)
    with NativeReader(ckpt) as r:
        with pytest.raises(error, match=words) as info:
            r.get("w")
        assert info.value.tensor == "w"  # type: ignore[attr-defined]
        assert r.bytes_read == 0


def test_too_many_chunks(ckpt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chunks_mod, "MAX_CHUNKS", 4)
    with pytest.raises(ResourceLimitError, match="6 chunks"):
        NativeReader(ckpt)


def test_read_region_outside_the_tensor(ckpt: Path) -> None:
    with NativeReader(ckpt) as r, pytest.raises(ValueError, match="outside"):
        r.read_region("w", (5, 0), (3, 6))


def test_chunk_record_smaller_than_the_manifest_says(ckpt: Path) -> None:
    """A shard whose record holds fewer elements than the chunk's sizes (offsets rewritten to
    match): refused before a byte is read, never a read past the record."""
    from safetensors.numpy import load_file

    shard = ckpt / "rank-0.safetensors"
    records = load_file(shard)
    manifest = json.loads((ckpt / "manifest.json").read_text())
    first = manifest["tensors"]["w"]["chunks"][0]
    records[first["key"]] = records[first["key"]][:1]
    sources = [TensorSource(k, str(v.dtype), v.shape, (lambda a: lambda: a)(v)) for k, v in records.items()]
    with open(shard, "wb") as fh:
        offsets = write_safetensors(fh, sources, {"format": "pt"})
    for row in manifest["tensors"].values():
        for c in row["chunks"]:
            if c["file"] == shard.name:
                c["data_offsets"] = list(offsets[c["key"]])
    (ckpt / "manifest.json").write_text(json.dumps(manifest))
    with NativeReader(ckpt) as r, pytest.raises(InvalidHeaderError, match="the shard holds"):
        r.read_region("w", (0, 0), (1, 1))
