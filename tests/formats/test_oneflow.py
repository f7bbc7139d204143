"""OneFlow directories: OneFlow's own test data (all layouts), and our output checked by the same
checks OneFlow 0.9's loader makes (OneFlow itself cannot be installed on CPython 3.11)."""

from __future__ import annotations

import io
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

import weightvault
from weightvault.errors import (
    InvalidHeaderError,
    InvalidOffsetError,
    TruncatedFileError,
    UnknownDtypeError,
    UnsafePickleError,
    UnsupportedOperationError,
)
from weightvault.formats.oneflow import OneFlowFormat, format_meta, validate_oneflow_dir
from weightvault.testing.formats import FormatTests


@pytest.fixture(scope="session")
def of_dir(fixtures_dir: Path) -> Path:
    return fixtures_dir / "oneflow"


def test_pickle_layout_params_and_whole_module_agree(of_dir: Path) -> None:
    with weightvault.open(of_dir / "3x3_i3o3_conv2d_params") as params, weightvault.open(of_dir / "3x3_i3o3_conv2d") as module:
        assert params.format == module.format == "oneflow"
        assert params.keys() == module.keys() == ["weight", "bias"]
        assert params.info("weight").shape == (3, 3, 3, 3) and params.info("weight").dtype == "float32"
        for name in params.keys():
            assert np.array_equal(params.get(name), module.get(name))
        assert "whole module" in module.metadata["note"] and "Conv2d" in module.metadata["note"]
        assert "note" not in params.metadata
        w = params.get("weight")
        assert np.isfinite(w).all() and 0 < np.abs(w).max() < 1  # kaiming-uniform init of a 3x3x3 conv
        assert params.get("bias")[0] == pytest.approx(-0.07061117, abs=1e-7)


def test_graph_layout(of_dir: Path) -> None:
    with weightvault.open(of_dir / "graph_affine_with_parameter") as r:
        assert r.keys() == ["model.a", "model.b"]
        assert np.array_equal(r.get("model.a"), np.ones((3, 4), np.float32))
        assert np.array_equal(r.get("model.b"), np.ones(4, np.float32))
        assert r.metadata["layout"] == "legacy" and "snapshot_done" in r.metadata["note"]
    # flow.load itself refuses a graph save (no snapshot_done): so does the validator
    with pytest.raises(InvalidHeaderError, match="snapshot_done"):
        validate_oneflow_dir(of_dir / "graph_affine_with_parameter")


def test_snapshot_layout_needs_shapes(of_dir: Path, tmp_path: Path) -> None:
    snap = tmp_path / "snap"
    for name in ("conv1-weight", "conv1-bias"):
        (snap / name).mkdir(parents=True)
    src = of_dir / "3x3_i3o3_conv2d_params"
    shutil.copy(src / "tensor_5" / "out", snap / "conv1-weight" / "out")
    shutil.copy(src / "tensor_6" / "out", snap / "conv1-bias" / "out")
    (snap / "snapshot_done").touch()
    with pytest.raises(UnsupportedOperationError, match="no shapes"):
        weightvault.open(snap, format="oneflow")
    shapes = {"conv1-weight": [3, 3, 3, 3], "conv1-bias": [3]}
    with weightvault.open(snap, format="oneflow", shapes=shapes) as r, weightvault.open(src) as ref:
        assert np.array_equal(r.get("conv1-weight"), ref.get("weight"))
        assert r.metadata == {"layout": "snapshot", "complete": True}
    # a template with the same names gives shapes and dtypes
    tmpl = tmp_path / "tmpl.npz"
    np.savez(tmpl, **{"conv1-weight": np.zeros((3, 3, 3, 3), np.float32), "conv1-bias": np.zeros(3, np.float32)})
    with weightvault.open(snap, format="oneflow", template=tmpl) as r, weightvault.open(src) as ref:
        assert np.array_equal(r.get("conv1-bias"), ref.get("bias"))
    with pytest.raises(InvalidOffsetError):
        weightvault.open(snap, format="oneflow", shapes={"conv1-weight": [3, 3, 3], "conv1-bias": [3]})


@pytest.mark.parametrize("layout", ["pickle", "legacy"])
def test_written_dirs_pass_oneflow_loader_checks(tmp_path: Path, layout: str) -> None:
    tensors = {
        "fc.weight": np.arange(6, dtype=np.float32).reshape(2, 3),
        "fc.bias": np.array([0.5, -1.0], np.float64),
        "bn.num_batches_tracked": np.array(7, np.int64),
        "mask": np.array([True, False]),
        "h": np.ones(2, np.float16),
        "i8": np.array([-128, 127], np.int8),
        "i32": np.array([1 << 30], np.int32),
        "u8": np.array([255], np.uint8),
        "empty": np.zeros((0, 2), np.float32),
    }
    out = tmp_path / "ckpt"
    OneFlowFormat.write(out, tensors, layout=layout)
    found = validate_oneflow_dir(out)
    assert found == {n: (str(a.dtype), a.shape) for n, a in tensors.items()}
    assert (out / "snapshot_done").exists() == (layout == "legacy")
    with weightvault.open(out) as r:
        for name, arr in tensors.items():
            assert np.array_equal(r.get(name), arr) and r.get(name).dtype == arr.dtype
    if layout == "legacy":
        assert (out / "fc.bias" / "meta").read_bytes() == b"shape {\n  dim: 2\n}\ndata_type: kDouble\n"
        assert (out / "bn.num_batches_tracked" / "meta").read_bytes() == b"shape {\n}\ndata_type: kInt64\n"


