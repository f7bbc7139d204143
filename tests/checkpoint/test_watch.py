"""weightvault.watch: each committed checkpoint once, in step order, never a partial one."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

import weightvault
from weightvault.checkpoint import CheckpointManager

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
        for step, path in weightvault.watch(tmp_path, timeout=5, poll=0.005):
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
