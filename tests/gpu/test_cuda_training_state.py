"""CUDA paths of weightvault.torch / restore / EMA: CUDA RNG states, a CUDA optimizer and model
resumed bit-identically, restore(device="cuda"), EMA shadows on the GPU. Runs where a GPU is present."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

import weightvault  # noqa: E402
import weightvault.torch as wvt  # noqa: E402


def _setup() -> tuple:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.Dropout(0.3), torch.nn.Linear(64, 8)).cuda()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, 3, 0.5)
    scaler = torch.amp.GradScaler("cuda", init_scale=256.0, growth_interval=2)
    ema = weightvault.EMA(model, decay=0.9)
    return model, opt, sched, scaler, ema


def _train(model, opt, sched, scaler, ema, n: int) -> None:
    for _ in range(n):
        x = torch.randn(16, 32, device="cuda")  # CUDA RNG
        with torch.autocast("cuda", dtype=torch.float16):
            loss = model(x).float().square().mean()  # dropout draws from the CUDA RNG too
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        sched.step()
        ema.update()


def test_cuda_resume_is_bit_identical(tmp_path: Path) -> None:
    parts = _setup()
    _train(*parts, 5)
    path = wvt.save_training_state(
        tmp_path / "ckpt", model=parts[0], optimizer=parts[1], scheduler=parts[2], scaler=parts[3], ema=parts[4], step=5
    )
    state = weightvault.load(path)
    assert "cuda" in state["rng"] and len(state["rng"]["cuda"]) == torch.cuda.device_count()
    _train(*parts, 5)
    straight = {k: v.clone() for k, v in parts[0].state_dict().items()}

    resumed = _setup()
    torch.cuda.manual_seed_all(123)  # scramble: the checkpoint must put the CUDA RNG back
    wvt.load_training_state(
        path, model=resumed[0], optimizer=resumed[1], scheduler=resumed[2], scaler=resumed[3], ema=resumed[4]
    )
    assert resumed[1].state_dict()["state"][0]["exp_avg"].is_cuda
    _train(*resumed, 5)
    for name, value in resumed[0].state_dict().items():
        assert torch.equal(value, straight[name]), name
    assert resumed[4].shadow["0.weight"].is_cuda
    assert torch.equal(resumed[4].shadow["2.weight"], parts[4].shadow["2.weight"])


def test_restore_to_cuda_with_dtype(tmp_path: Path) -> None:
    src = torch.nn.Linear(8, 4)
    path = weightvault.save(src.state_dict(), tmp_path / "w.safetensors")
    target = torch.nn.Linear(8, 4)
    report = weightvault.restore(target, path, device="cuda", dtype="bfloat16")
    assert report.ok and target.weight.is_cuda and target.weight.dtype == torch.bfloat16
    assert torch.equal(target.weight.cpu(), src.weight.detach().to(torch.bfloat16))
