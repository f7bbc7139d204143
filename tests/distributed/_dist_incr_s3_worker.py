"""Rank processes of the incremental distributed S3 tests (test_dist_incremental_s3.py).

Run by ``_dist_helpers.run_ranks(ACTION, WORLD, DIR, URL, ..., script=__file__, env=...)``; the S3
server and credentials come from the environment (``WEIGHTVAULT_STORAGE_OPTIONS``, AWS_*). The
model and its training are ``_dist_incr_worker``'s (a frozen backbone, ~92% of the parameters,
and a head trained with AdamW, FSDP2 on every layer). Actions:

* ``frozen_s3 STEPS``: ``CheckpointManager(URL, incremental=True, process_group=WORLD)`` saves
  after each of STEPS steps; every rank writes the bytes it uploaded in each save
  (``weightvault.storage.stats``) to ``DIR/uploaded-RANK.json``, rank 0 the gathered full state
  of each step to ``DIR/ref-STEP.pt``.
* ``frozen_s3_world1 STEP``: one rank trains STEP steps and saves step STEP into the same run
  (saved before by another number of ranks: nothing can be reused); ``DIR/ref-world1.pt``.
"""

from __future__ import annotations

import json
import sys
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
