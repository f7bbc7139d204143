"""Incremental distributed saves to object storage, with real torch.distributed (gloo, 2 ranks on
CPU, ``_dist_incr_s3_worker.py``) against a real S3 API server (the moto server of
``tests/storage/conftest.py``).

An FSDP2 model with a frozen backbone (~92% of its parameters) and a trained head (AdamW) is
saved by ``CheckpointManager("s3://...", incremental=True, process_group=WORLD)`` on both ranks
after each of 4 steps. The ranks talk to the server through a counting proxy
(``tests/storage/faultproxy.py``, no faults): from the third step on each rank uploads only the
file of its trained chunks, and the store copies the file of its frozen chunks from the previous
step (CopyObject); no byte of it goes over the wire. Every step loads in one process
bit-identical to the gathered reference and verifies with every other step deleted; a save at
another world size reuses nothing; a rank SIGKILLed right after its server-side copy commits
nothing and leaves the previous step loadable.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

import _dist_incr_s3_worker as worker
import pytest
import torch
from _dist_helpers import run_ranks
from test_dist_incremental import TRAINED, _nbytes, _records_of, assert_same
from test_dist_object_store import moto_endpoint  # noqa: F401 - the session's moto server

import weightvault
from weightvault.checkpoint import CheckpointManager

from faultproxy import FaultProxy  # noqa: E402, I001 - tests/storage is on sys.path now
from s3support import CREDENTIALS, s3_options  # noqa: E402

STEPS = 4
SCRIPT = worker.__file__
RANK_FILES = ["rank-00000-of-00002", "rank-00001-of-00002"]  # the first 19 characters
REQUEST = re.compile(r"/run/(step-\d{8})/([^?/]+)")


class CountingProxy(FaultProxy):
    """A proxy without faults that keeps every request: (method, step, object, body bytes,
    whether it is a server-side copy)."""

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream)
        self.calls: list[tuple[str, str, str, int, bool]] = []

    def _choose(self, method: str, path: str, nbytes: int = 0, is_copy: bool = False) -> str | None:
        found = REQUEST.search(path)
        if found is not None:
            with self._lock:
                self.calls.append((method, found[1], found[2], nbytes, is_copy))
        return super()._choose(method, path, nbytes, is_copy)


def step_name(step: int) -> str:
    return f"step-{step:08d}"


@pytest.fixture(scope="module")
def run(  # noqa: F811 - the fixture above
    moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """The 4-step run on 2 ranks, saved through the counting proxy."""
    boto3 = pytest.importorskip("boto3")
    name = f"wv-dincr-{uuid.uuid4().hex[:10]}"
    client = boto3.client(
        "s3", endpoint_url=moto_endpoint, region_name="us-east-1",
        aws_access_key_id="testing", aws_secret_access_key="testing",
    )  # fmt: skip
    client.create_bucket(Bucket=name)
    root = tmp_path_factory.mktemp("dist-incr-s3")
    url = f"s3://{name}/run"
    with CountingProxy(moto_endpoint) as proxy:
        env = {**CREDENTIALS, "WEIGHTVAULT_STORAGE_OPTIONS": json.dumps(s3_options(proxy.endpoint))}
        run_ranks("frozen_s3", 2, root, url, str(STEPS), script=SCRIPT, env=env, timeout=240)
        calls = list(proxy.calls)
    opts = s3_options(moto_endpoint)
    direct = {**CREDENTIALS, "WEIGHTVAULT_STORAGE_OPTIONS": json.dumps(opts)}
    yield {
        "root": root, "url": url, "bucket": name, "client": client, "calls": calls,
        "opts": opts, "env": direct,
    }  # fmt: skip
    client.close()


def objects(run: dict[str, Any], prefix: str) -> dict[str, dict[str, Any]]:
    """Key (after ``prefix``) -> the object's listing entry."""
    out = run["client"].list_objects_v2(Bucket=run["bucket"], Prefix=prefix)
    return {o["Key"][len(prefix) :]: o for o in out.get("Contents", [])}


def get_json(run: dict[str, Any], key: str) -> Any:
    return json.loads(run["client"].get_object(Bucket=run["bucket"], Key=key)["Body"].read())


def manifest(run: dict[str, Any], step: int) -> dict[str, Any]:
    return get_json(run, f"run/{step_name(step)}/manifest.json")


