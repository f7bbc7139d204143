"""weightvault.torch: capture/apply of full PyTorch training state, and bit-identical resume."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import weightvault
import weightvault.torch as wvt

SCRIPT = Path(__file__).with_name("_resume_train.py")


def _run(*args: str) -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def _bytes(path: Path) -> dict[str, bytes]:
    return {k: np.ascontiguousarray(v).tobytes() for k, v in weightvault.load(path).items()}


def test_resume_in_new_process_is_bit_identical(tmp_path: Path) -> None:
    steps, stop = 40, 17  # stop mid-epoch (13 batches per epoch), so the data order must be rebuilt
    ckpt = tmp_path / "state"
    # The uninterrupted run also writes the checkpoint at `stop` (as a real run would) and goes on.
    _run(
        "--steps",
        str(steps),
        "--stop-at",
        str(stop),
        "--ckpt",
        str(ckpt),
        "--out",
        str(tmp_path / "straight.safetensors"),
    )
    _run(
        "--steps",
        str(steps),
        "--resume",
        "--ckpt",
        str(ckpt),
        "--out",
        str(tmp_path / "resumed.safetensors"),
    )
    _run(
        "--steps",
        str(steps),
        "--resume",
        "--no-rng",
        "--ckpt",
        str(ckpt),
        "--out",
        str(tmp_path / "norng.safetensors"),
    )

    straight = _bytes(tmp_path / "straight.safetensors")
    resumed = _bytes(tmp_path / "resumed.safetensors")
    assert straight.keys() == resumed.keys() and len(straight) == 9
    different = [k for k in straight if straight[k] != resumed[k]]
    assert different == [], f"resumed run differs in {different}"
    # The test can fail: resuming without the RNG states changes the outcome.
    norng = _bytes(tmp_path / "norng.safetensors")
    assert any(straight[k] != norng[k] for k in straight)


def _parts() -> tuple:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(3, 5), torch.nn.BatchNorm1d(5), torch.nn.Linear(5, 2)
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=50)
    scaler = torch.amp.GradScaler("cpu", growth_interval=2)
    return model, opt, sched, scaler


def _train(model, opt, sched, scaler, n: int = 3) -> None:
    for _ in range(n):
        loss = model(torch.randn(4, 3)).square().mean()
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        sched.step()


@pytest.mark.parametrize("framework", ["torch", "numpy"])
def test_capture_apply_round_trip(tmp_path: Path, framework: str) -> None:
    model, opt, sched, scaler = _parts()
    _train(model, opt, sched, scaler)
    path = wvt.save_training_state(
        tmp_path / "ckpt", model=model, optimizer=opt, scheduler=sched, scaler=scaler,
        epoch=2, step=3, metrics={"loss": torch.tensor(0.25), "acc": np.float32(0.5)}, extra={"note": "x", "ids": [1, 2]},
    )  # fmt: skip
    expected_draws = (random.random(), np.random.rand(), torch.rand(2).tolist())

    model2, opt2, sched2, scaler2 = _parts()
    state = weightvault.load(path, framework=framework)
    assert state["format"] == wvt.STATE_FORMAT
    assert 0 in state["optimizer"]["state"]  # int keys survive natively
    counters = wvt.apply(state, model=model2, optimizer=opt2, scheduler=sched2, scaler=scaler2)
    assert counters == {
        "epoch": 2,
        "step": 3,
        "metrics": {"loss": 0.25, "acc": 0.5},
        "extra": {"note": "x", "ids": [1, 2]},
    }
    assert (random.random(), np.random.rand(), torch.rand(2).tolist()) == expected_draws
    for k, v in model.state_dict().items():
        assert torch.equal(v, model2.state_dict()[k]) and v.dtype == model2.state_dict()[k].dtype
    assert sched2.state_dict() == sched.state_dict()
    assert scaler2.state_dict() == scaler.state_dict() and scaler.get_scale() != 65536.0
    for pid, st in opt.state_dict()["state"].items():
        for key, value in st.items():
            got = opt2.state_dict()["state"][pid][key]
            assert torch.equal(got, value) and got.dtype == value.dtype
    assert opt2.state_dict()["param_groups"] == opt.state_dict()["param_groups"]
    # and training continues identically
    torch.manual_seed(5)
    _train(model, opt, sched, scaler, 2)
    torch.manual_seed(5)
    _train(model2, opt2, sched2, scaler2, 2)
    assert all(
        torch.equal(a, b) for a, b in zip(model.parameters(), model2.parameters(), strict=True)
    )


def test_rng_state_is_plain_data() -> None:
    rng = wvt.capture_rng()
    assert set(rng) >= {"python", "numpy", "torch"}
    assert rng["python"]["state"].dtype == np.int64 and rng["python"]["state"].shape == (625,)
    assert rng["numpy"]["key"].dtype == np.uint32 and rng["numpy"]["bit_generator"] == "MT19937"
    a = [random.random(), np.random.rand(), torch.rand(1).item()]
    wvt.restore_rng(rng)
    assert [random.random(), np.random.rand(), torch.rand(1).item()] == a


def test_apply_refuses_a_missing_part() -> None:
    model, opt, _, _ = _parts()
    state = wvt.capture(model=model)
    with pytest.raises(KeyError, match="optimizer"):
        wvt.apply(state, model=model, optimizer=opt)


def test_generators_are_captured() -> None:
    g = torch.Generator().manual_seed(3)
    state = wvt.capture(rng=False, generators={"data": g})
    first = torch.rand(3, generator=g)
    wvt.apply(state, generators={"data": g})
    assert torch.equal(torch.rand(3, generator=g), first)


def test_epoch_generator_depends_on_seed_and_epoch() -> None:
    draws = {
        (s, e): torch.randperm(10, generator=wvt.epoch_generator(s, e)).tolist()
        for s in (0, 1)
        for e in (0, 1)
    }
    assert draws[(0, 1)] != draws[(1, 0)] and draws[(0, 0)] != draws[(0, 1)]
    assert torch.randperm(10, generator=wvt.epoch_generator(1, 0)).tolist() == draws[(1, 0)]


def test_capture_refuses_while_ema_is_swapped_in() -> None:
    model, *_ = _parts()
    ema = weightvault.EMA(model)
    with ema.applied(), pytest.raises(ValueError, match="swapped"):
        wvt.capture(model=model, ema=ema)
