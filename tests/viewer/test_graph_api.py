"""/api/graph without a browser: graphs of real ONNX (torch), TF1 .meta (Saver) and Keras files,
weights attached to their nodes, and hostile graph files refused or kept as inert text."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _graph_files import (
    MARKUP,
    GraphFiles,
    graph_files_once,
    hostile_onnx,
    many_nodes_onnx,
    nested_subgraphs_onnx,
    weight_first_onnx,
)

import weightvault
from weightvault.errors import ResourceLimitError, WeightVaultError
from weightvault.graph import MAX_NODES, extract_graph
from weightvault.viewer import ViewerServer
from weightvault.viewer.data import ViewerData


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> GraphFiles:
    return graph_files_once(tmp_path_factory)


def _graph(path: Path) -> dict[str, Any]:
    data = ViewerData([path])
    try:
        return data.graph("0")
    finally:
        data.close()


def _node(graph: dict[str, Any], name: str) -> dict[str, Any]:
    return next(n for n in graph["nodes"] if n["name"] == name)


def _edges(graph: dict[str, Any]) -> set[tuple[str, str]]:
    names = [n["name"] for n in graph["nodes"]]
    return {(names[e["source"]], names[e["target"]]) for e in graph["edges"]}


def test_onnx_graph_from_torch_export(files: GraphFiles) -> None:
    g = _graph(files.onnx_a)
    assert g["available"] and g["source"] == "onnx"
    ops = {n["name"]: n["op"] for n in g["nodes"]}
    assert ops["/conv/Conv"] == "Conv" and ops["/fc/Gemm"] == "Gemm"
    assert ops["image"] == "Input" and ops["logits (output)"] == "Output"
    # initializers are the nodes' weights, and every tensor of the file sits on a node
    assert _node(g, "/conv/Conv")["weights"] == ["conv.weight", "conv.bias"]
    assert _node(g, "/fc/Gemm")["weights"] == ["fc.weight", "fc.bias"]
    with weightvault.open(files.onnx_a) as reader:
        assert g["unattached"] == [] and set(g["weights"]) == set(reader.keys())
    # data flows image -> Conv -> Relu -> ... -> Gemm -> logits, with the input's shape on its edge
    edges = _edges(g)
    assert ("image", "/conv/Conv") in edges and ("/conv/Conv", "/act/Relu") in edges
    assert ("/fc/Gemm", "logits (output)") in edges
    first = next(e for e in g["edges"] if e["tensor"] == "image")
    assert first["shape"] == [1, 3, 8, 8] and first["dtype"] == "float32"
    assert {s["id"] for s in g["scopes"]} >= {"conv", "fc"}
    assert _node(g, "/conv/Conv")["attrs"]["kernel_shape"] == [3, 3]


def test_tf_meta_graph_with_its_checkpoint(files: GraphFiles) -> None:
    g = _graph(files.tf_meta1)
    assert g["source"] == "tf_meta_graph"
    top = {s["id"] for s in g["scopes"] if s["parent"] == ""}
    assert {"layer1", "layer2", "gradients", "GradientDescent", "save"} <= top  # the training graph
    # the variables of the checkpoint beside the .meta are on the variable and on the ops using it
    assert _node(g, "layer1/weights")["weights"] == ["layer1/weights"]
    assert _node(g, "layer1/MatMul")["weights"] == ["layer1/weights"]
    assert "layer2/weights" in _node(g, "GradientDescent/update_layer2/weights/ResourceApplyGradientDescent")["weights"]
    assert set(_node(g, "save/SaveV2")["weights"]) == {"global_step", "layer1/weights", "layer1/biases", "layer2/weights", "layer2/biases"}
    assert ("x", "layer1/MatMul") in _edges(g)
    assert next(e for e in g["edges"] if e["tensor"] == "x")["shape"] == [None, 6]  # TF's -1: unknown
    assert _node(g, "x")["kind"] == "input" and _node(g, "layer1/weights")["kind"] == "variable"


def test_tf_checkpoint_prefix_finds_the_meta_beside_it(files: GraphFiles) -> None:
    prefix = files.tf_meta1.with_suffix("")  # model.ckpt-1
    g = _graph(prefix)
    assert g["available"] and g["format"] == "tf_bundle" and g["source"] == "tf_meta_graph"
    assert any("model.ckpt-1.meta" in note for note in g["notes"])
    assert _node(g, "layer2/MatMul")["weights"] == ["layer2/weights"]
    # the run directory: its latest checkpoint (the "checkpoint" file), and that one's .meta
    g = _graph(files.tf_meta1.parent)
    assert g["available"] and any("model.ckpt-1.meta" in note for note in g["notes"])


@pytest.mark.parametrize("which", ["keras", "keras_h5"])
def test_keras_layers_and_nested_model(files: GraphFiles, which: str) -> None:
    g = _graph(getattr(files, which))
    assert g["source"] == "keras"
    ops = {n["name"]: n["op"] for n in g["nodes"]}
    assert ops == {"inp": "InputLayer", "fc1": "Dense", "fc2": "Dense", "add": "Add",
                   "inner/input_layer": "InputLayer", "inner/d1": "Dense", "inner/d2": "Dense", "head": "Dense"}
    assert [s["id"] for s in g["scopes"]] == ["inner"]  # the nested model is a scope
    assert _edges(g) == {("inp", "fc1"), ("fc1", "fc2"), ("fc1", "add"), ("fc2", "add"),
                         ("add", "inner/input_layer"), ("inner/input_layer", "inner/d1"), ("inner/d1", "inner/d2"),
                         ("inner/d2", "head")}  # the nested model's output is its last layer's
    assert _node(g, "inner/d1")["weights"] == ["inner/d1/kernel", "inner/d1/bias"]
    assert _node(g, "fc1")["attrs"]["units"] == 6
    assert next(e for e in g["edges"] if e["tensor"] == "fc1")["shape"] == [None, 6]
    assert g["unattached"] == []


def test_weights_only_file_has_no_graph(tmp_path: Path) -> None:
    path = weightvault.save({"w": np.ones(3, np.float32)}, tmp_path / "w.safetensors", fsync=False)
    g = _graph(Path(path))
    assert g["available"] is False and "no model graph" in g["reason"]


# -- hostile files ------------------------------------------------------------------------------------
def test_markup_names_are_data_and_cycles_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "hostile.onnx"
    path.write_bytes(hostile_onnx())
    g = _graph(path)
    assert any(MARKUP in n["name"] for n in g["nodes"])  # kept verbatim: the page sets it as text
    assert ("/loop/b", "/loop/c") in _edges(g) and ("/loop/c", "/loop/b") in _edges(g)


def test_an_initializer_in_any_input_position_is_a_weight(tmp_path: Path) -> None:
    path = tmp_path / "w_first.onnx"
    path.write_bytes(weight_first_onnx())
    g = _graph(path)
    assert _node(g, "mm")["weights"] == ["w"] and ("x", "mm") in _edges(g)


def test_too_many_nodes_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    path = tmp_path / "full.onnx"
    path.write_bytes(many_nodes_onnx(MAX_NODES - 1))  # and the input's node: exactly the limit
    assert _graph(path)["node_count"] == MAX_NODES
    path = tmp_path / "huge.onnx"
    path.write_bytes(many_nodes_onnx(MAX_NODES))
    with pytest.raises(ResourceLimitError, match="more than 50,000 nodes") as info:
        _graph(path)
    assert str(path) in str(info.value)


def test_deeply_nested_subgraphs_are_refused_not_recursed(tmp_path: Path) -> None:
    ok = tmp_path / "ok.onnx"
    ok.write_bytes(nested_subgraphs_onnx(5))
    g = _graph(ok)
    leaf = next(n for n in g["nodes"] if n["name"] == "leaf")
    assert leaf["scope"].count("then_branch") == 5  # each If's body is a scope inside the last
    deep = tmp_path / "deep.onnx"
    deep.write_bytes(nested_subgraphs_onnx(400))
    with pytest.raises(WeightVaultError, match="nest"):
        _graph(deep)


def test_scope_depth_is_capped(tmp_path: Path) -> None:
    from _graph_files import _node as onnx_node
    from _graph_files import onnx_model

    from weightvault.core.protobuf import Writer

    name = "/".join(f"s{i}" for i in range(5000)) + "/op"  # 5,000 levels of name scope
    path = tmp_path / "scopes.onnx"
    path.write_bytes(onnx_model(Writer().message(1, onnx_node(name, "Relu", ["a"], ["b"]))))
    g = _graph(path)
    assert len(g["scopes"]) == 32 and g["nodes"][0]["scope"].count("/") == 31


def test_truncated_graph_is_a_weightvault_error(files: GraphFiles, tmp_path: Path) -> None:
    data = files.onnx_a.read_bytes()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(WeightVaultError):
        with weightvault.open(path) as r:
            extract_graph(path, r)


# -- over HTTP ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(files: GraphFiles, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ViewerServer]:
    huge = tmp_path_factory.mktemp("huge") / "huge.onnx"
    huge.write_bytes(many_nodes_onnx(MAX_NODES + 1))
    with ViewerServer([files.onnx_a, files.keras, huge]).start() as srv:
        yield srv


def _get(srv: ViewerServer, route: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(srv.url + route) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_graph_endpoint_over_http(server: ViewerServer) -> None:
    status, g = _get(server, "api/graph?file=0")
    assert status == 200 and g["file"] == 0 and g["source"] == "onnx" and g["node_count"] == len(g["nodes"])
    assert g["edge_count"] == len(g["edges"]) and g["weights"]["fc.weight"] == [_node(g, "/fc/Gemm")["id"]]
    status, g = _get(server, "api/graph?file=1")
    assert status == 200 and g["source"] == "keras"


def test_graph_endpoint_errors(server: ViewerServer) -> None:
    status, body = _get(server, "api/graph?file=2")
    assert status == 422 and body["error"]["code"] == "ResourceLimitError"
    assert "more than 50,000 nodes" in body["error"]["message"]
    assert _get(server, "api/graph?file=9")[0] == 404
    assert _get(server, "api/graph")[0] == 400


def test_vendored_layout_library_is_served(server: ViewerServer) -> None:
    with urllib.request.urlopen(server.url + "static/vendor/elk.bundled.js") as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/javascript")
        assert len(resp.read()) > 1_000_000
    for bad in ("static/vendor/elk.LICENSE.md", "static/vendor/../app.js", "static/vendor/%2e%2e/app.js"):
        try:
            urllib.request.urlopen(server.url + bad)
        except urllib.error.HTTPError as exc:
            assert exc.code == 404
        else:
            raise AssertionError(f"{bad} was served")


# -- torch.export archives: the parser alone (the viewer on .pt2 files: test_graph_pt2.py) ---------
def test_torch_export_graph_from_json(tmp_path: Path) -> None:
    import torch

    from weightvault.graph.torch_export import torch_export_graph

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(4, 3)
            self.bn = torch.nn.BatchNorm1d(3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.bn(self.fc(x)))

    path = tmp_path / "net.pt2"
    torch.export.save(torch.export.export(Net().eval(), (torch.randn(2, 4),)), path)
    g = torch_export_graph(path).to_json()
    ops = {n["name"]: (n["op"], n["scope"], n["weights"]) for n in g["nodes"]}
    assert ops["linear"] == ("aten.linear", "fc", ["fc.weight", "fc.bias"])
    assert ops["batch_norm"][1] == "bn" and "bn.running_mean" in ops["batch_norm"][2]
    assert ("x", "linear") in _edges(g) and ("relu", "relu (output)") in _edges(g)
    assert next(e for e in g["edges"] if e["tensor"] == "linear")["shape"] == [2, 3]


def test_torch_export_hostile_archives(tmp_path: Path) -> None:
    import zipfile

    from weightvault.graph.torch_export import torch_export_graph

    deep = tmp_path / "deep.pt2"
    with zipfile.ZipFile(deep, "w") as zf:
        zf.writestr("m/models/model.json", "[" * 100_000 + "]" * 100_000)
    with pytest.raises(ResourceLimitError, match="nested too deeply"):
        torch_export_graph(deep)
    broken = tmp_path / "broken.pt2"
    broken.write_bytes(deep.read_bytes()[:40])
    with pytest.raises(WeightVaultError, match="torch.export"):
        torch_export_graph(broken)


def test_tf_frozen_graph_consts_are_weights(tmp_path: Path) -> None:
    import tensorflow as tf

    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [None, 4], name="x")
        w = v1.Variable(np.ones((4, 3), np.float32), name="dense/kernel")
        tf.nn.relu(tf.matmul(x, w), name="y")
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            frozen = v1.graph_util.convert_variables_to_constants(sess, graph.as_graph_def(), ["y"])
    path = tmp_path / "frozen.pb"
    path.write_bytes(frozen.SerializeToString())
    g = _graph(path)
    assert g["source"] == "tf_frozen_graph"
    assert _node(g, "dense/kernel")["op"] == "Const" and _node(g, "dense/kernel")["weights"] == ["dense/kernel"]
    assert _node(g, "MatMul")["weights"] == ["dense/kernel"]  # through dense/kernel/read (Identity)
    assert ("MatMul", "y") in _edges(g) and ("x", "MatMul") in _edges(g)
    assert next(e for e in g["edges"] if e["tensor"] == "dense/kernel")["shape"] == [4, 3]


def test_keras_configs_hostile_nesting_and_cycles(tmp_path: Path) -> None:
    from weightvault.graph.keras import keras_graph

    def tensor(layer: str) -> dict[str, Any]:
        return {"class_name": "__keras_tensor__", "config": {"shape": [None, 2], "keras_history": [layer, 0, 0]}}

    cyclic = {"class_name": "Functional", "config": {"layers": [
        {"class_name": "Dense", "name": "a", "config": {"name": "a"}, "inbound_nodes": [{"args": [tensor("b")]}]},
        {"class_name": "Dense", "name": "b", "config": {"name": "b"}, "inbound_nodes": [{"args": [tensor("a")]}]},
    ]}}
    g = keras_graph(tmp_path / "c.keras", cyclic, ["a/kernel", "b/kernel"]).to_json()
    assert _edges(g) == {("a", "b"), ("b", "a")}
    assert _node(g, "a")["weights"] == ["a/kernel"]
    deep: dict[str, Any] = {"class_name": "Sequential", "config": {"layers": [{"class_name": "Dense", "name": "leaf"}]}}
    for i in range(300):  # 300 Sequential models, each inside the next
        deep = {"class_name": "Sequential", "name": f"m{i}", "config": {"name": f"m{i}", "layers": [deep]}}
    with pytest.raises(ResourceLimitError, match="Keras model nesting"):
        keras_graph(tmp_path / "d.keras", deep)
    with pytest.raises(WeightVaultError, match="no model config"):
        keras_graph(tmp_path / "e.keras", {"weights": "only"})
