"""One rank of the distributed object-store tests (``test_dist_object_store.py``); gloo on CPU.

    python _dist_object_store_worker.py ACTION RANK WORLD PORT DIR URL [ARG...]

The S3 server and credentials come from the environment (``WEIGHTVAULT_STORAGE_OPTIONS``, AWS_*).
Actions:

* ``train_save``: the FSDP2 model of ``_dist_helpers`` trains STEPS AdamW steps and saves
  ``{"model", "optim", "step", "cols"}`` (``cols``: a DTensor split by columns) to URL with
  ``weightvault.save`` from every rank; rank 0 writes the full state to ``DIR/saved.pt``, every
  rank the bytes it uploaded to ``DIR/written-RANK.json``.
* ``resume``: restores from URL at WORLD ranks with ``load_distributed`` and writes the bytes it
  read (tensor bytes, and all bytes fetched) to ``DIR/read-WORLD-RANK.json``; rank 0 the full state
  to ``DIR/resumed-WORLD.pt``.
* ``manager``: a CheckpointManager on URL (``max_to_keep=2``) saves steps 1, 2, 3.
* ``fail``: ``weightvault.save`` to URL where rank 1's multipart upload fails (it survives);
  each rank records its error in ``DIR/fail-RANK.json``.
* ``kill``: a manager on URL commits step 1; in step 2 rank 1 SIGKILLs itself while its shard's
  multipart upload is in flight (after its first part); rank 0 records its error and how long it
  took in ``DIR/kill-0.json``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _dist_helpers import (  # noqa: E402
    local_nbytes,
    tensors_of,
    build,
    full_state,
    sharded_state,
    train,
)

STEPS = 3
COLS = (6, 10)


def _cols(world: int):  # type: ignore[no-untyped-def]
    import torch
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (world,))
    whole = torch.arange(COLS[0] * COLS[1], dtype=torch.float32).reshape(COLS)
    return distribute_tensor(whole, mesh, [Shard(1)])


def act_train_save(rank: int, world: int, root: Path, url: str) -> None:
    import torch

    import weightvault
    from weightvault import storage

    model, opt = build(world, rank)
    train(model, opt, rank, 0, STEPS)
    state = {**sharded_state(model, opt, STEPS), "cols": _cols(world)}
    storage.stats.reset()
    weightvault.save(state, url, metadata={"world": world}, timeout=60)
    written = storage.stats.bytes_written
    (root / f"written-{rank}.json").write_text(json.dumps({"written": written}))
    full = full_state(model, opt)
    if rank == 0:
        torch.save(full, root / "saved.pt")


def act_resume(rank: int, world: int, root: Path, url: str, more: str = "0") -> None:
    import torch
    from torch.distributed.checkpoint.state_dict import set_state_dict

    from weightvault import storage
    from weightvault.frameworks.torch_distributed import load_distributed

    model, opt = build(world, rank)
    target = sharded_state(model, opt, 0)
    stats: dict[str, int] = {}
    storage.stats.reset()
    state = load_distributed(url, target, stats=stats)
    fetched = storage.stats.bytes_read
    set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
    local = sum(local_nbytes(t) for t in tensors_of(target))
    (root / f"read-{world}-{rank}.json").write_text(
        json.dumps({**stats, "fetched": fetched, "local": local, "step": state["step"]})
    )
    train(model, opt, rank, state["step"], int(more))
    full = full_state(model, opt)
    if rank == 0:
        torch.save(full, root / f"resumed-{world}.pt")


def act_manager(rank: int, world: int, root: Path, url: str, mode: str = "sync") -> None:
    from weightvault.checkpoint import CheckpointManager

    model, opt = build(world, rank)
    with CheckpointManager(url, max_to_keep=2, async_save=mode == "async", timeout=60) as mgr:
        for step in (1, 2, 3):
            train(model, opt, rank, step - 1, 1)
            mgr.save(step, sharded_state(model, opt, step), metrics={"loss": 1.0 / step})
        mgr.wait_until_finished()
        if rank == 0:
            (root / "manager.json").write_text(json.dumps({"steps": mgr.steps()}))


def _big(world: int, rank: int):  # type: ignore[no-untyped-def]
    """A DTensor of 12 MiB: each rank's 6 MiB chunk is a multipart upload (5 MiB parts)."""
    import torch
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (world,))
    g = torch.Generator().manual_seed(1)
    return distribute_tensor(torch.randn(3 << 20, generator=g), mesh, [Shard(0)])


def act_kill(rank: int, world: int, root: Path, url: str, timeout: str = "8") -> None:
    import weightvault.storage.upload as upload
    from weightvault.checkpoint import CheckpointManager

    model, opt = build(world, rank)
    big = _big(world, rank)
    mgr = CheckpointManager(url, max_to_keep=5, timeout=float(timeout), lease_seconds=30)
    train(model, opt, rank, 0, 1)
    mgr.save(1, {**sharded_state(model, opt, 1), "big": big})
    train(model, opt, rank, 1, 1)
    if rank == 1:
        part = upload.ObjectWriter._upload_part

        def upload_then_die(self, number, data):  # type: ignore[no-untyped-def]
            part(self, number, data)  # one part is up, the upload is not complete: die
            os.kill(os.getpid(), signal.SIGKILL)

        upload.ObjectWriter._upload_part = upload_then_die
    started = time.monotonic()
    try:
        mgr.save(2, {**sharded_state(model, opt, 2), "big": big})
        error = None
    except Exception as exc:  # noqa: BLE001 - recorded for the test
        error = f"{type(exc).__name__}: {exc}"
    seconds = time.monotonic() - started
    mgr.close()  # rank 0 releases the run's lease
    (root / f"kill-{rank}.json").write_text(json.dumps({"error": error, "seconds": seconds}))
    os._exit(0)  # the group is broken: skip destroy_process_group


def act_fail(rank: int, world: int, root: Path, url: str) -> None:
    """Rank 1's upload fails (a part is refused, the rank survives): both ranks raise, rank 1's
    error reaches rank 0, and nothing stays under the prefix."""
    import weightvault
    import weightvault.storage.upload as upload

    model, opt = build(world, rank)
    if rank == 1:

        def refuse(self, number, data):  # type: ignore[no-untyped-def]
            raise OSError(28, "No space left on device")

        upload.ObjectWriter._upload_part = refuse
    try:
        weightvault.save({**sharded_state(model, opt, 0), "big": _big(world, rank)}, url, timeout=20)
        error = None
    except Exception as exc:  # noqa: BLE001 - recorded for the test
        error = f"{type(exc).__name__}: {exc}"
    (root / f"fail-{rank}.json").write_text(json.dumps({"error": error}))


def main() -> None:
    action, rank_s, world_s, port, root, url = sys.argv[1:7]
    rank, world = int(rank_s), int(world_s)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK=rank_s, WORLD_SIZE=world_s)
    import torch.distributed as dist

    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        globals()[f"act_{action}"](rank, world, Path(root), url, *sys.argv[7:])
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
