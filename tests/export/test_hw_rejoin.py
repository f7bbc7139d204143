"""``import-hw`` rebuilds the source tensors, so ``diff source imported`` is clean (issue 14,
item 7): split parts are concatenated back under the source name, transposes and reshapes
undone, the source dtype restored; differences stay within the export's quantization error."""

from __future__ import annotations

import json
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

import weightvault
from weightvault.errors import InvalidHeaderError, UnsupportedOperationError, WeightVaultError

torch = pytest.importorskip("torch")


def _model_ckpt(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = torch.nn.Module()
    model.gru = torch.nn.GRU(6, 4)
    model.lstm = torch.nn.LSTM(4, 2)
    model.fc = torch.nn.Linear(2, 3)
    model.bn = torch.nn.BatchNorm1d(3)
    path = tmp_path / "src.pt"
    torch.save(model.state_dict(), path)
    return path


SHAPING = {
    "split": ["gru.*:0:gru", "lstm.weight_*:0:lstm"],
    "transpose": ["fc.weight:1,0", "gru.weight_ih_l0.z:1,0"],
    "reshape": ["lstm.weight_ih_l0.*:-1", "gru.weight_hh_l0.n:2,8"],
}


def test_float32_export_reimports_identical(tmp_path: Path, cli_run) -> None:
    src = _model_ckpt(tmp_path)
    args = [f"--{k}={v}" for k, vs in SHAPING.items() for v in vs]
    code, _, err = cli_run("export-hw", src, tmp_path / "o", "--one-memory", "rom", *args)
    assert code == 0, err
    code, out, err = cli_run("import-hw", tmp_path / "o", tmp_path / "back.safetensors")
    assert code == 0, err
    assert "gru.weight_ih_l0 " in out and "gru.weight_ih_l0.r" not in out
    code, out, err = cli_run("diff", src, tmp_path / "back.safetensors")
    assert code == 0, out + err
    assert "0 changed, 0 added, 0 removed, 0 reshaped" in out
    with weightvault.open(tmp_path / "back.safetensors") as back, weightvault.open(src) as ref:
        assert back.keys() == ref.keys()
        assert back.info("bn.num_batches_tracked").dtype == "int64"


@pytest.mark.parametrize("number", ["Q1.15", "int8", "ap_fixed<10,3>"])
def test_quantized_export_is_within_the_printed_tolerance(
    tmp_path: Path, cli_run, number: str
) -> None:
    src = _model_ckpt(tmp_path)
    args = [f"--{k}={v}" for k, vs in SHAPING.items() for v in vs]
    extra = ["--per-channel", "0"] if number == "int8" else []
    code, _, err = cli_run("export-hw", src, tmp_path / "o", "--number", number, *args, *extra)
    assert code == 0, err
    code, out, err = cli_run("import-hw", tmp_path / "o", tmp_path / "b.safetensors", "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["layout"] == "source" and info["atol"] > 0
    code, out, _ = cli_run("diff", src, tmp_path / "b.safetensors")
    assert code == 1 and "value" in out  # quantized: not equal ...
    code, out, _ = cli_run("diff", src, tmp_path / "b.safetensors", "--atol", info["atol"])
    assert code == 0, out  # ... but within the export's error
    # the printed tolerance is tight: half of it fails
    code, _, _ = cli_run("diff", src, tmp_path / "b.safetensors", "--atol", info["atol"] / 2)
    assert code == 1
    code, out, _ = cli_run("import-hw", tmp_path / "o", tmp_path / "c.safetensors")
    assert f"--atol {info['atol']:.3g}" in out


def test_rejoined_values_match_the_source_layout(tmp_path: Path) -> None:
    w = np.arange(48, dtype=np.float32).reshape(6, 8) / 64
    k = np.arange(48, dtype=np.float32).reshape(2, 3, 8) / 64  # a conv-like 3-D tensor
    weightvault.export_hw(
        {"w": w, "v": w[:2], "k": k},
        tmp_path / "o",
        number="Q4.12",
        split=["w:1:4:a,b,c,d", "k:2:2"],
        # (1, 2, 0) is not its own inverse: undoing it needs the inverse permutation
        transpose=["w.b:1,0", "v:1,0", "k.*:1,2,0"],
        reshape=["w.c:-1", "w.d:3,2,2", "k.1:4,-1"],
    )
    back = weightvault.import_hw(tmp_path / "o")
    assert list(back) == ["w", "v", "k"]
    np.testing.assert_array_equal(back["w"], w)  # multiples of 1/64 are exact in Q4.12
    np.testing.assert_array_equal(back["v"], w[:2])
    np.testing.assert_array_equal(back["k"], k)
    assert back.bounds == {"w": 0.0, "v": 0.0, "k": 0.0}  # type: ignore[attr-defined]
    parts = weightvault.import_hw(tmp_path / "o", layout="exported")
    assert list(parts) == ["w.a", "w.b", "w.c", "w.d", "v", "k.0", "k.1"]
    assert parts["w.d"].shape == (3, 2, 2) and parts["v"].shape == (8, 2)
    assert parts["k.0"].shape == (3, 4, 2) and parts["k.1"].shape == (4, 6)


@pytest.mark.parametrize(
    ("dtype", "number"),
    [
        (np.float16, "float32"),
        (ml_dtypes.bfloat16, "bfloat16"),
        (np.float64, "Q5.11"),
        (np.int64, "float32"),
        (np.uint8, "UQ8.8"),
    ],
)
def test_source_dtype_is_restored(tmp_path: Path, dtype: type, number: str) -> None:
    x = (np.arange(12).reshape(4, 3) * 0.75).astype(dtype)
    if np.dtype(dtype).kind in "iu":
        x = np.arange(12, dtype=dtype).reshape(4, 3)
    weightvault.save({"t": x}, tmp_path / "s.safetensors")
    weightvault.export_hw(tmp_path / "s.safetensors", tmp_path / "o", number=number)
    back = weightvault.import_hw(tmp_path / "o")
    assert back["t"].dtype == np.dtype(dtype)
    np.testing.assert_array_equal(back["t"], x)


def test_codes_and_exported_layout(tmp_path: Path, cli_run) -> None:
    src = _model_ckpt(tmp_path)
    weightvault.export_hw(src, tmp_path / "o", number="int8", split=["gru.*:0:gru"])
    with pytest.raises(UnsupportedOperationError, match="codes are read as exported"):
        weightvault.import_hw(tmp_path / "o", values="codes", layout="source")
    codes = weightvault.import_hw(tmp_path / "o", values="codes")
    assert "gru.weight_ih_l0.r" in codes and codes["gru.weight_ih_l0.r"].dtype == np.int8
    out_path = tmp_path / "p.safetensors"
    code, out, err = cli_run("import-hw", tmp_path / "o", out_path, "--as-exported")
    assert code == 0, err
    assert "gru.bias_hh_l0.n" in out and "within" not in out
    with weightvault.open(tmp_path / "p.safetensors") as r:
        assert r.info("gru.bias_hh_l0.n").shape == (4,)
        assert r.info("gru.bias_hh_l0.n").dtype == "float32"


def test_single_file_import(tmp_path: Path) -> None:
    src = _model_ckpt(tmp_path)
    weightvault.export_hw(src, tmp_path / "o", number="Q1.15", split=["gru.*:0:gru"])
    only = weightvault.import_hw(tmp_path / "o" / "fc.weight.coe")
    assert list(only) == ["fc.weight"] and only["fc.weight"].shape == (3, 2)
    with pytest.raises(InvalidHeaderError, match="only 1 of the 3 split parts") as err:
        weightvault.import_hw(tmp_path / "o" / "gru.weight_ih_l0.z.coe")
    assert "missing gru.weight_ih_l0.r, gru.weight_ih_l0.n" in str(err.value)
    assert "--as-exported" in (err.value.hint or "")
    part = weightvault.import_hw(tmp_path / "o" / "gru.weight_ih_l0.z.coe", layout="exported")
    assert list(part) == ["gru.weight_ih_l0.z"]
    # a shared memory holds every part: one file is enough
    weightvault.export_hw(src, tmp_path / "m", split=["gru.*:0:gru"], one_memory="rom")
    whole = weightvault.import_hw(tmp_path / "m" / "rom.coe")
    assert whole["gru.weight_ih_l0"].shape == (12, 6)


def _tamper(side: dict, change: str) -> None:
    parts = [t for t in side["tensors"] if t["source"] == "w"]
    first = parts[0]
    if change == "missing source":
        del first["source"]
    elif change == "source shape":
        first["source_shape"] = [6, "8"]
    elif change == "negative shape":
        for t in parts:
            t["source_shape"] = [-6, -8]
    elif change == "disagreeing shape":
        parts[1]["source_shape"] = [6, 9]
    elif change == "axis":
        for t in parts:
            t["split"]["axis"] = 5
    elif change == "parts":
        first["split"]["parts"] = ["a", "a"]
    elif change == "part":
        parts[1]["split"]["part"] = parts[0]["split"]["part"]
    elif change == "unhashable part":
        first["split"]["parts"] = [["a"], "b"]
    elif change == "transpose":
        parts[1]["transpose"] = [0, 0]
    elif change == "dtype":
        first["dtype"] = None
    elif change == "count":
        for t in parts:
            t["source_shape"] = [6, 10]
    elif change == "unsplit twice":
        for t in parts:
            t["split"] = None


@pytest.mark.parametrize(
    "change",
    [
        "missing source",
        "source shape",
        "negative shape",
        "disagreeing shape",
        "axis",
        "parts",
        "part",
        "unhashable part",
        "transpose",
        "dtype",
        "count",
        "unsplit twice",
    ],
)
def test_hostile_sidecar_is_a_weightvault_error(tmp_path: Path, change: str) -> None:
    w = np.arange(48, dtype=np.float32).reshape(6, 8)
    weightvault.export_hw({"w": w}, tmp_path / "o", split=["w:1:2:a,b"], transpose=["w.b:1,0"])
    side_path = tmp_path / "o" / "export.json"
    side = json.loads(side_path.read_text())
    _tamper(side, change)
    side_path.write_text(json.dumps(side))
    with pytest.raises(WeightVaultError) as err:
        weightvault.import_hw(tmp_path / "o")
    assert "export.json" in str(err.value)
