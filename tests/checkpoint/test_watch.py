"""weightvault.watch: each committed checkpoint once, in step order, never a partial one."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import weightvault
from weightvault.checkpoint import CheckpointManager
from weightvault.checkpoint.manager import read_consumers
from weightvault.errors import CheckpointDeletedError

SAVER = Path(__file__).with_name("_saver.py")


def _check(step: int, path: Path) -> None:
    weightvault.verify(path)  # complete and intact
    state = weightvault.load(path)
    assert state["step"] == step and (state["model"]["w"] == step).all()


def test_watch_sees_a_writer_thread_once_in_order(tmp_path: Path) -> None:
    count = 15

    def train() -> None:
        with CheckpointManager(tmp_path, max_to_keep=None, async_save=True, fsync=False) as mgr:
            for step in range(1, count + 1):
                w = np.full(20_000, step, np.float32)
                mgr.save(step, {"model": {"w": w}, "step": step})
                time.sleep(0.01)

    writer = threading.Thread(target=train)
    writer.start()
    seen = []
    for step, path in weightvault.watch(tmp_path, timeout=1.5, poll=0.005):
        _check(step, path)
        seen.append(step)
    writer.join()
    assert seen == list(range(1, count + 1))


def test_watch_sees_a_writer_process_once_in_order(tmp_path: Path) -> None:
    count = 12
    child = subprocess.Popen(
        [sys.executable, str(SAVER), "series", str(tmp_path), str(count), "0.02"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    seen = []
    try:
        for step, path in weightvault.watch(tmp_path, timeout=60, poll=0.005):  # slow start-up
            _check(step, path)
            seen.append(step)
            if step == count:
                break
    finally:
        _, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    assert seen == list(range(1, count + 1))


def test_watch_times_out_without_new_checkpoints(tmp_path: Path) -> None:
    t0 = time.monotonic()
    assert list(weightvault.watch(tmp_path / "not-yet-created", timeout=0.3, poll=0.05)) == []
    assert 0.25 <= time.monotonic() - t0 < 2


def test_watch_skips_partial_foreign_and_older_steps(tmp_path: Path) -> None:
    with CheckpointManager(tmp_path, max_to_keep=None, fsync=False) as mgr:
        for step in (1, 2):
            mgr.save(step, {"model": {"w": np.full(4, step, np.float32)}, "step": step})
    # An in-progress save (temp name, even with a marker) and a foreign directory: never yielded.
    partial = tmp_path / "step-00000003.wvtmp-0123456789ab"
    partial.mkdir()
    (partial / "COMMITTED").write_text("{}")
    (tmp_path / "step-00000004").mkdir()
    it = weightvault.watch(tmp_path, timeout=0.2, poll=0.02)
    assert [s for s, _ in it] == [1, 2]
    assert [s for s, _ in weightvault.watch(tmp_path, timeout=0.1, poll=0.02, start_after=1)] == [2]

    # A step lower than one already yielded, committed later, is not yielded (order is strict).
    gen = weightvault.watch(tmp_path, timeout=0.3, poll=0.02)
    assert next(gen).step == 1
    assert next(gen).step == 2
    with CheckpointManager(tmp_path, max_to_keep=None, fsync=False) as mgr:
        mgr.save(0, {"model": {"w": np.zeros(4, np.float32)}, "step": 0})
        mgr.save(5, {"model": {"w": np.full(4, 5, np.float32)}, "step": 5})
    assert [s for s, _ in gen] == [5]


# -- retention racing readers (#13.12) ------------------------------------------------------------------

torch = pytest.importorskip("torch")


class _Trainer:
    """A real (tiny) torch training loop; its captured state is what gets saved."""

    def __init__(self) -> None:
        import weightvault.torch as wvt

        self.wvt = wvt
        torch.manual_seed(0)
        self.model = torch.nn.Linear(32, 4)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=0.01)
        self.step = 0

    def train(self) -> dict:
        loss = self.model(torch.randn(8, 32)).square().mean()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        self.step += 1
        return self.wvt.capture(model=self.model, optimizer=self.opt, step=self.step, rng=False)


def test_a_step_deleted_before_it_is_read_says_so_and_the_next_is_read(tmp_path: Path) -> None:
    trainer = _Trainer()
    with CheckpointManager(tmp_path, max_to_keep=1, fsync=False) as mgr:
        mgr.save(1, trainer.train())
        watcher = weightvault.watch(tmp_path, timeout=1, poll=0.01)
        first = next(watcher)
        assert first.step == 1
        mgr.save(2, trainer.train())  # retention deletes step 1 before the evaluator reads it
        with pytest.raises(CheckpointDeletedError, match="step 1 was deleted by retention before it could be read"):
            first.load(framework="torch")
        assert next(watcher).load(framework="torch")["step"] == 2  # skip to the next: it works

        # deleted *while* restore() reads it (after opening, before the shard): not "shard missing"
        class Evaluated(torch.nn.Linear):
            def state_dict(self, *args, **kwargs):  # restore asks for the names after opening
                if mgr.latest() == 2:
                    mgr.save(3, trainer.train())
                return super().state_dict(*args, **kwargs)

        with pytest.raises(CheckpointDeletedError, match="step 2 was deleted by retention"):
            weightvault.restore(Evaluated(32, 4), mgr.path(2), source_key="model")
        assert mgr.steps() == [3]


def test_readers_racing_retention_get_a_clear_error_or_the_right_step(tmp_path: Path) -> None:
    count = 40
    trainer = _Trainer()

    def train() -> None:
        with CheckpointManager(tmp_path, max_to_keep=1, fsync=False) as mgr:
            for _ in range(count):
                mgr.save(trainer.step + 1, trainer.train())

    writer = threading.Thread(target=train)
    writer.start()
    loaded, deleted = [], []
    watcher = weightvault.watch(tmp_path, timeout=3, poll=0.002)
    try:
        for ckpt in watcher:
            time.sleep(0.03)  # a slow evaluator: retention overtakes it
            try:
                state = ckpt.load(framework="torch")
            except CheckpointDeletedError as exc:
                assert f"step {ckpt.step} was deleted by retention" in str(exc)
                deleted.append(ckpt.step)
                continue
            assert int(state["step"]) == ckpt.step  # never another step's weights
            loaded.append(ckpt.step)
    finally:
        writer.join()
    assert loaded[-1] == count  # the newest is never deleted
    assert deleted or watcher.skipped, "the race never happened: the test proves nothing"
    seen = sorted(loaded + deleted + watcher.skipped)
    assert seen == sorted(set(seen)) and set(seen) <= set(range(1, count + 1))


def test_a_registered_consumer_sees_every_step_of_a_writer_process(tmp_path: Path) -> None:
    count = 12
    watcher = weightvault.watch(tmp_path, timeout=60, poll=0.005, consumer="eval")
    child = subprocess.Popen(
        [sys.executable, str(SAVER), "churn", str(tmp_path), str(count), "0.0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    seen = []
    try:
        for ckpt in watcher:
            time.sleep(0.05)  # slower than the writer, which keeps only 1 step
            state = ckpt.load()  # never deleted under us: the consumer holds it
            assert state["step"] == ckpt.step
            seen.append(ckpt.step)
            if ckpt.step == count:
                break
    finally:
        _, err = child.communicate(timeout=120)
    assert child.returncode == 0, err
    assert seen == list(range(1, count + 1)) and watcher.skipped == []
    progress = read_consumers(tmp_path)["eval"]
    assert progress["done"] == count - 1 and progress["reading"] == count
    # a restarted consumer of the same name resumes after its last finished step
    again = weightvault.watch(tmp_path, timeout=0.2, poll=0.01, consumer="eval")
    assert [c.step for c in again] == [count]
    again.close(unregister=True)
    assert read_consumers(tmp_path) == {}


def test_a_dead_or_far_behind_consumer_cannot_fill_the_disk(tmp_path: Path) -> None:
    trainer = _Trainer()
    with CheckpointManager(
        tmp_path, max_to_keep=1, fsync=False, consumer_timeout=3.0, consumer_max_pending=3
    ) as mgr:
        mgr.save(1, trainer.train())
        watcher = weightvault.watch(tmp_path, poll=0.01, consumer="eval")
        assert next(watcher).step == 1  # reading step 1, then stalls
        for step in range(2, 9):
            mgr.save(step, trainer.train())
        # held: the 3 lowest steps it has not finished (1, 2, 3), plus the newest
        assert mgr.steps() == [1, 2, 3, 8]
        reasons = {c.step: c.kept_because for c in mgr.checkpoints()}
        assert reasons[2] == ["not yet read by consumer 'eval'"]
        time.sleep(3.2)  # no sign of life for longer than consumer_timeout: it holds nothing
        mgr.save(9, trainer.train())
        assert mgr.steps() == [9]
        # it comes back: the steps it missed were deleted, it goes on with what is there
        assert next(watcher).step == 9 and watcher.skipped == []
