"""Real torch.distributed runs for the distributed-save tests: one process per rank, gloo on CPU.

The tests call :func:`run_ranks`; each rank runs this file as a script::

    python _dist_helpers.py ACTION RANK WORLD PORT DIR [ARG...]

Actions (``DIR`` is the test's scratch directory):

* ``train_save VIA STEPS``: a small MLP (FSDP2 ``fully_shard`` when WORLD > 1) trains STEPS AdamW
  steps, every rank on the same batch (so the averaged gradient is exactly a single process's and
  the run is bit-identical to one), then saves ``{"model", "optim", "step"}`` (DTensor state dicts
  from ``get_state_dict``) with VIA: ``save`` (``weightvault.save(..., DIR/ckpt)``), ``manager``
  or ``manager_async`` (``CheckpointManager(DIR/run).save(STEPS, ...)``). Rank 0 writes the
  gathered full state to ``DIR/saved.pt``.
* ``resume SRC MORE``: the same model sharded for WORLD ranks restores from SRC with
  ``load_distributed`` (each rank writes the bytes it read to ``DIR/read-RANK.json``), trains MORE
  more steps, and rank 0 writes the full state to ``DIR/resumed-WORLD.pt``.
* ``dtensor_save`` / ``dtensor_load``: DTensors on a 2-D mesh (Shard/Replicate, uneven) saved,
  then restored into other placements on a 1-D mesh; each rank checks its values and bytes read.
* ``ddp_manager``: plain state saved through a CheckpointManager made on every rank.
* ``kill_mid_save``: a first save commits; in a second save over it rank 1 SIGKILLs itself after
  writing its files; rank 0 records the error it got and how long it took in ``DIR/kill.json``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

BATCH = 8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_ranks(
    action: str, world: int, root: Path, *args: str, timeout: float = 300, backend: str = "gloo",
    expect_fail: tuple[int, ...] = (), script: str | None = None, env: dict[str, str] | None = None,
) -> list[str]:
    """Run ACTION on WORLD ranks (one process each), wait, and return their outputs; fail with
    those outputs when a rank other than ``expect_fail`` exits non-zero. ``script``: another
    worker file (its own ``act_*`` functions and this file's :func:`main`, or its own main
    reading the same ``ACTION RANK WORLD PORT ROOT ARGS...``); ``env``: extra variables."""
    import weightvault

    env = {
        **os.environ,
        **(env or {}),
        "WV_DIST_BACKEND": backend,
        "PYTHONPATH": str(Path(weightvault.__file__).parents[1]),
        "OMP_NUM_THREADS": "1",
        "PYTHONWARNINGS": "ignore",
    }
    port = str(free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, script or __file__, action, str(rank), str(world), port, str(root), *args],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        for rank in range(world)
    ]
    outputs = []
    for proc in procs:
        try:
            outputs.append(proc.communicate(timeout=timeout)[0])
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
    failed = [(r, p.returncode) for r, p in enumerate(procs) if p.returncode != 0 and r not in expect_fail]
    if failed:
        raise AssertionError(
            f"{action} on {world} ranks failed {failed}:\n" + "\n".join(o[-4000:] for o in outputs)
        )
    return outputs


# -- inside a rank -------------------------------------------------------------------------------------


def device_of(rank: int) -> str:
    return f"cuda:{rank}" if os.environ.get("WV_DIST_BACKEND") == "nccl" else "cpu"


def build(world: int, rank: int):  # type: ignore[no-untyped-def]
    import torch

    torch.manual_seed(0)
    # 5 output rows: over 4 ranks FSDP2's chunks are uneven (2, 2, 1) and one rank holds none
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 5))
    model = model.to(device_of(rank))
    if world > 1 or device_of(rank) != "cpu":
        from torch.distributed.fsdp import fully_shard

        for layer in model:
            if isinstance(layer, torch.nn.Linear):
                fully_shard(layer)
        fully_shard(model)
    return model, torch.optim.AdamW(model.parameters(), lr=0.01, foreach=False)


def train(model, opt, rank: int, first: int, steps: int) -> None:  # type: ignore[no-untyped-def]
    import torch

    for step in range(first, first + steps):
        g = torch.Generator().manual_seed(step)
        x, y = torch.randn(BATCH, 8, generator=g), torch.randn(BATCH, 5, generator=g)
        # every rank the same batch: FSDP's average of equal gradients is exactly the gradient
        loss = torch.nn.functional.mse_loss(model(x.to(device_of(rank))), y.to(device_of(rank)))
        loss.backward()
        opt.step()
        opt.zero_grad()


def full_state(model, opt):  # type: ignore[no-untyped-def]
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    msd, osd = get_state_dict(model, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {"model": msd, "optim": osd}


def sharded_state(model, opt, step: int):  # type: ignore[no-untyped-def]
    from torch.distributed.checkpoint.state_dict import get_state_dict

    msd, osd = get_state_dict(model, opt)
    return {"model": msd, "optim": osd, "step": step}


def act_train_save(rank: int, world: int, root: Path, via: str, steps: str) -> None:
    import torch

    import weightvault

    model, opt = build(world, rank)
    train(model, opt, rank, 0, int(steps))
    state = sharded_state(model, opt, int(steps))
    if via == "save":
        import torch.distributed as dist

        # one rank holds no DTensors: the process group makes it a distributed save all the same
        group = dist.group.WORLD if world == 1 else None
        weightvault.save(state, root / "ckpt", metadata={"world": world}, timeout=60, process_group=group)
    else:
        from weightvault.checkpoint import CheckpointManager

        with CheckpointManager(root / "run", max_to_keep=1, async_save=via == "manager_async") as mgr:
            mgr.save(int(steps) - 1, state)  # an earlier step, for retention to delete
            mgr.save(int(steps), state)
            mgr.wait_until_finished()
    full = full_state(model, opt)
    if rank == 0:
        torch.save(full, root / "saved.pt")


def act_ddp_manager(rank: int, world: int, root: Path) -> None:
    """DDP-style: plain (replicated) state, a manager on every rank; rank 0 writes it alone."""
    import torch

    from weightvault.checkpoint import CheckpointManager

    state = {"w": torch.full((4,), float(rank)), "step": 1}  # rank 1's copy differs: not written
    with CheckpointManager(root / "ddp", max_to_keep=1) as mgr:
        mgr.save(1, state)
        mgr.save(2, state)


def act_resume(rank: int, world: int, root: Path, src: str, more: str) -> None:
    import torch
    from torch.distributed.checkpoint.state_dict import set_state_dict

    from weightvault.frameworks.torch_distributed import load_distributed

    model, opt = build(world, rank)
    target = sharded_state(model, opt, 0)  # initialises the optimizer state to fill
    stats: dict[str, int] = {}
    state = load_distributed(src, target, stats=stats)
    set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
    local = sum(local_nbytes(t) for t in tensors_of(target))
    (root / f"read-{world}-{rank}.json").write_text(json.dumps({**stats, "local": local, "step": state["step"]}))
    train(model, opt, rank, state["step"], int(more))
    full = full_state(model, opt)
    if rank == 0:
        torch.save(full, root / f"resumed-{world}.pt")


def tensors_of(state):  # type: ignore[no-untyped-def]
    from weightvault.core.tree import flatten

    return list(flatten(state)[1].values())


def local_nbytes(t) -> int:  # type: ignore[no-untyped-def]
    from torch.distributed.tensor import DTensor

    local = t.to_local() if isinstance(t, DTensor) else t
    return int(local.numel() * local.element_size())


def _global(shape: tuple[int, ...]):  # type: ignore[no-untyped-def]
    import torch

    return torch.arange(int(torch.tensor(shape).prod()), dtype=torch.float32).reshape(shape)


DTENSOR_SHAPES = {"a": (7, 6), "b": (9, 5), "c": (4, 10)}


def act_dtensor_save(rank: int, world: int, root: Path) -> None:
    import torch
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    import weightvault

    mesh = init_device_mesh("cpu", (2, world // 2), mesh_dim_names=("dp", "tp"))
    placements = {"a": [Shard(0), Shard(1)], "b": [Shard(0), Replicate()], "c": [Replicate(), Shard(1)]}
    state = {
        name: distribute_tensor(_global(shape), mesh, placements[name])
        for name, shape in DTENSOR_SHAPES.items()
    }
    state["plain"] = torch.full((3,), 7.0)
    state["lr"] = 0.5
    weightvault.save(state, root / "mesh", timeout=60)


def act_dtensor_load(rank: int, world: int, root: Path) -> None:
    import torch
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    from weightvault.frameworks.torch_distributed import load_distributed

    mesh = init_device_mesh("cpu", (world,))
    target = {
        name: distribute_tensor(torch.zeros(shape), mesh, [Shard(1 - i % 2)])
        for i, (name, shape) in enumerate(DTENSOR_SHAPES.items())
    }
    target["plain"] = torch.zeros(3)
    stats: dict[str, int] = {}
    state = load_distributed(root / "mesh", target, stats=stats)
    local = 0
    for name, shape in DTENSOR_SHAPES.items():
        assert torch.equal(state[name].full_tensor(), _global(shape)), name
        local += state[name].to_local().numel() * 4
    assert torch.equal(state["plain"], torch.full((3,), 7.0))
    assert state["lr"] == 0.5
    (root / f"mesh-read-{rank}.json").write_text(json.dumps({**stats, "local": local + 12}))


def act_kill_mid_save(rank: int, world: int, root: Path, mode: str = "kill", timeout: str = "20") -> None:
    import weightvault
    from weightvault.frameworks import torch_distributed as td

    model, opt = build(world, rank)
    train(model, opt, rank, 0, 1)
    weightvault.save(sharded_state(model, opt, 1), root / "ckpt", timeout=float(timeout))
    train(model, opt, rank, 1, 1)
    if rank == 1:
        write = td._write_rank

        def write_then_die(*args, **kwargs):  # type: ignore[no-untyped-def]
            if mode == "raise":  # a failure the rank survives: reported to rank 0
                raise OSError(28, "No space left on device")
            write(*args, **kwargs)  # its files are in the temporary directory: then it dies
            if mode == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            while not (root / "kill-0.json").exists():  # "hang": alive but never arrives
                time.sleep(0.2)
            os._exit(3)

        td._write_rank = write_then_die
    started = time.monotonic()
    try:
        weightvault.save(sharded_state(model, opt, 2), root / "ckpt", timeout=float(timeout))
        error = None
    except Exception as exc:  # noqa: BLE001 - recorded for the test
        error = f"{type(exc).__name__}: {exc}"
    (root / f"kill-{rank}.json").write_text(
        json.dumps({"error": error, "seconds": time.monotonic() - started})
    )
    os._exit(0)  # the group is broken: skip destroy_process_group


def main(actions: dict[str, object] | None = None) -> None:
    action, rank_s, world_s, port, root = sys.argv[1:6]
    rank, world = int(rank_s), int(world_s)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK=rank_s, WORLD_SIZE=world_s)
    import torch
    import torch.distributed as dist

    backend = os.environ.get("WV_DIST_BACKEND", "gloo")
    if backend == "nccl":
        torch.cuda.setdevice_of(rank)
    dist.init_process_group(backend, rank=rank, world_size=world)
    try:
        (actions or globals())[f"act_{action}"](rank, world, Path(root), *sys.argv[6:])
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
