"""CheckpointManager, watch and runs on a real S3 API server (moto, see conftest)."""

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
from weightvault.errors import CheckpointLockedError, CheckpointNotFoundError
from weightvault.storage.location import Location

HERE = Path(__file__).resolve().parent
SRC = HERE.parents[1] / "src"
MiB = 1 << 20


def _keys(client, bucket_url, prefix=""):
    out = client.list_objects_v2(Bucket=bucket_url[5:], Prefix=prefix)
    return sorted(o["Key"] for o in out.get("Contents", []))


def _state(step):
    return {"w": np.full(64, step, np.float32), "step": step}


def test_commit_and_retention(s3):
    bucket, opts, client = s3
    run = f"{bucket}/runs/exp"
    with CheckpointManager(run, max_to_keep=2, storage_options=opts) as mgr:
        assert type(mgr).__name__ == "ObjectStoreManager"
        for step in (1, 2, 3):
            path = mgr.save(step, _state(step), metrics={"loss": 1 / step})
            assert str(path) == f"{run}/step-{step:08d}"
        assert mgr.steps() == [2, 3]
        assert mgr.load("latest")["step"] == 3
        assert _keys(client, bucket, "runs/exp/.weightvault-writer") != []  # the lease, held
    keys = _keys(client, bucket, "runs/exp/")
    assert not [k for k in keys if "step-00000001" in k]  # retention removed all of step 1
    assert "runs/exp/step-00000003/COMMITTED" in keys
    assert "runs/exp/step-00000003/checkpoint.json" in keys
    assert not [k for k in keys if "writer" in k]  # the lease is released at close
    state = json.loads(client.get_object(Bucket=bucket[5:], Key="runs/exp/weightvault-run.json")["Body"].read())
    assert [c["step"] for c in state["checkpoints"]] == [2, 3]
    reader = CheckpointManager(run, read_only=True, storage_options=opts)
    assert reader.steps() == [2, 3]
    np.testing.assert_array_equal(reader.load(2, verify=True)["w"], np.full(64, 2, np.float32))


def test_crash_mid_delete_never_leaves_a_committed_partial(s3, monkeypatch):
    bucket, opts, client = s3
    run = f"{bucket}/r"
    mgr = CheckpointManager(run, max_to_keep=1, storage_options=opts)
    mgr.save(1, _state(1))
    real = Location.delete_many

    def crash(self, locations):
        raise OSError("killed mid-delete")

    monkeypatch.setattr(Location, "delete_many", crash)
    with pytest.raises(OSError, match="mid-delete"):
        mgr.save(2, _state(2))  # committed, then retention of step 1 dies after COMMITTED went
    monkeypatch.setattr(Location, "delete_many", real)
    keys = _keys(client, bucket, "r/step-00000001/")
    assert keys and "r/step-00000001/COMMITTED" not in keys  # data left, but not committed
    assert mgr.steps() == [2]
    with pytest.raises(CheckpointNotFoundError):
        weightvault.load(f"{run}/step-00000001", storage_options=opts)
    mgr.close()
    time.sleep(1.1)  # S3 times have 1 s resolution: the leftover must be provably older
    with CheckpointManager(run, max_to_keep=1, storage_options=opts) as again:
        assert "step-00000001" in again.cleaned_up
        assert again.steps() == [2]
    assert _keys(client, bucket, "r/step-00000001/") == []


def test_newer_uncommitted_prefix_is_left_alone(s3):
    bucket, opts, client = s3
    run = f"{bucket}/n"
    with CheckpointManager(run, storage_options=opts) as mgr:
        client.put_object(Bucket=bucket[5:], Key="n/step-00000009/model-00001-of-00001.safetensors", Body=b"x")
        assert mgr._remove_leftovers() == []  # written after the lease was taken: maybe live
        assert _keys(client, bucket, "n/step-00000009/") != []
        assert 9 not in mgr.steps()


def test_second_writer_is_refused_then_takes_over_an_expired_lease(s3):
    bucket, opts, _ = s3
    run = f"{bucket}/w"
    first = CheckpointManager(run, storage_options=opts, lease_seconds=1.5)
    first.save(1, _state(1))
    with pytest.raises(CheckpointLockedError, match="lease"):
        CheckpointManager(run, storage_options=opts)
    # the first writer hangs (no renewals): after the lease time a new writer takes over
    first._lock._stop.set()
    first._lock._thread.join()
    time.sleep(2.7)
    with CheckpointManager(run, storage_options=opts, lease_seconds=1.5) as second:
        second.save(2, _state(2))
        # the hung writer wakes up: it must not commit anything
        with pytest.raises(CheckpointLockedError, match="taken over"):
            first.save(3, _state(3))
        assert second.steps() == [1, 2]
    first.close()


