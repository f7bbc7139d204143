"""Frozen GraphDefs and TF1 .meta files, against real TensorFlow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest

import weightvault
from weightvault.core.protobuf import Writer
from weightvault.errors import InvalidHeaderError, ShapeMismatchError, TensorNotFoundError
from weightvault.formats.tf_graph import TFGraphFormat, decode_tensor_proto


@pytest.fixture(scope="module")
def tf() -> Any:
    return pytest.importorskip("tensorflow")


def test_frozen_fixture_matches_expected(fixtures_dir: Path) -> None:
    z = np.load(fixtures_dir / "tensorflow" / "expected" / "frozen.npz")
    with weightvault.open(fixtures_dir / "tensorflow" / "frozen" / "graph.pb") as r:
        assert r.format == "tf_graph"
        assert sorted(r.keys()) == sorted(z.files)
        for name in z.files:
            np.testing.assert_array_equal(r.get(name), z[name])
        assert "Conv2D" in r.metadata["ops"]


def test_meta_fixture_lists_variables(fixtures_dir: Path) -> None:
    with weightvault.open(fixtures_dir / "tensorflow" / "tf1_saver" / "model.ckpt-1000.meta") as r:
        assert r.format == "tf_graph"
        variables = {v["name"]: v for v in r.metadata["variables"]}
        assert variables["layer1/weights"]["shape"] == [784, 128]
        assert variables["layer1/weights"]["dtype"] == "float32"
        assert variables["global_step"]["dtype"] == "int64"
        assert all(v["in_checkpoint"] for v in variables.values())
        assert r.metadata["graph_only_variables"] == []
        assert r.get("layer2/biases").shape == (10,)


def test_meta_reports_graph_only_variables(tf: Any, tmp_path: Path) -> None:
    graph = tf.Graph()
    with graph.as_default():
        a = tf.compat.v1.Variable(np.ones((2, 3), np.float32), name="saved/a")
        tf.compat.v1.Variable(np.zeros(4, np.float64), name="unsaved/b")
        saver = tf.compat.v1.train.Saver(var_list=[a])
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            saver.save(sess, str(tmp_path / "model"))
    with TFGraphFormat.open(tmp_path / "model.meta") as r:
        assert r.keys() == ["saved/a"]
        np.testing.assert_array_equal(r.get("saved/a"), np.ones((2, 3), np.float32))
        assert r.metadata["graph_only_variables"] == ["unsaved/b"]
        b = next(v for v in r.metadata["variables"] if v["name"] == "unsaved/b")
        assert (b["dtype"], b["shape"]) == ("float64", [4])


def _frozen_graph(tf: Any, path: Path) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    weights = {"dense/kernel": rng.standard_normal((4, 3)).astype(np.float32),
               "dense/bias": rng.standard_normal(3).astype(np.float32)}
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 4], name="x")
        k = tf.compat.v1.Variable(weights["dense/kernel"], name="dense/kernel")
        b = tf.compat.v1.Variable(weights["dense/bias"], name="dense/bias")
        tf.identity(tf.matmul(x, k) + b, name="y")
        tf.constant(2.5, shape=[2, 3], name="filled")  # float_val [2.5]: the last value repeats
        tf.constant(np.array([1.5, -2.0], np.float16), name="halfs")  # small: half_val
        tf.constant(np.array([0.5, 3.0], ml_dtypes.bfloat16), dtype=tf.bfloat16, name="bf")
        tf.constant([True, False], name="flags")
        tf.constant(7, shape=[3], dtype=tf.int64, name="sevens")
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            frozen = tf.compat.v1.graph_util.convert_variables_to_constants(
                sess, graph.as_graph_def(), ["y", "filled", "halfs", "bf", "flags", "sevens"])
    path.write_bytes(frozen.SerializeToString())
    return weights


def test_frozen_graph_consts_and_typed_fields(tf: Any, tmp_path: Path) -> None:
    weights = _frozen_graph(tf, tmp_path / "g.pb")
    with weightvault.open(tmp_path / "g.pb") as r:
        for name, want in weights.items():
            np.testing.assert_array_equal(r.get(name), want)
        np.testing.assert_array_equal(r.get("filled"), np.full((2, 3), 2.5, np.float32))
        assert r.get("halfs").dtype == np.float16
        np.testing.assert_array_equal(r.get("halfs"), np.array([1.5, -2.0], np.float16))
        np.testing.assert_array_equal(r.get("bf"), np.array([0.5, 3.0], ml_dtypes.bfloat16))
        np.testing.assert_array_equal(r.get("flags"), [True, False])
        np.testing.assert_array_equal(r.get("sevens"), np.full(3, 7, np.int64))


def test_repeat_last_and_zero_fill_rules() -> None:
    shape = Writer().message(2, Writer().varint(1, 5))
    proto = Writer().varint(1, 3).message(2, shape).packed_varint(7, [4, 9]).tobytes()
    np.testing.assert_array_equal(decode_tensor_proto(proto), [4, 9, 9, 9, 9])
    empty = Writer().varint(1, 1).message(2, shape).tobytes()
    np.testing.assert_array_equal(decode_tensor_proto(empty), np.zeros(5, np.float32))


def test_write_back_runs_in_tensorflow(tf: Any, tmp_path: Path) -> None:
    _frozen_graph(tf, tmp_path / "g.pb")
    new = {"dense/kernel": np.arange(12, dtype=np.float32).reshape(4, 3), "dense/bias": np.array([1, 2, 3], np.float32)}
    TFGraphFormat.write(tmp_path / "new.pb", new, template=tmp_path / "g.pb")
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString((tmp_path / "new.pb").read_bytes())
    graph = tf.Graph()
    with graph.as_default():
        tf.import_graph_def(graph_def, name="")
        with tf.compat.v1.Session(graph=graph) as sess:
            x = np.ones((2, 4), np.float32)
            y = sess.run("y:0", feed_dict={"x:0": x})
    np.testing.assert_allclose(y, x @ new["dense/kernel"] + new["dense/bias"])
    with weightvault.open(tmp_path / "new.pb") as r:  # untouched Consts keep their values
        np.testing.assert_array_equal(r.get("filled"), np.full((2, 3), 2.5, np.float32))


def test_write_back_refuses_bad_input(tf: Any, tmp_path: Path) -> None:
    _frozen_graph(tf, tmp_path / "g.pb")
    with pytest.raises(ShapeMismatchError):
        TFGraphFormat.write(tmp_path / "bad.pb", {"dense/bias": np.ones(4, np.float32)}, template=tmp_path / "g.pb")
    with pytest.raises(TensorNotFoundError):
        TFGraphFormat.write(tmp_path / "bad.pb", {"nope": np.ones(4, np.float32)}, template=tmp_path / "g.pb")
    assert not (tmp_path / "bad.pb").exists()


def test_consts_only_graph_imports_in_tensorflow(tf: Any, tmp_path: Path) -> None:
    tensors = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b/c": np.array([1, -1], np.int64)}
    TFGraphFormat.write(tmp_path / "w.pb", tensors)
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString((tmp_path / "w.pb").read_bytes())
    with tf.Graph().as_default() as graph:
        tf.import_graph_def(graph_def, name="")
        with tf.compat.v1.Session(graph=graph) as sess:
            np.testing.assert_array_equal(sess.run("a:0"), tensors["a"])
            np.testing.assert_array_equal(sess.run("b/c:0"), tensors["b/c"])


def test_garbage_pb_is_rejected(tmp_path: Path) -> None:
    p = tmp_path / "x.pb"
    p.write_bytes(b"\x0a\xff\xff\xff\x0f" + b"junk")
    with pytest.raises(InvalidHeaderError):
        TFGraphFormat.open(p)


# -- #13.2: scalar Consts survive a rewrite -----------------------------------------------------------
def _freeze_concat_graph(tf: Any, path: Path) -> dict[str, np.ndarray]:
    """A frozen graph with variables, a tf.concat (its axis is a 0-d int32 Const) and a 0-d float
    Const, frozen by TensorFlow; returns the frozen Const values."""
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 4], name="x")
        w = tf.compat.v1.get_variable("w", initializer=np.arange(12, dtype=np.float32).reshape(4, 3) / 7)
        b = tf.compat.v1.get_variable("b", initializer=np.array([0.5, -1.0, 2.0], np.float32))
        scale = tf.constant(1.25, name="scale")  # 0-d float Const
        h = tf.matmul(x, w) + b
        tf.concat([h * scale, h], axis=1, name="y")  # axis: 0-d int32 Const
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            frozen = tf.compat.v1.graph_util.convert_variables_to_constants(sess, graph.as_graph_def(), ["y"])
    path.write_bytes(frozen.SerializeToString())
    with weightvault.open(path) as r:
        return {name: r.get(name) for name in r.keys()}


def _run_graph(tf: Any, path: Path, x: np.ndarray) -> np.ndarray:
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(path.read_bytes())
    with tf.Graph().as_default() as graph:
        tf.import_graph_def(graph_def, name="")
        with tf.compat.v1.Session(graph=graph) as sess:
            return sess.run("y:0", feed_dict={"x:0": x})


def test_rewrite_keeps_scalar_consts_and_runs_in_tensorflow(tf: Any, tmp_path: Path, cli_run: Any) -> None:
    frozen = tmp_path / "frozen.pb"
    consts = _freeze_concat_graph(tf, frozen)
    scalars = [n for n, v in consts.items() if v.shape == ()]
    assert "scale" in scalars and any(n.endswith("axis") for n in scalars)
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    want = _run_graph(tf, frozen, x)
    direct, via_npz = tmp_path / "direct.pb", tmp_path / "via.pb"
    for args in (("convert", frozen, direct, "--template", frozen),
                 ("convert", frozen, tmp_path / "w.npz"),
                 ("convert", tmp_path / "w.npz", via_npz, "--template", frozen)):
        code, _, err = cli_run(*args)
        assert code == 0, err
    for out in (direct, via_npz):
        with weightvault.open(out) as r:
            for name in scalars:
                assert r.info(name).shape == (), (out.name, name)
                np.testing.assert_array_equal(r.get(name), consts[name])
        np.testing.assert_array_equal(_run_graph(tf, out, x), want)
