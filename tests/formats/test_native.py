"""The native format: round trips, ties, nesting, sharding, stock-safetensors compatibility."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import weightvault
from weightvault.core.dtypes import DTYPES
from weightvault.errors import UnsupportedObjectError, UnsupportedOperationError
from weightvault.formats.native import COMMIT_MARKER, MANIFEST_FILE
from weightvault.testing.formats import FormatTests, sample_tensors

ALL_DTYPES = tuple(DTYPES)


class TestNativeFileConformance(FormatTests):
    format_name = "native"
    suffix = ".safetensors"
    dtypes = ALL_DTYPES


class TestNativeDirectoryConformance(FormatTests):
    format_name = "native"
    suffix = ""
    dtypes = ALL_DTYPES
    writer_options = {"shard_size": 64}


class TestPlainSafetensorsConformance(FormatTests):
    format_name = "safetensors"
    suffix = ".safetensors"
    dtypes = tuple(d for d in DTYPES if d != "complex128")


def test_every_dtype_bitwise(tmp_path: Path) -> None:
    tensors = sample_tensors(ALL_DTYPES)
    tensors["nan_payload"] = np.array([np.nan, -0.0, np.inf, -np.inf], np.float32)
    tensors["fp8"] = np.array([1.5, -448, 0.0625], ml_dtypes.float8_e4m3fn)
    p = weightvault.save(tensors, tmp_path / "all.safetensors")
    back = weightvault.load(p)
    for name, arr in tensors.items():
        assert back[name].dtype == arr.dtype
        assert back[name].tobytes() == arr.tobytes(), name


def test_nested_training_state_comes_back_exactly(tmp_path: Path) -> None:
    state = {
        "model": {"fc.weight": np.ones((2, 2), np.float32)},
        "optimizer": {"state": {0: {"step": 3, "exp_avg": np.zeros(2)}, 1: {}}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]},
        "epoch": 7,
        "best": float("nan"),
        "inf": float("-inf"),
        "third": 1 / 3,
        "flags": (True, False, None),
        "name": "run-é",
        "keys": {True: 1, 2.5: "x", None: [], "s": ()},
        "np_scalar": np.float32(2.5),
        "big": 2**70,
    }
    for path in (tmp_path / "s.safetensors", tmp_path / "dir"):
        back = weightvault.load(weightvault.save(state, path))
        assert back["optimizer"]["state"][0]["step"] == 3
        assert list(back["optimizer"]["state"]) == [0, 1]
        assert back["optimizer"]["param_groups"] == [{"lr": 0.1, "params": [0, 1]}]
        assert back["epoch"] == 7 and isinstance(back["epoch"], int)
        assert np.isnan(back["best"]) and back["inf"] == float("-inf")
        assert back["third"] == 1 / 3
        assert back["flags"] == (True, False, None)
        assert back["name"] == "run-é"
        assert back["keys"] == {True: 1, 2.5: "x", None: [], "s": ()}
        assert isinstance(back["np_scalar"], np.float32) and back["np_scalar"] == 2.5
        assert back["big"] == 2**70


def test_unsupported_objects_are_refused_without_pickle(tmp_path: Path) -> None:
    class Custom:
        pass

    with pytest.raises(UnsupportedObjectError, match=r"Custom.*at model/x"):
        weightvault.save({"model": {"x": Custom()}}, tmp_path / "x.safetensors")
    with pytest.raises(UnsupportedObjectError, match="set"):
        weightvault.save({"s": {1, 2}}, tmp_path / "y.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


def test_numpy_tied_arrays_stored_once_and_restored_tied(tmp_path: Path) -> None:
    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    p = weightvault.save({"embed.weight": w, "lm_head.weight": w, "other": w.copy()}, tmp_path / "t.safetensors")
    with weightvault.open(p) as r:
        assert r.aliases == {"lm_head.weight": "embed.weight"}
        assert r.info("lm_head.weight").extra["alias_of"] == "embed.weight"
    back = weightvault.load(p)
    assert back["lm_head.weight"] is back["embed.weight"]
    assert back["other"] is not back["embed.weight"]
    # the stock library sees one stored tensor for the pair
    from safetensors.numpy import load_file

    assert sorted(load_file(str(p))) == ["embed.weight", "other"]


def test_torch_ties_views_and_devices(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    state = {
        "emb": base,
        "head": base,  # tied
        "t_view": base.t(),  # non-contiguous view of the same storage
        "slice": base[1:3, ::2],  # strided slice
        "bf16": torch.randn(3, 3).to(torch.bfloat16),
        "fp8": torch.randn(5).to(torch.float8_e5m2),
        "u16": torch.tensor([0, 1, 65535], dtype=torch.int32).to(torch.uint16),
        "c128": torch.randn(2, dtype=torch.complex128),
        "param": torch.nn.Parameter(torch.ones(2)),
    }
    p = weightvault.save(state, tmp_path / "torch.safetensors")
    back = weightvault.load(p, framework="torch")
    assert back["head"] is back["emb"]
    for name, t in state.items():
        assert back[name].dtype == t.dtype, name
        assert back[name].shape == t.shape, name
        # compare bytes: equal() is not implemented for every dtype (fp8, uint16)
        assert back[name].contiguous().view(torch.uint8).tolist() == t.detach().contiguous().view(torch.uint8).tolist(), name
    assert back["t_view"].is_contiguous() and torch.equal(back["t_view"], base.t())


def test_sharded_directory_layout(tmp_path: Path) -> None:
    tensors = {f"layer{i}.weight": np.full((64,), i, np.float32) for i in range(10)}
    p = weightvault.save(tensors, tmp_path / "ckpt", shard_size=600)
    files = sorted(f.name for f in p.iterdir())
    shards = [f for f in files if f.startswith("model-")]
    assert len(shards) == 5 and all(f.endswith(f"-of-{len(shards):05d}.safetensors") for f in shards)
    assert {MANIFEST_FILE, COMMIT_MARKER, "model.safetensors.index.json"} <= set(files)
    index = json.loads((p / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(tensors)
    manifest = json.loads((p / MANIFEST_FILE).read_text())
    assert manifest["format_version"] == 1 and manifest["library_version"] == weightvault.__version__
    assert all(row["checksum"].startswith("xxh3_64:") for row in manifest["tensors"].values())
    back = weightvault.load(p)
    for name, arr in tensors.items():
        np.testing.assert_array_equal(back[name], arr)


def test_stock_safetensors_reads_every_file_we_write(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from safetensors import safe_open
    from safetensors.numpy import load_file
    from safetensors.torch import load_file as load_torch

    # safetensors' numpy loader has no fp8/bf16 types; its torch loader reads every dtype.
    tensors = sample_tensors(tuple(d for d in DTYPES if d != "complex128"))
    single = weightvault.save(tensors, tmp_path / "one.safetensors", metadata={"step": 5})
    loaded = load_torch(str(single))
    for name, arr in tensors.items():
        got = loaded[name].contiguous().view(torch.uint8).numpy().tobytes()
        assert got == arr.tobytes(), name
    with safe_open(str(single), framework="np") as f:
        manifest = json.loads(f.metadata()["weightvault.manifest"])
        assert manifest["metadata"] == {"step": 5}
    sharded = weightvault.save(tensors, tmp_path / "dir", shard_size=100)
    seen = {}
    for shard in sharded.glob("model-*.safetensors"):
        seen.update(load_torch(str(shard)))
    assert sorted(seen) == sorted(tensors)
    # complex128 is stored as a float64 [..., 2] view that stock readers can load
    z = np.array([1 + 2j, 3 - 4j])
    p = weightvault.save({"z": z}, tmp_path / "z.safetensors")
    assert load_file(str(p))["z"].tolist() == [[1.0, 2.0], [3.0, -4.0]]
    assert weightvault.load(p)["z"].tolist() == z.tolist()


def test_open_is_lazy_zero_copy_and_slices(tmp_path: Path) -> None:
    arr = np.arange(1000, dtype=np.float32).reshape(10, 100)
    p = weightvault.save({"w": arr}, tmp_path / "m.safetensors", metadata={"epoch": 3})
    with weightvault.open(p) as r:
        assert r.format == "native"
        assert r.metadata == {"epoch": 3}
        assert r.keys() == ["w"]
        info = r.info("w")
        assert (info.dtype, info.shape, info.nbytes) == ("float32", (10, 100), 4000)
        view = r.get("w")
        assert not view.flags.writeable and not view.flags.owndata  # an mmap view, not a copy
        np.testing.assert_array_equal(r.get_slice("w", (slice(2, 4), slice(None, 5))), arr[2:4, :5])


def test_empty_state_and_empty_tensors(tmp_path: Path) -> None:
    assert weightvault.load(weightvault.save({}, tmp_path / "e.safetensors")) == {}
    back = weightvault.load(weightvault.save({"e": np.zeros((0, 3), np.int8), "s": np.array(1, np.int64)}, tmp_path / "d"))
    assert back["e"].shape == (0, 3) and back["s"].shape == ()


def test_overwrite_replaces_atomically(tmp_path: Path) -> None:
    for path in (tmp_path / "x.safetensors", tmp_path / "d"):
        weightvault.save({"a": np.ones(2)}, path)
        weightvault.save({"b": np.zeros(3)}, path)
        assert list(weightvault.load(path)) == ["b"]
        assert [f.name for f in tmp_path.iterdir() if ".wvtmp-" in f.name] == []


def test_failed_save_of_directory_keeps_the_old_one(tmp_path: Path) -> None:
    class Boom:
        pass

    p = weightvault.save({"a": np.ones(4)}, tmp_path / "d")
    with pytest.raises(UnsupportedObjectError):
        weightvault.save({"a": np.zeros(4), "b": Boom()}, p)
    torch = pytest.importorskip("torch")


    state = {"a": np.zeros(4), "b": np.arange(3)}

    def broken_fetch() -> None:
        raise OSError("disk went away")

    from weightvault.formats import native

    original = native._source_for

    def failing_source(name, fetch, dtype, shape):  # type: ignore[no-untyped-def]
        src = original(name, fetch, dtype, shape)
        return src if name == "a" else native.TensorSource(name, dtype, shape, broken_fetch)

    native._source_for = failing_source
    try:
        with pytest.raises(OSError, match="disk went away"):
            weightvault.save(state, p)
    finally:
        native._source_for = original
    np.testing.assert_array_equal(weightvault.load(p)["a"], np.ones(4))
    assert [f.name for f in tmp_path.iterdir()] == ["d"]


dtype_strategy = st.sampled_from([DTYPES[d] for d in ("float32", "float16", "int32", "uint8", "bool", "float64", "int64")])


@settings(max_examples=40, deadline=None)
@given(
    arrays=st.dictionaries(
        st.text(min_size=1, max_size=12).filter(lambda name: name != "__metadata__"),
        hnp.arrays(dtype_strategy, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)),
        max_size=5,
    )
)
def test_roundtrip_property(tmp_path_factory: pytest.TempPathFactory, arrays: dict[str, np.ndarray]) -> None:
    d = tmp_path_factory.mktemp("prop")
    for path in (d / "f.safetensors", d / "dir"):
        back = weightvault.load(weightvault.save(arrays, path, fsync=False))
        assert list(back) == list(arrays)
        for k, v in arrays.items():
            assert back[k].dtype == v.dtype and back[k].shape == v.shape
            assert back[k].tobytes() == v.tobytes()
        assert weightvault.verify(path).ok


def test_partial_save_with_include_and_exclude(tmp_path: Path) -> None:
    state = {
        "model": {"encoder.w": np.ones(2), "encoder.b": np.zeros(2), "head.w": np.ones(3)},
        "opt": [np.ones(1), 3],
        "step": 7,
    }
    p = weightvault.save(state, tmp_path / "p.safetensors", include=["model/encoder.*", "opt/*"], exclude=["*.b"])
    back = weightvault.load(p)
    assert sorted(back["model"]) == ["encoder.w"]
    assert back["opt"][0].tolist() == [1.0] and back["opt"][1] == 3
    assert back["step"] == 7  # non-tensor leaves are always kept
    p2 = weightvault.save(state, tmp_path / "q.safetensors", exclude=["opt/*"])
    assert weightvault.load(p2)["opt"] == [None, 3]  # a left-out list item keeps its position


def test_dict_keys_of_every_kind_round_trip_with_their_types(tmp_path: Path) -> None:
    # bool is a subclass of int: encoded as an int, True would come back as 1
    state = {True: "t", False: "f", 2: "i", 2.5: "x", "s": "s", None: "n", float("inf"): "inf",
             -1.5: "z", "nested": {True: np.ones(1), 7: np.zeros(1)}, "leaf": -0.0}  # fmt: skip
    for path in (tmp_path / "f.safetensors", tmp_path / "d"):
        back = weightvault.load(weightvault.save(state, path, fsync=False))
        assert [(type(k), k) for k in back] == [(type(k), k) for k in state]
        assert [type(k) for k in back["nested"]] == [bool, int]
        assert back[True] == "t" and back[False] == "f" and back[2] == "i"
        assert str(back["leaf"]) == "-0.0"


_KEYS = st.one_of(st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False), st.text(max_size=5), st.none())
_LEAVES = st.one_of(st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=5), st.booleans(), st.none())
_STATES = st.recursive(
    _LEAVES, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(_KEYS, kids, max_size=3), max_leaves=12
)


def _typed(obj: Any) -> Any:
    """The object with every key and leaf tagged by its type (so 1 != True != 1.0), NaN-safe."""
    if isinstance(obj, dict):
        return [(type(k).__name__, repr(k), _typed(v)) for k, v in obj.items()]
    if isinstance(obj, (list, tuple)):
        return (type(obj).__name__, [_typed(v) for v in obj])
    return (type(obj).__name__, repr(obj))


@settings(max_examples=60, deadline=None)
@given(tree=_STATES)
@example(tree={True: 1, 2: 2, "__metadata__": 3})
def test_tree_spec_round_trips_keys_and_leaves_exactly(tmp_path_factory: pytest.TempPathFactory, tree: Any) -> None:
    p = tmp_path_factory.mktemp("tree") / "t.safetensors"
    state = {"tree": tree, "w": np.ones(2, np.float32)}
    back = weightvault.load(weightvault.save(state, p, fsync=False))
    assert _typed(back["tree"]) == _typed(tree)


def test_a_tensor_named_metadata_is_refused_at_save(tmp_path: Path) -> None:
    # safetensors keeps its metadata under this header key: the file would not open again
    for path in (tmp_path / "f.safetensors", tmp_path / "d"):
        with pytest.raises(UnsupportedOperationError, match="__metadata__") as exc:
            weightvault.save({"__metadata__": np.ones(2), "w": np.ones(1)}, path, fsync=False)
        assert exc.value.tensor == "__metadata__" and exc.value.hint
        assert str(path) in str(exc.value)
        assert list(tmp_path.iterdir()) == [], "nothing is left behind"
    # nested, the name is x/__metadata__: fine
    back = weightvault.load(weightvault.save({"x": {"__metadata__": np.ones(2)}}, tmp_path / "n.safetensors"))
    assert back["x"]["__metadata__"].tolist() == [1.0, 1.0]


def _record_durability_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Record fsync / close / rename / directory-fsync, in order, with the path each touches."""
    import weightvault.core.io as wio

    events: list[tuple[str, str]] = []
    real_fsync, real_replace, real_rename, real_fsync_dir = os.fsync, os.replace, os.rename, wio.fsync_dir
    real_close = wio._WriteBehindFile.close

    def fsync(fd: int) -> None:
        target = os.readlink(f"/proc/self/fd/{fd}")
        if not os.path.isdir(target):  # a directory's fsync is recorded as fsync_dir
            events.append(("fsync", target))
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        events.append(("rename", os.fspath(src)))
        real_replace(src, dst)

    def rename(src: Any, dst: Any) -> None:
        events.append(("rename", os.fspath(src)))
        real_rename(src, dst)

    def fsync_dir(path: Any) -> None:
        events.append(("fsync_dir", os.path.realpath(path)))
        real_fsync_dir(path)

    def close(self: Any) -> None:
        if not self.closed:
            events.append(("close", os.path.realpath(self.name)))
        real_close(self)

    monkeypatch.setattr(wio, "fsync_dir", fsync_dir)
    monkeypatch.setattr(wio._WriteBehindFile, "close", close)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "rename", rename)
    return events


