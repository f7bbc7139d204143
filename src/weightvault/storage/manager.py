"""CheckpointManager on an object store.

``CheckpointManager("s3://bucket/runs/exp1", ..., storage_options={...})`` returns an
:class:`ObjectStoreManager`: the same API, policies, run state and async saves, with the
directory operations replaced by the object-store protocol:

* **commit without rename:** each step is written straight to ``<run>/step-N/``: shards, then
  ``manifest.json`` and the index, then the manager's ``checkpoint.json``, then (after the
  writer's lease is renewed) ``COMMITTED``. Readers, ``watch``, ``runs`` and retention count a
  step only when ``COMMITTED`` is there;
* **retention** deletes ``COMMITTED`` first, then the rest: a crash mid-delete leaves an
  uncommitted prefix, never a committed partial one;
* **leftovers:** a writer, once it holds the lease, removes uncommitted ``step-N`` prefixes whose
  every object is older than its lease (the store's own clock: ``LastModified``), i.e. provably
  written by an earlier writer; anything newer is left alone;
* **one writer per run:** the lease of :mod:`weightvault.storage.lease` (conditional writes on
  S3), instead of the local ``flock``;
* **torch.distributed jobs** (``process_group=``, or DTensors in the state): make the manager on
  every rank; rank 0 alone holds the lease, removes leftovers, writes the run state and applies
  retention (once, after the commit). A save of DTensors is a collective: every rank uploads its
  own chunks into ``step-N/``, rank 0 writes the manifest, the record and ``COMMITTED``
  (:mod:`weightvault.storage.distributed`).
* **incremental runs** (``incremental=True``): shards unchanged since the newest committed step
  are copied from it server-side instead of uploaded (:mod:`weightvault.storage.incremental`);
  the commit order is the same. In a distributed job every rank does so for its own files
  (each rank finds the base itself: the newest committed step, the same on every rank).
"""

from __future__ import annotations

import json
import time
import warnings
from typing import Any

from weightvault.checkpoint.manager import (
    RECORD_FILE,
    STATE_FILE,
    CheckpointInfo,
    CheckpointManager,
    _distributed_rank,
    step_dir_name,
)
from weightvault.errors import (
    CheckpointLockedError,
    CheckpointSaveError,
    WeightVaultUserWarning,
)
from weightvault.formats.native import COMMIT_MARKER
from weightvault.storage import location
from weightvault.storage.lease import Lease
from weightvault.storage.location import entry_time
from weightvault.storage.native import delete_checkpoint, save_url
from weightvault.storage.runs import read_record, read_state, scan_run, step_prefixes

__all__ = ["ObjectStoreManager"]


