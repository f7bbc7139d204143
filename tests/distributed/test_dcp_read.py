"""Reading what torch.distributed.checkpoint wrote (the ``torch_dcp`` format), never with pickle.

A real 2-rank FSDP2 run (gloo on CPU) saves with torch's own FileSystemWriter and with its
HuggingFaceStorageWriter; ``weightvault.open`` must give every tensor exactly equal to the full
tensor the run gathered, and convert must consolidate it into one file of another format.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed.checkpoint as dcp
from _dcp_worker import run_ranks

import weightvault


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """(checkpoint directory written by torch's FileSystemWriter on 2 ranks, the full state)."""
    root = tmp_path_factory.mktemp("dcp-read")
    run_ranks("train_save", 2, root / "ckpt", root / "ref.pt", writer="torch+hf")
    return root / "ckpt", torch.load(root / "ref.pt", weights_only=True)


def expected_tensors(full: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The full state under DCP's flattened names (``model.0.weight``, ``optim.state.0.weight.step``)."""
    out = {f"model.{k}": v for k, v in full["model"].items()}
    for fqn, state in full["optim"]["state"].items():
        out.update({f"optim.state.{fqn}.{k}": v for k, v in state.items()})
    return out


def _quiet_single_process() -> Any:
    """dcp.save/load without a process group warn that they assume one process: expected here."""
    ctx = warnings.catch_warnings()
    ctx.__enter__()
    warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
    return ctx


def test_fsdp2_checkpoint_reads_exactly(fsdp_run: tuple[Path, dict[str, Any]]) -> None:
    ckpt, full = fsdp_run
    expected = expected_tensors(full)
    from weightvault.registry import detect_format

    assert detect_format(ckpt).name == "torch_dcp"
    with weightvault.open(ckpt) as reader:
        assert reader.format == "torch_dcp"
        assert sorted(reader.keys()) == sorted(expected)
        for name, want in expected.items():
            got = reader.get(name, framework="torch")
            assert got.dtype == want.dtype and got.shape == want.shape, name
            assert torch.equal(got, want), name
        # FSDP2 split every parameter (and its Adam moments) over the two ranks
        info = reader.info("model.0.weight")
        assert info.shape == (16, 8) and info.extra["chunks"] == 2 and len(info.extra["files"]) == 2
        assert reader.info("optim.state.0.weight.step").shape == ()
        # param_groups are torch.save'd Python objects: reported, read with the plain-data allow-list
        objects = reader.metadata["torch_dcp"]["objects"]
        assert objects["optim.param_groups.0.lr"] == 0.01
        assert objects["optim.param_groups.0.betas"] == [0.9, 0.999]
        assert objects["step"] == 3
        assert "optim.param_groups.0.lr" in reader.skipped and "step" in reader.skipped
        assert "not a tensor" in reader.skipped["step"]


def test_load_gives_back_the_nested_state_dict(fsdp_run: tuple[Path, dict[str, Any]]) -> None:
    """DCP's planner data rebuilds the state dict as dcp.save was given it."""
    ckpt, full = fsdp_run
    state = weightvault.load(ckpt, framework="torch")
    assert sorted(state) == ["model", "optim", "step"] and state["step"] == 3
    assert sorted(state["model"]) == sorted(full["model"])
    assert all(torch.equal(state["model"][k], v) for k, v in full["model"].items())
    for fqn, moments in full["optim"]["state"].items():
        assert all(torch.equal(state["optim"]["state"][fqn][k], v) for k, v in moments.items())
    assert isinstance(state["optim"]["param_groups"], list)  # DCP flattened the list by index
    group = state["optim"]["param_groups"][0]
    assert group["lr"] == 0.01 and group["params"] == full["optim"]["param_groups"][0]["params"]
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 5))
    model.load_state_dict(state["model"])  # straight into a plain module, no process group


def test_the_metadata_file_and_a_distcp_file_open_the_checkpoint(
    fsdp_run: tuple[Path, dict[str, Any]],
) -> None:
    ckpt, full = fsdp_run
    for path in (ckpt / ".metadata", next(ckpt.glob("*.distcp"))):
        with weightvault.open(path) as reader:
            assert reader.format == "torch_dcp"
            assert torch.equal(
                reader.get("model.2.bias", framework="torch"), full["model"]["2.bias"]
            )


def test_hugging_face_storage_writer_shards_read_exactly(
    fsdp_run: tuple[Path, dict[str, Any]],
) -> None:
    ckpt, full = fsdp_run
    hf = ckpt.with_name(ckpt.name + "-hf")
    assert (
        len(list(hf.glob("shard-*.safetensors"))) == 2
    )  # one per rank, no index: not plain safetensors
    with weightvault.open(hf) as reader:
        assert reader.format == "torch_dcp"
        assert sorted(reader.keys()) == sorted(full["model"])
        for name, want in full["model"].items():
            assert torch.equal(reader.get(name, framework="torch"), want), name
        assert reader.info("0.weight").extra["chunks"] == 2


