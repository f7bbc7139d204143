"""Rank processes of the incremental distributed-save tests (test_dist_incremental.py).

Run by ``_dist_helpers.run_ranks(..., script=__file__)``; actions (``DIR`` the test's directory):

* ``frozen_run STEPS``: an MLP whose backbone (two Linear layers, ~92% of the parameters) is
  frozen (``requires_grad=False``) and whose head trains with AdamW, FSDP2 on every layer; every
  rank the same batch. ``CheckpointManager(DIR/run, incremental=True)`` saves after each of STEPS
  steps; rank 0 writes the gathered full state of each step to ``DIR/ref-STEP.pt``.
* ``frozen_kill``: continues ``DIR/run`` from its latest step; in the next save rank 1 SIGKILLs
  itself right after hard-linking its first unchanged file; rank 0 records its error in
  ``DIR/kill.json``. ``frozen_next`` then saves the next step into the same run.
* ``mesh_run``: DTensors on a 1-D mesh saved by an async incremental manager at world 2, step 1
  and 2 as Shard(0) (step 2 unchanged: every file linked), step 3 the same values as Shard(1)
  (every chunk differs: nothing reused). ``mesh_world1`` saves the same values at world 1 into
  the same run (another world size: nothing reused).
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from _dist_helpers import BATCH, main

HIDDEN = 64


def build_frozen(world: int):  # type: ignore[no-untyped-def]
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(32, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, HIDDEN),
        torch.nn.ReLU(), torch.nn.Linear(HIDDEN, 8),
    )  # fmt: skip
    for layer in (model[0], model[2]):
        layer.requires_grad_(False)
    if world > 1:
        from torch.distributed.fsdp import fully_shard

        for layer in model:
            if isinstance(layer, torch.nn.Linear):
                fully_shard(layer)
        fully_shard(model)
    trained = [p for p in model.parameters() if p.requires_grad]
    return model, torch.optim.AdamW(trained, lr=0.01, foreach=False)


def train_frozen(model, opt, step: int) -> None:  # type: ignore[no-untyped-def]
    import torch

    g = torch.Generator().manual_seed(step)
    x, y = torch.randn(BATCH, 32, generator=g), torch.randn(BATCH, 8, generator=g)
    torch.nn.functional.mse_loss(model(x), y).backward()
    opt.step()
    opt.zero_grad()


def _states(model, opt, step: int):  # type: ignore[no-untyped-def]
    from _dist_helpers import full_state, sharded_state

    return sharded_state(model, opt, step), full_state(model, opt)


def act_frozen_run(rank: int, world: int, root: Path, steps: str) -> None:
    import torch

    from weightvault.checkpoint import CheckpointManager

    model, opt = build_frozen(world)
    with CheckpointManager(root / "run", incremental=True, timeout=60) as mgr:
        for step in range(1, int(steps) + 1):
            train_frozen(model, opt, step)
            state, full = _states(model, opt, step)
            mgr.save(step, state, metrics={"loss": 1.0 / step})
            if rank == 0:
                torch.save({**full, "step": step}, root / f"ref-{step}.pt")


def act_frozen_kill(rank: int, world: int, root: Path) -> None:
    from weightvault.checkpoint import CheckpointManager
    from weightvault.formats import distributed_incremental as di

    model, opt = build_frozen(world)
    mgr = CheckpointManager(root / "run", incremental=True, timeout=20)
    last = mgr.latest()
    assert last is not None
    train_frozen(model, opt, last + 1)
    if rank == 1:
        reuse = di.reuse_shard

        def link_then_die(*args, **kwargs):  # type: ignore[no-untyped-def]
            entry = reuse(*args, **kwargs)
            if entry is not None and entry["how"] == "link":
                os.kill(os.getpid(), signal.SIGKILL)  # a linked file in the temp directory
            return entry

        di.reuse_shard = link_then_die
    started = time.monotonic()
    try:
        mgr.save(last + 1, _states(model, opt, last + 1)[0], metrics={"loss": 0.0})
        error = None
    except Exception as exc:  # noqa: BLE001 - recorded for the test
        error = f"{type(exc).__name__}: {exc}"
    (root / f"kill-{rank}.json").write_text(
        json.dumps({"error": error, "seconds": time.monotonic() - started, "step": last + 1})
    )
    os._exit(0)  # the group is broken: skip destroy_process_group


def act_frozen_next(rank: int, world: int, root: Path) -> None:
    """After the kill: a new manager removes the leftover and saves the next step, linking."""
    from weightvault.checkpoint import CheckpointManager

    model, opt = build_frozen(world)
    with CheckpointManager(root / "run", incremental=True, timeout=60) as mgr:
        last = mgr.latest()
        assert last is not None
        train_frozen(model, opt, last + 1)
        mgr.save(last + 1, _states(model, opt, last + 1)[0], metrics={"loss": 0.0})


MESH_SHAPES = {"a": (6, 10), "b": (9, 4), "c": (8, 8)}


def _values(name: str):  # type: ignore[no-untyped-def]
    import torch

    shape = MESH_SHAPES[name]
    return torch.arange(shape[0] * shape[1], dtype=torch.float32).reshape(shape) + ord(name)


def act_mesh_run(rank: int, world: int, root: Path) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    from weightvault.checkpoint import CheckpointManager

    mesh = init_device_mesh("cpu", (world,))
    with CheckpointManager(root / "mesh", incremental=True, async_save=True, timeout=60) as mgr:
        for step, dim in ((1, 0), (2, 0), (3, 1)):
            state = {n: distribute_tensor(_values(n), mesh, [Shard(dim)]) for n in MESH_SHAPES}
            mgr.save(step, {"w": state, "step": step})
        mgr.wait_until_finished()


def act_mesh_world1(rank: int, world: int, root: Path) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    from weightvault.checkpoint import CheckpointManager

    mesh = init_device_mesh("cpu", (world,))
    with CheckpointManager(root / "mesh", incremental=True, process_group=dist.group.WORLD) as mgr:
        state = {n: distribute_tensor(_values(n), mesh, [Shard(1)]) for n in MESH_SHAPES}
        mgr.save(4, {"w": state, "step": 4})


if __name__ == "__main__":
    main(globals())