def test_async_save_uploads_in_the_background(s3):
    bucket, opts, _ = s3
    run = f"{bucket}/a"
    big = {"w": np.ones(4 * MiB, np.float32)}  # 16 MiB
    with CheckpointManager(run, async_save=True, storage_options=opts) as mgr:
        started = time.perf_counter()
        mgr.save(1, big)
        stall = time.perf_counter() - started
        mgr.wait_until_finished()
        total = time.perf_counter() - started
        assert mgr.steps() == [1]
        info = mgr.info(1)
        assert info.mode == "async" and info.size_bytes > 16 * MiB
    assert stall < total / 2, (stall, total)


def test_watch_and_consumer_on_s3(s3):
    bucket, opts, client = s3
    run = f"{bucket}/watched"
    with CheckpointManager(run, storage_options=opts) as mgr:
        mgr.save(1, _state(1))
        mgr.save(2, _state(2))
    seen = []
    watcher = weightvault.watch(run, timeout=0.2, poll=0.05, consumer="eval", storage_options=opts)
    for ckpt in watcher:
        seen.append((ckpt.step, float(ckpt.load()["w"][0])))
    assert seen == [(1, 1.0), (2, 2.0)]
    progress = json.loads(
        client.get_object(Bucket=bucket[5:], Key="watched/.weightvault-consumers/eval.json")["Body"].read()
    )
    assert progress["done"] == 2


def test_cli_runs_and_ls_on_s3(s3, cli_run, monkeypatch, moto_endpoint):
    bucket, opts, _ = s3
    monkeypatch.delenv("WEIGHTVAULT_STORAGE_OPTIONS", raising=False)
    run = f"{bucket}/cli"
    with CheckpointManager(run, storage_options=opts) as mgr:
        mgr.save(5, _state(5), metrics={"loss": 0.5})
    code, out, err = cli_run("runs", run, "--json", "--storage-option", f"endpoint_url={moto_endpoint}")
    assert code == 0, err
    assert [c["step"] for c in json.loads(out)["checkpoints"]] == [5]
    code, out, err = cli_run("ls", f"{run}/step-00000005")  # options kept for the process
    assert code == 0, err
    assert "w" in out
    monkeypatch.delenv("WEIGHTVAULT_STORAGE_OPTIONS", raising=False)


@pytest.mark.parametrize("use_async", [False, True])
def test_sigkill_during_upload_leaves_the_previous_checkpoint_intact(s3, moto_endpoint, use_async):
    bucket, opts, client = s3
    run = f"{bucket}/crash"
    env = {
        **os.environ,
        "PYTHONPATH": str(SRC),
        "WEIGHTVAULT_STORAGE_OPTIONS": json.dumps({**opts, "part_size": 5 * MiB, "concurrency": 3}),
    }
    elements = 3 * MiB  # 12 MiB + 6 MiB per step: several parts each
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "_s3_writer.py"), run, "1", str(elements), "1" if use_async else "0"],
        env=env, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        committed = 0
        for line in proc.stdout:
            if line.startswith("committed"):
                committed = int(line.split()[1])
            if line.startswith("saving") and committed >= 1:
                time.sleep(random.uniform(0.05, 0.4))  # somewhere inside the uploads
                break
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    assert committed >= 1
    reader = CheckpointManager(run, read_only=True, storage_options=opts)
    steps = reader.steps()
    assert steps and steps[-1] >= committed
    for step in steps:  # every committed step is complete and verifies
        state = reader.load(step, verify=True)
        np.testing.assert_array_equal(state["model"]["w"][:3], np.full(3, step, np.float32))
        assert state["step"] == step
    in_flight = client.list_multipart_uploads(Bucket=bucket[5:]).get("Uploads", [])
    partial = {k.split("/")[1] for k in _keys(client, bucket, "crash/step-")} - {
        f"step-{s:08d}" for s in steps
    }
    print("killed with", len(in_flight), "uploads in flight and partial prefixes", partial)
    # a new writer (after the dead one's lease expires) removes the uncommitted leftovers and
    # aborts the dead writer's multipart uploads
    time.sleep(3.2)
    with CheckpointManager(run, max_to_keep=2, storage_options=opts) as again:
        assert again.steps() == steps
        assert set(again.cleaned_up) >= partial
    uploads = client.list_multipart_uploads(Bucket=bucket[5:]).get("Uploads", [])
    assert uploads == []
    prefixes = {k.split("/")[1] for k in _keys(client, bucket, "crash/step-")}
    assert prefixes == {f"step-{s:08d}" for s in steps}