@pytest.mark.parametrize("dst", ["full.safetensors", "full.pt", "native-dir"])
def test_convert_consolidates_the_shards(
    fsdp_run: tuple[Path, dict[str, Any]], tmp_path: Path, dst: str
) -> None:
    ckpt, full = fsdp_run
    expected = expected_tensors(full)
    # the param_groups entries are Python objects, not tensors: convert leaves them out when told
    with pytest.raises(weightvault.WeightVaultError, match=r"param_groups|step"):
        weightvault.convert(ckpt, tmp_path / dst)
    report = weightvault.convert(ckpt, tmp_path / dst, skip_unsupported=True)
    assert "optim.param_groups.0.lr" in report.skipped
    with weightvault.open(tmp_path / dst) as out:
        assert out.format == ("pytorch" if dst.endswith(".pt") else "native")
        assert sorted(out.keys()) == sorted(expected)
        for name, want in expected.items():
            assert torch.equal(out.get(name, framework="torch"), want), name
    # and the target's own library reads it the same
    if dst.endswith(".safetensors"):
        from safetensors.torch import load_file

        loaded = load_file(tmp_path / dst)
    elif dst.endswith(".pt"):
        loaded = torch.load(tmp_path / dst, weights_only=True)
    else:
        return
    assert sorted(loaded) == sorted(expected)
    assert all(torch.equal(loaded[k], v) for k, v in expected.items())


def test_cli_lists_a_dcp_checkpoint(fsdp_run: tuple[Path, dict[str, Any]], cli_run: Any) -> None:
    ckpt, _ = fsdp_run
    code, out, err = cli_run("ls", str(ckpt))
    assert code == 0, err
    assert "model.0.weight" in out and "optim.state.2.bias.exp_avg_sq" in out


def test_single_process_save_every_dtype_and_object(tmp_path: Path) -> None:
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    state = {
        "bf16": torch.linspace(-3, 3, 10).to(torch.bfloat16),
        "f16": torch.tensor([1.5, -0.0, float("inf")], dtype=torch.float16),
        "i64": torch.tensor([-(2**62), 7], dtype=torch.int64),
        "u8": torch.arange(5, dtype=torch.uint8),
        "flag": torch.tensor([True, False]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
        "transposed": base.t(),  # not contiguous: torch.save keeps its strides
        "nested": {"w": base, "count": 4, "name": "run-1", "sizes": [1, 2, {"a": None}]},
        "odd": {"tags": {"x"}, "nan": float("nan")},  # plain data with no JSON form
    }
    ctx = _quiet_single_process()
    try:
        dcp.save(state, checkpoint_id=tmp_path / "c")
    finally:
        ctx.__exit__(None, None, None)
    with weightvault.open(tmp_path / "c") as reader:
        assert sorted(reader.keys()) == sorted(
            ["bf16", "f16", "i64", "u8", "flag", "scalar", "empty", "transposed", "nested.w"]
        )
        for name in reader:
            want = state["nested"]["w"] if name == "nested.w" else state[name]
            got = reader.get(name, framework="torch")
            assert got.dtype == want.dtype and got.shape == want.shape, name
            assert torch.equal(got, want), name
        assert reader.info("bf16").dtype == "bfloat16"
        objects = reader.metadata["torch_dcp"]["objects"]
        # DCP flattens containers down to their leaves
        assert objects == {
            "nested.count": 4,
            "nested.name": "run-1",
            "nested.sizes.0": 1,
            "nested.sizes.1": 2,
            "nested.sizes.2.a": None,
            "odd.tags": "{'x'}",
            "odd.nan": "nan",
        }
        json.dumps(reader.metadata, allow_nan=False)  # metadata stays JSON
        assert np.array_equal(reader.get("transposed"), base.t().numpy())


def test_our_storage_reader_loads_torchs_own_checkpoint(tmp_path: Path) -> None:
    """weightvault.torch_dcp.WeightVaultReader reads FileSystemWriter output too (no pickle for
    the metadata; the planner unpickles the non-tensor entries, as torch's own reader does)."""
    from weightvault.torch_dcp import WeightVaultReader

    saved = {"w": torch.randn(4, 3), "b": torch.randn(3).to(torch.bfloat16), "epoch": 7}
    target = {"w": torch.zeros(4, 3), "b": torch.zeros(3, dtype=torch.bfloat16), "epoch": 0}
    ctx = _quiet_single_process()
    try:
        dcp.save(saved, checkpoint_id=tmp_path / "c")
        dcp.load(target, storage_reader=WeightVaultReader(tmp_path / "c"))
    finally:
        ctx.__exit__(None, None, None)
    assert torch.equal(target["w"], saved["w"]) and torch.equal(target["b"], saved["b"])
    assert target["epoch"] == 7


@pytest.mark.skipif(not torch.cuda.is_available(), reason="NCCL needs CUDA GPUs")
def test_nccl_checkpoint_reads_exactly(tmp_path: Path) -> None:
    """A GPU tensor saved by dcp reads back the same (the chunks are stored from CPU copies)."""
    state = {"w": torch.randn(64, 32, device="cuda")}
    ctx = _quiet_single_process()
    try:
        dcp.save(state, checkpoint_id=tmp_path / "c")
    finally:
        ctx.__exit__(None, None, None)
    with weightvault.open(tmp_path / "c") as reader:
        assert torch.equal(reader.get("w", framework="torch"), state["w"].cpu())
