"""Rank processes of the incremental distributed S3 tests (test_dist_incremental_s3.py).

Run by ``_dist_helpers.run_ranks(ACTION, WORLD, DIR, URL, ..., script=__file__, env=...)``; the S3
server and credentials come from the environment (``WEIGHTVAULT_STORAGE_OPTIONS``, AWS_*). The
model and its training are ``_dist_incr_worker``'s (a frozen backbone, ~92% of the parameters,
and a head trained with AdamW, FSDP2 on every layer). Actions:

* ``frozen_s3 STEPS``: ``CheckpointManager(URL, incremental=True, process_group=WORLD)`` saves
  after each of STEPS steps; every rank writes the bytes it uploaded in each save
  (``weightvault.storage.stats``) to ``DIR/uploaded-RANK.json``, rank 0 the gathered full state
  of each step to ``DIR/ref-STEP.pt``.
* ``frozen_s3_kill``: continues the run at URL from its latest step; in the next save rank 1
  SIGKILLs itself right after the store copied its first unchanged file into the new prefix;
  rank 0 records its error in ``DIR/kill-0.json``. ``frozen_s3_next`` then saves the next step
  into the same run (a new writer).
* ``frozen_s3_world1 STEP``: one rank trains STEP steps and saves step STEP into the same run
  (saved before by another number of ranks: nothing can be reused); ``DIR/ref-world1.pt``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _dist_helpers import main  # noqa: E402
from _dist_incr_worker import _states, build_frozen, train_frozen  # noqa: E402


def act_frozen_s3(rank: int, world: int, root: Path, url: str, steps: str) -> None:
    import torch
    import torch.distributed as dist

    from weightvault import storage
    from weightvault.checkpoint import CheckpointManager

    model, opt = build_frozen(world)
    uploaded = []
    group = dist.group.WORLD
    with CheckpointManager(url, incremental=True, process_group=group, timeout=60) as mgr:
        for step in range(1, int(steps) + 1):
            train_frozen(model, opt, step)
            state, full = _states(model, opt, step)
            storage.stats.reset()
            mgr.save(step, state, metrics={"loss": 1.0 / step})
            uploaded.append(storage.stats.bytes_written)
            if rank == 0:
                torch.save({**full, "step": step}, root / f"ref-{step}.pt")
    (root / f"uploaded-{rank}.json").write_text(json.dumps(uploaded))


def act_frozen_s3_kill(rank: int, world: int, root: Path, url: str) -> None:
    import torch.distributed as dist

    from weightvault.checkpoint import CheckpointManager
    from weightvault.storage import incremental

    model, opt = build_frozen(world)
    mgr = CheckpointManager(url, incremental=True, process_group=dist.group.WORLD, timeout=20)
    last = mgr.latest()
    assert last is not None
    train_frozen(model, opt, last + 1)
    if rank == 1:
        copy = incremental.copy_shards

        def copy_then_die(*args, **kwargs):  # type: ignore[no-untyped-def]
            entries = copy(*args, **kwargs)
            if entries:  # an object copied into the new prefix, nothing committed: die
                os.kill(os.getpid(), signal.SIGKILL)
            return entries

        incremental.copy_shards = copy_then_die
    started = time.monotonic()
    try:
        mgr.save(last + 1, _states(model, opt, last + 1)[0], metrics={"loss": 0.0})
        error = None
    except Exception as exc:  # noqa: BLE001 - recorded for the test
        error = f"{type(exc).__name__}: {exc}"
    seconds = time.monotonic() - started
    mgr.close()  # rank 0 releases the run's lease
    (root / f"kill-{rank}.json").write_text(
        json.dumps({"error": error, "seconds": seconds, "step": last + 1})
    )
    os._exit(0)  # the group is broken: skip destroy_process_group


def act_frozen_s3_next(rank: int, world: int, root: Path, url: str) -> None:
    import torch.distributed as dist

    from weightvault.checkpoint import CheckpointManager

    model, opt = build_frozen(world)
    group = dist.group.WORLD
    with CheckpointManager(url, incremental=True, process_group=group, timeout=60) as mgr:
        last = mgr.latest()
        assert last is not None
        train_frozen(model, opt, last + 1)
        mgr.save(last + 1, _states(model, opt, last + 1)[0], metrics={"loss": 0.0})


def act_frozen_s3_world1(rank: int, world: int, root: Path, url: str, step: str) -> None:
    import torch
    import torch.distributed as dist

    from weightvault.checkpoint import CheckpointManager

    model, opt = build_frozen(world)
    for i in range(1, int(step) + 1):
        train_frozen(model, opt, i)
    state, full = _states(model, opt, int(step))
    with CheckpointManager(url, incremental=True, process_group=dist.group.WORLD) as mgr:
        mgr.save(int(step), state)
    torch.save({**full, "step": int(step)}, root / "ref-world1.pt")


if __name__ == "__main__":
    main(globals())
