"""Async saves: snapshot buffers prepared ahead of the first save, then reused (#13.13).

Not a timing test (bench/async_save.py measures the stall); this checks that the first save
copies into buffers prepared beforehand, that later saves reuse them, and that preparing never
changes what is saved.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import weightvault.torch as wvt
from weightvault.checkpoint import CheckpointManager
from weightvault.checkpoint.snapshot import SnapshotCache, prepare_snapshot, take_snapshot


class TiedNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(50, 16)
        self.body = torch.nn.Linear(16, 16)
        self.out = torch.nn.Linear(16, 50, bias=False)
        self.out.weight = self.embed.weight  # tied: one buffer, saved once

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.body(self.embed(x))))


def _training() -> tuple[TiedNet, torch.optim.Optimizer]:
    torch.manual_seed(0)
    net = TiedNet()
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    return net, opt


def _step(net: TiedNet, opt: torch.optim.Optimizer) -> None:
    x = torch.randint(0, 50, (8,))
    loss = torch.nn.functional.cross_entropy(net(x), x)
    opt.zero_grad()
    loss.backward()
    opt.step()


def _buffers(mgr: CheckpointManager) -> dict:
    return {key: buf.data_ptr() for key, buf in mgr._cache._buffers.items()}


def _state_bytes(state: dict) -> int:
    seen, total = set(), 0
    for t in [*state["model"].values(), *(v for s in state["optimizer"]["state"].values() for v in s.values())]:
        if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in seen:
            seen.add(t.untyped_storage().data_ptr())
            total += t.numel() * t.element_size()
    return total


def test_first_save_uses_buffers_prepared_at_construction(tmp_path: Path) -> None:
    net, opt = _training()
    _step(net, opt)  # the optimizer has its moments now
    template = wvt.capture(model=net, optimizer=opt, step=1, rng=False)
    mgr = CheckpointManager(tmp_path, async_save=True, state_template=template, fsync=False)
    try:
        mgr._join_prepare()
        prepared = _buffers(mgr)
        assert mgr.prepared_bytes == _state_bytes(template) > 0
        assert len(prepared) == 3 + 3 * 3  # the tied weight once; 3 params x (step, m, v)
        # training goes on after preparing: the save holds the values of *its* step
        _step(net, opt)
        state = wvt.capture(model=net, optimizer=opt, step=2, rng=False)
        expected = {k: v.clone() for k, v in net.state_dict().items()}
        mgr.save(2, state)
        assert _buffers(mgr) == prepared  # the first save allocated nothing: it copied
        _step(net, opt)  # modifies the tensors while the write may still run
        mgr.save(3, wvt.capture(model=net, optimizer=opt, step=3, rng=False))
        assert _buffers(mgr) == prepared  # and later saves reuse the same buffers
        mgr.wait_until_finished()
        back = mgr.load(2, framework="torch")
        assert all(torch.equal(back["model"][k], v) for k, v in expected.items())
        assert mgr.info(2).stall_seconds is not None
    finally:
        mgr.close()


def test_prepare_never_touches_buffers_a_write_may_be_reading(tmp_path: Path) -> None:
    cache = SnapshotCache()
    state = {"w": np.arange(1000, dtype=np.float32), "t": torch.arange(10.0)}
    snap = take_snapshot(state, cache)  # buffers now hold the snapshot (as during a write)
    assert prepare_snapshot(state, cache) == 0  # existing buffers: not re-zeroed
    np.testing.assert_array_equal(snap["w"], np.arange(1000, dtype=np.float32))
    assert torch.equal(snap["t"], torch.arange(10.0))
    # a state that grew (e.g. a new layer) gets only the new buffer prepared
    assert prepare_snapshot({**state, "new": np.zeros(7, np.int64)}, cache) == 56
    np.testing.assert_array_equal(snap["w"], np.arange(1000, dtype=np.float32))


def test_prepare_is_explicit_and_harmless_for_sync_managers(tmp_path: Path) -> None:
    net, opt = _training()
    with CheckpointManager(tmp_path / "sync", fsync=False) as mgr:
        mgr.prepare(net.state_dict())
        assert mgr.prepared_bytes == 0 and mgr._cache.nbytes == 0
    with CheckpointManager(tmp_path / "async", async_save=True, fsync=False) as mgr:
        mgr.prepare({"model": net.state_dict()})
        mgr.save(1, {"model": net.state_dict()})
        mgr.wait_until_finished()
        weights = sum(v.numel() * v.element_size() for k, v in net.state_dict().items() if k != "out.weight")
        assert mgr.prepared_bytes == weights == mgr._cache.nbytes
