"""Keras HDF5: real Keras 3 (TensorFlow backend) writes what we read and loads what we write."""

from __future__ import annotations

import os
import sys
import zipfile
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest

import weightvault
from weightvault.errors import (
    InvalidHeaderError,
    MissingDependencyError,
    TruncatedFileError,
    UnsupportedOperationError,
    WeightVaultError,
)
from weightvault.formats.keras_h5 import KerasFormat
from weightvault.testing.formats import FormatTests

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
h5py = pytest.importorskip("h5py")


def _build(keras: Any) -> Any:
    img = keras.Input((8, 8, 3), name="img")
    x = keras.layers.Conv2D(4, 3, name="conv")(img)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    seq = keras.Input((5, 4), name="seq")
    y = keras.layers.LSTM(6, name="lstm")(seq)
    z = keras.layers.Concatenate()([x, y])
    z = keras.layers.Dense(5, use_bias=False, name="fc1")(z)
    z = keras.layers.LayerNormalization(name="ln")(z)
    out = keras.layers.Dense(3, name="fc2")(z)
    return keras.Model([img, seq], out)


@pytest.fixture(scope="module")
def kmodel(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(0)
    model = _build(keras)
    rng = np.random.default_rng(0)
    # non-trivial BatchNorm statistics, so moving_mean/variance are checked too
    for v in model.get_layer("bn").weights:
        v.assign(rng.standard_normal(v.shape).astype("float32") + 2.0)
    inputs = [rng.standard_normal((2, 8, 8, 3)).astype("float32"), rng.standard_normal((2, 5, 4)).astype("float32")]
    d = tmp_path_factory.mktemp("keras")
    model.save_weights(d / "m.weights.h5")
    model.save(d / "m.keras")
    model.save(d / "m.h5")  # legacy HDF5 (model_weights group)
    expected = {v.path: np.array(v.numpy()) for v in model.weights}
    return {
        "keras": keras,
        "model": model,
        "dir": d,
        "expected": expected,
        "inputs": inputs,
        "pred": np.asarray(model.predict(inputs, verbose=0)),
    }


def _fresh(kmodel: dict[str, Any]) -> Any:
    model = _build(kmodel["keras"])
    # different random init: a load that silently does nothing would leave these
    for v in model.weights:
        v.assign(np.full(v.shape, 0.123, "float32"))
    return model


@pytest.mark.parametrize("name", ["m.weights.h5", "m.keras", "m.h5"])
def test_reads_real_keras_files_with_variable_paths(kmodel: dict[str, Any], name: str) -> None:
    with weightvault.open(kmodel["dir"] / name) as reader:
        assert reader.format == "keras"
        assert sorted(reader.keys()) == sorted(kmodel["expected"])
        for key, value in kmodel["expected"].items():
            np.testing.assert_array_equal(reader.get(key), value, err_msg=key)


def test_keras_archive_exposes_config_and_model_order(kmodel: dict[str, Any]) -> None:
    with weightvault.open(kmodel["dir"] / "m.keras") as reader:
        meta = reader.metadata["keras"]
        assert meta["config"]["class_name"] == "Functional"
        assert reader.keys() == list(kmodel["expected"])  # the model's own weight order
        assert reader.info("lstm/lstm_cell/kernel").extra["h5_path"] == "layers/lstm/cell/vars/0"


@pytest.mark.parametrize("fixture", ["model.weights.h5", "model.keras", "legacy.h5"])
def test_shared_fixtures_match_expected(fixtures_dir: Path, fixture: str) -> None:
    expected = np.load(fixtures_dir / "keras" / "expected_weights.npz")
    want = {k.replace("|", "/"): expected[k] for k in expected.files}
    with weightvault.open(fixtures_dir / "keras" / fixture) as reader:
        assert sorted(reader.keys()) == sorted(want)
        for key, value in want.items():
            np.testing.assert_array_equal(reader.get(key), value, err_msg=key)


@pytest.mark.parametrize(("source", "target"), [
    ("m.weights.h5", "out.weights.h5"),
    ("m.keras", "out.weights.h5"),
    ("m.h5", "out.h5"),
    ("m.keras", "out.h5"),
])  # fmt: skip
def test_written_files_load_in_keras_with_same_predictions(
    kmodel: dict[str, Any], tmp_path: Path, source: str, target: str
) -> None:
    out = tmp_path / target
    weightvault.convert(kmodel["dir"] / source, out)
    model = _fresh(kmodel)
    model.load_weights(out)
    np.testing.assert_allclose(model.predict(kmodel["inputs"], verbose=0), kmodel["pred"], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("to", ["native", "safetensors"])
def test_roundtrip_through_safetensors_keeps_the_keras_layout(kmodel: dict[str, Any], tmp_path: Path, to: str) -> None:
    mid = tmp_path / "mid.safetensors"
    weightvault.convert(kmodel["dir"] / "m.weights.h5", mid, to=to)
    out = tmp_path / "back.weights.h5"
    weightvault.convert(mid, out)
    model = _fresh(kmodel)
    model.load_weights(out)
    np.testing.assert_allclose(model.predict(kmodel["inputs"], verbose=0), kmodel["pred"], rtol=1e-6, atol=1e-6)


def test_plain_mapping_in_model_order_writes_a_loadable_legacy_file(kmodel: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "plain.h5"
    KerasFormat.write(out, dict(kmodel["expected"]))
    model = _fresh(kmodel)
    model.load_weights(out)
    np.testing.assert_allclose(model.predict(kmodel["inputs"], verbose=0), kmodel["pred"], rtol=1e-6, atol=1e-6)


def test_wrong_structure_is_refused_by_keras(kmodel: dict[str, Any], tmp_path: Path) -> None:
    tensors = dict(kmodel["expected"])
    del tensors["fc2/bias"]
    out = tmp_path / "short.weights.h5"
    with weightvault.open(kmodel["dir"] / "m.weights.h5") as reader:
        meta = reader.metadata
    KerasFormat.write(out, tensors, metadata=meta)
    with pytest.raises(ValueError):
        _fresh(kmodel).load_weights(out)


def test_bfloat16_is_stored_as_keras_does(kmodel: dict[str, Any], tmp_path: Path) -> None:
    from keras.src.saving.saving_lib import H5IOStore

    value = np.array([[1.5, -2.0], [0.25, 3.0]], ml_dtypes.bfloat16)
    out = tmp_path / "bf.weights.h5"
    KerasFormat.write(out, {"dense/kernel": value})
    with h5py.File(out, "r") as f:
        assert f["layers/dense/vars/0"].attrs["dtype"] == "bfloat16"
    store = H5IOStore(out, mode="r")
    try:
        got = store.get("layers/dense")["0"]
        assert got.dtype == ml_dtypes.bfloat16
        np.testing.assert_array_equal(got, value)
    finally:
        store.close()
    with weightvault.open(out) as reader:
        assert reader.info("dense/kernel").dtype == "bfloat16"
        np.testing.assert_array_equal(reader.get("dense/kernel"), value)


def test_truncated_h5_is_rejected(kmodel: dict[str, Any], tmp_path: Path) -> None:
    data = (kmodel["dir"] / "m.weights.h5").read_bytes()
    bad = tmp_path / "cut.weights.h5"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(TruncatedFileError):
        KerasFormat.open(bad)


def test_h5_without_keras_layout_is_rejected(tmp_path: Path) -> None:
    p = tmp_path / "other.h5"
    with h5py.File(p, "w") as f:
        f["x"] = np.ones(3)
    with pytest.raises(InvalidHeaderError):
        KerasFormat.open(p)


def test_keras_archive_without_weights_is_rejected(tmp_path: Path) -> None:
    p = tmp_path / "empty.keras"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("metadata.json", "{}")
        z.writestr("config.json", "{}")
    with pytest.raises(InvalidHeaderError):
        KerasFormat.open(p)


def test_writing_keras_archive_is_refused_with_a_hint(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedOperationError) as exc:
        KerasFormat.write(tmp_path / "x.keras", {"d/kernel": np.ones(2, np.float32)})
    assert exc.value.hint


def test_missing_h5py_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, fixtures_dir: Path) -> None:
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(MissingDependencyError) as exc:
        KerasFormat.open(fixtures_dir / "keras" / "legacy.h5")
    assert "h5py" in str(exc.value) + str(exc.value.hint)


class TestKeras3Conformance(FormatTests):
    format_name = "keras"
    suffix = ".weights.h5"
    name_style = "slashed"
    dtypes = ("float32", "float64", "float16", "bfloat16", "int8", "uint8", "int16", "int32", "int64", "bool")


class TestKerasLegacyConformance(FormatTests):
    format_name = "keras"
    suffix = ".h5"
    name_style = "slashed"


def test_conformance_classes_run_against_real_errors() -> None:
    # FormatTests relies on WeightVaultError for garbage input; make sure our errors are that.
    assert issubclass(InvalidHeaderError, WeightVaultError)


def test_sequential_bfloat16_and_optimizer_state(kmodel: dict[str, Any], tmp_path: Path) -> None:
    keras = kmodel["keras"]

    def build() -> Any:
        return keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="d1"),
                                 keras.layers.Dense(2, dtype="bfloat16", name="d2")])  # fmt: skip

    model = build()
    model.compile("adam", "mse")
    model.fit(np.ones((4, 4)), np.ones((4, 2)), verbose=0)
    x = np.linspace(-1, 1, 8, dtype="float32").reshape(2, 4)
    want = np.asarray(model.predict(x, verbose=0)).astype(np.float32)
    model.save(tmp_path / "s.keras")
    model.save(tmp_path / "s.h5")
    with weightvault.open(tmp_path / "s.keras") as reader:
        assert reader.info("d2/kernel").dtype == "bfloat16"
        assert any(k.startswith("optimizer/") for k in reader.keys())
    with weightvault.open(tmp_path / "s.h5") as reader:  # Keras' legacy bf16: unmarked opaque data
        # Keras numbers auto-named models per process (sequential, sequential_1, ...)
        name = f"{model.name}/d2/kernel"
        assert reader.info(name).dtype == "bfloat16"
        np.testing.assert_array_equal(reader.get(name), model.get_layer("d2").kernel.numpy())
    for src, dst in (("s.keras", "o.weights.h5"), ("s.keras", "o.h5")):
        weightvault.convert(tmp_path / src, tmp_path / dst)
        fresh = build()
        fresh.load_weights(tmp_path / dst)
        np.testing.assert_array_equal(np.asarray(fresh.predict(x, verbose=0)).astype(np.float32), want)
    # plain {variable.path: value} mapping (Sequential paths carry the model name) -> legacy file
    KerasFormat.write(tmp_path / "plain.h5", {v.path: v.numpy() for v in model.weights})
    fresh = build()
    fresh.load_weights(tmp_path / "plain.h5")
    np.testing.assert_array_equal(np.asarray(fresh.predict(x, verbose=0)).astype(np.float32), want)


