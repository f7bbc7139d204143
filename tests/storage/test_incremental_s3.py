"""Incremental checkpoints on a real S3 API server (moto, see conftest): unchanged shards are
copied server-side (CopyObject / UploadPartCopy), never uploaded again.

The fault proxy (faultproxy.py) sits between s3fs and moto and counts what goes over the wire:
the bytes PUT (object bodies and multipart parts) and the copy requests.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import weightvault
from weightvault.checkpoint import CheckpointManager
from weightvault.errors import ChecksumMismatchError
from weightvault.storage import copy as copy_mod
from weightvault.storage import incremental as incr_mod

from faultproxy import FaultProxy  # tests/storage is on sys.path
from s3support import s3_options

HERE = Path(__file__).resolve().parent
SRC = HERE.parents[1] / "src"
KiB, MiB = 1 << 10, 1 << 20


def _keys(client, bucket: str, prefix: str = "") -> list[str]:
    out = client.list_objects_v2(Bucket=bucket[5:], Prefix=prefix)
    return sorted(o["Key"] for o in out.get("Contents", []))


def _sizes(client, bucket: str, prefix: str, json_only: bool = False) -> int:
    out = client.list_objects_v2(Bucket=bucket[5:], Prefix=prefix)
    return sum(
        o["Size"] for o in out.get("Contents", []) if not (json_only and o["Key"].endswith(".safetensors"))
    )


def _get_json(client, bucket: str, key: str) -> Any:
    return json.loads(client.get_object(Bucket=bucket[5:], Key=key)["Body"].read())


def _uploads(client, bucket: str) -> list[Any]:
    return client.list_multipart_uploads(Bucket=bucket[5:]).get("Uploads", [])


# -- a frozen backbone (~90% of the parameters) fine-tuned with torch --------------------------------


def _frozen_model(torch: Any) -> tuple[Any, Any, Any]:
    nn = torch.nn
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(128, 128) for _ in range(9)], nn.Linear(128, 128))
    head = model[9]
    for layer in list(model)[:9]:
        for p in layer.parameters():
            p.requires_grad_(False)
    return model, head, torch.optim.Adam(head.parameters(), lr=1e-2)


def _train(torch: Any, model: Any, opt: Any, x: Any) -> None:
    for _ in range(2):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()


def _clone(torch: Any, state: Any) -> Any:
    if isinstance(state, torch.Tensor):
        return state.detach().clone()
    if isinstance(state, dict):
        return {k: _clone(torch, v) for k, v in state.items()}
    if isinstance(state, list):
        return [_clone(torch, v) for v in state]
    return state


def _assert_same(torch: Any, saved: Any, loaded: Any) -> None:
    if isinstance(saved, torch.Tensor):
        assert torch.equal(saved, loaded)
    elif isinstance(saved, dict):
        assert set(saved) == set(loaded)
        for k in saved:
            _assert_same(torch, saved[k], loaded[k])
    elif isinstance(saved, list):
        for a, b in zip(saved, loaded, strict=True):
            _assert_same(torch, a, b)
    else:
        assert saved == loaded


def test_frozen_backbone_uploads_only_the_changed_shards(s3, moto_endpoint, cli_run, monkeypatch):
    torch = pytest.importorskip("torch")
    bucket, _, client = s3
    model, _head, opt = _frozen_model(torch)
    x = torch.randn(32, 128)
    run = f"{bucket}/ft"
    saved, uploaded, copies = {}, {}, {}
    with FaultProxy(moto_endpoint) as proxy:
        opts = s3_options(proxy.endpoint)
        # small shards: each frozen layer keeps its own shard from the first step on
        with CheckpointManager(
            run, max_to_keep=None, incremental=True, shard_size=80 * KiB, storage_options=opts
        ) as mgr:
            for step in range(1, 5):
                _train(torch, model, opt, x)
                state = {"model": model.state_dict(), "optimizer": opt.state_dict()}
                saved[step] = _clone(torch, state)
                proxy.reset_counts()
                mgr.save(step, state, metrics={"step": step})
                uploaded[step], copies[step] = proxy.bytes_in, proxy.copies
            infos = {c.step: c for c in mgr.checkpoints()}
    full = infos[1].size_bytes
    head_bytes = sum(p.numel() * 4 for p in _head.parameters())
    assert copies[1] == 0 and uploaded[1] >= full  # the first step uploads everything
    for step in (2, 3, 4):
        man = _get_json(client, bucket, f"ft/step-{step:08d}/manifest.json")
        section = man["incremental"]
        assert section["base"] == f"step-{step - 1:08d}"
        shards = section["shards"]
        copied = {f: s for f, s in shards.items() if s["how"] == "copy"}
        written = {f: s for f, s in shards.items() if s["how"] == "write"}
        assert len(copied) >= 9 and written  # the nine frozen layers are copied, the head is not
        assert all(s["written_bytes"] == 0 and s["reused_from"] == "step-00000001" for s in copied.values())
        # every tensor of a copied shard is a frozen layer's
        frozen_names = {n for n, r in man["tensors"].items() if r["file"] in copied}
        assert frozen_names and all(n.startswith("model/") and not n.startswith("model/9.") for n in frozen_names)
        # the store copied them: one CopyObject per copied shard, none of their bytes was PUT
        assert copies[step] == len(copied)
        changed = sum(s["nbytes"] for s in written.values())
        assert section["written_bytes"] == changed
        # besides the changed shards: the JSON objects (manifest, index, checkpoint.json,
        # COMMITTED, the run state) and the lease's renewal
        json_bytes = _sizes(client, bucket, f"ft/step-{step:08d}/", json_only=True)
        json_bytes += _sizes(client, bucket, "ft/weightvault-run.json")
        assert changed <= uploaded[step] <= changed + json_bytes + 2 * KiB, (step, uploaded[step], changed)
        # the changed shards are the head and Adam's two moments of it (+ step counters): 3/12
        # of the full state, the frozen 9/10 of the parameters never go up again
        assert changed <= 3 * head_bytes + 4 * KiB
        assert uploaded[step] < 0.3 * full
        assert infos[step].written_bytes < 0.3 * infos[step].size_bytes
    # each step is standalone: with every other step deleted it loads and verifies exactly
    plain = s3_options(moto_endpoint)
    for step in (1, 2, 3):
        for key in _keys(client, bucket, f"ft/step-{step:08d}/"):
            client.delete_object(Bucket=bucket[5:], Key=key)
    last = f"{run}/step-00000004"
    assert weightvault.verify(last, storage_options=plain).failures == []
    _assert_same(torch, saved[4], weightvault.load(last, framework="torch", storage_options=plain))
    # weightvault runs shows written vs size per step for the S3 run
    monkeypatch.delenv("WEIGHTVAULT_STORAGE_OPTIONS", raising=False)
    code, out, err = cli_run("runs", run, "--json", "--storage-option", f"endpoint_url={moto_endpoint}")
    assert code == 0, err
    rows = json.loads(out)["checkpoints"]
    assert [r["step"] for r in rows] == [4]
    assert rows[0]["written_bytes"] < 0.3 * rows[0]["size_bytes"]
    code, out, err = cli_run("runs", run, "--storage-option", f"endpoint_url={moto_endpoint}")
    assert code == 0, err
    assert "written" in out and "%)" in out
    monkeypatch.delenv("WEIGHTVAULT_STORAGE_OPTIONS", raising=False)


def test_retention_keeps_every_step_standalone(s3):
    bucket, opts, _ = s3
    rng = np.random.default_rng(0)
    frozen = {f"f{i}": rng.standard_normal(64 * KiB).astype(np.float32) for i in range(4)}
    run = f"{bucket}/keep2"
    with CheckpointManager(run, max_to_keep=2, incremental=True, shard_size=300 * KiB, storage_options=opts) as mgr:
        for step in range(1, 6):
            mgr.save(step, {"frozen": frozen, "head": np.full(1000, step, np.float32)})
        assert mgr.steps() == [4, 5]  # step 1 (whose save uploaded the frozen bytes) is gone
        for step in (4, 5):
            got = mgr.load(step, verify=True)
            assert got["head"][0] == step
            np.testing.assert_array_equal(got["frozen"]["f3"], frozen["f3"])
        man = json.loads(mgr.path(5).child("manifest.json").read_all())
        origins = {s["reused_from"] for s in man["incremental"]["shards"].values()}
        # step 1's bytes (and step 2's: the shard the head shared with a frozen tensor was
        # regrouped once) live on in copies that retention of steps 1 and 2 did not touch
        assert "step-00000001" in origins and None in origins
        assert origins <= {"step-00000001", "step-00000002", None}


def test_async_incremental_save(s3):
    bucket, opts, _ = s3
    frozen = np.arange(256 * KiB, dtype=np.float32)
    with CheckpointManager(
        f"{bucket}/async", incremental=True, async_save=True, shard_size=512 * KiB, storage_options=opts
    ) as mgr:
        for step in (1, 2, 3):
            mgr.save(step, {"frozen": frozen, "head": np.full(10, step, np.float32)})
        mgr.wait_until_finished()
        info = mgr.info(3)
        assert info.written_bytes < info.size_bytes / 4
        assert mgr.load(3, verify=True)["head"][0] == 3


# -- copies: the multipart path, and failures that fall back to uploading -------------------------------


def test_large_shard_is_copied_in_parts(s3, moto_endpoint, monkeypatch):
    # S3 copies up to 5 GiB in one request; above it, UploadPartCopy parts (made small here)
    monkeypatch.setattr(copy_mod, "COPY_OBJECT_MAX", 6 * MiB)
    monkeypatch.setattr(copy_mod, "COPY_PART_SIZE", 5 * MiB)
    bucket, _, client = s3
    big = np.random.default_rng(1).standard_normal(3 * MiB).astype(np.float32)  # 12 MiB
    with FaultProxy(moto_endpoint) as proxy:
        opts = s3_options(proxy.endpoint)
        with CheckpointManager(f"{bucket}/big", incremental=True, shard_size=16 * MiB, storage_options=opts) as mgr:
            mgr.save(1, {"big": big, "head": np.zeros(4, np.float32)})
            mgr.save(2, {"big": big, "head": np.ones(4, np.float32)})  # big gets a shard alone
            proxy.reset_counts()
            mgr.save(3, {"big": big, "head": np.full(4, 2, np.float32)})
            assert proxy.copies == 3  # 12 MiB in parts of 5 MiB: three UploadPartCopy requests
            assert proxy.bytes_in < 64 * KiB
            assert any("partNumber=" in path and "uploadId=" in path for _m, path, _ in proxy.log)
            man = json.loads(mgr.path(3).child("manifest.json").read_all())
            big_file = man["tensors"]["big"]["file"]
            assert man["incremental"]["shards"][big_file]["how"] == "copy"
            np.testing.assert_array_equal(mgr.load(3, verify=True)["big"], big)
    assert _uploads(client, bucket) == []


def _two_shard_state(step: int) -> dict[str, Any]:
    rng = np.random.default_rng(5)
    return {"frozen": rng.standard_normal(200 * KiB).astype(np.float32), "head": np.full(8, step, np.float32)}


def test_copies_answered_503_fall_back_to_uploading(s3, moto_endpoint):
    bucket, _, client = s3
    with FaultProxy(moto_endpoint, copy_slow_down=1.0) as proxy:
        opts = s3_options(proxy.endpoint, retry_delay=0.01, max_retries=2)
        with CheckpointManager(f"{bucket}/r503", incremental=True, shard_size=512 * KiB, storage_options=opts) as mgr:
            mgr.save(1, _two_shard_state(1))
            proxy.reset_counts()
            mgr.save(2, _two_shard_state(2))
            assert proxy.copies >= 3 and proxy.faults >= 3  # tried, retried, refused every time
            man = json.loads(mgr.path(2).child("manifest.json").read_all())
            assert {s["how"] for s in man["incremental"]["shards"].values()} == {"write"}
            assert proxy.bytes_in >= 800 * KiB  # the frozen shard was uploaded instead
            assert mgr.info(2).written_bytes >= mgr.info(2).size_bytes - 16 * KiB
            assert mgr.load(2, verify=True)["head"][0] == 2
    assert _uploads(client, bucket) == []


def _meddling_copy(client, bucket: str, what: str) -> Any:
    """server_copy, after someone deleted or rewrote the base object since the header check."""
    real = incr_mod.server_copy

    def meddle(src, dst, *, size, if_match=None):
        key = src.path.split("/", 1)[1]
        if what == "deleted":
            client.delete_object(Bucket=bucket[5:], Key=key)
        else:
            body = client.get_object(Bucket=bucket[5:], Key=key)["Body"].read()
            client.put_object(Bucket=bucket[5:], Key=key, Body=body[:-4] + b"\0\0\0\0")
        return real(src, dst, size=size, if_match=if_match)

    return meddle


def test_base_object_deleted_since_the_check_is_uploaded_instead(s3, monkeypatch):
    bucket, opts, client = s3
    with CheckpointManager(f"{bucket}/gone", incremental=True, shard_size=512 * KiB, storage_options=opts) as mgr:
        mgr.save(1, _two_shard_state(1))
        monkeypatch.setattr(incr_mod, "server_copy", _meddling_copy(client, bucket, "deleted"))
        mgr.save(2, _two_shard_state(2))
        man = json.loads(mgr.path(2).child("manifest.json").read_all())
        assert {s["how"] for s in man["incremental"]["shards"].values()} == {"write"}
        got = mgr.load(2, verify=True)  # the uploaded bytes
        np.testing.assert_array_equal(got["frozen"], _two_shard_state(2)["frozen"])


def test_base_object_replaced_since_the_check_is_never_silently_copied(s3, monkeypatch):
    # The copy is conditional on the ETag read with the header (CopySourceIfMatch): S3 answers
    # 412 and the shard is uploaded instead. A store that ignores the condition (moto does)
    # copies the other bytes, and then the step's own checksums (those of the saved data)
    # make verify name the tensor: never a step that silently holds other data.
    bucket, opts, client = s3
    with CheckpointManager(f"{bucket}/repl", incremental=True, shard_size=512 * KiB, storage_options=opts) as mgr:
        mgr.save(1, _two_shard_state(1))
        monkeypatch.setattr(incr_mod, "server_copy", _meddling_copy(client, bucket, "replaced"))
        mgr.save(2, _two_shard_state(2))
        man = json.loads(mgr.path(2).child("manifest.json").read_all())
        how = man["incremental"]["shards"][man["tensors"]["frozen"]["file"]]["how"]
        if how == "write":
            assert weightvault.verify(str(mgr.path(2)), storage_options=opts).failures == []
        else:
            with pytest.raises(ChecksumMismatchError, match="frozen"):
                weightvault.verify(str(mgr.path(2)), storage_options=opts)


def test_changed_header_in_base_is_not_copied(s3, monkeypatch):
    # the manifest says the shard holds the tensor; its own header says otherwise: upload it
    bucket, opts, client = s3
    with CheckpointManager(f"{bucket}/hdr", incremental=True, shard_size=512 * KiB, storage_options=opts) as mgr:
        mgr.save(1, _two_shard_state(1))
        man = json.loads(mgr.path(1).child("manifest.json").read_all())
        file = man["tensors"]["frozen"]["file"]
        key = f"hdr/step-00000001/{file}"
        body = client.get_object(Bucket=bucket[5:], Key=key)["Body"].read()
        client.put_object(Bucket=bucket[5:], Key=key, Body=body.replace(b'"frozen"', b'"frozeN"', 1))
        mgr.save(2, _two_shard_state(2))
        man2 = json.loads(mgr.path(2).child("manifest.json").read_all())
        assert man2["incremental"]["shards"][man2["tensors"]["frozen"]["file"]]["how"] == "write"
        assert mgr.load(2, verify=True)["head"][0] == 2


# -- SIGKILL during an incremental save, and between the save and retention ---------------------------

WRITER = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from weightvault.checkpoint import CheckpointManager
    from weightvault.storage import incremental, manager, native

    url, phase = sys.argv[1], sys.argv[2]
    if phase == "copying-multipart":  # every copy a multipart upload of UploadPartCopy parts
        from weightvault.storage import copy
        copy.COPY_OBJECT_MAX = 1 << 20

    def announce(name, real):
        def wrapper(*a, **k):
            print(name, flush=True)
            time.sleep(0.05)
            return real(*a, **k)
        return wrapper

    # markers the test kills on: inside a server-side copy, an upload, retention
    incremental.server_copy = announce("copying", incremental.server_copy)
    native.open_writer = announce("uploading", native.open_writer)
    manager.ObjectStoreManager._apply_retention = announce(
        "retention", manager.ObjectStoreManager._apply_retention)
    rng = np.random.default_rng(0)
    frozen = {f"f{i}": rng.standard_normal(1 << 20).astype(np.float32) for i in range(4)}
    mgr = CheckpointManager(url, max_to_keep=2, incremental=True, shard_size=5 << 20,
                            lease_seconds=3.0)
    step = 1
    while True:
        print(f"saving {step}", flush=True)
        head = np.full(1 << 20, step, np.float32)
        mgr.save(step, {"frozen": frozen, "head": head, "step": step})
        print(f"committed {step}", flush=True)
        step += 1
    """
)


