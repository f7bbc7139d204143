"""Crash safety of the checkpoint manager, with real processes and real signals.

A child process saves checkpoints back to back (sync and async alternately, fsync on) and is
SIGKILLed after a random delay, so the kills land at random points: inside shard writes, between
the manifest and the commit rename, during retention deletes, during the run-state rewrite. After
every kill a new writer must start (the kernel dropped the flock), clean the leftovers, and every
listed checkpoint must verify and hold exactly the state of its step.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import weightvault
from weightvault.checkpoint import CheckpointManager
from weightvault.core.io import TMP_MARK

SAVER = Path(__file__).with_name("_saver.py")
KILLS = 60
ELEMENTS = 400_000  # ~2 MB of state per checkpoint: several saves per second even with fsync


def _spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(SAVER), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _check_state(state: dict, step: int) -> None:
    assert state["step"] == step
    w = state["model"]["w"]
    assert w.shape == (ELEMENTS,) and (w == step).all()
    assert (state["model"]["b"] == np.arange(257) + step).all()
    assert (state["optimizer"][0]["m"] == -step).all()


@pytest.mark.slow
def test_sigkill_during_saves_never_leaves_a_partial_checkpoint(tmp_path: Path) -> None:
    run = tmp_path / "run"
    rng = random.Random(1234)
    next_step, committed_any, interrupted_writes, latest_seen = 0, False, 0, -1
    started = time.monotonic()
    for kill in range(KILLS):
        child = _spawn("loop", str(run), str(next_step), str(kill % 2), str(ELEMENTS))
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready", child.stderr.read() if child.stderr else ""
        time.sleep(rng.uniform(0.0, 0.12))
        child.send_signal(signal.SIGKILL)
        child.communicate()  # reaps the child and closes its pipes
        assert child.returncode == -signal.SIGKILL

        # A new writer starts at once: a SIGKILLed holder leaves no stale lock.
        with CheckpointManager(run, max_to_keep=3) as mgr:
            interrupted_writes += bool(mgr.cleaned_up)
            assert not [n for n in os.listdir(run) if TMP_MARK in n], "leftovers survived the restart"
            steps = mgr.steps()
            assert steps == sorted(steps)
            for step in steps:  # every listed checkpoint is complete and intact
                weightvault.verify(mgr.path(step))
            latest = mgr.latest()
            if latest is not None:
                committed_any = True
                assert latest >= latest_seen, "a committed checkpoint was lost"
                latest_seen = latest
                _check_state(mgr.load("latest", verify=True), latest)
                next_step = latest + 1
            state_file = json.loads((run / "weightvault-run.json").read_text())
            assert [c["step"] for c in state_file["checkpoints"]] == steps
    elapsed = time.monotonic() - started
    print(f"{KILLS} kills, {interrupted_writes} inside a write, {latest_seen + 1} steps committed, {elapsed:.1f}s")
    assert committed_any
    # The kills really landed inside saves (a temp directory was left behind), not only between them.
    assert interrupted_writes >= 5, f"only {interrupted_writes} of {KILLS} kills interrupted a write"


def _disk_full(run: Path, use_async: bool) -> dict:
    child = _spawn("diskfull", str(run), "1" if use_async else "0")
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_disk_full_during_save_keeps_earlier_checkpoints(tmp_path: Path, use_async: bool) -> None:
    import errno

    run = tmp_path / "run"
    report = _disk_full(run, use_async)
    assert report["type"] == "CheckpointSaveError"
    assert report["is_oserror"] and report["errno"] == errno.EFBIG
    assert "saving step 2 failed" in report["message"]
    assert "step-00000002" in report["message"]  # names the checkpoint it was writing
    assert "earlier checkpoints are intact" in report["message"]
    assert report["hint"] and "size limit" in report["hint"]
    # Nothing of the failed save is left, and step 1 is untouched.
    assert sorted(os.listdir(run)) == [".weightvault-run.lock", "step-00000001", "weightvault-run.json"]
    with CheckpointManager(run, read_only=True) as mgr:
        assert mgr.steps() == [1]
        weightvault.verify(mgr.path(1))
        assert mgr.load(1)["step"] == 1
