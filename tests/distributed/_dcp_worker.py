"""Worker run by the distributed tests in their own processes (gloo on CPU).

``python _dcp_worker.py ACTION RANK WORLD PORT DIR OUT`` with ACTION one of:

* ``train_save``: build the model, shard it with FSDP2 (world > 1), train a few AdamW steps on
  data that depends only on the step (the same global batch at any world size), save with
  ``WEIGHTVAULT_WRITER`` (``weightvault`` or ``torch``) into DIR;
* ``load``: build the model, shard it, load DIR with ``WEIGHTVAULT_READER``, and write the full
  model and optimizer state (gathered) to OUT as a torch file (rank 0).
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_state_dict,
    set_state_dict,
)

STEPS = 3


def build(world: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 5))
    if world > 1:
        from torch.distributed.fsdp import fully_shard

        for layer in model:
            if isinstance(layer, torch.nn.Linear):
                fully_shard(layer)
        fully_shard(model)
    return model, torch.optim.AdamW(model.parameters(), lr=0.01)


def train(model: torch.nn.Module, opt: torch.optim.Optimizer, rank: int, world: int) -> None:
    for step in range(STEPS):
        g = torch.Generator().manual_seed(step)
        x, y = torch.randn(8, 8, generator=g), torch.randn(8, 5, generator=g)
        lo, hi = rank * 8 // world, (rank + 1) * 8 // world  # this rank's part of the batch
        loss = torch.nn.functional.mse_loss(model(x[lo:hi]), y[lo:hi], reduction="sum") / 8
        loss.backward()
        if world == 1:
            pass
        opt.step()
        opt.zero_grad()


def main() -> None:
    action, rank, world, port, ckpt, out = sys.argv[1:7]
    rank, world = int(rank), int(world)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK=str(rank), WORLD_SIZE=str(world))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model, opt = build(world)
        if action == "train_save":
            train(model, opt, rank, world)
            msd, osd = get_state_dict(model, opt)
            state = {"model": msd, "optim": osd, "step": STEPS}
            if os.environ.get("WEIGHTVAULT_WRITER") == "torch":
                dcp.save(state, checkpoint_id=ckpt)
            elif os.environ.get("WEIGHTVAULT_ASYNC") == "1":
                from weightvault.torch_dcp import WeightVaultWriter

                dcp.async_save(state, storage_writer=WeightVaultWriter(ckpt)).result()
            else:
                from weightvault.torch_dcp import WeightVaultWriter

                dcp.save(state, storage_writer=WeightVaultWriter(ckpt))
        else:
            msd, osd = get_state_dict(model, opt)
            state = {"model": msd, "optim": osd, "step": -1}
            from weightvault.torch_dcp import WeightVaultReader

            dcp.load(state, storage_reader=WeightVaultReader(ckpt))
            set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
            full = StateDictOptions(full_state_dict=True, cpu_offload=True)
            msd, osd = get_state_dict(model, opt, options=full)
            if rank == 0:
                torch.save({"model": msd, "optim": osd, "step": state["step"]}, out)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
