"""Saves and loads through a proxy that answers 503 SlowDown and drops connections (faultproxy)."""

from __future__ import annotations

import numpy as np
import pytest

import weightvault
from weightvault.checkpoint import CheckpointManager
from weightvault.errors import StorageError, WeightVaultError

from faultproxy import FaultProxy  # tests/storage is on sys.path (pytest's rootdir-less import)
from s3support import s3_options

MiB = 1 << 20


def _state(seed):
    rng = np.random.default_rng(seed)
    return {f"t{i}": rng.standard_normal(MiB // 2).astype(np.float32) for i in range(6)}  # 12 MiB


def _uploads(client, bucket):
    return client.list_multipart_uploads(Bucket=bucket[5:]).get("Uploads", [])


def _keys(client, bucket):
    return [o["Key"] for o in client.list_objects_v2(Bucket=bucket[5:]).get("Contents", [])]


@pytest.mark.parametrize("name", ["f.safetensors", "fdir"])
def test_saves_and_loads_succeed_through_throttling_and_drops(s3, moto_endpoint, name):
    bucket, _, client = s3
    with FaultProxy(moto_endpoint, slow_down=0.2, drop=0.1, seed=7) as proxy:
        opts = s3_options(proxy.endpoint, part_size=5 * MiB, concurrency=3, retry_delay=0.01)
        url = f"{bucket}/{name}"
        state = _state(1)
        weightvault.save(state, url, storage_options=opts, shard_size=6 * MiB)
        got = weightvault.load(url, storage_options=opts, verify=True)
        assert proxy.faults > 0, "the proxy injected no fault: the test proves nothing"
    for k, v in state.items():
        np.testing.assert_array_equal(got[k], v)
    assert _uploads(client, bucket) == []


def test_manager_through_faults_never_half_commits(s3, moto_endpoint):
    bucket, _, client = s3
    with FaultProxy(moto_endpoint, slow_down=0.1, drop=0.05, seed=3) as proxy:
        opts = s3_options(proxy.endpoint, part_size=5 * MiB, retry_delay=0.01)
        run = f"{bucket}/run"
        with CheckpointManager(run, max_to_keep=2, storage_options=opts) as mgr:
            for step in (1, 2, 3):
                mgr.save(step, {"w": np.full(MiB // 4, step, np.float32)})
            assert mgr.steps() == [2, 3]
        assert proxy.faults > 0
    reader = CheckpointManager(run, read_only=True, storage_options=s3_options(moto_endpoint))
    assert reader.load(3, verify=True)["w"][0] == 3


def test_failing_part_uploads_abort_cleanly(s3, moto_endpoint):
    """Every part upload refused: the save fails with a StorageError naming the URL, the multipart
    upload is aborted, and nothing (no object, no COMMITTED) appears."""
    bucket, _, client = s3

    def part_uploads(method, path):
        return method == "PUT" and "partNumber=" in path

    with FaultProxy(moto_endpoint, slow_down=1.0, only=part_uploads) as proxy:
        opts = s3_options(
            proxy.endpoint, part_size=5 * MiB, max_retries=1, retry_delay=0.01, single_put_size=0
        )  # every object multipart, even the shards one PUT would carry
        for name in ("x.safetensors", "xdir"):
            with pytest.raises(StorageError, match=rf"{bucket}/{name}.*(SlowDown|reduce)") as info:
                weightvault.save(_state(2), f"{bucket}/{name}", storage_options=opts)
            assert isinstance(info.value, WeightVaultError)
        assert proxy.faults > 0
    assert _keys(client, bucket) == []
    assert _uploads(client, bucket) == []


def test_dropped_connections_only_still_succeed(s3, moto_endpoint):
    bucket, _, _ = s3
    with FaultProxy(moto_endpoint, drop=0.4, seed=5) as proxy:
        opts = s3_options(proxy.endpoint, retry_delay=0.01)
        for i in range(4):
            url = f"{bucket}/d{i}.safetensors"
            weightvault.save({"w": np.arange(1000.0) + i}, url, storage_options=opts)
            got = weightvault.load(url, storage_options=opts, verify=True)["w"]
            np.testing.assert_array_equal(got, np.arange(1000.0) + i)
        assert proxy.faults > 0, proxy.log


def test_get_over_the_wire_is_header_plus_tensor(s3, moto_endpoint):
    """Bytes the proxy returned for open() + get(): a header probe and that tensor, nothing else."""
    bucket, _, _ = s3
    state = {f"t{i}": np.full(MiB // 4, i, np.float32) for i in range(16)}  # 16 x 1 MiB
    with FaultProxy(moto_endpoint) as proxy:
        opts = s3_options(proxy.endpoint, part_size=5 * MiB)
        url = f"{bucket}/wire.safetensors"
        weightvault.save(state, url, storage_options=opts)
        proxy.reset_counts()
        with weightvault.open(url, storage_options=opts) as reader:
            np.testing.assert_array_equal(reader.get("t9"), state["t9"])
        wire = proxy.bytes_out
    assert MiB <= wire <= MiB + (64 << 10) + 4096, wire


def test_heavy_faults_are_carried_by_our_retries(s3, moto_endpoint, monkeypatch):
    """Half the requests fail, and s3fs's own retry wrapper is cut to one attempt: this passes
    only through weightvault's retry layer (backoff, counted attempts)."""
    import importlib

    # the module (weightvault.storage.location the attribute is the function of that name)
    module = importlib.import_module("weightvault.storage.location")
    monkeypatch.setattr(module, "S3FS_ATTEMPTS", 1)
    bucket, _, _ = s3
    with FaultProxy(moto_endpoint, slow_down=0.35, drop=0.15, seed=2) as proxy:
        opts = s3_options(proxy.endpoint, part_size=5 * MiB, retry_delay=0.005, max_retries=10)
        state = {"a": np.arange(3 * MiB, dtype=np.float32)}  # 12 MiB: 3 parts
        weightvault.save(state, f"{bucket}/h.safetensors", storage_options=opts)
        got = weightvault.load(f"{bucket}/h.safetensors", storage_options=opts, verify=True)
        assert proxy.faults >= 5, proxy.log
    np.testing.assert_array_equal(got["a"], state["a"])


def test_a_failing_single_put_shard_leaves_nothing(s3, moto_endpoint):
    """Shards small enough for one PUT each (6 MiB: more than one part): the second shard's PUT
    refused for good, the save fails naming the URL, and no shard nor COMMITTED remains."""
    bucket, _, client = s3
    shard_puts = {"n": 0}

    def second_shard_put(method, path):
        if method == "PUT" and "model-" in path and "partNumber=" not in path:
            shard_puts["n"] += 1
            return shard_puts["n"] >= 2
        return False

    with FaultProxy(moto_endpoint, slow_down=1.0, only=second_shard_put) as proxy:
        opts = s3_options(proxy.endpoint, part_size=5 * MiB, max_retries=1, retry_delay=0.01)
        with pytest.raises(StorageError, match=rf"{bucket}/puts"):
            weightvault.save(_state(4), f"{bucket}/puts", storage_options=opts, shard_size=6 * MiB)
        assert proxy.faults > 0
        assert not any("uploads" in path for _, path, _ in proxy.log)  # no multipart at all
    assert _keys(client, bucket) == []
    assert _uploads(client, bucket) == []