def test_composite_layers_names_match_keras_paths(kmodel: dict[str, Any], tmp_path: Path) -> None:
    keras = kmodel["keras"]

    def build() -> Any:
        inp = keras.Input((5, 8))
        x = keras.layers.MultiHeadAttention(2, 4, name="mha")(inp, inp)
        x = keras.layers.SeparableConv1D(4, 3, name="sep")(x)
        x = keras.layers.Bidirectional(keras.layers.GRU(3), name="bi")(x)
        x = keras.layers.PReLU(name="pr")(x)
        sub = keras.Sequential([keras.Input((6,)), keras.layers.Dense(2, name="inner")], name="subm")
        return keras.Model(inp, sub(x))

    model = build()
    model.save_weights(tmp_path / "c.weights.h5")
    with weightvault.open(tmp_path / "c.weights.h5") as reader:
        assert sorted(reader.keys()) == sorted(v.path for v in model.weights)
        for v in model.weights:
            np.testing.assert_array_equal(reader.get(v.path), v.numpy(), err_msg=v.path)
    weightvault.convert(tmp_path / "c.weights.h5", tmp_path / "back.weights.h5")
    fresh = build()
    fresh.load_weights(tmp_path / "back.weights.h5")
    x = np.linspace(-1, 1, 80, dtype="float32").reshape(2, 5, 8)
    np.testing.assert_allclose(fresh.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6, atol=1e-6)


