"""weightvault as a torch.distributed.checkpoint backend (``weightvault.torch_dcp``).

Real runs, one process per rank on CPU with gloo: an FSDP2 model with AdamW trains a few steps,
``dcp.save`` (or ``dcp.async_save``) writes through :class:`WeightVaultWriter`, and ``dcp.load``
through :class:`WeightVaultReader` at another world size must give back model and optimizer state
bit-identical to the full state the saving run gathered into one process.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp
from _dcp_worker import STEPS, run_ranks
from test_dist_save import assert_same as assert_same_state

import weightvault
from weightvault.torch_dcp import WeightVaultReader, WeightVaultWriter


@pytest.fixture(scope="module")
def saved_on_two(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    root = tmp_path_factory.mktemp("dcp-backend")
    run_ranks("train_save", 2, root / "ckpt", root / "ref.pt", writer="weightvault")
    return root / "ckpt", torch.load(root / "ref.pt", weights_only=True)


def test_layout_rank_files_then_manifest_then_marker(
    saved_on_two: tuple[Path, dict[str, Any]],
) -> None:
    ckpt, _ = saved_on_two
    assert sorted(p.name for p in ckpt.iterdir()) == [
        "COMMITTED",
        "manifest.json",
        "rank-00000.safetensors",
        "rank-00001.safetensors",
    ]
    manifest = json.loads((ckpt / "manifest.json").read_text())
    assert manifest["format"] == "weightvault" and manifest["layout"] == "torch_dcp"
    assert manifest["world_size"] == 2
    weight = manifest["entries"]["model.0.weight"]
    assert weight["dtype"] == "float32" and weight["shape"] == [16, 8]
    assert [c["file"] for c in weight["chunks"]] == [
        "rank-00000.safetensors",
        "rank-00001.safetensors",
    ]
    assert all(c["checksum"].startswith("xxh3_64:") for c in weight["chunks"])
    assert manifest["entries"]["optim.param_groups.0.lr"]["type"] == "bytes"
    # the rank files are plain safetensors: no pickle, readable by the safetensors library
    from safetensors.numpy import load_file

    rank0 = load_file(ckpt / "rank-00000.safetensors")
    assert rank0["model.0.weight@0,0"].shape == (8, 8)


@pytest.mark.parametrize("world", [1, pytest.param(4, marks=pytest.mark.slow)])
def test_load_at_another_world_size_is_bit_identical(
    saved_on_two: tuple[Path, dict[str, Any]], tmp_path: Path, world: int
) -> None:
    ckpt, full = saved_on_two
    run_ranks("load", world, ckpt, tmp_path / "loaded.pt")
    loaded = torch.load(tmp_path / "loaded.pt", weights_only=True)
    assert loaded["step"] == STEPS
    assert_same_state(loaded["model"], full["model"], "model")
    assert_same_state(loaded["optim"], full["optim"], "optim")


def test_weightvault_open_assembles_the_chunks(saved_on_two: tuple[Path, dict[str, Any]]) -> None:
    ckpt, full = saved_on_two
    with weightvault.open(ckpt) as reader:
        assert reader.format == "torch_dcp"
        for name, want in full["model"].items():
            assert torch.equal(reader.get(f"model.{name}", framework="torch"), want)
        for fqn, state in full["optim"]["state"].items():
            for key, want in state.items():
                assert torch.equal(reader.get(f"optim.state.{fqn}.{key}", framework="torch"), want)
        assert reader.metadata["torch_dcp"]["objects"]["step"] == STEPS


def test_async_save_on_one_rank_loads_on_two(tmp_path: Path) -> None:
    run_ranks("train_save", 1, tmp_path / "ckpt", tmp_path / "ref.pt", writer="async")
    run_ranks("load", 2, tmp_path / "ckpt", tmp_path / "loaded.pt")
    full = torch.load(tmp_path / "ref.pt", weights_only=True)
    loaded = torch.load(tmp_path / "loaded.pt", weights_only=True)
    assert_same_state(loaded["model"], full["model"], "model")
    assert_same_state(loaded["optim"], full["optim"], "optim")


# -- in one process (no process group): the writer's and reader's own contracts --------------------
@pytest.fixture
def quiet() -> Any:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        yield


def test_resave_over_a_checkpoint_and_corruption_is_caught(tmp_path: Path, quiet: None) -> None:
    ckpt = tmp_path / "c"
    dcp.save({"w": torch.ones(3)}, storage_writer=WeightVaultWriter(ckpt))
    dcp.save(
        {"w": torch.arange(3.0), "b": torch.tensor([True])}, storage_writer=WeightVaultWriter(ckpt)
    )
    target = {"w": torch.zeros(3), "b": torch.tensor([False])}
    dcp.load(target, storage_reader=WeightVaultReader(ckpt))
    assert torch.equal(target["w"], torch.arange(3.0)) and bool(target["b"])
    with weightvault.open(ckpt) as reader:
        result = reader.verify()
        assert result.ok and result.checked == 2 and result.unchecked == 0
    # flip a byte of the stored tensor: the manifest checksum refuses it
    raw = bytearray((ckpt / "rank-00000.safetensors").read_bytes())
    raw[-1] ^= 0x40
    (ckpt / "rank-00000.safetensors").write_bytes(bytes(raw))
    from torch.distributed.checkpoint.api import CheckpointException

    with pytest.raises(CheckpointException) as excinfo:  # DCP wraps each rank's error
        dcp.load(target, storage_reader=WeightVaultReader(ckpt))
    error = excinfo.value.failures[0][0]
    assert isinstance(error, weightvault.errors.ChecksumMismatchError)
    assert error.tensor == "b" and "checksum" in error.message
    assert error.path is not None and error.path.endswith("rank-00000.safetensors")
    with weightvault.open(ckpt) as reader:
        result = reader.verify()
        assert not result.ok and result.checked == 1 and "'b'" in result.failures[0]


def test_an_unfinished_save_is_not_a_checkpoint(tmp_path: Path, quiet: None) -> None:
    ckpt = tmp_path / "c"
    dcp.save({"w": torch.ones(3)}, storage_writer=WeightVaultWriter(ckpt))
    (ckpt / "COMMITTED").unlink()
    with pytest.raises(weightvault.errors.CheckpointNotFoundError, match="COMMITTED"):
        weightvault.open(ckpt)


def test_save_and_load_helpers_for_a_plain_module(tmp_path: Path, quiet: None) -> None:
    from weightvault.torch_dcp import load, save

    torch.manual_seed(1)
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    save(tmp_path / "c", model, opt, metadata={"run": "a"})
    fresh = torch.nn.Linear(4, 2)
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=0.5)
    fresh(torch.randn(1, 4)).sum().backward()
    fresh_opt.step()  # so its state has the same structure to load into
    load(tmp_path / "c", fresh, fresh_opt)
    assert_same_state(fresh.state_dict(), model.state_dict())
    assert_same_state(fresh_opt.state_dict()["state"], opt.state_dict()["state"])
    assert fresh_opt.param_groups[0]["lr"] == 0.1
    with weightvault.open(tmp_path / "c") as reader:
        assert reader.metadata["run"] == "a"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="NCCL needs CUDA GPUs")
def test_cuda_tensors_save_and_load(tmp_path: Path, quiet: None) -> None:
    state = {"w": torch.randn(32, 8, device="cuda")}
    dcp.save(state, storage_writer=WeightVaultWriter(tmp_path / "c"))
    target = {"w": torch.zeros(32, 8, device="cuda")}
    dcp.load(target, storage_reader=WeightVaultReader(tmp_path / "c"))
    assert torch.equal(target["w"], state["w"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="NCCL needs CUDA GPUs")
def test_nccl_fsdp2_save_and_load(tmp_path: Path) -> None:
    """The same round trip over NCCL, each rank on its own GPU (as many as there are, up to 2)."""
    world = min(torch.cuda.device_count(), 2)
    run_ranks("train_save", world, tmp_path / "ckpt", tmp_path / "ref.pt", backend="nccl")
    run_ranks("load", world, tmp_path / "ckpt", tmp_path / "loaded.pt", backend="nccl")
    full = torch.load(tmp_path / "ref.pt", weights_only=True)
    loaded = torch.load(tmp_path / "loaded.pt", weights_only=True)
    assert_same_state(loaded["model"], full["model"], "model")
    assert_same_state(loaded["optim"], full["optim"], "optim")
