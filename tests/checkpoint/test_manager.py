"""CheckpointManager: retention, restore, portability, locking, async saves, the runs command."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import weightvault
from weightvault.checkpoint import (
    AnyOf,
    CheckpointManager,
    CheckpointRecord,
    CheckpointSaveError,
    KeepBestK,
    KeepEveryNSteps,
    KeepLastN,
    KeepPeriod,
)
from weightvault.checkpoint import manager as manager_module
from weightvault.errors import (
    CheckpointExistsError,
    CheckpointLockedError,
    CheckpointNotFoundError,
    ChecksumMismatchError,
    UnsupportedOperationError,
    WeightVaultUserWarning,
)

SAVER = Path(__file__).with_name("_saver.py")


def _state(step: int) -> dict:
    return {"w": np.full(16, step, np.float32), "opt": {0: {"m": np.arange(4.0) * step}}, "step": step}


def _fill(mgr: CheckpointManager, steps, metric=None) -> None:
    for i, step in enumerate(steps):
        metrics = {} if metric is None else {metric[0]: metric[1][i]}
        mgr.save(step, _state(step), metrics=metrics)
    mgr.wait_until_finished()


def _dirs(run: Path) -> list[str]:
    return sorted(n for n in os.listdir(run) if n.startswith("step-"))


# -- retention ------------------------------------------------------------------------------------


def test_keep_last_n_deletes_oldest_after_commit(tmp_path: Path) -> None:
    with CheckpointManager(tmp_path, max_to_keep=2, fsync=False) as mgr:
        _fill(mgr, [1, 2, 3, 4])
        assert mgr.steps() == [3, 4]
        assert _dirs(tmp_path) == ["step-00000003", "step-00000004"]
        assert [c.kept_because for c in mgr.checkpoints()] == [["latest 2"], ["latest 2"]]


def test_max_to_keep_none_keeps_everything(tmp_path: Path) -> None:
    with CheckpointManager(tmp_path, max_to_keep=None, fsync=False) as mgr:
        _fill(mgr, range(0, 60, 10))
        assert mgr.steps() == [0, 10, 20, 30, 40, 50]


@pytest.mark.parametrize(
    ("mode", "values", "expected_best", "expected_kept"),
    [
        ("max", [0.1, 0.9, 0.5, 0.8, 0.2, 0.3], 2, [2, 4, 5, 6]),
        ("min", [0.1, 0.9, 0.5, 0.8, 0.05, 0.3], 5, [1, 5, 6]),
    ],
)
def test_best_k_by_metric(tmp_path: Path, mode, values, expected_best, expected_kept) -> None:
    with CheckpointManager(tmp_path, max_to_keep=2, best=("acc", mode, 2), fsync=False) as mgr:
        _fill(mgr, [1, 2, 3, 4, 5, 6], metric=("acc", values))
        assert mgr.best() == expected_best
        assert mgr.steps() == expected_kept
        assert mgr.load("best")["step"] == expected_best
        reasons = {c.step: c.kept_because for c in mgr.checkpoints()}
        assert f"best #1 by acc ({mode})" in reasons[expected_best]


def test_best_ignores_missing_and_nan_metrics(tmp_path: Path) -> None:
    with CheckpointManager(tmp_path, max_to_keep=1, best=("acc", "max", 1), fsync=False) as mgr:
        mgr.save(1, _state(1), metrics={"acc": 0.5})
        mgr.save(2, _state(2), metrics={"acc": float("nan")})
        mgr.save(3, _state(3), metrics={"acc": None, "loss": 1.0})  # explicitly not evaluated
        assert mgr.steps() == [1, 3]
        assert mgr.best() == 1
        assert mgr.info(1).metrics == {"acc": 0.5} and mgr.info(3).metrics == {"acc": None, "loss": 1.0}


def test_keep_every_n_steps_with_last_n(tmp_path: Path) -> None:
    with CheckpointManager(tmp_path, max_to_keep=2, keep_every_n_steps=300, fsync=False) as mgr:
        _fill(mgr, range(100, 1100, 100))
        assert mgr.steps() == [300, 600, 900, 1000]
        reasons = {c.step: c.kept_because for c in mgr.checkpoints()}
        assert reasons[900] == ["latest 2", "every 300 steps"]
        assert reasons[300] == ["every 300 steps"]


def test_all_policies_combined(tmp_path: Path) -> None:
    values = [0.9, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
    with CheckpointManager(
        tmp_path, max_to_keep=1, keep_every_n_steps=4, best=("acc", "max", 1), fsync=False
    ) as mgr:
        _fill(mgr, range(1, 9), metric=("acc", values))
        assert mgr.steps() == [1, 4, 8]


def test_policies_are_pure_and_compose() -> None:
    hour = 3600.0
    records = [CheckpointRecord(s, s * 0.5 * hour, {"loss": 10 - s}) for s in range(1, 9)]
    assert sorted(KeepLastN(3).keep(records)) == [6, 7, 8]
    assert sorted(KeepEveryNSteps(4).keep(records)) == [4, 8]
    # One per 2-hour window counted from the first checkpoint (t = 0.5h): steps 1, 5.
    assert sorted(KeepPeriod(2).keep(records)) == [1, 5]
    assert sorted(KeepBestK("loss", "min", 2).keep(records)) == [7, 8]
    merged = AnyOf(KeepLastN(1), KeepEveryNSteps(4), KeepBestK("loss", "min", 1)).keep(records)
    assert merged == {8: ["latest 1", "every 4 steps", "best #1 by loss (min)"], 4: ["every 4 steps"]}
    with pytest.raises(ValueError):
        KeepBestK("acc", "highest")
    with pytest.raises(ValueError):
        KeepLastN(0)


def test_keep_period_hours_through_the_manager(tmp_path: Path, monkeypatch) -> None:
    clock = iter(1_000_000.0 + 1800.0 * i for i in range(100))  # one save every half hour
    monkeypatch.setattr(manager_module, "_now", lambda: (next(clock), "t"))
    with CheckpointManager(tmp_path, max_to_keep=1, keep_period_hours=1, fsync=False) as mgr:
        _fill(mgr, range(1, 7))
        assert mgr.steps() == [1, 3, 5, 6]
        assert mgr.info(3).kept_because == ["every 1h"]


def test_custom_policy_and_newest_is_never_deleted(tmp_path: Path) -> None:
    with CheckpointManager(tmp_path, policy=KeepEveryNSteps(10), fsync=False) as mgr:
        _fill(mgr, [10, 15, 17])
        assert mgr.steps() == [10, 17]
        assert mgr.info(17).kept_because == ["newest"]


def test_retention_only_deletes_what_it_owns(tmp_path: Path) -> None:
    foreign = [tmp_path / "step-00000001", tmp_path / "notes", tmp_path / "step-00000002.bak"]
    for d in foreign:
        d.mkdir()
        (d / "keep.txt").write_text("mine")
    (tmp_path / "step-00000003").mkdir()
    (tmp_path / "step-00000003" / "COMMITTED").write_text("{}")  # committed-looking, not ours
    with CheckpointManager(tmp_path, max_to_keep=1, fsync=False) as mgr:
        _fill(mgr, [10, 11, 12])
        assert mgr.steps() == [12]
        with pytest.raises(CheckpointExistsError):
            mgr.save(1, _state(1))
    for d in foreign:
        assert (d / "keep.txt").read_text() == "mine"
    assert (tmp_path / "step-00000003" / "COMMITTED").exists()


# -- restore ---------------------------------------------------------------------------------------


def test_restore_latest_best_and_step(tmp_path: Path) -> None:
    with CheckpointManager(tmp_path, max_to_keep=3, best=("loss", "min", 1), fsync=False) as mgr:
        with pytest.raises(CheckpointNotFoundError):
            mgr.load("latest")
        assert mgr.latest() is None
        _fill(mgr, [5, 6, 7], metric=("loss", [0.3, 0.1, 0.2]))
        latest = mgr.load("latest")
        assert latest["step"] == 7 and (latest["w"] == 7).all()
        assert latest["opt"][0]["m"].tolist() == [0, 7, 14, 21]  # int keys survive
        assert mgr.load("best")["step"] == 6
        assert mgr.load(5)["step"] == 5
        with pytest.raises(CheckpointNotFoundError):
            mgr.load(4)
        with pytest.raises(ValueError):
            mgr.load("newest")
    with CheckpointManager(tmp_path / "plain", fsync=False) as plain, pytest.raises(ValueError, match="best"):
        plain.best()


def test_restore_torch_state(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 3}
    with CheckpointManager(tmp_path, async_save=True, fsync=False) as mgr:
        mgr.save(1, state)
        mgr.wait_until_finished()
        back = mgr.load("latest", framework="torch")
    assert torch.equal(back["model"]["weight"], model.weight.detach())
    assert back["optimizer"]["param_groups"][0]["lr"] == 0.1
    assert torch.equal(back["optimizer"]["state"][0]["momentum_buffer"], opt.state_dict()["state"][0]["momentum_buffer"])
    opt2 = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    opt2.load_state_dict(back["optimizer"])  # the restored state is usable as is


def test_restore_fallback_on_corrupt_latest(tmp_path: Path) -> None:
    with CheckpointManager(tmp_path, max_to_keep=3, fsync=False) as mgr:
        _fill(mgr, [1, 2])
        shard = next(mgr.path(2).glob("model-*.safetensors"))
        data = bytearray(shard.read_bytes())
        data[-1] ^= 0xFF  # bit rot in the last tensor byte
        shard.write_bytes(bytes(data))
        with pytest.raises(ChecksumMismatchError):
            mgr.load("latest", verify=True)
        with pytest.warns(WeightVaultUserWarning, match="step 2 is unusable"):
            assert mgr.load("latest", verify=True, fallback=True)["step"] == 1


# -- portability and crash leftovers ---------------------------------------------------------------


def test_run_directory_can_be_moved_and_copied(tmp_path: Path) -> None:
    original = tmp_path / "run"
    with CheckpointManager(original, max_to_keep=2, best=("acc", "max", 1), fsync=False) as mgr:
        _fill(mgr, [1, 2, 3], metric=("acc", [0.9, 0.2, 0.1]))
    state_text = (original / "weightvault-run.json").read_text()
    assert str(tmp_path) not in state_text  # relative paths only
    moved = tmp_path / "elsewhere" / "renamed"
    moved.parent.mkdir()
    shutil.move(str(original), str(moved))
    copy = tmp_path / "copy"
    shutil.copytree(moved, copy)
    for run in (moved, copy):
        with CheckpointManager(run, max_to_keep=2, best=("acc", "max", 1), fsync=False) as mgr:
            assert mgr.steps() == [1, 2, 3]
            assert mgr.best() == 1 and mgr.load("best")["step"] == 1
            assert mgr.path(3) == run / "step-00000003"
            weightvault.verify(mgr.path(3))
            mgr.save(4, _state(4), metrics={"acc": 0.0})  # the copy is a fully working run of its own
            assert mgr.steps() == [1, 3, 4]
    with CheckpointManager(moved, read_only=True) as reader:
        assert reader.steps() == [1, 3, 4] and reader.best() == 1  # best= read from the run state


def test_leftovers_of_a_crash_are_cleaned_only_by_a_writer(tmp_path: Path) -> None:
    with CheckpointManager(tmp_path, fsync=False) as mgr:
        _fill(mgr, [1])
    partial = tmp_path / "step-00000002.wvtmp-0123456789ab"
    partial.mkdir()
    (partial / "model-00001-of-00001.safetensors").write_bytes(b"\0" * 100)
    (partial / "COMMITTED").write_text("{}")  # even with a marker, a temp name is never listed
    deleting = tmp_path / "step-00000000.wvtmp-del-0123456789ab"
    deleting.mkdir()
    state_tmp = tmp_path / "weightvault-run.json.wvtmp-0123456789ab"
    state_tmp.write_text("{")
    with CheckpointManager(tmp_path, read_only=True) as reader:
        assert reader.steps() == [1]
        assert partial.exists()  # readers never delete anything
    with CheckpointManager(tmp_path, fsync=False) as mgr:
        assert sorted(mgr.cleaned_up) == sorted([partial.name, deleting.name, state_tmp.name])
        assert not partial.exists() and not deleting.exists() and not state_tmp.exists()
        assert mgr.steps() == [1]


def test_run_state_is_reconciled_with_the_listing(tmp_path: Path) -> None:
    with CheckpointManager(tmp_path, fsync=False) as mgr:
        _fill(mgr, [1, 2])
    (tmp_path / "weightvault-run.json").unlink()  # e.g. killed between commit and state write
    with CheckpointManager(tmp_path, fsync=False) as mgr:
        assert mgr.steps() == [1, 2]
    state = json.loads((tmp_path / "weightvault-run.json").read_text())
    assert [c["step"] for c in state["checkpoints"]] == [1, 2]
    assert [c["dir"] for c in state["checkpoints"]] == ["step-00000001", "step-00000002"]


# -- locking ----------------------------------------------------------------------------------------


def test_second_writer_is_refused_readers_are_not(tmp_path: Path) -> None:
    writer = CheckpointManager(tmp_path, fsync=False)
    writer.save(1, _state(1))
    with pytest.raises(CheckpointLockedError, match=f"pid {os.getpid()}") as info:
        CheckpointManager(tmp_path)
    assert "read_only=True" in (info.value.hint or "")
    reader = CheckpointManager(tmp_path, read_only=True)
    assert reader.steps() == [1]
    with pytest.raises(UnsupportedOperationError):
        reader.save(2, _state(2))
    writer.close()
    CheckpointManager(tmp_path, fsync=False).close()  # free again after close


def test_lock_held_by_another_process_and_released_by_sigkill(tmp_path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, str(SAVER), "hold", str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        with pytest.raises(CheckpointLockedError, match=f"pid {child.pid}"):
            CheckpointManager(tmp_path)
        assert CheckpointManager(tmp_path, read_only=True).steps() == []
    finally:
        child.kill()
        child.communicate()
    with CheckpointManager(tmp_path, fsync=False) as mgr:  # no stale lock after SIGKILL
        mgr.save(1, _state(1))


# -- async saves ------------------------------------------------------------------------------------


def test_async_snapshot_is_isolated_from_later_mutation(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    arr = np.zeros(1000, np.float32)
    ten = torch.zeros(1000)
    with CheckpointManager(tmp_path, async_save=True, fsync=False) as mgr:
        for step in (1, 2, 3):
            arr[:] = step
            ten.fill_(step)
            mgr.save(step, {"a": arr, "t": ten, "tied": ten})
            arr[:] = -1  # the training loop goes on mutating in place
            ten.fill_(-1)
        mgr.wait_until_finished()
        for step in (1, 2, 3):
            back = mgr.load(step)
            assert (back["a"] == step).all() and (back["t"] == step).all()
        with weightvault.open(mgr.path(3)) as reader:
            assert reader.aliases == {"tied": "t"}  # ties survive the snapshot


def test_async_failure_is_raised_at_the_next_call(tmp_path: Path, monkeypatch) -> None:
    real = manager_module.save_native

    def failing(path, obj, **kw):
        if "step-00000002" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, obj, **kw)

    monkeypatch.setattr(manager_module, "save_native", failing)
    mgr = CheckpointManager(tmp_path, async_save=True, fsync=False)
    mgr.save(1, _state(1))
    mgr.save(2, _state(2))  # fails in the background
    with pytest.raises(CheckpointSaveError, match="saving step 2 failed") as info:
        mgr.wait_until_finished()
    assert info.value.errno == errno.ENOSPC and "free disk space" in (info.value.hint or "")
    mgr.wait_until_finished()  # reported once, then cleared
    mgr.save(3, _state(3))
    mgr.save(2, _state(2))  # fails again; this time save() of step 4 reports it
    with pytest.raises(CheckpointSaveError, match="step 2"):
        mgr.save(4, _state(4))
    mgr.save(2, _state(2))  # and this time close() reports it
    with pytest.raises(CheckpointSaveError, match="step 2"):
        mgr.close()
    assert [n for n in os.listdir(tmp_path) if ".wvtmp-" in n] == []
    with CheckpointManager(tmp_path, read_only=True) as reader:
        assert reader.steps() == [1, 3]


def test_one_save_in_flight_and_stall_recorded(tmp_path: Path, monkeypatch) -> None:
    real = manager_module.save_native
    active = []

    def slow(path, obj, **kw):
        active.append(path)
        assert len(active) == 1, "two saves in flight"
        time.sleep(0.3)
        try:
            return real(path, obj, **kw)
        finally:
            active.pop()

    monkeypatch.setattr(manager_module, "save_native", slow)
    with CheckpointManager(tmp_path, async_save=True, fsync=False) as mgr:
        t0 = time.perf_counter()
        mgr.save(1, _state(1))
        first = time.perf_counter() - t0
        mgr.save(2, _state(2))  # waits for step 1's write
        second = time.perf_counter() - t0 - first
        assert first < 0.2 and second >= 0.2
        mgr.wait_until_finished()
        meta1, meta2 = mgr.metadata(1), mgr.metadata(2)
    assert meta1["mode"] == "async" and meta1["stall_seconds"] < 0.2
    assert meta2["stall_seconds"] >= 0.2  # the wait for the previous save is part of the stall
    assert meta1["write_seconds"] >= 0.3
    with weightvault.open(tmp_path / "step-00000001") as reader:
        recorded = reader.metadata["weightvault.checkpoint"]
    assert recorded["step"] == 1 and recorded["stall_seconds"] == pytest.approx(meta1["stall_seconds"])


def test_sync_stall_and_metadata(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    with CheckpointManager(tmp_path, fsync=False) as mgr:
        mgr.save(
            7,
            _state(7),
            metrics={"acc": np.float32(0.5), "loss": torch.tensor(0.25), "note": "ok", "bad": float("inf")},
            metadata={"lr": 0.1},
        )
        meta = mgr.metadata(7)
    assert meta["lr"] == 0.1 and meta["step"] == 7 and meta["mode"] == "sync"
    assert meta["metrics"] == {"acc": 0.5, "loss": 0.25, "note": "ok", "bad": None}
    assert meta["stall_seconds"] >= meta["write_seconds"] > 0
    files = [p for p in (tmp_path / "step-00000007").iterdir() if p.name != "checkpoint.json"]
    assert meta["size_bytes"] == sum(p.stat().st_size for p in files)  # the native checkpoint's bytes
    with pytest.raises(TypeError):
        CheckpointManager(tmp_path / "x", fsync=False).save(1, _state(1), metrics={"m": [1, 2]})


def test_save_from_several_threads_is_serialised(tmp_path: Path) -> None:
    with CheckpointManager(tmp_path, max_to_keep=None, async_save=True, fsync=False) as mgr:
        threads = [threading.Thread(target=mgr.save, args=(s, _state(s))) for s in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        mgr.wait_until_finished()
        assert mgr.steps() == list(range(8))
        assert all(mgr.load(s)["step"] == s for s in range(8))


# -- the runs command --------------------------------------------------------------------------------


def test_runs_command_table_and_json(tmp_path: Path, cli_run) -> None:
    with CheckpointManager(tmp_path, max_to_keep=1, keep_every_n_steps=2, best=("acc", "max", 1), fsync=False) as mgr:
        _fill(mgr, [1, 2, 3, 4, 5], metric=("acc", [0.2, 0.1, 0.9, 0.3, 0.4]))
    code, out, _ = cli_run("runs", tmp_path)
    assert code == 0
    lines = {line.split()[0]: line for line in out.splitlines() if "acc=" in line}
    assert sorted(lines, key=int) == ["2", "3", "4", "5"]
    assert "best #1 by acc (max)" in lines["3"] and "best" in lines["3"].split()[-1]
    assert "every 2 steps" in lines["4"] and "acc=0.3" in lines["4"]
    assert lines["5"].rstrip().endswith("latest")
    assert "4 checkpoint(s); latest 5; best 3 by acc (max)" in out
    code, out, _ = cli_run("runs", tmp_path, "--json")
    data = json.loads(out)
    assert code == 0 and data["latest"] == 5 and data["best"] == 3
    assert [c["step"] for c in data["checkpoints"]] == [2, 3, 4, 5]
    assert data["checkpoints"][0]["kept_because"] == ["every 2 steps"]
    assert all(not os.path.isabs(c["dir"]) for c in data["checkpoints"])


def test_runs_command_on_a_non_run(tmp_path: Path, cli_run) -> None:
    code, _, err = cli_run("runs", tmp_path)
    assert code == 2 and "not a weightvault run directory" in err
