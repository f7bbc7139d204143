"""Distributed saves and loads on object storage, with real torch.distributed (gloo, one process per
rank, ``_dist_object_store_worker.py``) against a real S3 API server (the moto server of
``tests/storage/conftest.py``).

Every rank uploads only its own chunks into the checkpoint prefix, rank 0 writes the manifest and
``COMMITTED`` last; any world size reads back only the byte ranges it needs.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import torch
from _dist_helpers import run_ranks as launch
from test_dist_save import assert_same, reference

import weightvault
from weightvault.checkpoint import CheckpointManager
from weightvault.errors import ChecksumMismatchError

HERE = Path(__file__).resolve().parent
STORAGE_TESTS = HERE.parent / "storage"
WORKER = HERE / "_dist_object_store_worker.py"
STEPS = 3
COLS = (6, 10)


def _storage_conftest() -> Any:
    """The moto server fixture of tests/storage (one S3 server per session there; here too)."""
    sys.path.insert(0, str(STORAGE_TESTS))
    path = STORAGE_TESTS / "conftest.py"
    spec = importlib.util.spec_from_file_location("_wv_storage_conftest", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_conftest = _storage_conftest()
moto_endpoint = _conftest.moto_endpoint
from s3support import CREDENTIALS, s3_options  # noqa: E402 - tests/storage is on sys.path now


@pytest.fixture(scope="module")
def bucket(moto_endpoint: str) -> dict[str, Any]:
    """A bucket for this module: its URL, storage options, a boto3 client and the ranks' env."""
    boto3 = pytest.importorskip("boto3")
    name = f"wv-dist-{uuid.uuid4().hex[:10]}"
    client = boto3.client(
        "s3", endpoint_url=moto_endpoint, region_name="us-east-1",
        aws_access_key_id="testing", aws_secret_access_key="testing",
    )  # fmt: skip
    client.create_bucket(Bucket=name)
    # single_put_size=0: the ranks' shards (6 MiB) go multipart, which the kill and failure
    # tests interrupt part by part (a single PUT is tested in tests/storage/test_s3_faults.py)
    opts = s3_options(moto_endpoint, part_size=5 << 20, single_put_size=0)
    env = {**CREDENTIALS, "WEIGHTVAULT_STORAGE_OPTIONS": json.dumps(opts)}
    yield {"url": f"s3://{name}", "name": name, "opts": opts, "client": client, "env": env}
    client.close()


def run_ranks(
    action: str, world: int, root: Path, url: str, env: dict[str, str], *args: str,
    timeout: float = 240, expect_fail: tuple[int, ...] = (),
) -> list[str]:  # fmt: skip
    """ACTION on WORLD ranks of the worker; fail with their output when a rank fails."""
    return launch(
        action, world, root, url, *args, timeout=timeout, expect_fail=expect_fail,
        script=str(WORKER), env=env,
    )  # fmt: skip


def get_json(bucket: dict[str, Any], key: str) -> Any:
    return json.loads(bucket["client"].get_object(Bucket=bucket["name"], Key=key)["Body"].read())


def keys(bucket: dict[str, Any], prefix: str) -> dict[str, int]:
    out = bucket["client"].list_objects_v2(Bucket=bucket["name"], Prefix=prefix)
    return {o["Key"][len(prefix) :]: o["Size"] for o in out.get("Contents", [])}


def cols_whole() -> torch.Tensor:
    return torch.arange(COLS[0] * COLS[1], dtype=torch.float32).reshape(COLS)


