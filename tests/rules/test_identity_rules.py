"""gorgonia-to-torch and oneflow-to-torch: identity layouts, name clean-up, orientation hints.

The fixture tests need the gob and OneFlow readers (``formats/gob.py``, ``formats/oneflow.py``);
they are skipped until those modules exist.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

import weightvault
from weightvault.rules import AmbiguousLayoutError

torch = pytest.importorskip("torch")

needs_gob = pytest.mark.skipif(importlib.util.find_spec("weightvault.formats.gob") is None, reason="gob reader not there yet")
needs_oneflow = pytest.mark.skipif(
    importlib.util.find_spec("weightvault.formats.oneflow") is None, reason="OneFlow reader not there yet"
)


# -- gorgonia ---------------------------------------------------------------------------------------


@pytest.fixture
def toad_like(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """ToadOCR's shapes: Hidden (100, 784) and Final (10, 100) used as w @ x, plus a training counter."""
    rng = np.random.default_rng(0)
    tensors = {
        "hidden": rng.normal(0, 0.05, (100, 784)),
        "final": rng.normal(0, 0.1, (10, 100)),
        "trainEpoch": np.array(20, dtype=np.int64),
    }
    path = tmp_path / "toad.safetensors"
    weightvault.save(tensors, path)
    return path, tensors


def _snn_numpy(hidden: np.ndarray, final: np.ndarray, x: np.ndarray) -> np.ndarray:
    """ToadOCR's forward pass: sigmoid(Hidden @ x) then Final @ h (no biases)."""
    h = 1.0 / (1.0 + np.exp(-(hidden @ x.T)))
    return (final @ h).T


class Snn(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hidden = torch.nn.Linear(784, 100, bias=False, dtype=torch.float64)
        self.final = torch.nn.Linear(100, 10, bias=False, dtype=torch.float64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final(torch.sigmoid(self.hidden(x)))


def _check_snn(weights: Path, hidden: np.ndarray, final: np.ndarray) -> None:
    net = Snn()
    net.load_state_dict(weightvault.load(weights, framework="torch"), strict=True)
    x = np.random.default_rng(1).uniform(0, 1, (3, 784))
    with torch.no_grad():
        got = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, _snn_numpy(hidden, final, x), rtol=1e-5, atol=1e-6)


def test_gorgonia_needs_an_orientation_hint(toad_like, tmp_path: Path) -> None:
    src, _ = toad_like
    with pytest.raises(AmbiguousLayoutError) as err:
        weightvault.convert(src, tmp_path / "o.safetensors", rules="gorgonia-to-torch")
    assert "x@w" in str(err.value) and "out_in" in err.value.hint
    assert not (tmp_path / "o.safetensors").exists()


def test_gorgonia_out_in_copies_and_drops_scalars(cli_run, toad_like, tmp_path: Path) -> None:
    src, t = toad_like
    dst = tmp_path / "o.safetensors"
    code, out, _ = cli_run("convert", src, dst, "--rules", "gorgonia-to-torch", "--hint", "*=out_in")
    assert code == 0, out
    assert "dropped 1 tensor: scalar, not a layer weight (trainEpoch)" in out
    _check_snn(dst, t["hidden"], t["final"])


def test_gorgonia_in_out_transposes(toad_like, tmp_path: Path) -> None:
    src, t = toad_like
    # The same weights stored the other way round ([in, out], used as x @ w) need in_out.
    flipped = tmp_path / "flipped.safetensors"
    weightvault.save({"hidden": t["hidden"].T.copy(), "final": t["final"].T.copy()}, flipped)
    dst = tmp_path / "o.safetensors"
    weightvault.convert(flipped, dst, rules="gorgonia-to-torch", hints={"*": "in_out"})
    _check_snn(dst, t["hidden"], t["final"])


@needs_gob
def test_toadocr_gob_fixture(cli_run, fixtures_dir: Path, tmp_path: Path) -> None:
    src = fixtures_dir / "gob" / "toadocr_snn_weights"
    dst = tmp_path / "toad.safetensors"
    code, out, err = cli_run("convert", src, dst, "--names", "hidden,final", "--rules", "gorgonia-to-torch", "--hint", "*=out_in")
    assert code == 0, out + err
    with weightvault.open(src, names=["hidden", "final"]) as reader:
        hidden, final = reader.get("hidden"), reader.get("final")
    assert hidden.shape == (100, 784) and final.shape == (10, 100)
    _check_snn(dst, hidden, final)


# -- OneFlow -----------------------------------------------------------------------------------------


def test_oneflow_names_lose_wrappers(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    src = tmp_path / "of.safetensors"
    weightvault.save(
        {
            "_orig_mod.module.fc.weight": rng.normal(size=(3, 4)).astype("float32"),
            "_orig_mod.module.fc.bias": rng.normal(size=3).astype("float32"),
        },
        src,
    )
    dst = tmp_path / "o.safetensors"
    weightvault.convert(src, dst, rules="oneflow-to-torch")
    fc = torch.nn.Linear(4, 3)
    state = weightvault.load(dst, framework="torch")
    assert sorted(state) == ["fc.bias", "fc.weight"]
    fc.load_state_dict({k.removeprefix("fc."): v for k, v in state.items()}, strict=True)


@needs_oneflow
@pytest.mark.parametrize("name", ["3x3_i3o3_conv2d_params", "3x3_i3o3_conv2d"])
def test_oneflow_conv_fixture_loads_into_conv2d(fixtures_dir: Path, tmp_path: Path, name: str) -> None:
    src = fixtures_dir / "oneflow" / name
    dst = tmp_path / "conv.safetensors"
    weightvault.convert(src, dst, rules="oneflow-to-torch")
    state = weightvault.load(dst, framework="torch")
    conv = torch.nn.Conv2d(3, 3, 3)
    conv.load_state_dict({k.rpartition(".")[2]: v for k, v in state.items()}, strict=True)
    with weightvault.open(src) as reader:
        weight_name = next(k for k in reader.keys() if k.endswith("weight"))
        np.testing.assert_array_equal(conv.weight.detach().numpy(), reader.get(weight_name))


@needs_oneflow
def test_oneflow_graph_fixture(fixtures_dir: Path, tmp_path: Path) -> None:
    src = fixtures_dir / "oneflow" / "graph_affine_with_parameter"
    report = weightvault.convert(src, tmp_path / "o.safetensors", rules="oneflow-to-torch")
    rows = {r["target"]: r for r in report.to_dict()["tensors"]}
    assert rows["model.a"]["target_shape"] == [3, 4] and rows["model.b"]["target_shape"] == [4]
    assert all(r["transforms"] == "copy" for r in rows.values())