class ObjectStoreManager(CheckpointManager):
    """A :class:`CheckpointManager` whose run lives on an object store (see the module doc).

    Extra arguments: ``storage_options`` (as everywhere) and ``lease_seconds`` (how long the
    writer's lease lasts without renewal; a crashed writer's run can be taken over after it).
    """

    def __init__(
        self,
        directory: Any,
        max_to_keep: int | None = 5,
        keep_every_n_steps: int | None = None,
        keep_period_hours: float | None = None,
        best: Any = None,
        async_save: bool = False,
        *,
        policy: Any = None,
        read_only: bool = False,
        allow_policy_change: bool = False,
        consumer_timeout: float | None = 3600.0,
        consumer_max_pending: int = 16,
        state_template: Any = None,
        fsync: bool = True,
        shard_size: int | None = None,
        storage_options: Any = None,
        lease_seconds: float = 120.0,
        incremental: bool = False,
        process_group: Any = None,
        timeout: float | None = None,
    ) -> None:
        self.loc = location(directory, storage_options)
        self.directory = self.loc  # type: ignore[assignment]
        # In a torch.distributed job rank 0 owns the run (lease, run state, retention)
        self.process_group, self.timeout = process_group, timeout
        self._rank = None if read_only else _distributed_rank(process_group)
        follower = self._rank not in (None, 0)
        self._lock = _NoLease() if follower else Lease(self.loc, lease_seconds)  # type: ignore[assignment]
        # the rest as a local run (incremental: unchanged shards are copied server-side)
        self._open_run(
            max_to_keep, keep_every_n_steps, keep_period_hours, best, async_save, policy=policy,
            read_only=read_only, allow_policy_change=allow_policy_change,
            consumer_timeout=consumer_timeout, consumer_max_pending=consumer_max_pending,
            state_template=state_template, fsync=fsync, shard_size=shard_size,
            incremental=incremental,
        )  # fmt: skip

    # -- listing ------------------------------------------------------------------------------------
    def checkpoints(self) -> list[CheckpointInfo]:
        return scan_run(self.loc)

    def path(self, step: int | str = "latest") -> Any:
        """The prefix (a :class:`~weightvault.storage.Location`, ``str()`` is its URL)."""
        from weightvault.errors import CheckpointNotFoundError

        resolved = self._resolve(step)
        path = self.loc / step_dir_name(resolved)
        if read_record(path, resolved) is None:
            raise CheckpointNotFoundError(
                f"no committed checkpoint for step {resolved}", path=self.loc.url
            )
        return path

    # -- writing --------------------------------------------------------------------------------------
    def _write(self, job: Any) -> None:
        final = self.loc / step_dir_name(job.step)
        write_started = time.perf_counter()
        stats: dict[str, Any] = {}
        base = self._incremental_base() if self.incremental else None

        def record(nbytes: int) -> bytes:
            return self._record_bytes(job, write_started, nbytes, stats, base)

        def record_and_renew(nbytes: int) -> None:
            final.child(RECORD_FILE).write_bytes(record(nbytes))
            self._lock.renew()  # type: ignore[attr-defined] - a writer that lost its lease commits nothing

        def renew_then_record(nbytes: int) -> dict[str, bytes]:  # rank 0 of a distributed save
            self._lock.renew()  # type: ignore[attr-defined]
            return {RECORD_FILE: record(nbytes)}

        try:
            if job.distributed:  # every rank uploads its chunks; rank 0 commits
                from weightvault.frameworks.torch_distributed import save_distributed

                save_distributed(
                    final, job.state, metadata=job.metadata, shard_size=self.shard_size,
                    process_group=self.process_group, timeout=self.timeout,
                    before_commit=renew_then_record, incremental=self.incremental, base=base,
                    stats=stats,
                )  # fmt: skip
            else:
                save_url(
                    final, job.state, metadata=job.metadata, shard_size=self.shard_size,
                    single_file=False, progress=False, before_commit=record_and_renew,
                    incremental=self.incremental, base=base, stats=stats,
                )  # fmt: skip
            job.state = None
        except CheckpointLockedError:
            raise
        except OSError as exc:
            error = CheckpointSaveError(
                f"saving step {job.step} failed: {exc}; earlier checkpoints are intact",
                path=final.url,
            )
            error.errno = exc.errno
            raise error from exc
        finally:
            job.state = None
        if self._rank in (None, 0):  # once, after the commit
            self._apply_retention()

    def _incremental_base(self) -> Any:
        """The prefix unchanged shards are copied from: the newest committed step (retention
        never deletes the newest, and the next save starts only after it committed)."""
        found = scan_run(self.loc)
        return found[-1].path if found else None

    def _delete_owned(self, step: int) -> None:
        path = self.loc / step_dir_name(step)
        if read_record(path, step) is None:  # not provably ours: leave it alone
            warnings.warn(
                f"not deleting {path.url}: not a checkpoint written by a manager",
                WeightVaultUserWarning,
                stacklevel=3,
            )
            return
        delete_checkpoint(path)  # COMMITTED first

    def _read_run_state(self) -> dict[str, Any]:
        return read_state(self.loc)

    def _store_state(self, state: dict[str, Any]) -> None:
        # one PUT: an object is replaced atomically, readers see the old or the new state
        self.loc.child(STATE_FILE).write_bytes(json.dumps(state, indent=1, allow_nan=False).encode())

    def _remove_leftovers(self) -> list[str]:
        """Uncommitted step prefixes provably older than this writer's lease (see module doc)."""
        taken = self._lock.taken_at  # type: ignore[attr-defined]
        removed = []
        for _step, prefix in step_prefixes(self.loc):
            if prefix.child(COMMIT_MARKER).exists():
                continue
            times = [entry_time(e) for e in prefix.listdir()]
            if taken is not None and times and all(t is not None and t < taken for t in times):
                delete_checkpoint(prefix)
                removed.append(prefix.name)
        if taken is not None and self.loc.is_s3:
            removed += _abort_stale_uploads(self.loc, taken)
        return removed

    def __repr__(self) -> str:
        mode = "read-only" if self.read_only else ("async" if self.async_save else "sync")
        return f"CheckpointManager({self.loc.url!r}, {mode}, policy={self.policy!r})"


class _NoLease:
    """A distributed job's other ranks: rank 0 holds the run's lease, they hold nothing."""

    def acquire(self) -> None:
        pass

    def release(self) -> None:
        pass

    def renew(self) -> None:
        pass


def _abort_stale_uploads(run: Any, taken: float) -> list[str]:
    """Multipart uploads under the run started before this writer's lease: a killed writer's
    (it could not abort them). Their parts are invisible but billed; abort them."""
    bucket, key, _ = run.fs.split_path(run.path)
    prefix = key.rstrip("/") + "/"
    aborted = []

    def listing() -> list[dict[str, Any]]:
        out = run.fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=prefix)
        return list(out.get("Uploads", []))

    for upload in run._retry(listing, "listing multipart uploads"):
        started = upload.get("Initiated")
        if started is None or not hasattr(started, "timestamp") or started.timestamp() >= taken:
            continue

        def abort(u: dict[str, Any] = upload) -> None:
            run.fs.call_s3(
                "abort_multipart_upload", Bucket=bucket, Key=u["Key"], UploadId=u["UploadId"]
            )

        run._retry(abort, "aborting a stale multipart upload")
        aborted.append(f"upload of {upload['Key'][len(prefix):]}")
    return aborted
