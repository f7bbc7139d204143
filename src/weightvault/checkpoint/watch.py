"""The evaluator side: wait for new checkpoints of a run and yield each one once.

``watch`` polls the run directory listing. A step directory only ever appears by an atomic rename
of a complete checkpoint (see :mod:`.manager`), and only directories that carry ``COMMITTED`` and
the manager's ``checkpoint.json`` are considered, so a partial checkpoint is never yielded. The
watcher takes no lock: it never blocks the trainer and is never blocked by it.

Retention may delete a checkpoint the evaluator has not read yet, since the trainer does not wait
for readers. Two things keep that from going unnoticed:

* a step deleted before it is handed out is skipped (and listed in :attr:`Watcher.skipped`); one
  deleted while it is read raises :class:`~weightvault.errors.CheckpointDeletedError` ("step N
  was deleted by retention before it could be read") from :meth:`WatchedCheckpoint.load`,
  :meth:`CheckpointManager.load` and :func:`weightvault.restore`, instead of an error about a
  missing shard; catch it and go on with the next step;
* ``watch(dir, consumer="eval")`` registers the reader: its progress is written to
  ``<run>/.weightvault-consumers/eval.json`` and the writer's retention keeps every step the
  consumer has not finished, up to ``consumer_max_pending`` steps and only while the consumer
  shows signs of life within ``consumer_timeout`` (so a dead evaluator cannot fill the disk).
  A step counts as finished when the consumer asks for the next one. A restarted consumer of the
  same name resumes after its last finished step.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from weightvault.checkpoint.manager import (
    CONSUMER_FORMAT,
    _read_record,
    consumer_file,
    deleted_step_error,
    read_consumers,
    scan_run,
)
from weightvault.core.io import atomic_write
from weightvault.errors import WeightVaultError

__all__ = ["WatchedCheckpoint", "Watcher", "watch"]

# A waiting consumer refreshes its heartbeat at least this often (seconds).
HEARTBEAT_EVERY = 10.0


class WatchedCheckpoint(NamedTuple):
    step: int
    path: Path

    def load(self, framework: str = "numpy", device: Any = None, *, verify: bool = False) -> Any:
        """``weightvault.load`` of this step; :class:`CheckpointDeletedError` if retention
        deleted it before or while it was read."""
        from weightvault.api import load

        try:
            return load(self.path, framework=framework, device=device, verify=verify)
        except (WeightVaultError, OSError) as exc:
            deleted = deleted_step_error(self.path)
            if deleted is not None:
                raise deleted from exc
            raise


def watch(
    directory: str | os.PathLike[str],
    timeout: float | None = None,
    poll: float = 1.0,
    *,
    start_after: int | None = None,
    consumer: str | None = None,
    storage_options: Any = None,
) -> Watcher:
    """Yield ``(step, path)`` for each committed checkpoint of a run, once each, in step order.

    Checkpoints already in the run come first (all of them, oldest first, unless ``start_after``
    skips steps up to and including it), then each new one as it commits. A step lower than one
    already yielded is never yielded later, so the order is strictly increasing.

    Args:
        timeout: return after this many seconds without a new checkpoint (counted from when the
            consumer asks for the next one); None waits forever.
        poll: seconds between listings of the directory.
        start_after: only yield steps greater than this (default for a registered consumer:
            the last step it finished).
        consumer: register this reader under a name (letters, digits, ``_.-``): the writer
            keeps the steps it has not finished yet (see the module docs).

    Example (like TF's ``checkpoints_iterator``)::

        for ckpt in weightvault.watch("runs/exp1", timeout=600, consumer="eval"):
            try:
                state = ckpt.load()
            except weightvault.errors.CheckpointDeletedError:
                continue  # deleted by retention before it could be read: go on with the next
            evaluate(ckpt.step, state)

    With ``timeout=0`` it hands out what is committed now and returns:

    >>> with weightvault.CheckpointManager(tmp_path / "run", fsync=False) as mgr:
    ...     for step in (1, 2):
    ...         _ = mgr.save(step, {"w": np.full(2, float(step))})
    >>> [(c.step, c.load()["w"].tolist()) for c in weightvault.watch(tmp_path / "run", timeout=0)]
    [(1, [1.0, 1.0]), (2, [2.0, 2.0])]
    """
    return Watcher(
        directory, timeout, poll, start_after=start_after, consumer=consumer,
        storage_options=storage_options,
    )  # fmt: skip


class Watcher(Iterator[WatchedCheckpoint]):
    """The iterator :func:`watch` returns.

    Attributes:
        skipped: steps that were listed but deleted by retention before they could be handed out.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        timeout: float | None = None,
        poll: float = 1.0,
        *,
        start_after: int | None = None,
        consumer: str | None = None,
        storage_options: Any = None,
    ) -> None:
        if poll <= 0:
            raise ValueError(f"poll must be > 0 seconds, not {poll}")
        self.directory = _run_directory(directory, storage_options)
        self.timeout = timeout
        self.poll = poll
        self.consumer = consumer
        self.skipped: list[int] = []
        self._progress = None if consumer is None else consumer_file(self.directory, consumer)
        if start_after is None and consumer is not None:
            done = read_consumers(self.directory).get(consumer, {}).get("done")
            start_after = done if isinstance(done, int) and done >= 0 else None
        self._last = -1 if start_after is None else start_after
        self._done = self._last  # the consumer has finished every step up to this one
        self._current: int | None = None  # handed out, not finished
        self._beat = 0.0
        self._finished = False
        if consumer is not None and self.directory.is_dir():
            self._report()  # registered before the first listing: nothing unseen is deleted

    def __iter__(self) -> Watcher:
        return self

    def __next__(self) -> WatchedCheckpoint:
        if self._finished:
            raise StopIteration
        if self._current is not None:  # asking for the next step finishes the previous one
            self._done, self._current = self._current, None
            self._report()
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while True:
            if self._progress is not None and not self._beat:
                self._report()  # the run directory appeared since: register before listing
            for c in scan_run(self.directory):
                if c.step <= self._last:
                    continue
                self._last = c.step
                self._report(reading=c.step)
                # Retention may have deleted it between the listing and now (before our
                # progress could hold it): skip to the next one, and say so in `skipped`.
                if _read_record(c.path, c.step) is None:
                    self.skipped.append(c.step)
                    continue
                self._current = c.step
                return WatchedCheckpoint(c.step, c.path)
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._finished = True
                    raise StopIteration
                time.sleep(min(self.poll, remaining))
            else:
                time.sleep(self.poll)
            if time.monotonic() - self._beat >= HEARTBEAT_EVERY:
                self._report()

    def close(self, *, unregister: bool = False) -> None:
        """Stop; with ``unregister`` also remove the consumer's progress, so it holds nothing."""
        self._finished = True
        if unregister and self._progress is not None:
            self._progress.unlink(missing_ok=True)

    def _report(self, reading: int | None = None) -> None:
        """Write the consumer's progress (done step, step being read, heartbeat) atomically."""
        if self._progress is None or not self.directory.is_dir():
            return
        record = {
            "format": CONSUMER_FORMAT,
            "consumer": self.consumer,
            "done": self._done,
            "reading": reading if reading is not None else self._current,
            "heartbeat": time.time(),
            "pid": os.getpid(),
            "host": socket.gethostname(),
        }
        self._progress.parent.mkdir(exist_ok=True)
        if not isinstance(self._progress, Path):  # object storage (#17): one PUT is atomic
            self._progress.write_bytes(json.dumps(record).encode())
        else:
            with atomic_write(self._progress, fsync=False) as f:
                f.write(json.dumps(record).encode())
        self._beat = time.monotonic()


def _run_directory(directory: Any, storage_options: Any) -> Any:
    """#17: a URL as a :class:`weightvault.storage.Location`, anything else as a Path."""
    from weightvault.storage.location import is_url

    if is_url(directory):
        from weightvault.storage import location

        return location(directory, storage_options)
    return Path(directory)
