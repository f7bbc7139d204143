"""Incremental checkpoints (CheckpointManager(incremental=True)) with real torch training.

Every step must be a complete, standalone checkpoint: it loads and verifies on its own after
every other step is deleted, stock safetensors reads each of its shards, and unchanged shards are
hard links to the earlier step's files instead of new bytes.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

import weightvault  # noqa: E402
from weightvault.checkpoint import CheckpointManager  # noqa: E402
from weightvault.errors import ChecksumMismatchError  # noqa: E402

nn = torch.nn


def _manifest(step_dir: Path) -> dict[str, Any]:
    return json.loads((step_dir / "manifest.json").read_text())


def _record(step_dir: Path) -> dict[str, Any]:
    return json.loads((step_dir / "checkpoint.json").read_text())


def _shards(step_dir: Path) -> list[Path]:
    return sorted(step_dir.glob("*.safetensors"))


def _inodes(step_dir: Path) -> dict[int, str]:
    return {p.stat().st_ino: p.name for p in _shards(step_dir)}


def _copy_state(state: Any) -> Any:
    """A deep copy of a (model, optimizer) state for comparing with what a step loads later."""
    if isinstance(state, torch.Tensor):
        return state.detach().clone()
    if isinstance(state, dict):
        return {k: _copy_state(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_copy_state(v) for v in state)
    return state


def _assert_same(saved: Any, loaded: Any, where: str = "") -> None:
    if isinstance(saved, torch.Tensor):
        assert isinstance(loaded, torch.Tensor), where
        assert saved.dtype == loaded.dtype and saved.shape == loaded.shape, where
        assert torch.equal(saved, loaded), where
    elif isinstance(saved, dict):
        assert set(saved) == set(loaded), where
        for k in saved:
            _assert_same(saved[k], loaded[k], f"{where}/{k}")
    elif isinstance(saved, (list, tuple)):
        assert len(saved) == len(loaded), where
        for i, (a, b) in enumerate(zip(saved, loaded, strict=True)):
            _assert_same(a, b, f"{where}/{i}")
    else:
        assert saved == loaded, where


def _check_standalone(run: Path, saved: dict[int, Any], tmp: Path) -> None:
    """Each step, moved out alone and every other step deleted, loads and verifies exactly."""
    for step, state in saved.items():
        alone = tmp / f"alone-{step}"
        shutil.copytree(run / f"step-{step:08d}", alone / "ckpt")  # cp: links become copies
        weightvault.verify(alone / "ckpt")
        _assert_same(state, weightvault.load(alone / "ckpt", framework="torch"), f"step {step}")
        for shard in _shards(alone / "ckpt"):  # the stock reader reads every shard on its own
            safetensors_torch.load_file(shard)
    # and in place, with all other steps gone: deleting a step only drops link counts
    for step, state in saved.items():
        keep = run / f"step-{step:08d}"
        solo = tmp / f"solo-{step}"
        shutil.copytree(run, solo, copy_function=os.link)  # the run as it is, links included
        for other in solo.glob("step-*"):
            if other.name != keep.name:
                shutil.rmtree(other)
        weightvault.verify(solo / keep.name)
        _assert_same(state, weightvault.load(solo / keep.name, framework="torch"), f"step {step}")
        shutil.rmtree(solo)


# -- a frozen backbone (~90% of the parameters) and a trained head ---------------------------------


class Backboned(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Linear(96, 96), nn.ReLU(), nn.Linear(96, 96), nn.ReLU(), nn.Linear(96, 96), nn.ReLU()
        )
        self.head = nn.Linear(96, 32)

    def forward(self, x: Any) -> Any:
        return self.head(self.backbone(x))


@pytest.mark.parametrize("shard_size", [None, 20_000], ids=["default-shards", "small-shards"])
def test_frozen_backbone_ten_checkpoints(tmp_path: Path, shard_size: int | None) -> None:
    torch.manual_seed(0)
    model = Backboned()
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    frozen = sum(p.numel() for p in model.backbone.parameters())
    total = sum(p.numel() for p in model.parameters())
    assert 0.85 < frozen / total < 0.95
    opt = torch.optim.Adam(model.head.parameters(), lr=1e-2)
    x, y = torch.randn(64, 96), torch.randint(0, 32, (64,))
    run = tmp_path / "run"
    saved: dict[int, Any] = {}
    with CheckpointManager(run, max_to_keep=None, incremental=True, shard_size=shard_size, fsync=False) as mgr:
        for step in range(10):
            for _ in range(3):
                opt.zero_grad()
                nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
            state = {"model": model.state_dict(), "optimizer": opt.state_dict()}
            saved[step] = _copy_state(state)
            mgr.save(step, state, metrics={"step": step})
        infos = {c.step: c for c in mgr.checkpoints()}
    # The first step writes everything; the second regroups (default shards: the one shard held
    # backbone and head together); from then on only the head and Adam's moments are written.
    assert infos[0].written_bytes >= infos[0].size_bytes
    steady = range(1 if shard_size else 2, 10)
    head_bytes = sum(p.numel() * 4 for p in model.head.parameters())
    for step in steady:
        c = infos[step]
        # what must be written: the head, Adam's two moments of it, its step counters, the
        # small JSON files; a safetensors header per written shard
        small = sum((c.path / f).stat().st_size for f in ("manifest.json", "model.safetensors.index.json", "COMMITTED"))
        written_shards = [i for i in _manifest(c.path)["incremental"]["shards"].values() if i["how"] == "write"]
        floor = 3 * head_bytes + 2 * 4 + small
        assert floor <= c.written_bytes <= floor + 1024 * len(written_shards), (step, c.written_bytes, floor)
        # the frozen 90% of the weights cost nothing: the written share is the trained share
        # (the head is 10% of the weights, but with Adam's moments 27% of this state)
        inc = _manifest(c.path)["incremental"]
        assert inc["written_bytes"] <= 0.3 * inc["nbytes"], (step, inc)
        incremental = _manifest(c.path)["incremental"]
        assert incremental["base"] == f"step-{step - 1:08d}"
        linked = [f for f, i in incremental["shards"].items() if i["how"] == "link"]
        assert linked and all(incremental["shards"][f]["written_bytes"] == 0 for f in linked)
        # the linked files are the earlier step's inodes
        before = _inodes(infos[step - 1].path)
        for f in linked:
            assert (c.path / f).stat().st_ino in before
        # what the manifest says came from where is true: reused_from names a step that wrote it
        for f in linked:
            origin = incremental["shards"][f]["reused_from"]
            origin_manifest = _manifest(run / origin)["incremental"]["shards"]
            assert any(
                i["how"] == "write" and (run / origin / g).stat().st_ino == (c.path / f).stat().st_ino
                for g, i in origin_manifest.items()
            )
    # the backbone's bytes exist once on disk, not ten times
    with_links = sum(p.stat().st_size for p in run.rglob("*.safetensors"))
    unique = {p.stat().st_ino: p.stat().st_size for p in run.rglob("*.safetensors")}
    written = sum(_manifest(c.path)["incremental"]["written_bytes"] for c in infos.values())
    assert sum(unique.values()) == written  # the disk holds what was written, nothing twice
    assert written < 0.45 * with_links
    _check_standalone(run, saved, tmp_path)


# -- LoRA-style adapters on a frozen base --------------------------------------------------------


class LoRALinear(nn.Module):
    def __init__(self, dim: int, rank: int) -> None:
        super().__init__()
        self.base = nn.Linear(dim, dim)
        self.base.requires_grad_(False)
        self.lora_A = nn.Parameter(torch.randn(rank, dim) * 0.01)
        self.lora_B = nn.Parameter(torch.zeros(dim, rank))

    def forward(self, x: Any) -> Any:
        return self.base(x) + x @ self.lora_A.T @ self.lora_B.T


def test_lora_adapters_on_a_frozen_base(tmp_path: Path) -> None:
    torch.manual_seed(1)
    dim, rank = 256, 4
    model = nn.Sequential(*[LoRALinear(dim, rank) for _ in range(4)])
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(trainable, lr=0.1, momentum=0.9)
    x = torch.randn(32, dim)
    saved: dict[int, Any] = {}
    run = tmp_path / "run"
    # The adapters sit between the base weights in the state dict, so a plan by order and size
    # alone puts them in shards with base tensors; after one step the plan has moved them
    # (and their momentum) into shards of their own.
    with CheckpointManager(run, max_to_keep=None, incremental=True, fsync=False) as mgr:
        for step in range(6):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
            state = {"model": model.state_dict(), "optimizer": opt.state_dict()}
            saved[step] = _copy_state(state)
            mgr.save(step, state)
        infos = {c.step: c for c in mgr.checkpoints()}
    adapter_bytes = sum(p.numel() * 4 for p in trainable) * 2  # the adapters and their momentum
    base_bytes = sum(p.numel() * 4 for p in model.parameters() if not p.requires_grad)
    assert base_bytes > 10 * adapter_bytes
    for step in range(2, 6):
        c = infos[step]
        shards = _manifest(c.path)["incremental"]["shards"]
        written = sum(i["written_bytes"] for i in shards.values())
        assert written <= adapter_bytes + 8192, (step, written, adapter_bytes)  # + headers
        assert c.written_bytes < 0.2 * c.size_bytes
        # every base tensor sits in a linked shard, every adapter in a written one
        index = json.loads((c.path / "model.safetensors.index.json").read_text())["weight_map"]
        for name, file in index.items():
            if ".base." in name:
                assert shards[file]["how"] == "link", name
            if "lora_" in name:
                assert shards[file]["how"] == "write" and shards[file]["volatile"], name
    _check_standalone(run, saved, tmp_path)


# -- an embedding table with sparse row updates --------------------------------------------------


def test_embedding_with_sparse_row_updates(tmp_path: Path) -> None:
    """A few rows of the table change per step: the table is one tensor, so it is written whole
    every step (shard granularity; docs/incremental.md measures what row chunks would save),
    while a frozen tensor beside it is linked."""
    torch.manual_seed(2)
    emb = nn.Embedding(4096, 32, sparse=True)
    tower = nn.Linear(32, 32)
    tower.requires_grad_(False)
    opt = torch.optim.SparseAdam(list(emb.parameters()), lr=0.05)
    run = tmp_path / "run"
    saved: dict[int, Any] = {}
    with CheckpointManager(run, max_to_keep=3, incremental=True, shard_size=64 << 10, fsync=False) as mgr:
        for step in range(5):
            before = emb.weight.detach().clone()
            ids = torch.randint(0, 4096, (16,))
            opt.zero_grad()
            tower(emb(ids)).sum().backward()
            opt.step()
            changed_rows = (emb.weight.detach() != before).any(dim=1).sum().item()
            assert 0 < changed_rows <= 16  # a sparse update: a handful of rows
            state = {"emb": emb.state_dict(), "tower": tower.state_dict()}
            saved[step] = _copy_state(state)
            mgr.save(step, state)
        infos = {c.step: c for c in mgr.checkpoints()}
        assert sorted(infos) == [2, 3, 4]
    for step in (3, 4):
        manifest = _manifest(infos[step].path)
        shards = manifest["incremental"]["shards"]
        emb_file = manifest["tensors"]["emb/weight"]["file"]
        tower_file = manifest["tensors"]["tower/weight"]["file"]
        assert shards[emb_file]["how"] == "write"
        assert shards[emb_file]["written_bytes"] >= 4096 * 32 * 4
        assert shards[tower_file]["how"] == "link"
    _check_standalone(run, {s: saved[s] for s in (2, 3, 4)}, tmp_path)


# -- damage to a shared file ---------------------------------------------------------------------


def _frozen_run(run: Path, steps: int, **kwargs: Any) -> dict[int, dict[str, np.ndarray]]:
    rng = np.random.default_rng(3)
    frozen = {f"frozen{i}": rng.standard_normal(4096, dtype=np.float32) for i in range(4)}
    saved = {}
    with CheckpointManager(run, max_to_keep=None, incremental=True, shard_size=16 << 10, fsync=False, **kwargs) as mgr:
        for step in range(steps):
            state = {**frozen, "head": np.full(256, step, np.float32)}
            saved[step] = {k: v.copy() for k, v in state.items()}
            mgr.save(step, state)
    return saved


def test_a_bit_flip_in_a_shared_file_fails_every_step_that_uses_it(tmp_path: Path, cli_run: Any) -> None:
    run = tmp_path / "run"
    _frozen_run(run, 4)
    steps = sorted(run.glob("step-*"))
    victim = steps[1] / _manifest(steps[1])["tensors"]["frozen2"]["file"]
    users = [s for s in steps if victim.stat().st_ino in _inodes(s)]
    assert len(users) == 4  # written at step 0, linked by steps 1-3
    with open(victim, "r+b") as f:  # one bit, in the tensor data (the end of the file)
        f.seek(-3, os.SEEK_END)
        byte = f.read(1)
        f.seek(-3, os.SEEK_END)
        f.write(bytes([byte[0] ^ 0x10]))
    for step_dir in steps:
        with pytest.raises(ChecksumMismatchError, match="frozen2") as err:
            weightvault.verify(step_dir)
        assert step_dir.name in str(err.value)
    # the `weightvault verify` command says the same for each step
    for step_dir in steps:
        code, out, err = cli_run("verify", step_dir)
        assert code != 0 and "frozen2" in out + err


def test_a_shard_damaged_in_the_base_is_not_linked_into_a_new_step(tmp_path: Path) -> None:
    """The new step's files are checked against their planned header before being linked; a base
    file whose header no longer matches its manifest is not trusted and the shard is written."""
    run = tmp_path / "run"
    _frozen_run(run, 2)
    last = run / "step-00000001"
    victim = last / _manifest(last)["tensors"]["frozen1"]["file"]
    victim.unlink()  # replaced by hand: same name, another tensor inside
    import safetensors.numpy

    safetensors.numpy.save_file({"other": np.zeros(4096, np.float32)}, victim)
    with CheckpointManager(run, max_to_keep=None, incremental=True, shard_size=16 << 10, fsync=False) as mgr:
        rng = np.random.default_rng(3)
        state = {f"frozen{i}": rng.standard_normal(4096, dtype=np.float32) for i in range(4)}
        mgr.save(2, {**state, "head": np.full(256, 2, np.float32)})
        new = mgr.path(2)
    shards = _manifest(new)["incremental"]["shards"]
    assert shards[_manifest(new)["tensors"]["frozen1"]["file"]]["how"] == "write"
    assert shards[_manifest(new)["tensors"]["frozen0"]["file"]]["how"] == "link"
    weightvault.verify(new)
    np.testing.assert_array_equal(weightvault.load(new)["frozen1"], state["frozen1"])


def test_links_refused_fall_back_to_a_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    def no_links(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_links)
    run = tmp_path / "run"
    saved = _frozen_run(run, 3)
    last = run / "step-00000002"
    shards = _manifest(last)["incremental"]["shards"]
    reused = [i for i in shards.values() if i["reused_from"] is not None]
    assert reused and all(i["how"] in ("reflink", "copy") for i in reused)
    for i in reused:  # a copy writes its bytes and says so; a reflink shares blocks
        assert i["written_bytes"] == (i["nbytes"] if i["how"] == "copy" else 0)
    assert _record(last)["written_bytes"] >= _manifest(last)["incremental"]["written_bytes"]
    assert not set(_inodes(last)) & set(_inodes(run / "step-00000001"))
    weightvault.verify(last)
    for k, v in saved[2].items():
        np.testing.assert_array_equal(weightvault.load(last)[k], v)


def test_an_unusable_base_means_a_full_write(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _frozen_run(run, 1)
    (run / "step-00000000" / "manifest.json").write_text("{not json")
    with CheckpointManager(run, max_to_keep=None, incremental=True, shard_size=16 << 10, fsync=False) as mgr:
        mgr.save(1, {"frozen0": np.zeros(4096, np.float32)})
        c = mgr.info(1)
    assert c.written_bytes >= c.size_bytes
    assert _manifest(c.path)["incremental"]["base"] is None


def test_retention_and_the_runs_listing(tmp_path: Path, cli_run: Any) -> None:
    run = tmp_path / "run"
    rng = np.random.default_rng(4)
    frozen = {f"frozen{i}": rng.standard_normal(8192, dtype=np.float32) for i in range(8)}
    with CheckpointManager(run, max_to_keep=3, incremental=True, shard_size=32 << 10, fsync=False) as mgr:
        for step in range(6):
            mgr.save(step, {**frozen, "head": np.full(512, step, np.float32)})
        assert mgr.steps() == [3, 4, 5]  # the step that wrote the frozen files (0) is gone
        for step in mgr.steps():
            weightvault.verify(mgr.path(step))
            np.testing.assert_array_equal(mgr.load(step)["frozen7"], frozen["frozen7"])
    code, out, _ = cli_run("runs", run, "--json")
    assert code == 0
    report = json.loads(out)
    sizes = [c["size_bytes"] for c in report["checkpoints"]]
    written = [c["written_bytes"] for c in report["checkpoints"]]
    assert all(w < 0.1 * s for w, s in zip(written, sizes, strict=True))
    disk = report["disk"]
    shard_bytes = sum(v.nbytes for v in frozen.values())
    assert disk["sum_of_steps_bytes"] > 3 * shard_bytes
    assert shard_bytes < disk["on_disk_bytes"] < 1.3 * shard_bytes
    code, table, _ = cli_run("runs", run)
    assert code == 0
    assert "written" in table and "sum of the steps" in table


def test_incremental_is_off_by_default(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with CheckpointManager(run, fsync=False) as mgr:
        for step in range(2):
            mgr.save(step, {"w": np.ones(1000, np.float32)})
        assert not set(_inodes(mgr.path(0))) & set(_inodes(mgr.path(1)))
        assert "incremental" not in _manifest(mgr.path(1))
        c = mgr.info(1)
        assert c.written_bytes == c.size_bytes


# -- the plan on its own -------------------------------------------------------------------------


def test_plan_keeps_unchanged_shards_and_separates_what_moves() -> None:
    from weightvault.core.safetensors_io import TensorSource
    from weightvault.core.shards import BaseShard, plan_incremental

    def src(name: str, n: int) -> TensorSource:
        return TensorSource(name, "uint8", (n,), lambda: np.zeros(n, np.uint8))

    sources = [src("a", 40), src("x", 10), src("b", 40), src("c", 40), src("y", 10)]
    first = plan_incremental(sources, 100, base=None, unchanged=lambda n: False)
    assert [list(t) for _, t in first.plan.shards] == [["a", "x", "b"], ["c", "y"]]
    base = [BaseShard(f, t) for f, t in first.plan.shards]
    # x changed: its shard breaks up; a and b are packed again apart from x, c+y stays as it was
    second = plan_incremental(sources, 100, base=base, unchanged=lambda n: n != "x")
    assert [list(t) for _, t in second.plan.shards] == [["a", "b"], ["x"], ["c", "y"]]
    assert second.reused == {second.plan.files[2]: first.plan.files[1]}
    assert second.volatile == {second.plan.files[1]}
    # next step x is unchanged: everything is reused, and x stays volatile (once moved, always)
    base2 = [BaseShard(f, t, f in second.volatile) for f, t in second.plan.shards]
    third = plan_incremental(sources, 100, base=base2, unchanged=lambda n: True)
    assert third.plan == second.plan and set(third.reused) == set(third.plan.files)
    assert third.volatile == second.volatile
    # y changes now: it leaves c's shard, c is repacked alone; a volatile shard whose tensor
    # changes is written again but a volatile tensor never joins the stable ones
    fourth = plan_incremental(sources, 100, base=base2, unchanged=lambda n: n != "y")
    assert [list(t) for _, t in fourth.plan.shards] == [["a", "b"], ["x"], ["c"], ["y"]]
    assert fourth.volatile == {fourth.plan.files[1], fourth.plan.files[3]}
    # x and w move together; later only w does: x stays with it (once moved, always volatile),
    # it does not rejoin the frozen tensors (whose shard it would break again next time)
    sources6 = [src("a", 40), src("x", 10), src("w", 10), src("b", 40)]
    sixth = plan_incremental(sources6, 100, base=base, unchanged=lambda n: n not in "xw")
    assert [list(t) for _, t in sixth.plan.shards] == [["a", "b"], ["x", "w"]]
    base6 = [BaseShard(f, t, f in sixth.volatile) for f, t in sixth.plan.shards]
    seventh = plan_incremental(sources6, 100, base=base6, unchanged=lambda n: n != "w")
    assert [list(t) for _, t in seventh.plan.shards] == [["a", "b"], ["x", "w"]]
    assert seventh.volatile == {seventh.plan.files[1]} and len(seventh.reused) == 1
    # a tensor no longer saved breaks its shard: the rest of it is packed again
    fifth = plan_incremental(sources[:4], 100, base=base2, unchanged=lambda n: True)
    assert [list(t) for _, t in fifth.plan.shards] == [["a", "b"], ["x"], ["c"]]
    assert fifth.plan.files[2] not in fifth.reused


def test_async_incremental_saves_and_restore_into_a_model(tmp_path: Path) -> None:
    """Async saves link the same way (the snapshot is compared, not the live tensors), and
    weightvault.restore puts a linked step into a fresh model after the other steps are gone."""
    torch.manual_seed(5)
    model = Backboned()
    model.backbone.requires_grad_(False)
    opt = torch.optim.SGD(model.head.parameters(), lr=0.1)
    x = torch.randn(16, 96)
    run = tmp_path / "run"
    with CheckpointManager(run, max_to_keep=2, incremental=True, async_save=True, shard_size=20_000, fsync=False) as mgr:
        for step in range(4):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
            mgr.save(step, model.state_dict())
        mgr.wait_until_finished()
        last = mgr.path(3)
        shards = _manifest(last)["incremental"]["shards"]
        assert sum(i["how"] == "link" for i in shards.values()) >= 3
        assert any(i["reused_from"] == "step-00000000" for i in shards.values())  # deleted since
        assert mgr.steps() == [2, 3]
    shutil.rmtree(run / "step-00000002")
    fresh = Backboned()
    weightvault.restore(fresh, last)
    for name, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], value), name


def test_turning_incremental_on_in_an_existing_run(tmp_path: Path) -> None:
    """A run saved in full can go incremental: the first incremental save compares with the
    full step's manifest (its shards mix frozen and trained tensors: all written, regrouped),
    the next links."""
    run = tmp_path / "run"
    rng = np.random.default_rng(6)
    frozen = {f"frozen{i}": rng.standard_normal(4096, dtype=np.float32) for i in range(4)}
    with CheckpointManager(run, max_to_keep=None, fsync=False) as mgr:
        mgr.save(0, {**frozen, "head": np.zeros(64, np.float32)})
    with CheckpointManager(run, max_to_keep=None, incremental=True, shard_size=16 << 10, fsync=False) as mgr:
        for step in (1, 2):
            mgr.save(step, {**frozen, "head": np.full(64, step, np.float32)})
        first, second = (_manifest(mgr.path(s))["incremental"] for s in (1, 2))
    assert first["base"] == "step-00000000" and first["written_bytes"] == first["nbytes"]
    assert second["written_bytes"] < 0.1 * second["nbytes"]
    for step in (0, 1, 2):
        weightvault.verify(run / f"step-{step:08d}")
