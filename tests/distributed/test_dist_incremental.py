"""Incremental distributed saves with real torch.distributed (gloo, 2 ranks on CPU).

An FSDP2 model with a frozen backbone (~92% of its parameters) and a trained head (AdamW) is
saved by ``CheckpointManager(incremental=True)`` on both ranks after each of 4 steps
(``_dist_incr_worker.py``). After the regrouping second step, each rank writes only the files of
its trained chunks (head and its optimizer state): asserted from the manifests, the records and
the inodes. Every step loads in one process bit-identical to the gathered reference, verifies, and
stays standalone when the others are deleted.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import _dist_incr_worker as worker
import pytest
import torch
from _dist_helpers import run_ranks

import weightvault
from weightvault.checkpoint import CheckpointManager
from weightvault.core.tree import flatten
from weightvault.formats.native import NativeReader

STEPS = 4
SCRIPT = worker.__file__
TRAINED = ("model/4.", "optim/state/4.")  # the head and its optimizer state


def _steps(run: Path) -> list[Path]:
    return sorted(p for p in run.iterdir() if p.name.startswith("step-"))


def _manifest(step: Path) -> dict[str, Any]:
    return json.loads((step / "manifest.json").read_text())


def _files(step: Path) -> dict[str, os.stat_result]:
    return {p.name: p.stat() for p in step.glob("rank-*.safetensors")}


def _records_of(manifest: dict[str, Any]) -> dict[str, list[str]]:
    """file -> tensor names with a record in it."""
    out: dict[str, list[str]] = {}
    for name, row in manifest["tensors"].items():
        for chunk in row.get("chunks", [row]):
            out.setdefault(chunk["file"], []).append(name)
    return out


def assert_same(got: Any, want: Any, where: str = "") -> None:
    _, g = flatten(got)
    _, w = flatten(want)
    assert sorted(g) == sorted(w), where
    for name, value in w.items():
        have = g[name]
        if isinstance(value, torch.Tensor):
            have = torch.as_tensor(have) if not isinstance(have, torch.Tensor) else have
            assert have.dtype == value.dtype and have.shape == value.shape, f"{where} {name}"
            assert torch.equal(have, value), f"{where} {name}"
        else:
            assert have == value, f"{where} {name}"


@pytest.fixture(scope="module")
def frozen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dist-incr")
    run_ranks("frozen_run", 2, root, str(STEPS), script=SCRIPT, timeout=240)
    return root


def test_unchanged_files_are_linked_and_only_trained_chunks_written(frozen: Path) -> None:
    steps = _steps(frozen / "run")
    assert len(steps) == STEPS
    sections = [_manifest(s)["incremental"] for s in steps]
    assert sections[0]["base"] is None and sections[0]["written_bytes"] == sections[0]["nbytes"]
    for i in (2, 3):  # after the regrouping second step: the steady state
        manifest, section = _manifest(steps[i]), sections[i]
        assert section["base"] == steps[i - 1].name
        records = _records_of(manifest)
        written = {f for f, s in section["shards"].items() if s["how"] == "write"}
        linked = {f for f, s in section["shards"].items() if s["how"] == "link"}
        # each rank: one file of frozen chunks, linked; one of trained ones, written
        assert sorted(f[:19] for f in written) == sorted(f[:19] for f in linked) == [
            "rank-00000-of-00002", "rank-00001-of-00002",
        ]  # fmt: skip
        for file in written:
            assert all(n.startswith(TRAINED) for n in records[file]), records[file]
            assert section["shards"][file]["volatile"] is True
        for file in linked:
            assert not any(n.startswith(TRAINED) for n in records[file]), records[file]
            assert section["shards"][file]["reused_from"] == steps[1].name  # written by step 2
        # the bytes really written are the trained chunks (and their file headers)
        rows = manifest["tensors"]
        trained = sum(_nbytes(row) for n, row in rows.items() if n.startswith(TRAINED))
        headers = section["written_bytes"] - trained
        assert 0 < headers < 2 * 1024, (section["written_bytes"], trained)
        assert section["written_bytes"] < 0.25 * section["nbytes"]
        # the inodes agree: written files are new, linked ones are the previous step's
        now, before = _files(steps[i]), _files(steps[i - 1])
        old_inodes = {st.st_ino for st in before.values()}
        new = {f for f, st in now.items() if st.st_ino not in old_inodes}
        assert new == written
        assert sum(now[f].st_size for f in new) == section["written_bytes"]
        for f in linked:
            assert now[f].st_ino == before[f].st_ino and now[f].st_nlink == STEPS - 1
        # the record (and so `weightvault runs`) shows written vs size
        record = json.loads((steps[i] / "checkpoint.json").read_text())
        json_bytes = sum((steps[i] / n).stat().st_size for n in (
            "manifest.json", "model.safetensors.index.json", "COMMITTED",
        ))  # fmt: skip
        assert record["written_bytes"] == section["written_bytes"] + json_bytes
        assert record["size_bytes"] > record["written_bytes"]
    listed = {c.step: c for c in CheckpointManager(frozen / "run", read_only=True).checkpoints()}
    assert listed[1].written_bytes == listed[1].size_bytes
    for step in (3, 4):
        assert listed[step].written_bytes is not None
        assert listed[step].written_bytes < 0.6 * listed[step].size_bytes  # JSON is most of it


def _nbytes(row: dict[str, Any]) -> int:
    """Data bytes of a manifest row (every tensor here is float32)."""
    assert row["dtype"] == "float32"
    boxes = [c["sizes"] for c in row["chunks"]] if "chunks" in row else [row["shape"]]
    return sum(4 * math.prod(sizes) for sizes in boxes)


def test_every_step_loads_in_one_process_bit_identical_and_verifies(frozen: Path) -> None:
    for i, step in enumerate(_steps(frozen / "run"), 1):
        ref = torch.load(frozen / f"ref-{i}.pt", weights_only=True)
        got = weightvault.load(step, framework="torch")
        assert got["step"] == i
        want = {k: ref[k] for k in ("model", "optim")}
        assert_same({"model": got["model"], "optim": got["optim"]}, want, step.name)
        assert got["optim"]["param_groups"] == ref["optim"]["param_groups"]
        with NativeReader(step) as reader:
            assert not reader.verify().failures


def test_each_step_is_standalone(frozen: Path, tmp_path: Path) -> None:
    for i in range(1, STEPS + 1):
        copy = tmp_path / f"only-{i}"
        subprocess.run(["cp", "-a", str(frozen / "run"), str(copy)], check=True)
        for step in _steps(copy):
            if step.name != f"step-{i:08d}":
                shutil.rmtree(step)
        kept = copy / f"step-{i:08d}"
        ref = torch.load(frozen / f"ref-{i}.pt", weights_only=True)
        got = weightvault.load(kept, framework="torch")
        assert_same(got["model"], ref["model"], kept.name)
        with NativeReader(kept) as reader:
            assert not reader.verify().failures


def test_bit_flip_in_a_shared_file_fails_every_step_that_links_it(
    frozen: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "flipped"
    subprocess.run(["cp", "-a", str(frozen / "run"), str(copy)], check=True)
    steps = _steps(copy)
    shared = "rank-00001-of-00002-00001-of-00002.safetensors"  # rank 1's frozen chunks
    target = steps[-1] / shared
    assert target.stat().st_nlink == STEPS - 1  # cp -a kept the links
    data = bytearray(target.read_bytes())
    data[-3] ^= 0x10  # in the data section: the header still parses
    with open(target, "r+b") as f:  # in place: every link sees it
        f.write(data)
    for step in steps:
        with NativeReader(step) as reader:
            failures = reader.verify().failures
        uses = shared in _files(step)
        assert bool(failures) == uses, (step.name, failures)
        if uses:
            assert any("model/2.bias" in f or "model/2.weight" in f for f in failures), failures


def test_sigkill_mid_incremental_save_leaves_the_previous_step(
    frozen: Path, tmp_path: Path
) -> None:
    root = tmp_path / "kill"
    root.mkdir()
    subprocess.run(["cp", "-a", str(frozen / "run"), str(root / "run")], check=True)
    run_ranks("frozen_kill", 2, root, script=SCRIPT, timeout=120, expect_fail=(1,))
    report = json.loads((root / "kill-0.json").read_text())
    assert report["error"] and "CheckpointSaveError" in report["error"], report
    assert not (root / "kill-1.json").exists()  # rank 1 died after linking a file
    assert not (root / "run" / f"step-{report['step']:08d}").exists()
    mgr = CheckpointManager(root / "run", read_only=True)
    assert mgr.latest() == STEPS
    ref = torch.load(frozen / f"ref-{STEPS}.pt", weights_only=True)
    got = mgr.load(STEPS, verify=True)
    assert_same(got["model"], ref["model"])
    for step in _steps(root / "run"):
        with NativeReader(step) as reader:
            assert not reader.verify().failures
    # the next save removes the killed save's leftover (its links only drop link counts) and
    # links from the previous step again
    run_ranks("frozen_next", 2, root, script=SCRIPT, timeout=120)
    assert [p.name for p in (root / "run").iterdir() if "wvtmp" in p.name] == []
    new = root / "run" / f"step-{report['step']:08d}"
    section = _manifest(new)["incremental"]
    assert section["base"] == f"step-{STEPS:08d}"
    assert {s["how"] for s in section["shards"].values()} == {"link", "write"}
    with NativeReader(new) as reader:
        assert not reader.verify().failures


def test_mesh_or_world_size_change_reuses_nothing(tmp_path: Path) -> None:
    run_ranks("mesh_run", 2, tmp_path, script=SCRIPT, timeout=120)
    run_ranks("mesh_world1", 1, tmp_path, script=SCRIPT, timeout=120)
    steps = _steps(tmp_path / "mesh")
    sections = [_manifest(s)["incremental"] for s in steps]
    # step 2: same values, same mesh: every file linked, nothing written
    assert sections[1]["written_bytes"] == 0 and sections[1]["nbytes"] > 0
    assert {s["how"] for s in sections[1]["shards"].values()} == {"link"}
    # step 3: Shard(1) instead of Shard(0); step 4: one rank instead of two
    assert sections[2]["base"] == steps[1].name  # compared with, nothing matched
    assert sections[3]["base"] is None  # saved by another number of ranks: not a base
    for i in (2, 3):
        assert sections[i]["written_bytes"] == sections[i]["nbytes"] > 0
        assert {s["how"] for s in sections[i]["shards"].values()} == {"write"}
    assert _manifest(steps[3])["world_size"] == 1
    for step in steps:
        got = weightvault.load(step, framework="torch")
        for name in worker.MESH_SHAPES:
            assert torch.equal(got["w"][name], worker._values(name)), (step.name, name)
        with NativeReader(step) as reader:
            assert not reader.verify().failures


def test_rank_base_holds_only_this_ranks_records(frozen: Path, tmp_path: Path) -> None:
    from weightvault.formats.distributed_incremental import rank_incremental

    step = _steps(frozen / "run")[-1]
    assert rank_incremental(None, 0, 2).base is None
    assert rank_incremental(tmp_path / "missing", 0, 2).base is None
    assert rank_incremental(step, 0, 4).base is None  # saved by 2 ranks
    for rank in (0, 1):
        base = rank_incremental(step, rank, 2).base
        assert base is not None and base.root == step
        assert {s.file[:19] for s in base.shards} == {f"rank-{rank:05d}-of-00002"}
        plain = {n for n in base.rows if "@" not in n}
        steps = {"optim/state/4.weight/step", "optim/state/4.bias/step"}
        assert plain == (steps if rank == 0 else set())
    uncommitted = tmp_path / "uncommitted"
    subprocess.run(["cp", "-a", str(step), str(uncommitted)], check=True)
    (uncommitted / "COMMITTED").unlink()
    assert rank_incremental(uncommitted, 0, 2).base is None
