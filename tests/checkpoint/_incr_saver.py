"""Child process for the incremental crash tests: a trainer whose state is mostly frozen.

Usage: python _incr_saver.py MODE DIR [args]
  loop DIR START ASYNC    save steps START, START+1, ... forever (the parent SIGKILLs it)
  kill DIR PHASE          save steps 0-2, then SIGKILL itself at PHASE during the save of step 3:
                          link (after the first shard linked), commit (just before COMMITTED),
                          between (committed, retention not started), state (retention, before
                          the run state is rewritten), delete (retention, the doomed step renamed
                          away, its files not yet removed), midrm (retention, half of them removed)
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import numpy as np

from weightvault.checkpoint import CheckpointManager
from weightvault.checkpoint import manager as manager_module
from weightvault.core.shards import ShardDirectory

FROZEN = 6  # frozen tensors of 64 KiB each, one shard each
SHARD = 64 << 10


def state_for(step: int) -> dict[str, Any]:
    """Frozen tensors (the same every step) and a head that derives from the step."""
    rng = np.random.default_rng(7)
    frozen = {f"frozen{i}": rng.standard_normal(SHARD // 4, dtype=np.float32) for i in range(FROZEN)}
    return {
        "backbone": frozen,
        "head": {"w": np.full(4096, step, np.float32), "b": np.arange(33, dtype=np.int64) + step},
        "step": step,
    }


def manager(directory: str, use_async: bool = False) -> CheckpointManager:
    return CheckpointManager(
        directory, max_to_keep=2, incremental=True, shard_size=SHARD, async_save=use_async
    )


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def arm(phase: str) -> None:
    """Make the process kill itself at ``phase`` of the next save."""
    if phase == "link":
        link = ShardDirectory.link_shard

        def link_then_die(self: ShardDirectory, *args: Any) -> str:
            link(self, *args)
            die()
            raise AssertionError

        ShardDirectory.link_shard = link_then_die  # type: ignore[method-assign]
    elif phase == "commit":
        ShardDirectory.commit = lambda self, *args: die()  # type: ignore[method-assign]
    elif phase == "between":
        manager_module.CheckpointManager._apply_retention = lambda self: die()  # type: ignore[method-assign]
    elif phase == "state":
        manager_module.CheckpointManager._write_state = lambda self, *args: die()  # type: ignore[method-assign]
    elif phase == "delete":
        manager_module.remove_tree = lambda path: die()
    elif phase == "midrm":

        def remove_half(path: Any) -> None:
            files = sorted(Path(path).iterdir())
            for f in files[: len(files) // 2]:
                f.unlink()
            die()

        manager_module.remove_tree = remove_half
    else:
        raise SystemExit(f"unknown phase {phase}")


def main() -> None:
    mode, directory = sys.argv[1], sys.argv[2]
    if mode == "loop":
        start, use_async = int(sys.argv[3]), sys.argv[4] == "1"
        mgr = manager(directory, use_async)
        print("ready", flush=True)
        step = start
        while True:
            mgr.save(step, state_for(step))
            step += 1
    elif mode == "kill":
        mgr = manager(directory)
        for step in range(3):
            mgr.save(step, state_for(step))
        arm(sys.argv[3])
        mgr.save(3, state_for(3))
        raise SystemExit("the save of step 3 finished: the phase was never reached")
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
