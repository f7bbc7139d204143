"""Model files with graphs for the Graph tab tests, written by the real frameworks.

* ``onnx_a`` / ``onnx_b``: a small CNN exported by ``torch.onnx.export``; b is a with the classifier
  (``fc``) weights changed, so only the Gemm that reads them changed.
* ``tf_run``: a TF1 training graph (``tf.compat.v1``, GradientDescent) saved by
  ``tf.compat.v1.train.Saver`` at step 0 and after one training step of ``layer2`` only
  (``model.ckpt-0.meta``, ``model.ckpt-1.meta`` beside their ``.index``/``.data``).
* ``keras``: a Functional ``.keras`` model with a nested Sequential and a layer after it; ``keras_h5``: the same model as
  legacy ``model.save("x.h5")``.
* ``hostile``: an ONNX graph built by hand with node names holding markup, and a cycle.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from weightvault.core.protobuf import Writer

MARKUP = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>'


@dataclass
class GraphFiles:
    onnx_a: Path
    onnx_b: Path
    tf_meta0: Path
    tf_meta1: Path
    keras: Path
    keras_h5: Path
    hostile: Path


def make_graph_files(root: Path) -> GraphFiles:
    root.mkdir(parents=True, exist_ok=True)
    onnx_a, onnx_b = _onnx(root)
    meta0, meta1 = _tf_run(root / "tf_run")
    keras_path, h5_path = _keras(root)
    hostile = root / "hostile.onnx"
    hostile.write_bytes(hostile_onnx())
    return GraphFiles(onnx_a, onnx_b, meta0, meta1, keras_path, h5_path, hostile)


def _onnx(root: Path) -> tuple[Path, Path]:
    import torch

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.act = torch.nn.ReLU()
            self.pool = torch.nn.AdaptiveAvgPool2d(1)
            self.fc = torch.nn.Linear(4, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.flatten(self.pool(self.act(self.conv(x))), 1))

    torch.manual_seed(0)
    net = Net().eval()
    paths = []
    for name in ("a", "b"):
        if name == "b":
            with torch.no_grad():
                net.fc.weight.add_(0.5)
        path = root / f"cnn_{name}.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the legacy (TorchScript) exporter is deprecated
            torch.onnx.export(net, (torch.randn(1, 3, 8, 8),), os.fspath(path), dynamo=False,
                              input_names=["image"], output_names=["logits"])
        paths.append(path)
    return paths[0], paths[1]


def _tf_run(root: Path) -> tuple[Path, Path]:
    import tensorflow as tf

    root.mkdir(parents=True, exist_ok=True)
    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        rng = np.random.default_rng(3)
        x = v1.placeholder(tf.float32, [None, 6], name="x")
        y = v1.placeholder(tf.float32, [None, 2], name="y")
        with v1.variable_scope("layer1"):
            w1 = v1.get_variable("weights", initializer=rng.normal(size=(6, 4)).astype(np.float32))
            b1 = v1.get_variable("biases", initializer=np.zeros(4, np.float32))
            h = tf.nn.relu(tf.matmul(x, w1) + b1)
        with v1.variable_scope("layer2"):
            w2 = v1.get_variable("weights", initializer=rng.normal(size=(4, 2)).astype(np.float32))
            b2 = v1.get_variable("biases", initializer=np.zeros(2, np.float32))
            out = tf.matmul(h, w2) + b2
        loss = tf.reduce_mean(tf.square(out - y), name="loss")
        step = v1.train.get_or_create_global_step()
        train = v1.train.GradientDescentOptimizer(0.1).minimize(loss, var_list=[w2, b2], global_step=step)
        saver = v1.train.Saver()
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            prefix = os.fspath(root / "model.ckpt")
            saver.save(sess, prefix, global_step=0)
            feed = {x: rng.normal(size=(8, 6)).astype(np.float32), y: rng.normal(size=(8, 2)).astype(np.float32)}
            sess.run(train, feed)
            saver.save(sess, prefix, global_step=1)
    return root / "model.ckpt-0.meta", root / "model.ckpt-1.meta"


def _keras(root: Path) -> tuple[Path, Path]:
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras

    # every layer named: Keras numbers auto-named ones per process (input_layer_3 after other tests)
    inner = keras.Sequential(
        [keras.Input((6,), name="input_layer"), keras.layers.Dense(4, activation="relu", name="d1"),
         keras.layers.Dense(3, name="d2")],
        name="inner",
    )
    x = keras.Input((5,), name="inp")
    h = keras.layers.Dense(6, name="fc1")(x)
    a = keras.layers.Dense(6, name="fc2")(h)
    s = keras.layers.Add(name="add")([h, a])
    head = keras.layers.Dense(2, name="head")(inner(s))  # reads the nested model's output
    model = keras.Model(x, head, name="outer")
    path = root / "model.keras"
    h5 = root / "model.h5"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # legacy .h5 saving warns that it is legacy
        model.save(os.fspath(path))
        model.save(os.fspath(h5))
    return path, h5


# -- hand-built ONNX graphs (hostile inputs) --------------------------------------------------------
def _node(name: str, op: str, inputs: list[str], outputs: list[str]) -> Writer:
    w = Writer()
    for i in inputs:
        w.string(1, i)
    for o in outputs:
        w.string(2, o)
    return w.string(3, name).string(4, op)


def _value_info(name: str, dims: list[int]) -> Writer:
    shape = Writer()
    for d in dims:
        shape.message(1, Writer().varint(1, d))
    tensor_type = Writer().varint(1, 1).message(2, shape)
    return Writer().string(1, name).message(2, Writer().message(1, tensor_type))


def _initializer(name: str, values: np.ndarray) -> Writer:
    w = Writer()
    for d in values.shape:
        w.varint(1, d)
    return w.varint(2, 1).string(8, name).bytes(9, values.astype("<f4").tobytes())


def onnx_model(graph: Writer) -> bytes:
    opset = Writer().string(1, "").varint(2, 17)
    return Writer().varint(1, 8).string(2, "hand").message(7, graph).message(8, opset).tobytes()


def hostile_onnx() -> bytes:
    """Names with markup, and a cycle (b reads c, c reads b)."""
    g = Writer()
    g.message(1, _node(f"/evil/{MARKUP}", "Gemm", ["in", "w"], ["t1"]))
    g.message(1, _node("/loop/b", "Add", ["t1", "t3"], ["t2"]))
    g.message(1, _node("/loop/c", "Relu", ["t2"], ["t3"]))
    g.string(2, "hostile")
    g.message(5, _initializer("w", np.ones((2, 2), np.float32)))
    g.message(11, _value_info("in", [1, 2]))
    g.message(12, _value_info("t3", [1, 2]))
    return onnx_model(g)


def many_nodes_onnx(count: int) -> bytes:
    """``count`` Relu nodes in a chain, plus the graph input's node."""
    g = Writer()
    for i in range(count):
        g.message(1, _node(f"n{i}", "Relu", [f"v{i}"], [f"v{i + 1}"]))
    g.message(11, _value_info("v0", [1]))
    return onnx_model(g)


