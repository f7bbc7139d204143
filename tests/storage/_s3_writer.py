"""Child process of the S3 crash test: a trainer saving steps to a run on S3 until it is killed.

Usage: python _s3_writer.py URL START ELEMENTS ASYNC   (storage options in WEIGHTVAULT_STORAGE_OPTIONS)
Prints "saving N" before and "committed N" after each save.
"""

from __future__ import annotations

import sys

import numpy as np

from weightvault.checkpoint import CheckpointManager


def state_for(step: int, elements: int) -> dict:
    return {
        "model": {"w": np.full(elements, step, np.float32), "b": np.arange(257, dtype=np.int64) + step},
        "opt": {"m": np.full(elements // 2, -step, np.float32)},
        "step": step,
    }


def main() -> None:
    url, start, elements, use_async = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
    mgr = CheckpointManager(url, max_to_keep=2, async_save=use_async, lease_seconds=3.0)
    step = start
    while True:
        print(f"saving {step}", flush=True)
        mgr.save(step, state_for(step, elements), metrics={"loss": 1.0 / step})
        if use_async:
            mgr.wait_until_finished()
        print(f"committed {step}", flush=True)
        step += 1


if __name__ == "__main__":
    main()