def test_written_pickle_loads_like_oneflow_does(tmp_path: Path) -> None:
    """What oneflow.load runs: plain pickle.loads with oneflow.Tensor.__setstate__ reading the path."""
    tensors = {"a": np.arange(4, dtype=np.int32), "b.c": np.ones((2, 2), np.float32)}
    OneFlowFormat.write(tmp_path / "m", tensors)
    loaded_from: list[str] = []

    class FakeTensor:
        def __setstate__(self, state: dict) -> None:
            loaded_from.append(state["path"])
            self.path = state["path"]

    class OneFlowLike(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> object:
            if (module, name) == ("oneflow", "Tensor"):
                return FakeTensor
            return super().find_class(module, name)

    obj = OneFlowLike(io.BytesIO((tmp_path / "m" / "pickled_data").read_bytes())).load()
    assert obj["protocol_version"] == 1
    assert list(obj["data"]) == ["a", "b.c"] and type(obj["data"]).__name__ == "OrderedDict"
    assert loaded_from == ["tensor_0", "tensor_1"]
    assert (tmp_path / "m" / "tensor_1" / "meta").read_bytes() == format_meta("float32", (2, 2))


def test_write_refuses_unloadable_dtypes_and_bad_names(tmp_path: Path) -> None:
    with pytest.raises(UnknownDtypeError, match="bfloat16"):
        import ml_dtypes

        OneFlowFormat.write(tmp_path / "x", {"w": np.ones(2, ml_dtypes.bfloat16)})
    with pytest.raises(UnknownDtypeError):
        OneFlowFormat.write(tmp_path / "x", {"w": np.ones(2, np.int16)})
    for bad in ("a/b", "..", "/etc/passwd", "a\\b"):
        with pytest.raises(InvalidHeaderError, match="directory name"):
            OneFlowFormat.write(tmp_path / "y", {bad: np.ones(1, np.float32)}, layout="legacy")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def _hostile_copy(of_dir: Path, tmp_path: Path, pickled: bytes) -> Path:
    d = tmp_path / "hostile"
    shutil.copytree(of_dir / "3x3_i3o3_conv2d_params", d)
    (d / "pickled_data").chmod(0o644)
    (d / "pickled_data").write_bytes(pickled)
    return d


def test_hostile_pickle_is_refused(of_dir: Path, tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            import os

            return (os.system, ("touch pwned",))

    d = _hostile_copy(of_dir, tmp_path, pickle.dumps({"protocol_version": 1, "data": Evil()}))
    with pytest.raises(UnsafePickleError):
        weightvault.open(d)
    assert not Path("pwned").exists()


@pytest.mark.parametrize("target", ["../tens5", "/etc/pas", "a/../../"])  # same length: FRAME sizes hold
def test_path_escaping_the_directory_is_refused(of_dir: Path, tmp_path: Path, target: str) -> None:
    blob = (of_dir / "3x3_i3o3_conv2d_params" / "pickled_data").read_bytes()
    evil = blob.replace(b"\x8c\x08tensor_5", b"\x8c" + bytes([len(target)]) + target.encode())
    assert evil != blob
    d = _hostile_copy(of_dir, tmp_path, evil)
    with pytest.raises(InvalidHeaderError, match="leaves|outside"):
        weightvault.open(d)


def test_symlinked_variable_outside_is_refused(of_dir: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    shutil.copytree(of_dir / "graph_affine_with_parameter" / "model.a", outside)
    d = tmp_path / "g"
    shutil.copytree(of_dir / "graph_affine_with_parameter", d)
    (d / "evil").symlink_to(outside, target_is_directory=True)
    with pytest.raises(InvalidHeaderError, match="outside"):
        weightvault.open(d, format="oneflow")


def test_corrupt_meta_and_short_out(of_dir: Path, tmp_path: Path) -> None:
    d = tmp_path / "c"
    shutil.copytree(of_dir / "graph_affine_with_parameter", d)
    (d / "model.b" / "out").chmod(0o644)
    (d / "model.b" / "out").write_bytes(b"\x00" * 8)
    with pytest.raises(TruncatedFileError, match="model.b"):
        weightvault.open(d, format="oneflow")
    (d / "model.b" / "meta").chmod(0o644)
    (d / "model.b" / "meta").write_text("shape { dim: 2 }\ndata_type: kOFRecord\n")
    with pytest.raises(UnknownDtypeError):
        weightvault.open(d, format="oneflow")


class TestOneFlowConformance(FormatTests):
    format_name = "oneflow"
    suffix = ""
    dtypes = ("bool", "float16", "float32", "float64", "int8", "int32", "int64", "uint8")