def test_unchanged_files_are_copied_server_side_only_trained_chunks_uploaded(run) -> None:
    sections = [manifest(run, s)["incremental"] for s in range(1, STEPS + 1)]
    assert sections[0]["base"] is None and sections[0]["written_bytes"] == sections[0]["nbytes"]
    uploaded = [json.loads((run["root"] / f"uploaded-{r}.json").read_text()) for r in (0, 1)]
    for step in (3, 4):  # after the regrouping second step: the steady state
        here, section = manifest(run, step), sections[step - 1]
        assert section["base"] == step_name(step - 1)
        records = _records_of(here)
        shards = section["shards"]
        written = {f for f, s in shards.items() if s["how"] == "write"}
        copied = {f for f, s in shards.items() if s["how"] == "copy"}
        assert written | copied == set(shards)
        # each rank: one object of frozen chunks, copied; one of trained ones, uploaded
        assert sorted(f[:19] for f in written) == sorted(f[:19] for f in copied) == RANK_FILES
        for file in written:
            assert all(n.startswith(TRAINED) for n in records[file]), records[file]
            assert shards[file]["volatile"] is True
            assert shards[file]["written_bytes"] == shards[file]["nbytes"] > 0
        for file in copied:
            assert not any(n.startswith(TRAINED) for n in records[file]), records[file]
            assert shards[file]["reused_from"] == step_name(2)  # uploaded by step 2
            assert shards[file]["written_bytes"] == 0
        rows = here["tensors"]
        trained = sum(_nbytes(row) for n, row in rows.items() if n.startswith(TRAINED))
        assert 0 < section["written_bytes"] - trained < 2 * 1024  # + the two files' headers
        assert section["written_bytes"] < 0.25 * section["nbytes"]
        # the objects: a copied one is the previous step's, byte for byte (same size and MD5)
        now = objects(run, f"run/{step_name(step)}/")
        before = objects(run, f"run/{step_name(step - 1)}/")
        for file in copied:
            assert now[file]["Size"] == before[file]["Size"] == shards[file]["nbytes"]
            assert now[file]["ETag"] == before[file]["ETag"]
        for file in written:
            assert now[file]["Size"] == shards[file]["nbytes"]
        # the wire: each frozen object was written by one CopyObject and nothing else; the
        # trained ones were uploaded; no other shard byte went up (reads are the next step's
        # header checks and rank 0's size queries)
        calls = [c for c in run["calls"] if c[1] == step_name(step) and c[2].startswith("rank-")]
        for file in copied:
            writes = [(m, n, cp) for m, _, f, n, cp in calls if f == file and m in ("PUT", "POST")]
            assert writes == [("PUT", 0, True)]
        puts = [c for c in calls if c[0] == "PUT" and not c[4]]
        assert {c[2] for c in puts} == written
        assert sum(c[3] for c in puts) == section["written_bytes"]
        assert sum(c[4] for c in calls) == len(copied) == 2
        # each rank: what it uploaded in this save (weightvault.storage.stats, in the rank)
        by_rank = {r: sum(shards[f]["nbytes"] for f in written if f.startswith(RANK_FILES[r]))
                   for r in (0, 1)}  # fmt: skip
        assert uploaded[1][step - 1] == by_rank[1]  # rank 1 uploads its trained chunks only
        # rank 0 also uploads the manifest, index, record and marker, and renews the lease
        json_bytes = sum(
            now[n]["Size"] for n in ("manifest.json", "model.safetensors.index.json", "COMMITTED")
        )
        extra = uploaded[0][step - 1] - by_rank[0] - json_bytes - now["checkpoint.json"]["Size"]
        assert 0 <= extra < 4096, extra
        # the record (and so `weightvault runs`) shows uploaded vs size
        record = get_json(run, f"run/{step_name(step)}/checkpoint.json")
        assert record["written_bytes"] == section["written_bytes"] + json_bytes
        assert record["size_bytes"] > record["written_bytes"]
    for step in (1, 2):  # every shard object of the first two steps went up whole
        full = sum(uploaded[r][step - 1] for r in (0, 1))
        assert full > sections[step - 1]["written_bytes"] > 0.5 * sections[step - 1]["nbytes"]
    with CheckpointManager(run["url"], read_only=True, storage_options=run["opts"]) as mgr:
        listed = {c.step: c for c in mgr.checkpoints()}
    assert listed[1].written_bytes == listed[1].size_bytes
    for step in (3, 4):
        assert listed[step].written_bytes < 0.6 * listed[step].size_bytes  # JSON is most of it


