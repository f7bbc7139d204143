"""onnx-to-torch, verified by running the ONNX model in onnxruntime and the converted weights in PyTorch.

The model has Gemm nodes with ``transB=0`` ([in, out], transposed into Linear) and ``transB=1``
(already [out, in]), a bidirectional LSTM (gates i,o,f,c; bias [Wb, Rb]) and a GRU with
``linear_before_reset=1`` (gates z,r,h). Torch names come from ``--map`` and ``--rename``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import weightvault  # noqa: E402
from weightvault.errors import UnsupportedOperationError  # noqa: E402

RTOL, ATOL = 1e-5, 1e-6
T, B, IN = 4, 2, 3
LSTM_H, GRU_H = 4, 5


def _model(path: Path, linear_before_reset: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)

    def init(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.normal(0, 0.5, shape).astype("float32"), name)

    inits = [
        init("W1", 6, 5), init("B1", 5),  # Gemm transB=0: B is [K, N]
        init("W2", 3, 5), init("B2", 3),  # Gemm transB=1: B is [N, K] = PyTorch layout
        init("lstm_W", 2, 4 * LSTM_H, IN), init("lstm_R", 2, 4 * LSTM_H, LSTM_H), init("lstm_B", 2, 8 * LSTM_H),
        init("gru_W", 1, 3 * GRU_H, IN), init("gru_R", 1, 3 * GRU_H, GRU_H), init("gru_B", 1, 6 * GRU_H),
    ]  # fmt: skip
    nodes = [
        helper.make_node("Gemm", ["A", "W1", "B1"], ["h1"], name="gemm1"),
        helper.make_node("Relu", ["h1"], ["r1"], name="relu"),
        helper.make_node("Gemm", ["r1", "W2", "B2"], ["out"], name="gemm2", transB=1),
        helper.make_node(
            "LSTM", ["S", "lstm_W", "lstm_R", "lstm_B"], ["Y_lstm"], name="lstm_node",
            hidden_size=LSTM_H, direction="bidirectional",
        ),
        helper.make_node(
            "GRU", ["S", "gru_W", "gru_R", "gru_B"], ["Y_gru"], name="gru_node",
            hidden_size=GRU_H, linear_before_reset=linear_before_reset,
        ),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, [B, 6]), helper.make_tensor_value_info("S", TensorProto.FLOAT, [T, B, IN])],
        [
            helper.make_tensor_value_info("out", TensorProto.FLOAT, [B, 3]),
            helper.make_tensor_value_info("Y_lstm", TensorProto.FLOAT, [T, 2, B, LSTM_H]),
            helper.make_tensor_value_info("Y_gru", TensorProto.FLOAT, [T, 1, B, GRU_H]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    feeds = {"A": rng.normal(size=(B, 6)).astype("float32"), "S": rng.normal(size=(T, B, IN)).astype("float32")}
    if linear_before_reset:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        out, y_lstm, y_gru = sess.run(["out", "Y_lstm", "Y_gru"], feeds)
        return {**feeds, "out": out, "Y_lstm": y_lstm, "Y_gru": y_gru}
    return feeds


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(6, 5)
        self.fc2 = torch.nn.Linear(5, 3)
        self.lstm = torch.nn.LSTM(IN, LSTM_H, bidirectional=True)  # sequence first, as ONNX
        self.gru = torch.nn.GRU(IN, GRU_H)


def test_onnx_to_torch_outputs_agree(cli_run, tmp_path: Path) -> None:
    src = tmp_path / "m.onnx"
    ref = _model(src)
    name_map = tmp_path / "names.json"
    name_map.write_text(json.dumps({"W1": "fc1.weight", "B1": "fc1.bias", "W2": "fc2.weight", "B2": "fc2.bias"}))
    dst = tmp_path / "m.safetensors"
    code, out, _ = cli_run(
        "convert", src, dst, "--rules", "onnx-to-torch", "--map", name_map,
        "--rename", r"^lstm_node\.=lstm.", "--rename", r"^gru_node\.=gru.", "--json",
    )  # fmt: skip
    assert code == 0, out
    rows = {r["target"]: r for r in json.loads(out)["tensors"]}
    assert rows["fc1.weight"]["source_shapes"] == [[6, 5]] and rows["fc1.weight"]["target_shape"] == [5, 6]
    assert rows["fc2.weight"]["transforms"] == "copy"  # transB=1: already [out, in]
    assert rows["lstm.bias_hh_l0_reverse"]["sources"] == ["lstm_B"]

    net = Net()
    net.load_state_dict(weightvault.load(dst, framework="torch"), strict=True)
    with torch.no_grad():
        out_fc = net.fc2(torch.relu(net.fc1(torch.from_numpy(ref["A"]))))
        y_lstm, _ = net.lstm(torch.from_numpy(ref["S"]))
        y_gru, _ = net.gru(torch.from_numpy(ref["S"]))
    np.testing.assert_allclose(out_fc.numpy(), ref["out"], rtol=RTOL, atol=ATOL)
    # ONNX Y is [T, dirs, B, H]; PyTorch concatenates directions on the last axis.
    y_lstm = y_lstm.numpy().reshape(T, B, 2, LSTM_H).transpose(0, 2, 1, 3)
    np.testing.assert_allclose(y_lstm, ref["Y_lstm"], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(y_gru.numpy()[:, None], ref["Y_gru"], rtol=RTOL, atol=ATOL)


def test_onnx_yaml_map(tmp_path: Path) -> None:
    pytest.importorskip("yaml")
    src = tmp_path / "m.onnx"
    _model(src)
    name_map = tmp_path / "names.yaml"
    name_map.write_text("W1: fc1.weight\nB1: fc1.bias\n")
    report = weightvault.convert(src, tmp_path / "x.safetensors", rules="onnx-to-torch", name_map=name_map, dry_run=True)
    targets = {r["target"] for r in report.to_dict()["tensors"]}
    assert {"fc1.weight", "fc1.bias", "W2", "lstm_node.weight_ih_l0_reverse", "gru_node.bias_hh_l0"} <= targets


def test_gru_linear_before_reset_0_is_refused(cli_run, tmp_path: Path) -> None:
    src = tmp_path / "m.onnx"
    _model(src, linear_before_reset=0)
    with pytest.raises(UnsupportedOperationError) as err:
        weightvault.convert(src, tmp_path / "x.safetensors", rules="onnx-to-torch")
    assert "linear_before_reset=0" in str(err.value) and "gru_node" in str(err.value)
    assert not (tmp_path / "x.safetensors").exists()
    code, _out, errtext = cli_run("convert", src, tmp_path / "x.safetensors", "--rules", "onnx-to-torch")
    assert code == 2 and "linear_before_reset=0" in errtext


def test_truncated_graph_raises_a_corrupt_file_error(tmp_path: Path) -> None:
    """Reading the nodes of a cut file fails with our error (not a BufferError from the mmap)."""
    from weightvault.errors import CorruptFileError
    from weightvault.rules.onnx_torch import read_nodes

    src = tmp_path / "m.onnx"
    _model(src)
    cut = tmp_path / "cut.onnx"
    data = src.read_bytes()
    cut.write_bytes(data[: len(data) - 700])
    with pytest.raises(CorruptFileError):
        read_nodes(str(cut))
