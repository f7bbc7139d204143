"""Gate-split presets are checked against what the checkpoint says the tensor is (issue 14, item 7).

Real PyTorch and Keras recurrent layers; TF1 cells (which need the removed ``tf.compat.v1``
rnn_cell module to build) are checked from their framework-made names only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import weightvault
from weightvault.errors import ShapeMismatchError

torch = pytest.importorskip("torch")


def _save_torch(tmp_path: Path, **modules: torch.nn.Module) -> Path:
    sd = {}
    for prefix, module in modules.items():
        sd |= {f"{prefix}.{k}": v for k, v in module.state_dict().items()}
    path = tmp_path / "rnn.pt"
    torch.save(sd, path)
    return path


def test_gru_split_with_lstm_preset_divisible_but_wrong(tmp_path: Path) -> None:
    # H = 4: weight_ih is [12, 6], divisible by 4, so only the checkpoint can tell it is a GRU
    ckpt = _save_torch(tmp_path, gru=torch.nn.GRU(6, 4))
    with pytest.raises(ShapeMismatchError) as err:
        # weight_hh_l0 is not exported, yet it is what tells
        weightvault.export_hw(
            ckpt, tmp_path / "o", include=["gru.weight_ih_l0"], split=["gru.*:0:lstm"]
        )
    msg = str(err.value)
    assert "tensor 'gru.weight_ih_l0'" in msg
    assert "preset 'lstm' (4 gates i,f,g,o)" in msg
    assert "shape [12, 6]" in msg
    assert "PyTorch GRU" in msg and "gru.weight_hh_l0 [12, 4]" in msg
    assert "3 gate(s) of hidden size 4" in msg
    assert err.value.hint == "use the 'gru' preset: NAME:0:gru"
    assert not (tmp_path / "o").exists()


def test_gru_split_with_lstm_preset_not_divisible(tmp_path: Path) -> None:
    ckpt = _save_torch(tmp_path, gru=torch.nn.GRU(5, 3))  # weight_ih [9, 5]
    with pytest.raises(ShapeMismatchError, match=r"preset 'lstm'.*PyTorch GRU.*shape \[9, 5\]"):
        weightvault.export_hw(ckpt, tmp_path / "o", split=["gru.*:0:lstm"])


def test_lstm_with_gru_preset_and_wrong_axis(tmp_path: Path) -> None:
    ckpt = _save_torch(tmp_path, lstm=torch.nn.LSTM(6, 3))  # [12, 6], divisible by 3
    with pytest.raises(ShapeMismatchError, match=r"preset 'gru'.*PyTorch LSTM.*4 gate\(s\)"):
        weightvault.export_hw(ckpt, tmp_path / "o", split=["lstm.weight_*:0:gru"])
    # the right preset on the wrong axis: 6 inputs split in 4? 6 % 4 != 0 -> GRU(8, 4) instead
    ckpt = _save_torch(tmp_path, lstm=torch.nn.LSTM(8, 4))  # weight_ih [16, 8]
    with pytest.raises(ShapeMismatchError, match="stacks its gates on axis 0") as err:
        weightvault.export_hw(ckpt, tmp_path / "o", split=["lstm.weight_ih_l0:1:lstm"])
    assert "axis 1 of shape [16, 8]" in str(err.value)


def test_presets_accept_every_layer_direction_and_projection(tmp_path: Path) -> None:
    torch.manual_seed(1)
    gru = torch.nn.GRU(5, 4, num_layers=2, bidirectional=True)
    lstm = torch.nn.LSTM(3, 4, proj_size=2)  # weight_hh [16, 2], weight_hr [2, 4]
    ckpt = _save_torch(tmp_path, gru=gru, lstm=lstm)
    rep = weightvault.export_hw(
        ckpt,
        tmp_path / "o",
        split=["gru.*:0:gru", "lstm.weight_[ih]h_l0:0:lstm", "lstm.bias_*:0:lstm"],
    )
    names = {t["name"] for t in rep.tensors}
    assert "gru.weight_hh_l1_reverse.n" in names and "gru.bias_ih_l1.z" in names
    assert {"lstm.weight_hh_l0.g", "lstm.weight_hr_l0"} <= names
    back = weightvault.import_hw(tmp_path / "o", layout="exported")
    _, _, w_n = gru.weight_hh_l1_reverse.detach().chunk(3, 0)
    np.testing.assert_array_equal(back["gru.weight_hh_l1_reverse.n"], w_n.numpy())
    i, f, g, o = lstm.weight_hh_l0.detach().chunk(4, 0)
    np.testing.assert_array_equal(back["lstm.weight_hh_l0.g"], g.numpy())
    assert t_split(rep, "lstm.weight_hh_l0.g") == {
        "axis": 0,
        "parts": ["i", "f", "g", "o"],
        "preset": "lstm",
        "part": "g",
    }


def t_split(rep: weightvault.ExportReport, name: str) -> dict[str, object]:
    return next(t["split"] for t in rep.tensors if t["name"] == name)


def test_projection_matrix_is_not_a_gate_tensor(tmp_path: Path) -> None:
    ckpt = _save_torch(tmp_path, lstm=torch.nn.LSTM(3, 4, proj_size=2))
    # weight_hr_l0 [2, 4] has no gates: 'weight_*' catches it and the preset cannot split it
    with pytest.raises(ShapeMismatchError, match=r"lstm.weight_hr_l0.*shape \[2, 4\]"):
        weightvault.export_hw(ckpt, tmp_path / "o", split=["lstm.weight_*:0:lstm"])


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    keras = pytest.importorskip("keras")
    model = keras.Sequential(
        [
            keras.Input((5, 3)),
            keras.layers.GRU(4, return_sequences=True, name="gru"),  # kernel [3, 12], bias [2, 12]
            keras.layers.LSTM(3, name="lstm"),  # kernel [4, 12]
        ]
    )
    path = tmp_path_factory.mktemp("keras") / "m.weights.h5"
    model.save_weights(path)
    return path


def test_keras_gru_with_torch_preset_is_mislabelled(tmp_path: Path, keras_file: Path) -> None:
    with pytest.raises(ShapeMismatchError, match=r"order z,r,n .*mislabelled") as err:
        weightvault.export_hw(keras_file, tmp_path / "o", split=["gru/gru_cell/kernel:1:gru"])
    assert "Keras GRU (gru/gru_cell/recurrent_kernel [4, 12])" in str(err.value)
    assert err.value.hint == "name the gates yourself: NAME:1:3:z,r,n"
    # gates on the last axis, axis 0 is the input: refused even with own names
    with pytest.raises(ShapeMismatchError, match="stacks its gates on axis 1"):
        weightvault.export_hw(
            keras_file, tmp_path / "o", split=["gru/gru_cell/kernel:0:gru:z,r,h"]
        )
    # the LSTM's kernel [4, 12] is divisible by 3 along axis 1: the gate count tells
    with pytest.raises(ShapeMismatchError, match=r"Keras LSTM.*4 gate\(s\) of hidden size 3"):
        weightvault.export_hw(keras_file, tmp_path / "o", split=["lstm/lstm_cell/kernel:1:gru"])


def test_keras_presets_that_fit(tmp_path: Path, keras_file: Path) -> None:
    rep = weightvault.export_hw(
        keras_file,
        tmp_path / "o",
        split=["gru/gru_cell/*:-1:gru:z,r,h", "lstm/lstm_cell/*:-1:lstm"],
    )
    shapes = {t["name"]: t["shape"] for t in rep.tensors}
    assert shapes["gru/gru_cell/bias.h"] == [2, 4]
    assert shapes["lstm/lstm_cell/recurrent_kernel.g"] == [3, 3]


def test_tf1_cell_names_tell_the_kind(tmp_path: Path) -> None:
    h = 4
    sd = {
        "rnn/lstm_cell/kernel": np.zeros((3 + h, 4 * h), np.float32),
        "rnn/lstm_cell/bias": np.zeros((4 * h,), np.float32),
        "enc/gru_cell/gates/kernel": np.zeros((3 + h, 2 * h), np.float32),
        "enc/gru_cell/candidate/kernel": np.zeros((3 + h, h), np.float32),
    }
    with pytest.raises(ShapeMismatchError, match=r"order i,g,f,o") as err:
        weightvault.export_hw(sd, tmp_path / "o", split=["rnn/*:-1:lstm"])
    assert err.value.hint == "name the gates yourself: NAME:1:4:i,g,f,o"
    with pytest.raises(ShapeMismatchError, match=r"GRUCell gates \(r,u\).*2 gate\(s\)"):
        weightvault.export_hw(sd, tmp_path / "o", split=["enc/gru_cell/gates/kernel:1:gru"])
    weightvault.export_hw(sd, tmp_path / "o", split=["rnn/*:-1:lstm:i,j,f,o"])


def test_cli_reports_the_mismatch_in_one_line(tmp_path: Path, cli_run) -> None:
    ckpt = _save_torch(tmp_path, gru=torch.nn.GRU(6, 4))
    code, out, err = cli_run(
        "export-hw", ckpt, tmp_path / "o", "--split", "gru.weight_*:0:lstm"
    )
    assert code in (1, 2)  # input error: 1 today, 2 once issue 14 item 6 lands
    assert err.startswith("ERROR") and "TIP use the 'gru' preset" in err
    assert "rnn.pt: tensor 'gru.weight_ih_l0': --split preset 'lstm'" in err  # file and tensor
    assert "gru.weight_hh_l0" in err and "preset 'lstm'" in err and "[12, 4]" in err
    assert "Traceback" not in err + out
