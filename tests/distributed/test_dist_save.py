"""Distributed saves with real torch.distributed: every rank writes its own chunks, any world size
loads them (``weightvault.save`` / ``CheckpointManager.save`` on every rank, ``load_distributed``).

One process per rank on CPU with gloo (see ``_dist_helpers.py``). An FSDP2 model with AdamW trains
on the same batch on every rank, so its run is bit-identical to one process training alone: the
single-process reference below is a plain model trained in the test process itself.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from _dist_helpers import build, run_ranks, train
from safetensors.numpy import load_file

import weightvault
from weightvault.checkpoint import CheckpointManager
from weightvault.formats.native import NativeReader

STEPS = 3


def reference(steps: int) -> dict[str, Any]:
    """A plain model trained ``steps`` steps in this process: model and optimizer state."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model, opt = build(1, 0)
    train(model, opt, 0, 0, steps)
    msd, osd = get_state_dict(model, opt)
    return {"model": {k: v.detach().clone() for k, v in msd.items()}, "optim": osd}


def assert_same(got: Any, want: Any, where: str = "") -> None:
    """Equal trees; tensors bit-identical with the same dtype and shape (numpy taken as torch)."""
    if hasattr(got, "__array__") and not isinstance(got, torch.Tensor):
        got = torch.from_numpy(got.copy())
    if isinstance(want, torch.Tensor):
        assert isinstance(got, torch.Tensor), where
        assert got.dtype == want.dtype and got.shape == want.shape, where
        assert torch.equal(got, want), where
    elif isinstance(want, dict):
        assert sorted(map(str, got)) == sorted(map(str, want)), where
        for k in want:
            assert_same(got[k], want[k], f"{where}/{k}")
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_same(g, w, f"{where}/{i}")
    else:
        assert got == want, where


