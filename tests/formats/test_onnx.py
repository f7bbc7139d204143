"""ONNX: onnx builds models we read; --template rewrites run in onnxruntime; hostile files refused."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest

import weightvault
from weightvault.errors import (
    InvalidHeaderError,
    InvalidOffsetError,
    ShapeMismatchError,
    TensorNotFoundError,
    TruncatedFileError,
)
from weightvault.formats.onnx import OnnxFormat
from weightvault.testing.formats import FormatTests

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

RNG = np.random.default_rng(0)
W1 = RNG.standard_normal((4, 8)).astype(np.float32)
B1 = RNG.standard_normal(8).astype(np.float32)
W2 = RNG.standard_normal((8, 3)).astype(np.float32)
B2 = RNG.standard_normal(3).astype(np.float32)


def _mlp_model() -> Any:
    inits = [
        numpy_helper.from_array(W1, "fc1.weight"),  # raw_data
        helper.make_tensor("fc1.bias", TensorProto.FLOAT, [8], B1.tolist()),  # float_data
        numpy_helper.from_array(W2, "fc2.weight"),
        numpy_helper.from_array(B2, "fc2.bias"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "fc1.weight"], ["h0"]),
        helper.make_node("Add", ["h0", "fc1.bias"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("MatMul", ["h2", "fc2.weight"], ["h3"]),
        helper.make_node("Add", ["h3", "fc2.bias"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])],
        inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="test")
    model.ir_version = 8
    helper.set_model_props(model, {"author": "tests"})
    return model


def _reference(x: np.ndarray, w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray) -> np.ndarray:
    return np.maximum(x @ w1 + b1, 0) @ w2 + b2


def _typed_zoo() -> list[Any]:
    """Initializers in every storage the spec allows, built by onnx.helper."""
    return [
        helper.make_tensor("f16", TensorProto.FLOAT16, [3], np.array([1.0, -2.5, 65504], np.float16)),
        helper.make_tensor("bf16", TensorProto.BFLOAT16, [2], [1.5, -2.0]),
        helper.make_tensor("i8", TensorProto.INT8, [3], [-1, 2, -128]),
        helper.make_tensor("u16", TensorProto.UINT16, [2], [0, 65535]),
        helper.make_tensor("i32", TensorProto.INT32, [2], [-(2**31), 7]),
        helper.make_tensor("i64", TensorProto.INT64, [], [-42]),
        helper.make_tensor("u64", TensorProto.UINT64, [2], [0, 2**64 - 1]),
        helper.make_tensor("f64", TensorProto.DOUBLE, [2], [0.5, -1e300]),
        helper.make_tensor("b", TensorProto.BOOL, [3], [True, False, True]),
        helper.make_tensor("c64", TensorProto.COMPLEX64, [2], [1 + 2j, -3j]),
        helper.make_tensor("e4m3", TensorProto.FLOAT8E4M3FN, [2], [1.0, -0.5]),
        helper.make_tensor("raw_f16", TensorProto.FLOAT16, [2], np.array([3, 4], np.float16).tobytes(), raw=True),
        helper.make_tensor("names", TensorProto.STRING, [1], [b"skip me"]),
    ]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("onnx")
    onnx.save(_mlp_model(), d / "mlp.onnx")
    onnx.save(_mlp_model(), d / "mlp_ext.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="mlp_ext.weights", size_threshold=0)  # fmt: skip
    graph = helper.make_graph([], "zoo", [], [], _typed_zoo())
    onnx.save(helper.make_model(graph), d / "zoo.onnx")
    return d


@pytest.mark.parametrize("name", ["mlp.onnx", "mlp_ext.onnx"])
def test_reads_initializers(models: Path, name: str) -> None:
    with weightvault.open(models / name) as reader:
        assert reader.format == "onnx"
        assert reader.keys() == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
        for key, want in zip(reader.keys(), (W1, B1, W2, B2)):
            np.testing.assert_array_equal(reader.get(key), want)
        assert reader.metadata["author"] == "tests"
        assert reader.metadata["onnx"]["opset_import"] == {"ai.onnx": 17}
        storage = reader.info("fc1.weight").extra["storage"]
        assert storage == ("external" if "ext" in name else "raw_data")


def test_reads_every_typed_field(models: Path) -> None:
    model = onnx.load(models / "zoo.onnx")
    with weightvault.open(models / "zoo.onnx") as reader:
        assert "names" not in reader.keys()
        assert reader.metadata["onnx"]["skipped"] == [{"name": "names", "data_type": "string"}]
        for t in model.graph.initializer:
            if t.name == "names":
                continue
            want = numpy_helper.to_array(t)
            got = reader.get(t.name)
            if t.data_type == TensorProto.BFLOAT16:
                assert got.dtype == ml_dtypes.bfloat16
                want = want.astype(np.float32)  # onnx returns bfloat16 as float32 (or its own type)
                got = got.astype(np.float32)
            elif t.data_type == TensorProto.FLOAT8E4M3FN:
                assert got.dtype == ml_dtypes.float8_e4m3fn
                want, got = np.asarray(want).astype(np.float32), got.astype(np.float32)
            assert got.shape == want.shape, t.name
            np.testing.assert_array_equal(got, want, err_msg=t.name)


@pytest.mark.parametrize(("template", "external"), [("mlp.onnx", False), ("mlp_ext.onnx", False), ("mlp.onnx", True)])
def test_template_rewrite_runs_in_onnxruntime(models: Path, tmp_path: Path, template: str, external: bool) -> None:
    new = {
        "fc1.weight": RNG.standard_normal((4, 8)).astype(np.float32),
        "fc1.bias": RNG.standard_normal(8).astype(np.float32),
        "fc2.weight": RNG.standard_normal((8, 3)).astype(np.float32),
        "fc2.bias": RNG.standard_normal(3).astype(np.float32),
    }
    src = tmp_path / "ckpt.safetensors"
    weightvault.save(new, src)
    out = tmp_path / "new.onnx"
    weightvault.convert(src, out, to="onnx", write_options={"template": models / template, "external_data": external})
    onnx.checker.check_model(str(out))
    x = RNG.standard_normal((5, 4)).astype(np.float32)
    (y,) = ort.InferenceSession(str(out)).run(None, {"x": x})
    np.testing.assert_allclose(y, _reference(x, *new.values()), rtol=1e-5, atol=1e-5)
    assert (tmp_path / "new.onnx.data").exists() is external
    # every byte outside the initializers is kept: nodes, io, opsets, metadata
    before, after = onnx.load(models / template, load_external_data=False), onnx.load(str(out))
    assert after.graph.node == before.graph.node
    assert after.graph.input == before.graph.input and after.graph.output == before.graph.output
    assert after.metadata_props == before.metadata_props and after.producer_name == "test"


def test_template_casts_float_dtypes(models: Path, tmp_path: Path) -> None:
    tensors = {"fc1.weight": W1.astype(ml_dtypes.bfloat16), "fc1.bias": B1, "fc2.weight": W2, "fc2.bias": B2}
    out = tmp_path / "cast.onnx"
    OnnxFormat.write(out, tensors, template=models / "mlp.onnx")
    with OnnxFormat.open(out) as reader:
        assert reader.info("fc1.weight").dtype == "float32"
        np.testing.assert_array_equal(reader.get("fc1.weight"), W1.astype(ml_dtypes.bfloat16).astype(np.float32))


def test_template_mismatches_are_clear_errors(models: Path, tmp_path: Path) -> None:
    good = {"fc1.weight": W1, "fc1.bias": B1, "fc2.weight": W2, "fc2.bias": B2}
    with pytest.raises(ShapeMismatchError, match="fc2.weight"):
        OnnxFormat.write(tmp_path / "a.onnx", {**good, "fc2.weight": W2.T.copy()}, template=models / "mlp.onnx")
    with pytest.raises(TensorNotFoundError, match="extra"):
        OnnxFormat.write(tmp_path / "b.onnx", {**good, "extra": B2}, template=models / "mlp.onnx")
    partial = dict(good)
    del partial["fc2.bias"]
    with pytest.raises(TensorNotFoundError, match="fc2.bias"):
        OnnxFormat.write(tmp_path / "c.onnx", partial, template=models / "mlp.onnx")
    OnnxFormat.write(tmp_path / "d.onnx", partial, template=models / "mlp.onnx", strict=False)
    with OnnxFormat.open(tmp_path / "d.onnx") as reader:
        np.testing.assert_array_equal(reader.get("fc2.bias"), B2)  # kept from the template
    assert not (tmp_path / "a.onnx").exists()


def test_bare_model_loads_in_onnx(tmp_path: Path) -> None:
    tensors = {"a": W1, "b": np.arange(3, dtype=np.int64), "h": np.ones(2, ml_dtypes.bfloat16)}
    out = tmp_path / "bare.onnx"
    OnnxFormat.write(out, tensors, metadata={"step": 5, "note": "x"})
    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    got = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    np.testing.assert_array_equal(got["a"], W1)
    np.testing.assert_array_equal(got["b"], tensors["b"])
    assert {p.key: p.value for p in model.metadata_props} == {"step": "5", "note": "x"}


def test_external_data_path_escape_is_refused(tmp_path: Path) -> None:
    t = numpy_helper.from_array(W1, "w")
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "../secret.bin"), ("offset", "0"), ("length", str(W1.nbytes))):
        entry = t.external_data.add()
        entry.key, entry.value = key, value
    (tmp_path / "secret.bin").write_bytes(W1.tobytes())
    sub = tmp_path / "model"
    sub.mkdir()
    onnx.save(helper.make_model(helper.make_graph([], "g", [], [], [t])), sub / "evil.onnx")
    with OnnxFormat.open(sub / "evil.onnx") as reader, pytest.raises(InvalidHeaderError, match="leaves"):
        reader.get("w")


def test_external_data_out_of_bounds(models: Path, tmp_path: Path) -> None:
    import shutil

    shutil.copy(models / "mlp_ext.onnx", tmp_path / "m.onnx")
    data = (models / "mlp_ext.weights").read_bytes()
    (tmp_path / "mlp_ext.weights").write_bytes(data[:40])
    with OnnxFormat.open(tmp_path / "m.onnx") as reader, pytest.raises(TruncatedFileError):
        reader.get("fc2.weight")


def test_corrupt_protobuf(models: Path, tmp_path: Path) -> None:
    data = (models / "mlp.onnx").read_bytes()
    p = tmp_path / "cut.onnx"
    p.write_bytes(data[: len(data) - 50])
    with pytest.raises(TruncatedFileError):
        OnnxFormat.open(p)
    # raw_data whose length disagrees with dims
    t = numpy_helper.from_array(W1, "w")
    t.raw_data = t.raw_data[:-4]
    bad = tmp_path / "lying.onnx"
    bad.write_bytes(helper.make_model(helper.make_graph([], "g", [], [], [t])).SerializeToString())
    with pytest.raises(InvalidOffsetError):
        OnnxFormat.open(bad)


class TestOnnxConformance(FormatTests):
    format_name = "onnx"
    suffix = ".onnx"
    dtypes = ("float32", "float64", "float16", "bfloat16", "int8", "uint8", "int16", "uint16", "int32",
              "uint32", "int64", "uint64", "bool", "complex64", "float8_e4m3fn", "float8_e5m2")  # fmt: skip


def test_external_data_write_option_alignment(tmp_path: Path) -> None:
    out = tmp_path / "ext.onnx"
    OnnxFormat.write(out, {"a": W1, "b": B1}, external_data=True)
    model = onnx.load(str(out), load_external_data=False)
    offsets = [int(dict((e.key, e.value) for e in t.external_data)["offset"]) for t in model.graph.initializer]
    assert offsets == [0, 4096]
    np.testing.assert_array_equal(numpy_helper.to_array(onnx.load(str(out)).graph.initializer[1]), B1)
    assert os.path.getsize(tmp_path / "ext.onnx.data") == 4096 + B1.nbytes


def test_cli_convert_with_template(models: Path, tmp_path: Path, cli_run: Any) -> None:
    new = {"fc1.weight": W1 * 2, "fc1.bias": B1, "fc2.weight": W2, "fc2.bias": B2 - 1}
    src = tmp_path / "ckpt.safetensors"
    weightvault.save(new, src)
    out = tmp_path / "cli.onnx"
    code, _out, err = cli_run("convert", src, out, "--to", "onnx", "--template", models / "mlp.onnx")
    assert code == 0, err
    x = RNG.standard_normal((2, 4)).astype(np.float32)
    (y,) = ort.InferenceSession(str(out)).run(None, {"x": x})
    np.testing.assert_allclose(y, _reference(x, *new.values()), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["mlp.onnx", "mlp_ext.onnx", "zoo.onnx"])
def test_raw_and_external_initializers_have_byte_spans(models: Path, name: str, tmp_path: Path) -> None:
    import os

    with weightvault.open(models / name) as reader:
        spanned = set()
        for key in reader.keys():
            span = reader.byte_span(key)
            if reader.info(key).extra["storage"] == "typed":
                assert span is None, key  # float_data & co are decoded, not copied
                continue
            assert span is not None, key
            with open(span.path, "rb") as f:
                assert os.pread(f.fileno(), span.nbytes, span.offset) == reader.get(key).tobytes(), key
            spanned.add(key)
    assert spanned == {"mlp.onnx": {"fc1.weight", "fc2.weight", "fc2.bias"},
                       "mlp_ext.onnx": {"fc1.weight", "fc2.weight", "fc2.bias"},  # onnx leaves float_data inline
                       "zoo.onnx": {"raw_f16"}}[name]
    # and a conversion that streams them gives the same file as one that does not
    from weightvault.formats.onnx import OnnxReader

    weightvault.convert(models / name, tmp_path / "a.safetensors", to="safetensors")
    with pytest.MonkeyPatch.context() as m:
        m.setattr(OnnxReader, "byte_span", lambda self, key: None)
        weightvault.convert(models / name, tmp_path / "b.safetensors", to="safetensors")
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
