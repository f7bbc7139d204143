"""The native format: round trips, ties, nesting, sharding, stock-safetensors compatibility."""

from __future__ import annotations

import json
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import weightvault
from weightvault.core.dtypes import DTYPES
from weightvault.errors import UnsupportedObjectError
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
        st.text(min_size=1, max_size=12),
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