@pytest.fixture(scope="module")
def on_two(bucket: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """FSDP2 on 2 ranks, 3 AdamW steps, saved to S3 with weightvault.save from both ranks."""
    root = tmp_path_factory.mktemp("dist-s3")
    url = f"{bucket['url']}/runs/ckpt"
    # an earlier save's object, committed: rank 0 must clear the prefix before the ranks upload
    for name in ("rank-00002-of-00003-00001-of-00001.safetensors", "COMMITTED"):
        bucket["client"].put_object(Bucket=bucket["name"], Key=f"runs/ckpt/{name}", Body=b"old")
    run_ranks("train_save", 2, root, url, bucket["env"])
    return {"root": root, "url": url, "prefix": "runs/ckpt/"}


def test_each_rank_uploads_its_own_shard_rank_zero_commits(bucket, on_two) -> None:
    found = keys(bucket, on_two["prefix"])
    rank_files = [f"rank-0000{r}-of-00002-00001-of-00001.safetensors" for r in (0, 1)]
    index = "model.safetensors.index.json"
    assert sorted(found) == sorted(["COMMITTED", "manifest.json", index, *rank_files])
    manifest = get_json(bucket, on_two["prefix"] + "manifest.json")
    assert manifest["format_version"] == 2 and manifest["world_size"] == 2
    assert manifest["metadata"] == {"world": 2}
    cols = manifest["tensors"]["cols"]["chunks"]
    assert [(c["offsets"], c["rank"]) for c in cols] == [([0, 0], 0), ([0, 5], 1)]
    # rank 1 uploaded exactly its own shard object; rank 0 its shard, the manifest, index, marker
    root = on_two["root"]
    written = [json.loads((root / f"written-{r}.json").read_text())["written"] for r in (0, 1)]
    assert written[1] == found[rank_files[1]]
    assert written[0] == sum(size for name, size in found.items() if name != rank_files[1])
    marker = get_json(bucket, on_two["prefix"] + "COMMITTED")
    assert sorted(marker["files"]) == sorted([*rank_files, "manifest.json"])


def test_single_process_load_open_verify_give_whole_tensors(bucket, on_two) -> None:
    ref = reference(STEPS)
    url, opts = on_two["url"], bucket["opts"]
    loaded = weightvault.load(url, storage_options=opts, framework="torch", verify=True)
    assert loaded["step"] == STEPS
    assert_same(loaded["model"], ref["model"])
    assert_same(loaded["optim"], ref["optim"])
    assert torch.equal(loaded["cols"], cols_whole())  # column chunks into a wider buffer
    with weightvault.open(url, storage_options=opts) as r:
        assert r.info("model/2.weight").extra["chunks"] == 2
        got = torch.from_numpy(r.get("model/0.weight").copy())
        assert torch.equal(got, ref["model"]["0.weight"])
        # rows 1-2, columns 3-7: two runs of each column chunk, each pair fetched as one range
        before = r.bytes_read
        region = r.read_region("cols", (1, 3), (2, 5))
        assert torch.equal(torch.from_numpy(region), cols_whole()[1:3, 3:8])
        # chunk 0: elements 8-9 and 13-14 (bytes 32-60), chunk 1: 5-7 and 10-12 (bytes 20-52)
        assert r.bytes_read - before == 28 + 32
        rows = r.manifest["tensors"]
    result = weightvault.verify(url, storage_options=opts)
    assert result.failures == []
    assert result.checked == sum(len(row.get("chunks", [row])) for row in rows.values()) == 30


def test_verify_names_a_corrupt_chunk(bucket, on_two) -> None:
    url = f"{bucket['url']}/runs/corrupt"
    src = on_two["prefix"]
    for name in keys(bucket, src):
        bucket["client"].copy_object(
            Bucket=bucket["name"], Key=f"runs/corrupt/{name}",
            CopySource={"Bucket": bucket["name"], "Key": src + name},
        )  # fmt: skip
    shard = "runs/corrupt/rank-00001-of-00002-00001-of-00001.safetensors"
    data = bytearray(bucket["client"].get_object(Bucket=bucket["name"], Key=shard)["Body"].read())
    data[-1] ^= 0xFF  # the last byte of rank 1's last record
    bucket["client"].put_object(Bucket=bucket["name"], Key=shard, Body=bytes(data))
    with pytest.raises(ChecksumMismatchError, match=r"cols: chunk at \[0, 5\] checksum"):
        weightvault.verify(url, storage_options=bucket["opts"])


def test_cli_ls_and_verify_on_the_url(bucket, on_two) -> None:
    endpoint = bucket["opts"]["endpoint_url"]
    env = {**os.environ, **bucket["env"]}

    def cli(*args: str) -> str:
        proc = subprocess.run(
            [sys.executable, "-m", "weightvault", "--storage-option", f"endpoint_url={endpoint}",
             *args],
            capture_output=True, text=True, check=False, env=env,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    assert "model/0.weight" in cli("ls", on_two["url"])
    out = cli("verify", on_two["url"])
    assert "fail" not in out.lower() or "0 fail" in out.lower()


def test_resume_at_one_rank_continues_bit_identical(bucket, on_two) -> None:
    run_ranks("resume", 1, on_two["root"], on_two["url"], bucket["env"], "1")
    resumed = torch.load(on_two["root"] / "resumed-1.pt", weights_only=True)
    assert_same(resumed, reference(STEPS + 1))


def test_resume_at_four_ranks_reads_only_its_overlaps(bucket, on_two) -> None:
    """2 -> 4 ranks (uneven, one rank holding no rows of the last layer): the state is the saved
    one bit for bit, and each rank fetched exactly its local shards' tensor bytes; what else it
    fetched is the manifest, the marker and the shard headers."""
    root = on_two["root"]
    run_ranks("resume", 4, root, on_two["url"], bucket["env"], "0")
    saved = torch.load(root / "saved.pt", weights_only=True)
    assert_same(torch.load(root / "resumed-4.pt", weights_only=True), saved)
    found = keys(bucket, on_two["prefix"])
    overhead = found["manifest.json"] + found["COMMITTED"] + sum(
        min(size, 64 << 10) for name, size in found.items() if name.startswith("rank-")
    )
    total = sum(size for name, size in found.items() if name.startswith("rank-"))
    reads = [json.loads((root / f"read-4-{r}.json").read_text()) for r in range(4)]
    for r in reads:
        assert r["step"] == STEPS
        assert r["bytes_read"] == r["local"] < total
        assert r["fetched"] <= r["local"] + overhead + COLS[0] * COLS[1] * 4  # + cols, read whole
    assert reads[3]["bytes_read"] < reads[0]["bytes_read"]


def test_rank_killed_mid_upload_commits_nothing(bucket, tmp_path: Path) -> None:
    """Rank 1 SIGKILLed while its shard's multipart upload is in flight: rank 0 gets a clear error
    within the timeout, step 2 has no COMMITTED, step 1 loads and verifies; the next writer of the
    run aborts the dead rank's upload and removes the uncommitted prefix."""
    url = f"{bucket['url']}/killed"
    opts = bucket["opts"]
    run_ranks("kill", 2, tmp_path, url, bucket["env"], "8", expect_fail=(1,))
    report = json.loads((tmp_path / "kill-0.json").read_text())
    assert report["error"] is not None and report["error"].startswith("CheckpointSaveError")
    assert "not committed" in report["error"]
    assert report["seconds"] < 8 + 10
    assert "step-00000002/COMMITTED" not in keys(bucket, "killed/")
    with CheckpointManager(url, read_only=True, storage_options=opts) as mgr:
        assert mgr.steps() == [1]
        state = mgr.load(1, framework="torch", verify=True)
    assert state["step"] == 1  # the 12 MiB "big" came back in ranged 5 MiB parts, in order:
    big = torch.randn(3 << 20, generator=torch.Generator().manual_seed(1))
    assert torch.equal(state["big"], big)
    uploads = bucket["client"].list_multipart_uploads(Bucket=bucket["name"], Prefix="killed/")
    assert [u["Key"] for u in uploads.get("Uploads", [])] == [
        "killed/step-00000002/rank-00001-of-00002-00001-of-00001.safetensors"
    ]
    time.sleep(1.1)  # S3 times have 1 s resolution: the leftovers must be provably older
    with CheckpointManager(url, max_to_keep=5, storage_options=opts) as again:
        assert any("rank-00001" in c for c in again.cleaned_up)
        assert again.steps() == [1]
    uploads = bucket["client"].list_multipart_uploads(Bucket=bucket["name"], Prefix="killed/")
    assert not uploads.get("Uploads")
    assert not [k for k in keys(bucket, "killed/") if k.startswith("step-00000002")]


def test_rank_whose_upload_fails_reports_it_and_nothing_stays(bucket, tmp_path: Path) -> None:
    """Rank 1's upload is refused: its multipart upload is aborted, its error reaches rank 0, both
    raise, and rank 0 removes what it had uploaded: the prefix is empty, no upload pending."""
    run_ranks("fail", 2, tmp_path, f"{bucket['url']}/failed", bucket["env"])
    errors = [json.loads((tmp_path / f"fail-{r}.json").read_text())["error"] for r in (0, 1)]
    assert errors[0].startswith("CheckpointSaveError") and "rank 1 failed" in errors[0]
    assert "No space left" in errors[0] and "not committed" in errors[0]
    assert errors[1] is not None and "No space left" in errors[1]
    assert keys(bucket, "failed/") == {}
    uploads = bucket["client"].list_multipart_uploads(Bucket=bucket["name"], Prefix="failed/")
    assert not uploads.get("Uploads")


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_manager_on_every_rank_retention_once(bucket, tmp_path: Path, mode: str) -> None:
    """CheckpointManager(url) on both ranks, 3 steps, max_to_keep=2: rank 0 holds the lease and
    commits; step 1 is deleted once, after step 3 committed; the lease is released."""
    url = f"{bucket['url']}/run-{mode}"
    run_ranks("manager", 2, tmp_path, url, bucket["env"], mode)
    assert json.loads((tmp_path / "manager.json").read_text())["steps"] == [2, 3]
    found = keys(bucket, f"run-{mode}/")
    assert not [k for k in found if k.startswith("step-00000001")]
    assert not [k for k in found if "writer" in k]  # the lease, released at close
    for step in (2, 3):
        assert f"step-{step:08d}/COMMITTED" in found and f"step-{step:08d}/checkpoint.json" in found
        assert f"step-{step:08d}/rank-00001-of-00002-00001-of-00001.safetensors" in found
    with CheckpointManager(url, read_only=True, storage_options=bucket["opts"]) as mgr:
        assert mgr.steps() == [2, 3]
        state = mgr.load("latest", framework="torch", verify=True)
    assert_same(state["model"], reference(3)["model"])
    record = get_json(bucket, f"run-{mode}/step-00000003/checkpoint.json")
    assert record["mode"] == mode and record["step"] == 3