def test_world_size_change_reuses_nothing(run) -> None:
    run_ranks("frozen_s3_world1", 1, run["root"], run["url"], "5", script=SCRIPT, env=run["env"])
    here = manifest(run, 5)
    assert here["world_size"] == 1
    section = here["incremental"]
    assert section["base"] is None  # saved by 2 ranks: not a base for 1
    assert section["written_bytes"] == section["nbytes"] > 0
    assert {s["how"] for s in section["shards"].values()} == {"write"}
    ref = torch.load(run["root"] / "ref-world1.pt", weights_only=True)
    got = weightvault.load(f"{run['url']}/{step_name(5)}", storage_options=run["opts"],
                           framework="torch", verify=True)  # fmt: skip
    assert_same(got["model"], ref["model"], "world 1")


def test_rank_killed_after_a_server_side_copy_commits_nothing(run, tmp_path: Path) -> None:
    """A copy of the 4-step run continues; rank 1 is SIGKILLed right after the store copied its
    frozen object into the new step prefix: rank 0 gets a clear error, the new step has no
    COMMITTED (rank 0 removed its prefix), the previous step loads and verifies; the next writer
    saves the step again, copying."""
    client, bucket = run["client"], run["bucket"]
    for key in objects(run, "run/"):
        if key.startswith(tuple(step_name(s) for s in range(1, STEPS + 1))) or "/" not in key:
            source = {"Bucket": bucket, "Key": "run/" + key}
            client.copy_object(Bucket=bucket, Key="killed/" + key, CopySource=source)
    url = f"s3://{bucket}/killed"
    run_ranks("frozen_s3_kill", 2, tmp_path, url, script=SCRIPT, env=run["env"],
              timeout=120, expect_fail=(1,))  # fmt: skip
    report = json.loads((tmp_path / "kill-0.json").read_text())
    assert report["error"] and report["error"].startswith("CheckpointSaveError"), report
    assert "not committed" in report["error"]
    assert not (tmp_path / "kill-1.json").exists()  # rank 1 died after its copy
    new = step_name(report["step"])
    # rank 0 removed the uncommitted prefix, rank 1's copied object with it (the dead rank
    # adds nothing afterwards)
    assert [k for k in objects(run, "killed/") if k.startswith(new + "/")] == []
    with CheckpointManager(url, read_only=True, storage_options=run["opts"]) as mgr:
        assert mgr.steps() == list(range(1, STEPS + 1))
        got = mgr.load(STEPS, framework="torch", verify=True)
    ref = torch.load(run["root"] / f"ref-{STEPS}.pt", weights_only=True)
    assert_same(got["model"], ref["model"], "after the kill")
    run_ranks("frozen_s3_next", 2, tmp_path, url, script=SCRIPT, env=run["env"], timeout=120)
    section = get_json(run, f"killed/{new}/manifest.json")["incremental"]
    assert section["base"] == step_name(STEPS)
    assert {s["how"] for s in section["shards"].values()} == {"copy", "write"}
    assert weightvault.verify(f"{url}/{new}", storage_options=run["opts"]).failures == []


def test_every_step_loads_bit_identical_and_verifies_alone(run) -> None:
    """For each step: the run copied to another prefix with every other step deleted; the step
    loads in one process bit-identical to the gathered reference and verifies."""
    client, bucket = run["client"], run["bucket"]
    everything = objects(run, "run/")
    for i in range(1, STEPS + 1):
        alone = f"alone-{i}/"
        for key in everything:
            client.copy_object(
                Bucket=bucket, Key=alone + key, CopySource={"Bucket": bucket, "Key": "run/" + key}
            )
        doomed = [k for k in objects(run, alone) if k.startswith("step-") and
                  not k.startswith(step_name(i) + "/")]  # fmt: skip
        for key in doomed:
            client.delete_object(Bucket=bucket, Key=alone + key)
        left = {k.split("/")[0] for k in objects(run, alone) if k.startswith("step-")}
        assert left == {step_name(i)}
        url = f"s3://{bucket}/{alone}{step_name(i)}"
        ref = torch.load(run["root"] / f"ref-{i}.pt", weights_only=True)
        got = weightvault.load(url, storage_options=run["opts"], framework="torch", verify=True)
        assert got["step"] == i
        want = {k: ref[k] for k in ("model", "optim")}
        assert_same({"model": got["model"], "optim": got["optim"]}, want, url)
        assert got["optim"]["param_groups"] == ref["optim"]["param_groups"]
        assert weightvault.verify(url, storage_options=run["opts"]).failures == []
