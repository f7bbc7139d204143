"""Crash safety of incremental saves: SIGKILL during a save, during retention and between the two.

Retention deletes the step that first wrote the shared (hard-linked) files while later steps still
use them; a kill anywhere must never leave a committed step that fails verify or holds another
step's state, and the next writer must carry on linking from whatever is committed.
"""

from __future__ import annotations

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
from weightvault.core.io import TMP_MARK

SAVER = Path(__file__).with_name("_incr_saver.py")


def _load_saver():  # the child's own module, for its state and settings (not on sys.path)
    import importlib.util

    spec = importlib.util.spec_from_file_location("_incr_saver", SAVER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_saver = _load_saver()
manager, state_for = _saver.manager, _saver.state_for


def _check_run(run: Path) -> list[int]:
    """Reopen as the next writer; every listed step verifies and holds its own step's state."""
    with manager(os.fspath(run)) as mgr:
        assert not [n for n in os.listdir(run) if TMP_MARK in n], "leftovers survived the restart"
        steps = mgr.steps()
        for step in steps:
            weightvault.verify(mgr.path(step))
            state = mgr.load(step)
            expected = state_for(step)
            assert state["step"] == step
            np.testing.assert_array_equal(state["head"]["w"], expected["head"]["w"])
            for name, value in expected["backbone"].items():
                np.testing.assert_array_equal(state["backbone"][name], value)
    return steps


@pytest.mark.parametrize("phase", ["link", "commit", "between", "state", "delete", "midrm"])
def test_sigkill_at_each_phase(tmp_path: Path, phase: str) -> None:
    run = tmp_path / "run"
    child = subprocess.run(
        [sys.executable, str(SAVER), "kill", str(run), phase], capture_output=True, text=True, timeout=120
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    steps = _check_run(run)
    committed = phase in ("between", "state", "delete", "midrm")
    assert (3 in steps) == committed
    # The run goes on from what is committed: the next saves link from it and stay intact.
    with manager(os.fspath(run)) as mgr:
        for step in (4, 5):
            mgr.save(step, state_for(step))
        with weightvault.open(mgr.path(5)) as reader:
            shards = reader.manifest["incremental"]["shards"]  # type: ignore[attr-defined]
        assert sum(i["how"] == "link" for i in shards.values()) >= 6
    assert _check_run(run) == [4, 5]


@pytest.mark.slow
def test_sigkill_at_random_points_of_incremental_saves(tmp_path: Path) -> None:
    run = tmp_path / "run"
    rng = random.Random(18)
    next_step, interrupted, latest_seen = 0, 0, -1
    for kill in range(30):
        child = subprocess.Popen(
            [sys.executable, str(SAVER), "loop", str(run), str(next_step), str(kill % 2)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.25))
        child.send_signal(signal.SIGKILL)
        child.communicate()
        interrupted += any(TMP_MARK in n for n in os.listdir(run))
        steps = _check_run(run)
        if steps:
            assert steps[-1] >= latest_seen, "a committed checkpoint was lost"
            latest_seen = steps[-1]
            next_step = latest_seen + 1
    assert latest_seen > 10
    assert interrupted >= 3, f"only {interrupted} kills interrupted a save or a delete"
