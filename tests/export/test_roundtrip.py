"""Export, then read the files back (import_hw / weightvault.open): the files must hold exactly
the quantized integer codes, for every format and layout; splits match torch's gate slicing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import weightvault
from weightvault.errors import InvalidHeaderError, ShapeMismatchError
from weightvault.export.numbers import quantize

FORMATS = ["coe", "mif", "mem", "hex", "c", "npy", "txt"]
LAYOUTS = {
    "plain": {},
    "shared": {"one_memory": "weights", "align": 4},
    "packed-msb": {"lanes": 3, "word_width": 50, "lane_order": "msb"},
    "packed-shared-F": {"lanes": 4, "one_memory": "rom", "order": "F"},
}


def _tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        "fc.weight": rng.normal(0, 0.6, (7, 5)).astype(np.float32),
        "fc.bias": rng.normal(0, 0.6, (7,)).astype(np.float32),
        "conv.weight": rng.normal(0, 0.6, (3, 2, 1, 2)).astype(np.float32),
        "scalar": np.array(0.25, np.float32),
    }


def _expected_codes(x: np.ndarray, number: str, **kw: object) -> np.ndarray:
    return quantize(x, number, **kw).codes  # type: ignore[arg-type]


CASES = [
    (fmt, layout)
    for fmt in FORMATS
    for layout in LAYOUTS
    # txt holds values per tensor: there is no shared memory to write
    if not (fmt == "txt" and "one_memory" in LAYOUTS[layout])
]


@pytest.mark.parametrize(("fmt", "layout"), CASES)
@pytest.mark.parametrize("number", ["Q1.15", "ap_fixed<6,2>", "bfloat16"])
def test_roundtrip_codes_exact(tmp_path: Path, fmt: str, layout: str, number: str) -> None:
    opts = dict(LAYOUTS[layout])
    src = _tensors()
    rep = weightvault.export_hw(src, tmp_path / "o", file_format=fmt, number=number, **opts)
    codes = weightvault.import_hw(tmp_path / "o", values="codes")
    values = weightvault.import_hw(tmp_path / "o")
    assert list(codes) == list(src)
    for name, x in src.items():
        want = _expected_codes(x, number)
        assert codes[name].shape == x.shape
        assert np.array_equal(codes[name].astype(np.int64), want), name
        q = quantize(x, number)
        np.testing.assert_array_equal(values[name], q.dequantized().astype(np.float32))
        assert values[name].dtype == np.float32
    assert {t["name"]: t["error"]["count"] for t in rep.tensors} == {
        n: x.size for n, x in src.items()
    }


@pytest.mark.parametrize("fmt", ["coe", "c", "mif"])
@pytest.mark.parametrize("symmetric", [True, False])
def test_roundtrip_affine_per_channel(tmp_path: Path, fmt: str, symmetric: bool) -> None:
    src = _tensors()
    weightvault.export_hw(
        src, tmp_path / "o", file_format=fmt, number="int8", per_channel=0, symmetric=symmetric
    )
    with weightvault.open(tmp_path / "o", values="codes") as reader:
        assert reader.format == "hwexport"
        for name, x in src.items():
            # 1-D tensors and scalars get one scale (the report notes it), the others one per row
            axis = 0 if x.ndim >= 2 else None
            q = quantize(x, "int8", axis=axis, symmetric=symmetric)
            assert reader.get(name).dtype == np.int8
            assert np.array_equal(reader.get(name), q.codes)
            extra = reader.info(name).extra["number"]
            np.testing.assert_array_equal(extra["scale"], q.scale)
            np.testing.assert_array_equal(extra["zero_point"], q.zero_point)
            np.testing.assert_array_equal(reader.dequantized(name), q.dequantized())


def test_roundtrip_int4_packed_and_unsigned(tmp_path: Path) -> None:
    src = _tensors()
    weightvault.export_hw(src, tmp_path / "a", file_format="mem", number="int4", lanes=8)
    got = weightvault.import_hw(tmp_path / "a", values="codes")
    for name, x in src.items():
        assert np.array_equal(got[name], quantize(x, "int4").codes)
    weightvault.export_hw(src, tmp_path / "b", file_format="coe", number="UQ2.6", radix=2)
    got = weightvault.import_hw(tmp_path / "b", values="codes")
    for name, x in src.items():
        assert got[name].dtype == np.uint8
        assert np.array_equal(got[name], quantize(x, "UQ2.6").codes)


def test_gru_split_matches_torch_gate_slicing(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    gru = torch.nn.GRU(6, 4, num_layers=1)
    lstm = torch.nn.LSTM(3, 2)
    sd = {f"gru.{k}": v for k, v in gru.state_dict().items()}
    sd |= {f"lstm.{k}": v for k, v in lstm.state_dict().items()}
    weightvault.save(sd, tmp_path / "rnn.safetensors")
    weightvault.export_hw(
        tmp_path / "rnn.safetensors",
        tmp_path / "o",
        file_format="coe",
        number="float32",
        split=["gru.*:0:gru", "lstm.weight_*:0:lstm"],
    )
    back = weightvault.import_hw(tmp_path / "o", layout="exported")
    w_ir, w_iz, w_in = gru.weight_ih_l0.detach().chunk(3, 0)  # PyTorch documents (W_ir|W_iz|W_in)
    np.testing.assert_array_equal(back["gru.weight_ih_l0.r"], w_ir.numpy())
    np.testing.assert_array_equal(back["gru.weight_ih_l0.z"], w_iz.numpy())
    np.testing.assert_array_equal(back["gru.weight_ih_l0.n"], w_in.numpy())
    _, _, b_hn = gru.bias_hh_l0.detach().chunk(3, 0)
    np.testing.assert_array_equal(back["gru.bias_hh_l0.n"], b_hn.numpy())
    for part, w in zip("ifgo", lstm.weight_hh_l0.detach().chunk(4, 0), strict=True):
        np.testing.assert_array_equal(back[f"lstm.weight_hh_l0.{part}"], w.numpy())
    assert "lstm.bias_ih_l0" in back  # not matched by the split glob: exported whole
    # gate r computed from the exported parts equals torch's own computation
    x = torch.randn(1, 6)
    h = torch.zeros(1, 4)
    r = torch.sigmoid(
        x @ torch.from_numpy(back["gru.weight_ih_l0.r"]).T
        + torch.from_numpy(back["gru.bias_ih_l0.r"])
        + h @ torch.from_numpy(back["gru.weight_hh_l0.r"]).T
        + torch.from_numpy(back["gru.bias_hh_l0.r"])
    )
    gi = x @ gru.weight_ih_l0.T + gru.bias_ih_l0
    gh = h @ gru.weight_hh_l0.T + gru.bias_hh_l0
    torch.testing.assert_close(r, torch.sigmoid(gi[:, :4] + gh[:, :4]))


def test_named_split_transpose_reshape(tmp_path: Path) -> None:
    w = np.arange(24, dtype=np.float32).reshape(6, 4) / 32
    rep = weightvault.export_hw(
        {"w": w},
        tmp_path / "o",
        file_format="mif",
        number="Q6.10",
        split=["w:0:2:top,bottom"],
        transpose=["w.*:1,0"],
        reshape=["w.bottom:2,-1"],
    )
    back = weightvault.import_hw(tmp_path / "o", layout="exported")
    np.testing.assert_array_equal(back["w.top"], w[:3].T)
    np.testing.assert_array_equal(back["w.bottom"], w[3:].T.reshape(2, -1))
    # the default layout undoes reshape, transpose and split: the source tensor again
    whole = weightvault.import_hw(tmp_path / "o")
    assert list(whole) == ["w"]
    np.testing.assert_array_equal(whole["w"], w)
    t = {d["name"]: d for d in rep.tensors}
    assert t["w.top"]["split"] == {"axis": 0, "parts": ["top", "bottom"], "part": "top"}
    assert t["w.top"]["transpose"] == [1, 0] and t["w.bottom"]["reshape"] == [2, -1]


def test_bad_split_is_reported(tmp_path: Path) -> None:
    bad = r"shape \[4, 2\] has 4 entries, not divisible into 3"
    with pytest.raises(ShapeMismatchError, match=bad):
        weightvault.export_hw({"w": np.zeros((4, 2), np.float32)}, tmp_path / "o", split=["w:0:3"])
    bad = r"preset 'gru'.*shape \[4, 2\].*not a multiple of 3"
    with pytest.raises(ShapeMismatchError, match=bad):
        weightvault.export_hw(
            {"w": np.zeros((4, 2), np.float32)}, tmp_path / "o", split=["w:0:gru"]
        )


def test_from_pytorch_checkpoint(tmp_path: Path, fixtures_dir: Path) -> None:
    pt = fixtures_dir / "pytorch" / "net_state_dict.pt"
    rep = weightvault.export_hw(
        pt,
        tmp_path / "o",
        file_format="coe",
        number="Q1.15",
        include=["fc*", "gru.*"],
        split=["gru.weight_*:0:gru"],
        one_memory="weights",
    )
    with weightvault.open(pt) as src, weightvault.open(tmp_path / "o", values="codes") as out:
        for t in rep.tensors:
            x = src.get(t["source"])
            if t["split"]:
                x = np.split(x, 3, axis=0)["rzn".index(t["split"]["part"])]
            assert np.array_equal(out.get(t["name"]), quantize(x, "Q1.15").codes)


def test_import_single_file_and_tamper_detection(tmp_path: Path) -> None:
    src = _tensors()
    weightvault.export_hw(src, tmp_path / "o", file_format="coe", number="Q1.7")
    only = weightvault.import_hw(tmp_path / "o" / "fc.bias.coe")
    assert list(only) == ["fc.bias"]
    coe = tmp_path / "o" / "fc.bias.coe"
    coe.write_text(
        coe.read_text().replace(
            "memory_initialization_vector=", "bogus=1;\nmemory_initialization_vector="
        )
    )
    with pytest.raises(InvalidHeaderError, match="unexpected COE keyword"):
        weightvault.import_hw(tmp_path / "o")
    coe.write_text(
        coe.read_text().replace("bogus=1;\n", "").rstrip().rstrip(";").rsplit(",", 2)[0] + ";\n"
    )
    with pytest.raises(ShapeMismatchError):
        weightvault.import_hw(tmp_path / "o")
