"""Real torch.distributed runs for the DCP tests: one process per rank, gloo on CPU.

The tests call :func:`run_ranks`; each rank runs this file as a script::

    python _dcp_worker.py ACTION RANK WORLD PORT CKPT OUT [WRITER]

* ``train_save``: a small MLP, sharded with FSDP2 ``fully_shard`` when WORLD > 1, trains a few
  AdamW steps (each rank its slice of a batch that depends only on the step), then saves model and
  optimizer with ``dcp.save`` / ``dcp.async_save`` through WRITER (``weightvault``, ``async`` or
  ``torch``; ``torch+hf`` also writes the model with torch's HuggingFaceStorageWriter
  (``save_distributed=True``) to ``CKPT-hf``). Rank 0 writes the full (gathered) model and
  optimizer state to OUT with ``torch.save``: the single-process reference.
* ``load``: the same model, sharded for WORLD ranks, loaded from CKPT with ``dcp.load`` through
  weightvault's StorageReader; rank 0 writes the gathered full state to OUT.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from _dist_helpers import build, device_of  # the same model as the other distributed tests
from _dist_helpers import run_ranks as launch

STEPS = 3
BATCH = 8


def run_ranks(
    action: str,
    world: int,
    ckpt: Path,
    out: Path,
    writer: str = "weightvault",
    timeout: float = 300,
    backend: str = "gloo",
) -> None:
    """Run ACTION on WORLD ranks (one process each) and wait; fail with their output.
    ``backend="nccl"`` puts rank r on ``cuda:r`` (and shards with FSDP2 even on one rank)."""
    launch(action, world, ckpt, str(out), writer, timeout=timeout, backend=backend, script=__file__)


def _train(model, opt, rank: int, world: int) -> None:  # type: ignore[no-untyped-def]
    import torch

    for step in range(STEPS):
        g = torch.Generator().manual_seed(step)
        x, y = torch.randn(BATCH, 8, generator=g), torch.randn(BATCH, 5, generator=g)
        x, y = x.to(device_of(rank)), y.to(device_of(rank))
        lo, hi = rank * BATCH // world, (rank + 1) * BATCH // world
        # FSDP averages gradients over ranks: scale so every world size takes the same step
        loss = (
            torch.nn.functional.mse_loss(model(x[lo:hi]), y[lo:hi], reduction="sum") * world / BATCH
        )
        loss.backward()
        opt.step()
        opt.zero_grad()


def _full_state(model, opt):  # type: ignore[no-untyped-def]
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    msd, osd = get_state_dict(
        model, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    return {"model": msd, "optim": osd}


def main() -> None:
    action, rank_s, world_s, port, ckpt, out, writer = sys.argv[1:8]
    rank, world = int(rank_s), int(world_s)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK=rank_s, WORLD_SIZE=world_s)
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    backend = os.environ.get("WV_DIST_BACKEND", "gloo")
    if backend == "nccl":
        torch.cuda.setdevice_of(rank)
    dist.init_process_group(backend, rank=rank, world_size=world)
    try:
        model, opt = build(world, rank)
        if action == "train_save":
            _train(model, opt, rank, world)
            msd, osd = get_state_dict(model, opt)
            state = {"model": msd, "optim": osd, "step": STEPS}
            if writer.startswith("torch"):
                dcp.save(state, checkpoint_id=ckpt)
                if writer == "torch+hf":
                    from torch.distributed.checkpoint import HuggingFaceStorageWriter

                    dcp.save(
                        dict(msd),
                        storage_writer=HuggingFaceStorageWriter(
                            ckpt + "-hf", save_distributed=True
                        ),
                    )
            else:
                from weightvault.torch_dcp import WeightVaultWriter

                if writer == "async":
                    dcp.async_save(state, storage_writer=WeightVaultWriter(ckpt)).result()
                else:
                    dcp.save(state, storage_writer=WeightVaultWriter(ckpt))
            full = _full_state(model, opt)
            if rank == 0:
                torch.save(full, out)
        elif action == "load":
            from weightvault.torch_dcp import WeightVaultReader

            msd, osd = get_state_dict(model, opt)
            state = {"model": msd, "optim": osd, "step": -1}
            dcp.load(state, storage_reader=WeightVaultReader(ckpt))
            set_state_dict(
                model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"]
            )
            full = _full_state(model, opt)
            full["step"] = state["step"]
            if rank == 0:
                torch.save(full, out)
        else:
            raise SystemExit(f"unknown action {action}")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