@pytest.mark.parametrize("phase", ["copying", "copying-multipart", "uploading", "retention"])
def test_sigkill_during_incremental_save(s3, tmp_path, phase):
    bucket, opts, client = s3
    run = f"{bucket}/crash"
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    env = {
        **os.environ,
        "PYTHONPATH": str(SRC),
        "WEIGHTVAULT_STORAGE_OPTIONS": json.dumps({**opts, "part_size": 5 * MiB, "concurrency": 3}),
    }
    proc = subprocess.Popen(
        [sys.executable, str(script), run, phase], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        committed = 0
        for line in proc.stdout:
            if line.startswith("committed"):
                committed = int(line.split()[1])
            # after two committed steps, the next save's copies / uploads / retention
            if line.strip() == phase.split("-")[0] and committed >= 2:
                if phase != "retention":  # somewhere inside the requests that follow
                    time.sleep(random.uniform(0.0, 0.2))
                break
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    assert committed >= 2
    reader = CheckpointManager(run, read_only=True, storage_options=opts)
    steps = reader.steps()
    assert steps and steps[-1] >= committed
    rng = np.random.default_rng(0)
    frozen3 = [rng.standard_normal(1 << 20).astype(np.float32) for _ in range(4)][3]
    for step in steps:  # every committed step is complete, verifies and holds its own data
        state = reader.load(step, verify=True)
        assert state["step"] == step and state["head"][0] == step
        np.testing.assert_array_equal(state["frozen"]["f3"], frozen3)
    if phase == "retention":
        assert len(steps) == 3  # committed, killed before retention removed the oldest
    partial = {k.split("/")[1] for k in _keys(client, bucket, "crash/step-")} - {f"step-{s:08d}" for s in steps}
    print(phase, "killed with", len(_uploads(client, bucket)), "uploads in flight; partial", partial)
    # a new writer (after the dead one's lease) removes the leftovers and saves on incrementally
    time.sleep(3.2)
    with CheckpointManager(run, max_to_keep=2, incremental=True, shard_size=5 * MiB, storage_options=opts) as again:
        assert again.steps() == steps
        nxt = steps[-1] + 1
        again.save(nxt, {"frozen": {f"f{i}": v for i, v in enumerate(
            [np.random.default_rng(0).standard_normal(1 << 20).astype(np.float32) for _ in range(4)])},
            "head": np.full(1 << 20, nxt, np.float32), "step": nxt})  # fmt: skip
        man = json.loads(again.path(nxt).child("manifest.json").read_all())
        assert "copy" in {s["how"] for s in man["incremental"]["shards"].values()}
        assert again.load(nxt, verify=True)["head"][0] == nxt
        kept = again.steps()
    assert _uploads(client, bucket) == []
    prefixes = {k.split("/")[1] for k in _keys(client, bucket, "crash/step-")}
    assert prefixes == {f"step-{s:08d}" for s in kept}


# -- other URLs: memory:// (fsspec's cp_file) and file:// (the local code: hard links) ----------------


def test_memory_url_copies_unchanged_shards():
    import uuid

    run = f"memory://wv-incr-{uuid.uuid4().hex[:8]}/run"
    frozen = np.arange(64 * KiB, dtype=np.float32)
    with CheckpointManager(run, max_to_keep=1, incremental=True, shard_size=128 * KiB) as mgr:
        for step in (1, 2, 3):
            mgr.save(step, {"frozen": frozen, "head": np.full(16, step, np.float32)})
        assert mgr.steps() == [3]  # the steps whose saves wrote the frozen bytes are deleted
        man = json.loads(mgr.path(3).child("manifest.json").read_all())
        hows = {s["how"] for s in man["incremental"]["shards"].values()}
        assert hows == {"copy", "write"}
        info = mgr.info(3)
        assert info.written_bytes < info.size_bytes / 4
        got = mgr.load(3, verify=True)
        np.testing.assert_array_equal(got["frozen"], frozen)
        assert got["head"][0] == 3


def test_file_url_is_the_local_incremental_run(tmp_path):
    frozen = np.arange(64 * KiB, dtype=np.float32)
    with CheckpointManager(f"file://{tmp_path}/run", incremental=True, shard_size=128 * KiB) as mgr:
        assert mgr.directory == tmp_path / "run"  # not a relative "file:" directory
        for step in (1, 2, 3):
            mgr.save(step, {"frozen": frozen, "head": np.full(16, step, np.float32)})
        man = json.loads((tmp_path / "run" / "step-00000003" / "manifest.json").read_text())
        assert "link" in {s["how"] for s in man["incremental"]["shards"].values()}
        assert mgr.load(3, verify=True)["head"][0] == 3