@pytest.fixture(scope="module")
def on_two(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """FSDP2 on 2 ranks, 3 AdamW steps, saved with weightvault.save from both ranks."""
    root = tmp_path_factory.mktemp("dist-two")
    run_ranks("train_save", 2, root, "save", str(STEPS))
    return root


def test_layout_each_rank_its_own_file_manifest_with_chunks(on_two: Path) -> None:
    ckpt = on_two / "ckpt"
    assert sorted(p.name for p in ckpt.iterdir()) == [
        "COMMITTED",
        "manifest.json",
        "model.safetensors.index.json",
        "rank-00000-of-00002-00001-of-00001.safetensors",
        "rank-00001-of-00002-00001-of-00001.safetensors",
    ]
    manifest = json.loads((ckpt / "manifest.json").read_text())
    assert manifest["format_version"] == 2 and manifest["world_size"] == 2
    assert manifest["metadata"] == {"world": 2}
    row = manifest["tensors"]["model/0.weight"]
    assert row["shape"] == [16, 8] and "file" not in row
    assert [(c["offsets"], c["sizes"], c["rank"]) for c in row["chunks"]] == [
        ([0, 0], [8, 8], 0),
        ([8, 0], [8, 8], 1),
    ]
    # the replicated step counters: written once, by rank 0, as whole tensors
    step = manifest["tensors"]["optim/state/0.weight/step"]
    assert step["file"].startswith("rank-00000-") and "chunks" not in step
    # rank 1's file holds only its chunks; every file is plain safetensors
    assert sorted(load_file(ckpt / "rank-00001-of-00002-00001-of-00001.safetensors")) == sorted(
        c["key"] for r in manifest["tensors"].values() for c in r.get("chunks", []) if c["rank"] == 1
    )
    marker = json.loads((ckpt / "COMMITTED").read_text())
    rank_files = [p.name for p in ckpt.iterdir() if p.name.startswith("rank-")]
    assert sorted(marker["files"]) == sorted([*rank_files, "manifest.json"])


def test_two_ranks_train_bit_identical_to_one_process(on_two: Path) -> None:
    saved = torch.load(on_two / "saved.pt", weights_only=True)
    assert_same(saved, reference(STEPS))


def test_single_process_load_gives_whole_tensors(on_two: Path) -> None:
    ref = reference(STEPS)
    loaded = weightvault.load(on_two / "ckpt", framework="torch", verify=True)
    assert loaded["step"] == STEPS
    assert_same(loaded["model"], ref["model"])
    assert_same(loaded["optim"], ref["optim"])
    with weightvault.open(on_two / "ckpt") as r:
        assert r.info("model/2.weight").extra["chunks"] == 2
        assert_same(torch.from_numpy(r.get("model/2.weight").copy()), ref["model"]["2.weight"])
        assert weightvault.verify(on_two / "ckpt").failures == []


def test_resume_at_one_rank_continues_bit_identical(on_two: Path) -> None:
    run_ranks("resume", 1, on_two, str(on_two / "ckpt"), "1")
    resumed = torch.load(on_two / "resumed-1.pt", weights_only=True)
    assert_same(resumed, reference(STEPS + 1))


def test_resume_at_four_ranks_reads_only_its_overlaps(on_two: Path) -> None:
    """2 -> 4 ranks (uneven: 5 rows over 4 ranks, one rank empty): every rank reads exactly the
    bytes of its own local shards, and the restored state is the saved one bit for bit."""
    run_ranks("resume", 4, on_two, str(on_two / "ckpt"), "0")
    saved = torch.load(on_two / "saved.pt", weights_only=True)
    assert_same(torch.load(on_two / "resumed-4.pt", weights_only=True), saved)
    reads = [json.loads((on_two / f"read-4-{r}.json").read_text()) for r in range(4)]
    with NativeReader(on_two / "ckpt") as reader:
        total = sum(reader.checked_info(n).nbytes for n in reader.keys())
    for r in reads:
        assert r["step"] == STEPS
        assert r["bytes_read"] == r["local"] < total
    assert reads[3]["bytes_read"] < reads[0]["bytes_read"]  # the rank with the short shards


def test_cli_works_on_a_sharded_checkpoint(on_two: Path, tmp_path: Path) -> None:
    ckpt = on_two / "ckpt"

    def cli(*args: str) -> str:
        proc = subprocess.run(
            [sys.executable, "-m", "weightvault", *args], capture_output=True, text=True, check=False
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    assert "model/0.weight" in cli("ls", str(ckpt))
    assert "failures" in cli("verify", str(ckpt)) or "OK" in cli("verify", str(ckpt))
    assert "model/2.bias" in cli("stats", str(ckpt))
    assert "[5, 16]" in cli("show", str(ckpt), "model/2.weight")
    cli("convert", str(ckpt), str(tmp_path / "model.safetensors"))
    out = load_file(tmp_path / "model.safetensors")
    ref = reference(STEPS)
    assert torch.equal(torch.from_numpy(out["model/0.weight"]), ref["model"]["0.weight"])
    cli("convert", str(ckpt), str(tmp_path / "hf"), "--to", "safetensors", "-w", "shard_size=1000")
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    assert "equal" in cli("diff", str(ckpt), str(tmp_path / "model.safetensors"))
    from weightvault.viewer.data import ViewerData  # what `weightvault view` serves

    viewer = ViewerData([ckpt])
    try:
        assert viewer.tensor("0", "model/2.weight")["info"]["extra"]["chunks"] == 2
        assert viewer.meta("0")["training"] == {"step": STEPS}
    finally:
        viewer.close()


def test_one_rank_to_two_continues_bit_identical(tmp_path: Path) -> None:
    """1 -> 2: a single-rank job saves through process_group=, two FSDP2 ranks resume."""
    run_ranks("train_save", 1, tmp_path, "save", str(STEPS))
    run_ranks("resume", 2, tmp_path, str(tmp_path / "ckpt"), "1")
    assert_same(torch.load(tmp_path / "resumed-2.pt", weights_only=True), reference(STEPS + 1))


@pytest.mark.parametrize("via", ["manager", "manager_async"])
def test_checkpoint_manager_on_every_rank(tmp_path: Path, via: str) -> None:
    """CheckpointManager.save on both ranks (sync, and async: each rank stages, the commit waits
    for all); rank 0 owns the run: record, run state, retention once after the commit."""
    run_ranks("train_save", 2, tmp_path, via, str(STEPS))
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir() if not p.name.startswith(".")) == [
        "step-00000003",
        "weightvault-run.json",
    ]
    with CheckpointManager(run, read_only=True) as mgr:
        assert mgr.steps() == [STEPS]
        state = mgr.load("latest", framework="torch", verify=True)
    assert_same(state["model"], reference(STEPS)["model"])
    assert json.loads((run / "step-00000003" / "checkpoint.json").read_text())["mode"] == (
        "async" if via == "manager_async" else "sync"
    )


def test_manager_with_plain_state_is_written_by_rank_zero(tmp_path: Path) -> None:
    """DDP: plain tensors are replicas, so a manager on every rank writes rank 0's copy, with no
    collective; the other ranks' saves return without writing (and take no lock)."""
    run_ranks("ddp_manager", 2, tmp_path)
    with CheckpointManager(tmp_path / "ddp", read_only=True) as mgr:
        assert mgr.steps() == [2]
        state = mgr.load("latest")
    assert state["w"].tolist() == [0.0] * 4 and state["step"] == 1
    manifest = json.loads((tmp_path / "ddp" / "step-00000002" / "manifest.json").read_text())
    assert manifest["format_version"] == 1 and "world_size" not in manifest


@pytest.mark.parametrize("mode", ["kill", "hang", "raise"])
def test_rank_lost_mid_save_leaves_previous_checkpoint(tmp_path: Path, mode: str) -> None:
    """Rank 1 SIGKILLed (or hanging) after writing its files: rank 0 gets a clear error (at once
    for a dead peer, after the timeout for a hung one), nothing is committed and the previous
    checkpoint stays loadable and verified."""
    run_ranks("kill_mid_save", 2, tmp_path, mode, "6", expect_fail=(1,))
    report = json.loads((tmp_path / "kill-0.json").read_text())
    assert report["error"].startswith("CheckpointSaveError")
    assert "not committed" in report["error"] and "rank" in report["error"]
    assert report["seconds"] < 6 + 10
    if mode == "raise":  # the failing rank's own error reached rank 0, and rank 1 raised it
        assert "rank 1 failed: OSError" in report["error"] and "No space left" in report["error"]
        own = json.loads((tmp_path / "kill-1.json").read_text())["error"]
        assert own is not None and "No space left" in own
    ckpt = tmp_path / "ckpt"
    assert weightvault.verify(ckpt).failures == []
    assert weightvault.load(ckpt)["step"] == 1  # the first save, whole
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["ckpt"]  # no leftovers


def test_2d_mesh_to_1d_mesh_reads_only_overlaps(tmp_path: Path) -> None:
    """DTensors on a 2x2 mesh (Shard/Shard, Shard/Replicate, Replicate/Shard; uneven) saved from
    4 ranks, restored into Shard(0)/Shard(1) on a 1-D mesh of 4: values exact, each rank reads
    just its local bytes; replicated chunks were written once."""
    run_ranks("dtensor_save", 4, tmp_path)
    manifest = json.loads((tmp_path / "mesh" / "manifest.json").read_text())
    assert len(manifest["tensors"]["a"]["chunks"]) == 4
    assert len(manifest["tensors"]["b"]["chunks"]) == 2  # replicated over tp: written once per dp
    assert len(manifest["tensors"]["c"]["chunks"]) == 2
    assert weightvault.load(tmp_path / "mesh")["lr"] == 0.5
    run_ranks("dtensor_load", 4, tmp_path)
    for r in range(4):
        got = json.loads((tmp_path / f"mesh-read-{r}.json").read_text())
        assert got["bytes_read"] == got["local"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="NCCL needs a CUDA device; none here")
def test_nccl_save_and_resume(tmp_path: Path) -> None:
    """The same save and reshard-load with NCCL (1 rank per GPU: 2 -> 1 with two GPUs, else 1 -> 1
    with FSDP2 on the one GPU); the coordination still runs on a gloo group."""
    world = 2 if torch.cuda.device_count() >= 2 else 1
    run_ranks("train_save", world, tmp_path, "save", str(STEPS), backend="nccl")
    run_ranks("resume", 1, tmp_path, str(tmp_path / "ckpt"), "0", backend="nccl")
    saved = torch.load(tmp_path / "saved.pt", weights_only=True)
    assert_same(torch.load(tmp_path / "resumed-1.pt", weights_only=True), saved)
