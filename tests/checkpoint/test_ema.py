"""weightvault.EMA and restoring EMA weights (ours, timm-style, TensorFlow ExponentialMovingAverage)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import weightvault
import weightvault.torch as wvt
from weightvault.checkpoint.ema import ema_source_names
from weightvault.errors import TensorNotFoundError
from weightvault.checkpoint.restore import restore


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))


def _step(net: torch.nn.Module, k: float) -> None:
    with torch.no_grad():
        for p in net.parameters():
            p.add_(k)
        net[1].num_batches_tracked.add_(1)


def test_update_is_the_exponential_average() -> None:
    net = _net()
    w0 = net[0].weight.detach().clone()
    ema = weightvault.EMA(net, decay=0.9)
    expected = w0.clone()
    for k in (1.0, 2.0, 3.0):
        _step(net, k)
        ema.update()
        expected = 0.9 * expected + 0.1 * net[0].weight.detach()
    torch.testing.assert_close(ema.shadow["0.weight"], expected, rtol=0, atol=1e-6)
    assert ema.num_updates == 3
    assert (
        ema.shadow["1.num_batches_tracked"].item() == 3
    )  # integer buffers are copied, not averaged


def test_warmup_ramps_the_decay() -> None:
    ema = weightvault.EMA(_net(), decay=0.99, warmup=10)
    decays = []
    for _ in range(12):
        decays.append(ema.current_decay())
        ema.update()
    assert decays[0] == 0.0  # the first update copies the weights
    assert all(a <= b for a, b in itertools.pairwise(decays))
    assert decays[-1] == pytest.approx(0.99) and decays[4] < 0.99
    assert weightvault.EMA(_net(), decay=0.99).current_decay() == 0.99


def test_applied_swaps_and_restores_raw_weights() -> None:
    net = _net()
    ema = weightvault.EMA(net, decay=0.5)
    _step(net, 1.0)
    ema.update()
    raw = net[0].weight.detach().clone()
    with pytest.raises(KeyError), ema.applied():
        torch.testing.assert_close(net[0].weight, ema.shadow["0.weight"])
        assert ema.is_applied
        with pytest.raises(RuntimeError):
            ema.update()
        raise KeyError("evaluation failed")
    assert torch.equal(net[0].weight, raw) and not ema.is_applied


@pytest.mark.parametrize("framework", ["torch", "numpy"])
def test_state_dict_round_trip_through_a_checkpoint(tmp_path: Path, framework: str) -> None:
    net = _net()
    ema = weightvault.EMA(net, decay=0.8, warmup=3)
    for k in (1.0, 2.0):
        _step(net, k)
        ema.update()
    path = wvt.save_training_state(tmp_path / "ckpt", model=net, ema=ema, step=2)
    state = weightvault.load(path, framework=framework)
    assert set(state["ema"]) == {"decay", "warmup", "num_updates", "shadow"}
    ema2 = weightvault.EMA(_net())
    ema2.load_state_dict(state["ema"])
    assert (ema2.decay, ema2.warmup, ema2.num_updates) == (0.8, 3, 2)
    assert all(torch.equal(ema2.shadow[k], v) for k, v in ema.shadow.items())


def test_restore_use_ema_from_our_training_state(tmp_path: Path) -> None:
    net = _net()
    ema = weightvault.EMA(net, decay=0.5)
    _step(net, 4.0)
    ema.update()
    path = wvt.save_training_state(tmp_path / "ckpt", model=net, ema=ema)
    fresh = _net()
    report = restore(fresh, path, use_ema=True)
    assert report.ok and report.use_ema and report.ema_convention == "weightvault"
    assert torch.equal(fresh[0].weight, ema.shadow["0.weight"])
    assert not torch.equal(fresh[0].weight, net[0].weight)
    raw = _net()
    assert restore(raw, path).ok and torch.equal(raw[0].weight, net[0].weight)


def test_timm_style_checkpoints(tmp_path: Path) -> None:
    net = _net()
    raw_sd = {k: v + 1 for k, v in net.state_dict().items() if v.is_floating_point()}
    ema_sd = {k: v + 2 for k, v in raw_sd.items()}
    # timm train.py: {"state_dict": ..., "state_dict_ema": ...}; ModelEmaV2 keeps "module." inside.
    path = weightvault.save(
        {
            "epoch": 3,
            "state_dict": raw_sd,
            "state_dict_ema": {f"module.{k}": v for k, v in ema_sd.items()},
        },
        tmp_path / "timm",
    )
    target = _net()
    report = restore(target, path, strict=False)
    assert report.source_key == "state_dict" and report.missing == ["1.num_batches_tracked"]
    assert torch.equal(target[0].weight, raw_sd["0.weight"])
    report = restore(target, path, strict=False, use_ema=True)
    assert report.ema_convention == "timm" and torch.equal(target[0].weight, ema_sd["0.weight"])
    assert len(report.loaded) == len(ema_sd)

    # a model that carries its own ModelEma: "model_ema.module.<name>" beside the raw names
    inline = dict(raw_sd)
    inline.update({f"model_ema.module.{k}": v for k, v in ema_sd.items()})
    path2 = weightvault.save(inline, tmp_path / "inline.safetensors")
    t2 = _net()
    report = restore(t2, path2, strict=False)
    assert torch.equal(t2[0].weight, raw_sd["0.weight"])
    assert (
        report.unexpected == []
        and all("EMA shadow" in s["reason"] for s in report.skipped)
        and report.skipped
    )
    restore(t2, path2, strict=False, use_ema=True)
    assert torch.equal(t2[0].weight, ema_sd["0.weight"])


def test_use_ema_without_shadows_is_an_error(tmp_path: Path) -> None:
    path = weightvault.save(_net().state_dict(), tmp_path / "plain.safetensors")
    with pytest.raises(TensorNotFoundError, match="no EMA weights"):
        restore(_net(), path, use_ema=True)


def test_ema_source_names_conventions() -> None:
    assert ema_source_names(["ema/shadow/a.w", "model/a.w"]) == (
        {"a.w": "ema/shadow/a.w"},
        "weightvault",
    )
    assert ema_source_names(["l/w", "l/w/ExponentialMovingAverage"]) == (
        {"l/w": "l/w/ExponentialMovingAverage"},
        "tensorflow",
    )
    assert ema_source_names(["state_dict_ema.module.x"])[0] == {"x": "state_dict_ema.module.x"}
    assert ema_source_names(["model_ema/x"])[0] == {"x": "model_ema/x"}
    assert ema_source_names(["a", "b"]) == ({}, None)


def test_tensorflow_exponential_moving_average(fixtures_dir: Path) -> None:
    ckpt = fixtures_dir / "tensorflow" / "tf1_saver"
    with weightvault.open(ckpt) as reader:
        keys = list(reader.keys())
    expected = np.load(
        fixtures_dir / "tensorflow" / "expected" / "tf1_saver.npz", allow_pickle=False
    )
    names = ["layer1/weights", "layer1/biases", "layer2/weights", "layer2/biases"]
    assert all(n + "/ExponentialMovingAverage" in keys for n in names)
    target = {n: np.zeros(expected[n.replace("/", "|")].shape, np.float32) for n in names}
    report = restore(target, ckpt, strict=False, use_ema=True)
    assert report.ema_convention == "tensorflow" and sorted(report.loaded_names) == sorted(names)
    for n in names:
        np.testing.assert_array_equal(
            target[n], expected[n.replace("/", "|") + "|ExponentialMovingAverage"]
        )
    report = restore(target, ckpt, strict=False)
    for n in names:
        np.testing.assert_array_equal(target[n], expected[n.replace("/", "|")])
    assert sum("EMA shadow" in s["reason"] for s in report.skipped) == 4
    assert not any(u["name"].endswith("ExponentialMovingAverage") for u in report.unexpected)
