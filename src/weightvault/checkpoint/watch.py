"""The evaluator side: wait for new checkpoints of a run and yield each one once.

``watch`` polls the run directory listing. A step directory only ever appears by an atomic rename
of a complete checkpoint (see :mod:`.manager`), and only directories that carry ``COMMITTED`` and
the manager's ``checkpoint.json`` are considered, so a partial checkpoint is never yielded. The
watcher takes no lock and writes nothing: it never blocks the trainer and is never blocked by it.

Retention may delete a checkpoint the evaluator has not reached yet (the trainer does not wait
for evaluators); such a step is skipped. An evaluator that must see every step should keep up, or
the run should keep more (``max_to_keep``, ``keep_every_n_steps``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from weightvault.checkpoint.manager import scan_run

__all__ = ["WatchedCheckpoint", "watch"]


class WatchedCheckpoint(NamedTuple):
    step: int
    path: Path


def watch(
    directory: str | os.PathLike[str],
    timeout: float | None = None,
    poll: float = 1.0,
    *,
    start_after: int | None = None,
) -> Iterator[WatchedCheckpoint]:
    """Yield ``(step, path)`` for each committed checkpoint of a run, once each, in step order.

    Checkpoints already in the run come first (all of them, oldest first, unless ``start_after``
    skips steps up to and including it), then each new one as it commits. A step lower than one
    already yielded is never yielded later, so the order is strictly increasing.

    Args:
        timeout: return after this many seconds without a new checkpoint (counted from when the
            consumer asks for the next one); None waits forever.
        poll: seconds between listings of the directory.
        start_after: only yield steps greater than this.

    Example (like TF's ``checkpoints_iterator``)::

        for step, path in weightvault.watch("runs/exp1", timeout=600):
            state = weightvault.load(path)
            evaluate(step, state)
    """
    if poll <= 0:
        raise ValueError(f"poll must be > 0 seconds, not {poll}")
    last = -1 if start_after is None else start_after
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        fresh = [c for c in scan_run(directory) if c.step > last]
        for c in fresh:
            if not c.path.is_dir():  # deleted by retention since the listing
                continue
            last = c.step
            yield WatchedCheckpoint(c.step, c.path)
        if fresh and timeout is not None:
            deadline = time.monotonic() + timeout
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            time.sleep(min(poll, remaining))
        else:
            time.sleep(poll)
