"""``--per-channel`` on tensors without channels: decided and said, never silent (issue 14,
item 7)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import weightvault
from weightvault.errors import ShapeMismatchError, UnsupportedOperationError
from weightvault.export.numbers import quantize

torch = pytest.importorskip("torch")


def _linear_state(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    torch.manual_seed(3)
    fc = torch.nn.Linear(5, 4)
    sd = {f"fc.{k}": v.detach().numpy().copy() for k, v in fc.state_dict().items()}
    path = tmp_path / "fc.pt"
    torch.save(fc.state_dict(), path)  # keys weight, bias
    return path, {k.removeprefix("fc."): v for k, v in sd.items()}


@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning")
def test_bias_is_quantized_per_tensor_and_the_report_says_so(tmp_path: Path) -> None:
    ckpt, sd = _linear_state(tmp_path)
    rep = weightvault.export_hw(
        ckpt, tmp_path / "o", file_format="coe", number="int8", per_channel=0, one_memory="rom"
    )
    assert len(rep.notes) == 1
    assert "--per-channel 0" in rep.notes[0] and "(bias)" in rep.notes[0]
    assert "per tensor" in rep.notes[0]
    t = {d["name"]: d for d in rep.tensors}
    assert t["weight"]["scales"] == "per-channel axis 0" and t["weight"]["number"]["axis"] == 0
    assert t["bias"]["scales"] == "per-tensor" and t["bias"]["number"]["axis"] is None
    assert isinstance(t["bias"]["number"]["scale"], float)  # one scale, not one per value
    side = json.loads((tmp_path / "o" / "export.json").read_text())
    assert side["notes"] == rep.notes
    mmap = json.loads((tmp_path / "o" / "memory_map.json").read_text())
    segs = {s["name"]: s for s in mmap["memories"][0]["map"]}
    assert segs["bias"]["scales"] == "per-tensor"
    assert segs["weight"]["scales"] == "per-channel axis 0"
    # the codes are torch's per-tensor / per-channel quantization with the recorded scales
    codes = weightvault.import_hw(tmp_path / "o", values="codes")
    b = torch.from_numpy(sd["bias"])
    scale = t["bias"]["number"]["scale"]
    want = torch.quantize_per_tensor(b, scale, 0, torch.qint8).int_repr().numpy()
    np.testing.assert_array_equal(codes["bias"], want)
    w = torch.from_numpy(sd["weight"])
    scales = torch.tensor(t["weight"]["number"]["scale"], dtype=torch.float64)
    want_w = torch.quantize_per_channel(
        w, scales, torch.zeros(4, dtype=torch.int64), 0, torch.qint8
    ).int_repr()
    np.testing.assert_array_equal(codes["weight"], want_w.numpy())


def test_without_per_channel_there_is_no_note(tmp_path: Path) -> None:
    ckpt, sd = _linear_state(tmp_path)
    rep = weightvault.export_hw(ckpt, tmp_path / "o", number="int8")
    assert rep.notes == []
    assert {t["scales"] for t in rep.tensors} == {"per-tensor"}
    rep = weightvault.export_hw(ckpt, tmp_path / "q", number="Q1.15")
    assert all("scales" not in t for t in rep.tensors)  # one fixed scale: nothing to say


def test_per_channel_needs_an_integer_format(tmp_path: Path) -> None:
    ckpt, _ = _linear_state(tmp_path)
    for number in ("Q1.15", "float16"):
        with pytest.raises(UnsupportedOperationError, match=f"{number} has one fixed scale"):
            weightvault.export_hw(ckpt, tmp_path / "o", number=number, per_channel=0)


def test_axis_a_matrix_lacks_is_an_error(tmp_path: Path) -> None:
    ckpt, _ = _linear_state(tmp_path)
    with pytest.raises(ShapeMismatchError, match=r"--per-channel 2.*shape \[4, 5\]") as err:
        weightvault.export_hw(ckpt, tmp_path / "o", number="int8", per_channel=2)
    assert err.value.tensor == "weight"
    rep = weightvault.export_hw(ckpt, tmp_path / "o", number="int4", per_channel=-1)
    t = {d["name"]: d for d in rep.tensors}
    assert t["weight"]["scales"] == "per-channel axis 1"
    np.testing.assert_array_equal(
        weightvault.import_hw(tmp_path / "o", values="codes")["weight"],
        quantize(np.asarray(torch.load(tmp_path / "fc.pt")["weight"]), "int4", axis=1).codes,
    )


def test_cli_prints_the_note_and_the_scope(tmp_path: Path, cli_run) -> None:
    ckpt, _ = _linear_state(tmp_path)
    code, out, err = cli_run(
        "export-hw", ckpt, tmp_path / "o", "--number", "int8", "--per-channel", "0"
    )
    assert code == 0, err
    assert "NOTE --per-channel 0: 1 tensor(s) with fewer than 2 dimensions (bias)" in err
    assert "WARNING" not in err
    assert "int8 (per-channel axis 0)" in out and "int8 (per-tensor)" in out