def _rewrite_h5(src: Path, dst: Path, sep: str) -> None:
    """Copy a Keras 3 weights file the way Keras 2.13-2.15 laid it out: one root group per object,
    named by its path joined with ``sep`` (``os.path.join`` on Windows gives ``layers\\dense``),
    with its ``vars`` inside, and no ``name`` attributes (Keras 3 added those later)."""
    with h5py.File(src, "r") as fin, h5py.File(dst, "w") as fout:
        groups: list[str] = []
        fin.visit(lambda name: groups.append(name) if name.endswith("vars") and isinstance(fin[name], h5py.Group) else None)
        for vars_path in groups:
            owner = vars_path[: -len("vars")].rstrip("/")
            target = fout.require_group(owner.replace("/", sep)) if owner else fout
            out = target.create_group("vars")
            for key, ds in fin[vars_path].items():
                out.create_dataset(key, data=ds[()])
                for attr, value in ds.attrs.items():
                    out[key].attrs[attr] = value


def test_windows_keras_paths_with_backslashes_are_normalised(kmodel: dict[str, Any], tmp_path: Path) -> None:
    """Keras 2.13-2.15 on Windows: root groups named ``layers\\conv2d``; zip members may carry
    backslashes too. The names must be those of the same file written with ``/``."""
    src = kmodel["dir"] / "m.keras"
    with zipfile.ZipFile(src) as z:
        (tmp_path / "orig.h5").write_bytes(z.read("model.weights.h5"))
    _rewrite_h5(tmp_path / "orig.h5", tmp_path / "posix.h5", "/")
    _rewrite_h5(tmp_path / "orig.h5", tmp_path / "windows.h5", "\\")
    with h5py.File(tmp_path / "windows.h5", "r") as f:
        assert "layers\\conv2d" in f and "layers\\lstm\\cell" in f and "layers" not in f
    archives = {}
    for kind in ("posix", "windows"):
        out = tmp_path / f"{kind}.keras"
        with zipfile.ZipFile(src) as zin, zipfile.ZipFile(out, "w") as zout:
            for zi in zin.infolist():
                data = (tmp_path / f"{kind}.h5").read_bytes() if zi.filename == "model.weights.h5" else zin.read(zi)
                zout.writestr(zi.filename, data)
            if kind == "windows":
                zout.writestr("assets\\layers\\note.txt", b"an asset written with Windows separators")
        archives[kind] = out
    with weightvault.open(archives["posix"]) as posix, weightvault.open(archives["windows"]) as windows:
        assert windows.keys() == posix.keys()
        assert not any("\\" in k or k.split("/")[-1].isdigit() for k in windows.keys())
        assert "dense/kernel" in windows.keys() and "lstm/lstm_cell/kernel" in windows.keys()
        for key in posix.keys():
            np.testing.assert_array_equal(windows.get(key), posix.get(key), err_msg=key)
    # the bare weights file too, and Keras loads what we write from it
    with weightvault.open(tmp_path / "windows.h5", format="keras") as reader:
        assert "conv2d/kernel" in reader.keys()
    weightvault.convert(archives["windows"], tmp_path / "back.weights.h5")
    model = _fresh(kmodel)
    model.load_weights(tmp_path / "back.weights.h5")
    np.testing.assert_allclose(model.predict(kmodel["inputs"], verbose=0), kmodel["pred"], rtol=1e-6, atol=1e-6)
