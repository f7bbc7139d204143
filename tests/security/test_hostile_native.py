"""Hostile native checkpoints and safetensors headers (issue #12): every mutant a fuzzer found to
raise a foreign exception (KeyError, TypeError, ValueError, OverflowError, RecursionError,
IsADirectoryError) must raise a WeightVaultError naming the file (and tensor where there is one).
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import weightvault
from weightvault import errors
from weightvault.core.limits import MAX_NESTING
from weightvault.formats import native
from weightvault.formats.native import MANIFEST_FILE, MANIFEST_KEY


def _state() -> dict[str, Any]:
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    return {"model": {"w": w, "tied": w}, "opt": {0: {"m": np.ones(2)}, 1.5: [1, 2.5, None]}, "step": 4}


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    return weightvault.save(_state(), tmp_path / "d", fsync=False)


def _edit_manifest(ckpt: Path, edit: Callable[[dict[str, Any]], Any], raw: str | None = None) -> Path:
    m = json.loads((ckpt / MANIFEST_FILE).read_text())
    edit(m)
    (ckpt / MANIFEST_FILE).write_text(raw if raw is not None else json.dumps(m))
    return ckpt / MANIFEST_FILE


def _read_everything(path: Path) -> None:
    weightvault.load(path)
    with weightvault.open(path) as r:
        for name in r.keys():
            r.info(name)
            np.asarray(r.get(name)).sum()
        r.structure()
        r.verify()


def _tree_items(m: dict[str, Any]) -> list[Any]:
    return m["tree"]["items"]


def _node(m: dict[str, Any], *keys: str) -> dict[str, Any]:
    node = m["tree"]
    for key in keys:
        node = next(v for k, v in node["items"] if k[1] == key)
    return node


TREE_MUTANTS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "unknown node type": lambda m: _node(m, "step").update(t="pickle"),
    "node type not a string": lambda m: _node(m, "step").update(t=["int"]),
    "node is a list": lambda m: _tree_items(m)[0].__setitem__(1, ["int", 3]),
    "int leaf holds a string": lambda m: _node(m, "step").update(v="4"),
    "int leaf holds a float": lambda m: _node(m, "step").update(v=4.5),
    "int leaf holds a bool": lambda m: _node(m, "step").update(v=True),
    "float leaf is not hex": lambda m: _node(m, "opt")["items"][1][1]["items"][1].update(v="2.5 meters"),
    "float leaf overflows": lambda m: _node(m, "opt")["items"][1][1]["items"][1].update(v="0x1p99999"),
    "float key overflows": lambda m: _node(m, "opt")["items"][1].__setitem__(0, ["f", "0x1p99999"]),
    "unknown key kind": lambda m: _tree_items(m)[0].__setitem__(0, ["q", "model"]),
    "key kind not a string": lambda m: _tree_items(m)[0].__setitem__(0, [["s"], "model"]),
    "int key holds a string": lambda m: _node(m, "opt")["items"][0].__setitem__(0, ["i", "0"]),
    "key is not a pair": lambda m: _tree_items(m)[0].__setitem__(0, ["s"]),
    "dict item is not a pair": lambda m: _tree_items(m).append([["s", "x"]]),
    "items is not a list": lambda m: _node(m, "model").update(items={"w": 1}),
    "tensor name is not a string": lambda m: _node(m, "model")["items"][0][1].update(name=7),
    "tree names a missing tensor": lambda m: _node(m, "model")["items"][0][1].update(name="nowhere"),
}


@pytest.mark.parametrize("mutant", list(TREE_MUTANTS))
def test_tree_spec_mutants_raise_invalid_header(ckpt: Path, mutant: str) -> None:
    manifest = _edit_manifest(ckpt, TREE_MUTANTS[mutant])
    with pytest.raises(errors.InvalidHeaderError) as exc:
        _read_everything(ckpt)
    assert str(manifest) in str(exc.value)


ROW_MUTANTS: dict[str, tuple[Callable[[dict[str, Any]], Any], type[errors.WeightVaultError]]] = {
    "unknown dtype": (lambda m: m["tensors"]["model/w"].update(dtype="float33"), errors.UnknownDtypeError),
    "dtype not a string": (lambda m: m["tensors"]["model/w"].update(dtype=["float32"]), errors.UnknownDtypeError),
    "negative dim": (lambda m: m["tensors"]["model/w"].update(shape=[-2, 3]), errors.InvalidHeaderError),
    "float dim": (lambda m: m["tensors"]["model/w"].update(shape=[2.0, 3]), errors.InvalidHeaderError),
    "65 dims": (lambda m: m["tensors"]["model/w"].update(shape=[1] * 65), errors.InvalidHeaderError),
    "huge dim": (lambda m: m["tensors"]["model/w"].update(shape=[2**64]), errors.InvalidHeaderError),
    "shape not a list": (lambda m: m["tensors"]["model/w"].update(shape="2x3"), errors.InvalidHeaderError),
    "row not an object": (lambda m: m["tensors"].update({"model/w": [1]}), errors.InvalidHeaderError),
    "file not a string": (lambda m: m["tensors"]["model/w"].update(file=3), errors.InvalidHeaderError),
    "file missing": (lambda m: m["tensors"]["model/w"].pop("file"), errors.WeightVaultError),
    "checksum not a string": (lambda m: m["tensors"]["model/w"].update(checksum=1), errors.InvalidHeaderError),
    "bogus stored_as": (lambda m: m["tensors"]["model/w"].update(stored_as="int8"), errors.InvalidHeaderError),
    "alias to nowhere": (lambda m: m["aliases"].update({"model/tied": "gone"}), errors.AliasError),
    "alias target not a string": (lambda m: m["aliases"].update({"model/tied": ["model/w"]}), errors.AliasError),
    "metadata not an object": (lambda m: m.update(metadata=[1, 2]), errors.InvalidHeaderError),
    "format_version a bool": (lambda m: m.update(format_version=True), errors.InvalidHeaderError),
}


@pytest.mark.parametrize("mutant", list(ROW_MUTANTS))
def test_manifest_row_mutants(ckpt: Path, mutant: str) -> None:
    edit, error = ROW_MUTANTS[mutant]
    _edit_manifest(ckpt, edit)
    with pytest.raises(error) as exc:
        _read_everything(ckpt)
    assert str(ckpt) in str(exc.value)


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_in_the_manifest_are_not_json(ckpt: Path, constant: str) -> None:
    # Python's json accepts these; int(float("inf")) was an OverflowError further down.
    raw = (ckpt / MANIFEST_FILE).read_text().replace('"v": 4', f'"v": {constant}', 1)
    assert constant in raw
    manifest = _edit_manifest(ckpt, lambda m: None, raw=raw)
    with pytest.raises(errors.InvalidHeaderError, match="not valid JSON") as exc:
        _read_everything(ckpt)
    assert str(manifest) in str(exc.value)


def test_an_int_of_five_thousand_digits_is_invalid_json_not_a_value_error(ckpt: Path) -> None:
    raw = (ckpt / MANIFEST_FILE).read_text().replace('"v": 4', '"v": ' + "9" * 5000, 1)
    _edit_manifest(ckpt, lambda m: None, raw=raw)
    with pytest.raises(errors.InvalidHeaderError, match="not valid JSON"):
        _read_everything(ckpt)


def test_deeply_nested_manifest_json_is_refused_before_parsing(ckpt: Path) -> None:
    deep = "[" * 100_000 + "]" * 100_000  # json.loads alone raises RecursionError
    raw = (ckpt / MANIFEST_FILE).read_text().replace('"metadata": {}', f'"metadata": {{"x": {deep}}}', 1)
    assert deep in raw
    manifest = _edit_manifest(ckpt, lambda m: None, raw=raw)
    with pytest.raises(errors.ResourceLimitError, match="nested more than") as exc:
        _read_everything(ckpt)
    assert str(manifest) in str(exc.value)


def test_deep_tree_spec_within_json_depth_is_still_bounded(tmp_path: Path) -> None:
    obj: Any = np.ones(1)
    for _ in range(MAX_NESTING // 2 + 10):  # a list node adds 2 JSON levels, a spec level adds 1
        obj = [obj]
    with pytest.raises(errors.ResourceLimitError):
        _read_everything(weightvault.save(obj, tmp_path / "deep", fsync=False))
    shallow: Any = np.ones(1)
    for _ in range(MAX_NESTING // 3):
        shallow = [shallow]
    weightvault.load(weightvault.save(shallow, tmp_path / "ok", fsync=False))


def test_manifest_json_that_is_a_directory(ckpt: Path) -> None:
    (ckpt / MANIFEST_FILE).unlink()
    (ckpt / MANIFEST_FILE).mkdir()
    with pytest.raises(errors.InvalidHeaderError, match="is a directory") as exc:
        weightvault.open(ckpt)
    assert str(ckpt) in str(exc.value)


def test_shard_that_is_a_directory(ckpt: Path) -> None:
    shard = next(ckpt.glob("model-*.safetensors"))
    shard.unlink()
    shard.mkdir()
    with pytest.raises(errors.InvalidHeaderError, match="is a directory") as exc:
        _read_everything(ckpt)
    assert exc.value.tensor is not None and str(ckpt) in str(exc.value)


def test_safetensors_path_that_is_a_directory(tmp_path: Path) -> None:
    d = tmp_path / "x.safetensors"
    d.mkdir()
    with pytest.raises(errors.WeightVaultError):
        weightvault.open(d, format="safetensors")
    from weightvault.core.safetensors_io import SafetensorsFile

    with pytest.raises(errors.InvalidHeaderError, match="is a directory"):
        SafetensorsFile(d)


def test_shard_symlinked_outside_the_directory_is_refused(ckpt: Path, tmp_path: Path) -> None:
    shard = next(ckpt.glob("model-*.safetensors"))
    outside = tmp_path / "elsewhere.safetensors"
    os.replace(shard, outside)  # a valid shard, but no longer inside the checkpoint
    shard.symlink_to(outside)
    with pytest.raises(errors.InvalidHeaderError, match="resolves outside") as exc:
        _read_everything(ckpt)
    assert exc.value.tensor is not None
    # a link that stays inside the directory is fine
    os.replace(outside, ckpt / "real.bin")
    shard.unlink()
    shard.symlink_to("real.bin")
    _read_everything(ckpt)


def test_manifest_json_symlinked_outside_is_refused(ckpt: Path, tmp_path: Path) -> None:
    outside = tmp_path / "manifest-elsewhere.json"
    os.replace(ckpt / MANIFEST_FILE, outside)
    (ckpt / MANIFEST_FILE).symlink_to(outside)
    with pytest.raises(errors.InvalidHeaderError, match="resolves outside"):
        weightvault.open(ckpt)


def test_manifest_json_size_is_capped(ckpt: Path) -> None:
    with open(ckpt / MANIFEST_FILE, "r+b") as f:  # sparse: costs no disk, and must not be read
        f.truncate(native.MAX_MANIFEST_BYTES + 1)
    with pytest.raises(errors.HeaderTooLargeError, match="over the") as exc:
        weightvault.open(ckpt)
    assert MANIFEST_FILE in str(exc.value)


def test_manifest_shape_larger_than_the_shard_is_refused_before_allocating(ckpt: Path) -> None:
    # 2**40 float32 would be 4 TiB: load must compare with the shard header before np.empty.
    _edit_manifest(ckpt, lambda m: m["tensors"]["model/w"].update(shape=[2**40]))
    with pytest.raises(errors.InvalidHeaderError, match="manifest says") as exc:
        weightvault.load(ckpt)
    assert exc.value.tensor == "model/w"


def test_renamed_single_file_checkpoint_still_loads(tmp_path: Path) -> None:
    p = weightvault.save(_state(), tmp_path / "a.safetensors", fsync=False)
    moved = p.rename(tmp_path / "b.safetensors")
    back = weightvault.load(moved)
    assert back["step"] == 4 and back["model"]["w"].shape == (2, 3)


def _single_with_manifest(tmp_path: Path, edit: Callable[[dict[str, Any]], Any]) -> Path:
    p = weightvault.save(_state(), tmp_path / "s.safetensors", fsync=False)
    data = p.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    manifest = json.loads(header["__metadata__"][MANIFEST_KEY])
    edit(manifest)
    header["__metadata__"][MANIFEST_KEY] = json.dumps(manifest)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    p.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])
    return p


@pytest.mark.parametrize("mutant", ["unknown node type", "float key overflows", "tree names a missing tensor"])
def test_single_file_manifest_mutants(tmp_path: Path, mutant: str) -> None:
    p = _single_with_manifest(tmp_path, TREE_MUTANTS[mutant])
    with pytest.raises(errors.InvalidHeaderError) as exc:
        _read_everything(p)
    assert str(p) in str(exc.value)


# -- safetensors headers ------------------------------------------------------------------------


def _raw_st(path: Path, header: dict[str, Any] | bytes, data: bytes) -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


@pytest.mark.parametrize(
    ("shape", "nbytes"),
    [
        ([1] * 65, 4),  # numpy holds at most 64 dimensions
        ([2**64], 0),
        ([2**62, 2**62, 0], 0),  # zero elements, but numpy refuses the shape
        ([2**63 - 1, 0], 0),
        ([True, 2], 8),
        ([2, None], 8),
    ],
)
def test_safetensors_shapes_numpy_cannot_hold(tmp_path: Path, shape: list[Any], nbytes: int) -> None:
    p = _raw_st(tmp_path / "x.safetensors", {"t": {"dtype": "F32", "shape": shape, "data_offsets": [0, nbytes]}}, b"\0" * nbytes)
    with pytest.raises(errors.InvalidHeaderError) as exc:
        with weightvault.open(p, format="safetensors") as r:
            r.get("t")
    assert exc.value.tensor == "t" and str(p) in str(exc.value)


def test_safetensors_64_dims_is_fine(tmp_path: Path) -> None:
    p = _raw_st(tmp_path / "x.safetensors", {"t": {"dtype": "F32", "shape": [1] * 64, "data_offsets": [0, 4]}}, b"\0" * 4)
    with weightvault.open(p, format="safetensors") as r:
        assert r.get("t").ndim == 64


def test_safetensors_deeply_nested_header(tmp_path: Path) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    p = _raw_st(tmp_path / "x.safetensors", b'{"__metadata__": {"a": ' + deep + b"}}", b"")
    with pytest.raises(errors.ResourceLimitError) as exc:
        weightvault.open(p, format="safetensors")
    assert str(p) in str(exc.value)


@pytest.mark.parametrize(
    "header",
    [
        b'{"t": {"dtype": "F32", "shape": [NaN], "data_offsets": [0, 4]}}',
        b'{"t": {"dtype": "F32", "shape": [1], "data_offsets": [0, Infinity]}}',
        b'{"t": {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}}',
        b'{"t": {"dtype": {"F32": 1}, "shape": [1], "data_offsets": [0, 4]}}',
        b'{"t": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "u": 5}',
        b'{"t": {"dtype": "F32", "shape": [' + b"9" * 5000 + b'], "data_offsets": [0, 4]}}',
    ],
)
def test_safetensors_header_mutants(tmp_path: Path, header: bytes) -> None:
    p = _raw_st(tmp_path / "x.safetensors", header, b"\0" * 4)
    with pytest.raises(errors.CorruptFileError) as exc:
        weightvault.open(p, format="safetensors")
    assert str(p) in str(exc.value)


def test_json_depth_skips_brackets_inside_strings() -> None:
    from weightvault.core.safetensors_io import json_depth

    assert json_depth(b'{"a\\"[[[": [[1]], "b": "]]]{{{", "c": "\\\\"}') == 3
    assert json_depth(b"[" * 300 + b"]" * 300) == 300
    assert json_depth(b"7") == 0
