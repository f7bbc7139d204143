"""Child process for the checkpoint tests: a trainer that saves, and gets killed or runs out of disk.

Usage: python _saver.py MODE DIR [args]
  loop DIR START ASYNC ELEMENTS   save steps START, START+1, ... forever (killed by the parent)
  series DIR COUNT DELAY          save steps 1..COUNT, sleeping DELAY seconds between saves
  hold DIR                        take the writer lock and wait to be killed
  diskfull DIR ASYNC              save step 1, then step 2 under a 256 KiB file-size limit
"""

from __future__ import annotations

import json
import resource
import signal
import sys
import time

import numpy as np

from weightvault.checkpoint import CheckpointManager


def state_for(step: int, elements: int) -> dict:
    """State whose every value derives from the step, so a restore can be checked exactly."""
    return {
        "model": {"w": np.full(elements, step, np.float32), "b": np.arange(257, dtype=np.int64) + step},
        "optimizer": {0: {"m": np.full(elements // 4, -step, np.float32)}},
        "step": step,
    }


def main() -> None:
    mode, directory = sys.argv[1], sys.argv[2]
    if mode == "loop":
        start, use_async, elements = int(sys.argv[3]), sys.argv[4] == "1", int(sys.argv[5])
        mgr = CheckpointManager(directory, max_to_keep=3, async_save=use_async)
        print("ready", flush=True)
        step = start
        while True:
            mgr.save(step, state_for(step, elements), metrics={"loss": 1.0 / (step + 1)})
            step += 1
    elif mode == "series":
        count, delay = int(sys.argv[3]), float(sys.argv[4])
        with CheckpointManager(directory, max_to_keep=None, async_save=True, fsync=False) as mgr:
            for step in range(1, count + 1):
                mgr.save(step, state_for(step, 10_000), metrics={"acc": step / count})
                time.sleep(delay)
    elif mode == "churn":  # keeps only the newest step: readers race with retention
        count, delay = int(sys.argv[3]), float(sys.argv[4])
        with CheckpointManager(directory, max_to_keep=1, fsync=False) as mgr:
            for step in range(1, count + 1):
                mgr.save(step, state_for(step, 10_000), metrics={"acc": step / count})
                time.sleep(delay)
    elif mode == "hold":
        CheckpointManager(directory)
        print("ready", flush=True)
        time.sleep(600)
    elif mode == "diskfull":
        use_async = sys.argv[3] == "1"
        mgr = CheckpointManager(directory, async_save=use_async)
        mgr.save(1, state_for(1, 1000))
        mgr.wait_until_finished()
        # Writes past the limit must fail with EFBIG instead of killing the process.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, resource.RLIM_INFINITY))
        report: dict = {}
        try:
            mgr.save(2, state_for(2, 1_000_000))
            mgr.wait_until_finished()
        except Exception as exc:  # noqa: BLE001 - reported to the parent as data
            report = {
                "type": type(exc).__name__,
                "errno": getattr(exc, "errno", None),
                "message": str(exc),
                "hint": getattr(exc, "hint", None),
                "is_oserror": isinstance(exc, OSError),
            }
        mgr.close()  # the failure was observed: close must not raise it again
        print(json.dumps(report), flush=True)
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