def test_atomic_file_write_is_fsync_close_rename_then_directory_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = _record_durability_calls(monkeypatch)
    weightvault.save({"w": np.ones(3)}, tmp_path / "m.safetensors")
    tmp = events[0][1]
    assert ".wvtmp-" in tmp
    assert events == [
        ("fsync", tmp),  # the data is on disk ...
        ("close", tmp),  # ... and the file complete ...
        ("rename", tmp),  # ... before it takes the final name ...
        ("fsync_dir", os.path.realpath(tmp_path)),  # ... and the rename itself is made durable
    ]


def test_atomic_directory_write_syncs_every_file_before_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = _record_durability_calls(monkeypatch)
    final = weightvault.save({"a": np.ones(3), "b": np.ones(3)}, tmp_path / "d", shard_size=8)
    kinds = [kind for kind, _ in events]
    rename = kinds.index("rename")
    tmp_dir = events[rename][1]
    files = {f.name for f in final.iterdir()}
    synced = {os.path.basename(p) for kind, p in events[:rename] if kind == "fsync"}
    assert files == synced, "every file is fsynced before the directory is renamed into place"
    for shard in (p for kind, p in events if kind == "fsync" and p.endswith(".safetensors")):
        assert events.index(("fsync", shard)) < events.index(("close", shard)) < rename
    assert events[rename - 1] == ("fsync_dir", os.path.realpath(tmp_dir)), "the new directory's entries first"
    assert events[rename + 1:] == [("fsync_dir", os.path.realpath(tmp_path))], "then the parent's"
    assert kinds.count("rename") == 1