def weight_first_onnx() -> bytes:
    """A MatMul whose first input is the initializer (w @ x)."""
    g = Writer().message(1, _node("mm", "MatMul", ["w", "x"], ["y"])).string(2, "w_first")
    g.message(5, _initializer("w", np.ones((2, 2), np.float32))).message(11, _value_info("x", [2, 1]))
    return onnx_model(g)


def nested_subgraphs_onnx(depth: int) -> bytes:
    """An ``If`` whose then_branch holds an ``If`` ... ``depth`` levels deep."""
    inner = Writer().message(1, _node("leaf", "Relu", ["x"], ["y"])).string(2, "leaf")
    for level in range(depth):
        attr = Writer().string(1, "then_branch").message(6, inner).varint(20, 5)
        node = _node(f"if{level}", "If", ["cond"], [f"o{level}"]).message(5, attr)
        inner = Writer().message(1, node).string(2, f"g{level}")
    return onnx_model(inner)


_MADE: GraphFiles | None = None


def graph_files_once(tmp_path_factory: "pytest.TempPathFactory") -> GraphFiles:  # noqa: F821, UP037
    """The files, made once per test session (the API and browser tests share them)."""
    global _MADE
    if _MADE is None:
        _MADE = make_graph_files(tmp_path_factory.mktemp("graph"))
    return _MADE
