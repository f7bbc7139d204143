"""CUDA paths: saving GPU tensors, loading straight to a device through pinned staging, and the
manager's async snapshot. Runs where a GPU is present (the CI machines have none)."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

import weightvault  # noqa: E402


def test_save_cuda_tensors_views_and_ties(tmp_path: Path) -> None:
    base = torch.randn(64, 32, device="cuda")
    state = {
        "w": base,
        "tied": base,
        "view": base.t(),
        "bf16": torch.randn(16, device="cuda").to(torch.bfloat16),
        "fp8": torch.randn(8, device="cuda").to(torch.float8_e4m3fn),
    }
    path = weightvault.save(state, tmp_path / "gpu.safetensors")
    back = weightvault.load(path)
    for name, t in state.items():
        assert back[name].tobytes() == t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes(), name
    assert back["tied"] is back["w"]


def test_load_to_cuda_through_pinned_memory(tmp_path: Path) -> None:
    state = {"a": torch.randn(1024, 1024), "b": torch.arange(10), "h": torch.randn(3).half()}
    state["a_tied"] = state["a"]
    path = weightvault.save(state, tmp_path / "cpu")
    back = weightvault.load(path, framework="torch", device="cuda")
    for name, t in state.items():
        assert back[name].device.type == "cuda", name
        assert torch.equal(back[name].cpu(), t), name
    assert back["a_tied"] is back["a"]


def test_async_snapshot_of_cuda_state_is_taken_before_save_returns(tmp_path: Path) -> None:
    w = torch.zeros(2048, 2048, device="cuda")
    with weightvault.CheckpointManager(tmp_path / "run", async_save=True) as manager:
        manager.save(1, {"w": w})
        w.add_(1.0)  # the training step goes on; the checkpoint must hold the zeros
        manager.wait_until_finished()
        restored = manager.load(1)
    assert float(abs(restored["w"]).max()) == 0.0


def test_jax_arrays_round_trip(tmp_path: Path) -> None:
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    x = jnp.arange(12, dtype=jnp.bfloat16).reshape(3, 4)
    path = weightvault.save({"x": x, "same": x, "f": jnp.ones(3)}, tmp_path / "jax.safetensors")
    back = weightvault.load(path)
    assert back["x"].dtype.name == "bfloat16" and back["x"].tolist() == x.tolist()
    assert back["same"] is back["x"]