@pytest.mark.parametrize("name", ["x.pt", "model.bin", "w.npz", "m.onnx", "k.weights.h5", "ckpt.index", "X.PTH"])
def test_save_never_writes_under_another_formats_extension(tmp_path: Path, name: str) -> None:
    with pytest.raises(UnsupportedOperationError, match="will not write") as exc:
        weightvault.save({"w": np.ones(2)}, tmp_path / name)
    assert "weightvault convert" in (exc.value.hint or "")
    assert str(tmp_path / name) in str(exc.value)
    assert list(tmp_path.iterdir()) == [], "no file or directory was created"


def test_foreign_extensions_cover_every_other_writable_or_readable_format() -> None:
    from weightvault.formats.native import FOREIGN_EXTENSIONS
    from weightvault.registry import available_formats

    endings = {e for fmt in available_formats().values() for e in fmt.extensions} - {".safetensors"}
    assert endings <= set(FOREIGN_EXTENSIONS)


def test_the_tip_names_a_conversion_that_works(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    with pytest.raises(UnsupportedOperationError) as exc:
        weightvault.save({"w": np.ones(2, np.float32)}, tmp_path / "x.pt")
    assert "x.safetensors" in (exc.value.hint or "")
    weightvault.save({"w": np.ones(2, np.float32)}, tmp_path / "x.safetensors")
    weightvault.convert(tmp_path / "x.safetensors", tmp_path / "x.pt")
    assert torch.load(tmp_path / "x.pt")["w"].tolist() == [1.0, 1.0]


def test_single_file_carries_format_pt_for_transformers(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from safetensors import safe_open
    from safetensors.torch import load_file

    p = weightvault.save({"w": np.arange(4, dtype=np.float32), "step": 3}, tmp_path / "m.safetensors")
    with safe_open(p, "pt") as f:
        assert f.metadata()["format"] == "pt"  # transformers refuses the file without it
    assert load_file(p)["w"].tolist() == [0.0, 1.0, 2.0, 3.0]
    with weightvault.open(p) as r:  # our own manifest is intact, and not mixed into user metadata
        assert r.format == "native" and r.metadata == {} and r.verify().ok
    assert weightvault.load(p)["step"] == 3
    shard = next(weightvault.save({"w": np.ones(1)}, tmp_path / "d").glob("model-*.safetensors"))
    with safe_open(shard, "pt") as f:
        assert f.metadata()["format"] == "pt"
