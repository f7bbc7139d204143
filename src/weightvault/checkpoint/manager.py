"""CheckpointManager: a series of step checkpoints in one run directory.

Layout of a run directory (every path inside is relative, so the directory can be moved, renamed
or copied and still works; TF's absolute paths in ``checkpoint`` break that, tensorflow#9146)::

    run/
      .weightvault-run.lock        flock held by the one writer (see lock.py)
      weightvault-run.json         run state: checkpoints, metrics, kept-because (atomic rewrite)
      step-00000100/               one native checkpoint directory per step
        model-00001-of-00001.safetensors  manifest.json  model.safetensors.index.json  COMMITTED
        checkpoint.json            the manager's record: step, metrics, stall/write seconds, size

Commit protocol of one save:

1. the native checkpoint is written under ``step-00000100.wvtmp-<random>/`` by the shard layer
   (:mod:`weightvault.core.shards`): shards, ``manifest.json``, the index, ``checkpoint.json``,
   then ``COMMITTED``, each fsynced;
2. the temporary directory is renamed to ``step-00000100`` (atomic) and the run dir fsynced;
3. only then does retention run: the policy decides from the committed checkpoints which to keep,
   the run state is rewritten, and the others are renamed to a temporary name and deleted.

With ``incremental=True`` step 1 hard-links the shards whose tensors are unchanged since the
newest committed step instead of writing them (docs/incremental.md); each step directory stays
complete, and deleting one (retention, by hand) only drops link counts of the others' files.

So a listed step is always complete; a crash leaves at worst a ``*.wvtmp-*`` directory, which
the next writer removes at start *after* taking the lock (never before: it could belong to a
live writer). Deletion touches only ``step-N`` directories whose ``checkpoint.json`` says they
were written by a manager for step N, never anything else in the directory (orbax#394).

The directory listing is the truth; the run state file is an index that a crash may leave one
save behind, and it is reconciled with the listing whenever a writer starts.

Async saves: ``save`` waits for the previous save (one in flight at most), copies the state to
host buffers (:mod:`.snapshot`), and hands the write to a background thread. A failure of that
write is re-raised by the next ``save``, ``wait_until_finished`` or ``close``; it is never lost.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as _dt
import errno
import json
import math
import os
import re
import threading
import time
import uuid
import warnings
import weakref
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from weightvault.checkpoint.lock import RunLock
from weightvault.checkpoint.policies import (
    AnyOf,
    CheckpointRecord,
    KeepAll,
    KeepBestK,
    KeepEveryNSteps,
    KeepLastN,
    KeepPeriod,
    RetentionPolicy,
)
from weightvault.checkpoint.snapshot import SnapshotCache, prepare_snapshot, snapshot_flat
from weightvault.core.io import TMP_MARK, atomic_write, remove_tree
from weightvault.errors import (
    CheckpointDeletedError,
    CheckpointExistsError,
    CheckpointNotFoundError,
    CheckpointPolicyError,
    CheckpointSaveError,
    CorruptFileError,
    UnsupportedOperationError,
    WeightVaultError,
    WeightVaultUserWarning,
)
from weightvault.formats.native import COMMIT_MARKER, DEFAULT_SHARD_SIZE, save_native

__all__ = [
    "CONSUMERS_DIR",
    "RECORD_FILE",
    "STATE_FILE",
    "CheckpointInfo",
    "CheckpointManager",
    "CheckpointSaveError",
    "deleted_step_error",
    "read_consumers",
    "scan_run",
    "step_dir_name",
]

STATE_FILE = "weightvault-run.json"
RECORD_FILE = "checkpoint.json"
# Progress of registered readers (weightvault.watch(..., consumer=NAME)): one JSON file each.
CONSUMERS_DIR = ".weightvault-consumers"
CONSUMER_FORMAT = "weightvault-consumer"
CONSUMER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
RUN_FORMAT = "weightvault-run"
RECORD_FORMAT = "weightvault-checkpoint"
METADATA_KEY = "weightvault.checkpoint"
STEP_RE = re.compile(r"^step-(\d+)$")
#: default shard size of incremental runs: small enough that a frozen backbone's first step
#: leaves little collateral in the shards a trained head breaks up (docs/incremental.md)
INCREMENTAL_SHARD_SIZE = 64 * 1024**2
# Leftovers of an interrupted save or delete: temp names derived from ours, nothing else.
LEFTOVER_RE = re.compile(r"^(?:step-\d+|" + re.escape(STATE_FILE) + ")" + re.escape(TMP_MARK))


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


@dataclass(frozen=True)
class CheckpointInfo:
    """One committed checkpoint of a run, as the manager recorded it."""

    step: int
    path: Path
    time: float
    saved_at: str
    metrics: dict[str, Any] = field(default_factory=dict)
    mode: str = "sync"
    stall_seconds: float | None = None
    write_seconds: float | None = None
    size_bytes: int | None = None
    kept_because: list[str] = field(default_factory=list)
    #: bytes the save really wrote (an incremental save links unchanged shards); None: unknown
    written_bytes: int | None = None

    @property
    def record(self) -> CheckpointRecord:
        return CheckpointRecord(self.step, self.time, self.metrics)

    def to_dict(self) -> dict[str, Any]:
        """JSON form with the directory relative to the run (never absolute)."""
        return {
            "step": self.step,
            "dir": self.path.name,
            "saved_at": self.saved_at,
            "time": self.time,
            "metrics": self.metrics,
            "mode": self.mode,
            "stall_seconds": self.stall_seconds,
            "write_seconds": self.write_seconds,
            "size_bytes": self.size_bytes,
            "written_bytes": self.written_bytes,
            "kept_because": list(self.kept_because),
        }


# -- reading a run directory (shared by the manager, watch and the CLI) -----------------------------


def _on_store(path: Any) -> Any:
    """#17: the :class:`weightvault.storage.Location` of an object-store URL, else None."""
    from weightvault.storage.location import is_url

    if not is_url(path):
        return None
    from weightvault.storage import location

    return location(path)


def _read_record(step_dir: Path, step: int) -> dict[str, Any] | None:
    """The manager's record of a committed step directory, or None if it is not one of ours."""
    if (loc := _on_store(step_dir)) is not None:  # object storage (#17)
        from weightvault.storage.runs import read_record

        return read_record(loc, step)
    if not (step_dir / COMMIT_MARKER).is_file():
        return None
    try:
        record = json.loads((step_dir / RECORD_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT or record.get("step") != step:
        return None
    return record


def read_state(directory: Path) -> dict[str, Any]:
    if (loc := _on_store(directory)) is not None:  # object storage (#17)
        from weightvault.storage.runs import read_state as read_state_on_store

        return read_state_on_store(loc)
    try:
        state = json.loads((directory / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) and state.get("format") == RUN_FORMAT else {}


def scan_run(directory: str | os.PathLike[str]) -> list[CheckpointInfo]:
    """Committed checkpoints of a run directory in step order, read from the listing itself."""
    if (loc := _on_store(directory)) is not None:  # object storage (#17)
        from weightvault.storage.runs import scan_run as scan_run_on_store

        return scan_run_on_store(loc)
    root = Path(directory)
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return []
    reasons = {
        int(c["step"]): list(c.get("kept_because") or [])
        for c in read_state(root).get("checkpoints", [])
        if isinstance(c, dict) and isinstance(c.get("step"), int)
    }
    found = []
    for name in names:
        m = STEP_RE.match(name)
        if not m:
            continue
        step = int(m.group(1))
        record = _read_record(root / name, step)
        if record is None:
            continue
        found.append(_info_from_record(root / name, record, reasons.get(step, [])))
    found.sort(key=lambda c: c.step)
    return found


def _info_from_record(path: Path, record: dict[str, Any], kept_because: list[str]) -> CheckpointInfo:
    return CheckpointInfo(
        step=int(record["step"]),
        path=path,
        time=float(record.get("time", 0.0)),
        saved_at=str(record.get("saved_at", "")),
        metrics=dict(record.get("metrics") or {}),
        mode=str(record.get("mode", "sync")),
        stall_seconds=record.get("stall_seconds"),
        write_seconds=record.get("write_seconds"),
        size_bytes=record.get("size_bytes"),
        kept_because=kept_because,
        written_bytes=record.get("written_bytes", record.get("size_bytes")),
    )


def deleted_step_error(path: str | os.PathLike[str]) -> CheckpointDeletedError | None:
    """The error to raise when reading a run's step directory failed because it is gone.

    A step directory is renamed away and deleted by the writer's retention; a reader that found
    it in a listing a moment earlier then fails on whatever file it opens next ("shard ... is
    missing"), which blames the wrong thing. None when ``path`` is not a vanished run step.
    """
    if (loc := _on_store(path)) is not None:  # object storage (#17)
        from weightvault.storage.runs import deleted_step_error as deleted_on_store

        return deleted_on_store(loc)
    step_dir = Path(path)
    m = STEP_RE.match(step_dir.name)
    if m is None or not (step_dir.parent / STATE_FILE).is_file():
        return None
    step = int(m.group(1))
    if _read_record(step_dir, step) is not None:
        return None  # still committed: the failure is something else
    return CheckpointDeletedError(
        f"step {step} was deleted by retention before it could be read",
        path=step_dir,
        hint="the writer's retention does not wait for readers: watch(dir, consumer=NAME) makes it "
        "keep each step until NAME has read it, or keep more checkpoints (max_to_keep)",
    )


def consumer_file(directory: str | os.PathLike[str], name: str) -> Path:
    if not isinstance(name, str) or not CONSUMER_NAME_RE.match(name):
        raise ValueError(f"a consumer name is 1-64 letters, digits, '_', '.', '-', not {name!r}")
    if (loc := _on_store(directory)) is not None:  # object storage (#17)
        return loc / CONSUMERS_DIR / f"{name}.json"
    return Path(directory) / CONSUMERS_DIR / f"{name}.json"


def read_consumers(directory: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """``{name: progress}`` of the registered consumers of a run (unreadable files are ignored)."""
    if (loc := _on_store(directory)) is not None:  # object storage (#17)
        from weightvault.storage.runs import read_consumers as read_consumers_on_store

        return read_consumers_on_store(loc)
    root = Path(directory) / CONSUMERS_DIR
    try:
        names = sorted(os.listdir(root))
    except (FileNotFoundError, NotADirectoryError):
        return {}
    found = {}
    for file_name in names:
        name, ext = os.path.splitext(file_name)
        if ext != ".json" or not CONSUMER_NAME_RE.match(name):
            continue
        try:
            data = json.loads((root / file_name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("format") == CONSUMER_FORMAT:
            found[name] = data
    return found


def consumer_holds(
    directory: Path, steps: list[int], timeout: float | None, max_pending: int, now: float
) -> dict[int, list[str]]:
    """Steps that live consumers have not finished yet: ``{step: [reason]}``.

    A consumer holds the steps above its ``done`` step, at most ``max_pending`` of them (the
    lowest: those it reads next), while its heartbeat is younger than ``timeout`` seconds; so a
    consumer that died or fell far behind cannot fill the disk.
    """
    if timeout is None or max_pending < 1:
        return {}
    holds: dict[int, list[str]] = {}
    for name, progress in read_consumers(directory).items():
        done, beat = progress.get("done"), progress.get("heartbeat")
        if not isinstance(done, int) or not isinstance(beat, (int, float)) or now - beat > timeout:
            continue
        for step in [s for s in sorted(steps) if s > done][:max_pending]:
            holds.setdefault(step, []).append(f"not yet read by consumer {name!r}")
    return holds


# -- helpers ------------------------------------------------------------------------------------------


def _clean_metrics(metrics: Mapping[str, Any] | None) -> dict[str, Any]:
    """JSON-safe metrics: numbers (numpy/torch scalars unwrapped), str, bool, None; NaN -> None."""
    out: dict[str, Any] = {}
    for key, value in (metrics or {}).items():
        if not isinstance(key, str):
            raise TypeError(f"metric names must be str, not {type(key).__name__}")
        if hasattr(value, "item") and not isinstance(value, (str, bytes)):
            value = value.item()  # numpy scalar, 0-d array or one-element torch tensor
        if isinstance(value, float) and not math.isfinite(value):
            value = None  # JSON has no NaN; a NaN metric can never be "best" anyway
        if not isinstance(value, (int, float, str, bool, type(None))):
            raise TypeError(f"metric {key!r} must be a number, str, bool or None, not {type(value).__name__}")
        out[key] = value
    return out


def _now() -> tuple[float, str]:
    """When a checkpoint was saved: unix seconds (retention uses it) and an ISO stamp."""
    now = time.time()
    return now, _stamp(now)


def _stamp(now: float | None = None) -> str:
    when = time.time() if now is None else now
    return _dt.datetime.fromtimestamp(when, _dt.UTC).isoformat(timespec="milliseconds")


def _build_policy(
    max_to_keep: int | None,
    keep_every_n_steps: int | None,
    keep_period_hours: float | None,
    best: KeepBestK | None,
) -> RetentionPolicy:
    policies: list[RetentionPolicy] = [KeepAll() if max_to_keep is None else KeepLastN(max_to_keep)]
    if keep_every_n_steps is not None:
        policies.append(KeepEveryNSteps(keep_every_n_steps))
    if keep_period_hours is not None:
        policies.append(KeepPeriod(keep_period_hours))
    if best is not None:
        policies.append(best)
    return AnyOf(*policies)


def _parse_best(best: Any) -> KeepBestK | None:
    if best is None or isinstance(best, KeepBestK):
        return best
    if isinstance(best, (tuple, list)) and len(best) in (2, 3) and isinstance(best[0], str):
        return KeepBestK(best[0], best[1], int(best[2]) if len(best) == 3 else 1)
    raise ValueError(f"best must be None or (metric, 'max'|'min'[, k]), not {best!r}")


@dataclass
class _SaveJob:
    step: int
    state: Any
    metrics: dict[str, Any]
    metadata: dict[str, Any]
    mode: str
    started: float  # perf_counter when save() was entered
    stall: float | None = None  # known before the write for async saves
    distributed: bool = False  # every rank writes its chunks, rank 0 commits


class CheckpointManager:
    """Save, retain, list and load the checkpoints of one training run.

    Args:
        directory: the run directory (created if missing).
        max_to_keep: keep the newest N checkpoints (None keeps all).
        keep_every_n_steps: also keep every checkpoint whose step is a multiple of N.
        keep_period_hours: also keep one checkpoint per this many hours.
        best: ``(metric, "max"|"min", k)``: also keep the k best by a metric passed to ``save``.
        async_save: ``save`` returns once the state is copied to host memory; the write runs in
            a background thread.
        policy: a retention policy from :mod:`weightvault.checkpoint.policies`; replaces the
            four retention arguments above (``best`` still names the metric for :meth:`best`).
        read_only: list and load without taking the writer lock (never blocks, never blocked).
        allow_policy_change: reopening a run with other retention settings than the ones stored
            in it (``max_to_keep``, ``keep_every_n_steps``, ``keep_period_hours``, ``best``,
            ``policy``) raises :class:`~weightvault.errors.CheckpointPolicyError`, because the
            next save would delete by the new rules (a typo in ``best=`` deletes the best step).
            ``True`` adopts the new settings; they are stored in the run from then on.
        consumer_timeout: seconds after its last sign of life that a reader registered with
            ``watch(dir, consumer=NAME)`` stops holding steps it has not read yet (None: readers
            never hold steps).
        consumer_max_pending: most steps one registered reader can hold beyond the policy.
        state_template: with ``async_save``, a state shaped like the ones to be saved (the
            training state itself is fine): its snapshot buffers are allocated now on a helper
            thread (see :meth:`prepare`), so the first save stalls no longer than later ones.
        fsync: flush files and directories to disk at commit (turn off only for tests).
        shard_size: largest shard of each checkpoint, in bytes (default 2 GiB, or 64 MiB when
            ``incremental``).
        incremental: write only the shards whose tensors changed since the latest committed
            checkpoint and hard-link the others from it (each step stays a complete, standalone
            directory; see docs/incremental.md). Off by default: it pays off only when parts of
            the state stay unchanged (frozen backbones, adapters, teachers), and the steps of a
            run then share those files, so one damaged shared file damages every step using it.
            In a distributed save each rank does this for its own chunk files.
        process_group, timeout: torch.distributed jobs. Make the manager on every rank; rank 0
            owns the run directory. A save of DTensors (any save, with ``process_group``) is a
            collective: every rank writes its own chunks, rank 0 commits, and ``timeout``
            seconds (default 600) bound the wait for a dead or hung rank. A save of plain state
            is written by rank 0 alone. See ``docs/distributed-save.md``.

    Example:
        >>> import numpy as np, tempfile, weightvault
        >>> with weightvault.CheckpointManager(tempfile.mkdtemp(), max_to_keep=2) as mgr:
        ...     for step in (10, 20, 30):
        ...         _ = mgr.save(step, {"w": np.full(3, step, np.float32)}, metrics={"loss": 1 / step})
        ...     mgr.steps(), float(mgr.load("latest")["w"][0])
        ([20, 30], 30.0)
    """

    def __new__(cls, directory: Any = None, *args: Any, **kwargs: Any) -> CheckpointManager:
        # object storage (#17): a URL gets the manager with the object-store commit protocol
        from weightvault.storage.location import is_url

        if cls is CheckpointManager and is_url(directory):
            from weightvault.storage.manager import ObjectStoreManager

            return super().__new__(ObjectStoreManager)
        return super().__new__(cls)

    def __init__(
        self,
        directory: str | os.PathLike[str],
        max_to_keep: int | None = 5,
        keep_every_n_steps: int | None = None,
        keep_period_hours: float | None = None,
        best: tuple[Any, ...] | KeepBestK | None = None,
        async_save: bool = False,
        *,
        policy: RetentionPolicy | None = None,
        read_only: bool = False,
        allow_policy_change: bool = False,
        consumer_timeout: float | None = 3600.0,
        consumer_max_pending: int = 16,
        state_template: Any = None,
        fsync: bool = True,
        shard_size: int | None = None,
        incremental: bool = False,
        process_group: Any = None,
        timeout: float | None = None,
    ) -> None:
        from weightvault.storage.location import local_path

        self.directory = Path(local_path(directory))  # file:///x is the local directory /x
        # In a torch.distributed job rank 0 owns the run directory (lock, run state, retention);
        # a save of DTensors (or with process_group=) is a collective. See torch_distributed.
        self.process_group, self.timeout = process_group, timeout
        self._rank = None if read_only else _distributed_rank(process_group)
        self._lock = RunLock(self.directory)
        self._open_run(
            max_to_keep, keep_every_n_steps, keep_period_hours, best, async_save, policy=policy,
            read_only=read_only, allow_policy_change=allow_policy_change,
            consumer_timeout=consumer_timeout, consumer_max_pending=consumer_max_pending,
            state_template=state_template, fsync=fsync, shard_size=shard_size,
            incremental=incremental,
        )  # fmt: skip

    def _open_run(
        self,
        max_to_keep: int | None,
        keep_every_n_steps: int | None,
        keep_period_hours: float | None,
        best: tuple[Any, ...] | KeepBestK | None,
        async_save: bool,
        *,
        policy: RetentionPolicy | None,
        read_only: bool,
        allow_policy_change: bool,
        consumer_timeout: float | None,
        consumer_max_pending: int,
        state_template: Any,
        fsync: bool,
        shard_size: int | None,
        incremental: bool,
    ) -> None:
        """Settings, policy and the run state: everything but where the run lives. The caller
        has set ``directory``, ``_lock`` (a local ``flock`` or an object-store lease) and
        ``_rank``; the object-store manager shares this with the local one."""
        self.read_only = read_only
        self.async_save = async_save
        self.fsync = fsync
        self.incremental = incremental
        if shard_size is None:
            shard_size = INCREMENTAL_SHARD_SIZE if incremental else DEFAULT_SHARD_SIZE
        self.shard_size = shard_size
        self.consumer_timeout = consumer_timeout
        self.consumer_max_pending = consumer_max_pending
        self._best = _parse_best(best)
        if max_to_keep is not None and max_to_keep < 1:
            raise ValueError(f"max_to_keep must be >= 1 or None, not {max_to_keep}")
        self._settings = {
            "max_to_keep": max_to_keep,
            "keep_every_n_steps": keep_every_n_steps,
            "keep_period_hours": keep_period_hours,
            "best": None if self._best is None else {"metric": self._best.metric, "mode": self._best.mode, "k": self._best.k},
            "async_save": async_save,
            "custom_policy": None if policy is None else _policy_id(policy),
            "incremental": incremental,
        }
        self.policy: RetentionPolicy = policy or _build_policy(
            max_to_keep, keep_every_n_steps, keep_period_hours, self._best
        )
        self._state_lock = threading.RLock()  # guards the run state against the writer thread
        self._save_lock = threading.Lock()  # one save() at a time
        self._future: Future[None] | None = None
        self._inflight_step: int | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._cache = SnapshotCache()
        self._prepare_thread: threading.Thread | None = None
        self.prepared_bytes = 0
        self._closed = False
        self.run_id: str | None = None
        self.cleaned_up: list[str] = []
        if read_only:
            state = self._read_run_state()
            if self._best is None:
                self._best = _best_from_state(state)
            self.run_id = state.get("run_id")
            return
        if self._rank not in (None, 0):
            return  # rank 0 owns the run directory
        self.directory.mkdir(parents=True, exist_ok=True)  # an object-store prefix: nothing to do
        self._lock.acquire()
        try:
            self.cleaned_up = self._remove_leftovers()
            state = self._read_run_state()
            if not allow_policy_change:
                _check_same_policy(state, self._settings, self.directory)
            self.run_id = state.get("run_id") or uuid.uuid4().hex
            self._created = state.get("created") or _stamp()
            self._write_state(scan_run(self.directory))
        except BaseException:
            self._lock.release()
            raise
        atexit.register(_report_unobserved, weakref.ref(self))
        if state_template is not None:
            self.prepare(state_template)

    # -- listing ----------------------------------------------------------------------------------
    def checkpoints(self) -> list[CheckpointInfo]:
        """Committed checkpoints in step order (an async save still in flight is not listed)."""
        return scan_run(self.directory)

    def steps(self) -> list[int]:
        return [c.step for c in self.checkpoints()]

    def latest(self) -> int | None:
        """The highest committed step, or None for an empty run."""
        steps = self.steps()
        return steps[-1] if steps else None

    def best(self) -> int | None:
        """The best committed step by the ``best=`` metric (None if no checkpoint has it)."""
        if self._best is None:
            raise ValueError("this manager has no best=(metric, mode, k); pass one to use best()")
        ranked = self._best.ranked([c.record for c in self.checkpoints()])
        return ranked[0].step if ranked else None

    def path(self, step: int | str = "latest") -> Path:
        """Directory of a committed checkpoint (``step``, ``"latest"`` or ``"best"``)."""
        resolved = self._resolve(step)
        path = self.directory / step_dir_name(resolved)
        if _read_record(path, resolved) is None:
            raise CheckpointNotFoundError(f"no committed checkpoint for step {resolved}", path=self.directory)
        return path

    def info(self, step: int | str = "latest") -> CheckpointInfo:
        resolved = self._resolve(step)
        for c in self.checkpoints():
            if c.step == resolved:
                return c
        raise CheckpointNotFoundError(f"no committed checkpoint for step {resolved}", path=self.directory)

    def metadata(self, step: int | str = "latest") -> dict[str, Any]:
        """The checkpoint's user metadata plus what the manager recorded (metrics, stall_seconds...)."""
        from weightvault.api import open as open_checkpoint

        info = self.info(step)
        with open_checkpoint(info.path) as reader:
            meta = dict(reader.metadata)
        meta.pop(METADATA_KEY, None)
        meta.update({k: v for k, v in info.to_dict().items() if k != "dir"})
        return meta

    def _resolve(self, step: int | str) -> int:
        if isinstance(step, bool):
            raise TypeError("step must be an int, 'latest' or 'best'")
        if isinstance(step, int):
            return step
        if step == "latest":
            found = self.latest()
        elif step == "best":
            found = self.best()
        else:
            raise ValueError(f"step must be an int, 'latest' or 'best', not {step!r}")
        if found is None:
            raise CheckpointNotFoundError(
                f"no committed checkpoint to restore as {step!r}"
                + (" (none has the best= metric)" if step == "best" and self.steps() else ""),
                path=self.directory,
            )
        return found

    # -- loading ----------------------------------------------------------------------------------
    def load(
        self,
        step: int | Literal["latest", "best"] = "latest",
        framework: Literal["numpy", "torch"] = "numpy",
        device: Any = None,
        *,
        verify: bool = False,
        fallback: bool = False,
    ) -> Any:
        """Load a committed checkpoint and return the state exactly as it was saved.

        Named like :func:`weightvault.load` (which returns a state too); putting weights *into* a
        model is :func:`weightvault.restore`. See docs/api.md.

        Args:
            verify: check every tensor's checksum before returning.
            fallback: with ``"latest"``, if that checkpoint fails to load or verify, warn and
                try the next older one (never silently: a :class:`WeightVaultUserWarning` names
                the bad checkpoint).
        """
        target = self._resolve(step)
        candidates = [target]
        if fallback and step == "latest":
            candidates += [s for s in reversed(self.steps()) if s < target]
        for i, candidate in enumerate(candidates):
            try:
                return _load_step(self.path(candidate), framework, device, verify)
            except (CorruptFileError, CheckpointNotFoundError) as exc:
                if i == len(candidates) - 1:
                    raise
                warnings.warn(
                    f"checkpoint step {candidate} is unusable ({exc}); falling back to step {candidates[i + 1]}",
                    WeightVaultUserWarning,
                    stacklevel=2,
                )
        raise AssertionError("unreachable")

    def restore(
        self,
        step: int | Literal["latest", "best"] = "latest",
        framework: Literal["numpy", "torch"] = "numpy",
        device: Any = None,
        *,
        verify: bool = False,
        fallback: bool = False,
    ) -> Any:
        """Deprecated spelling of :meth:`load` (it returns a state; it restores no model)."""
        warnings.warn(
            "CheckpointManager.restore() is deprecated; use CheckpointManager.load(), which "
            "returns the same state (weightvault.restore(model, path) loads into a model)",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.load(step, framework, device, verify=verify, fallback=fallback)

    # -- saving -----------------------------------------------------------------------------------
    def save(
        self,
        step: int,
        state: Any,
        metrics: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Path:
        """Save ``state`` as the checkpoint of ``step``; returns the directory it will have.

        With ``async_save`` this returns once the state is copied to host memory; the checkpoint
        appears in :meth:`steps` when its write has committed.
        """
        started = time.perf_counter()
        self._check_writable()
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be a non-negative int, not {step!r}")
        with self._save_lock:
            self._wait_and_raise()
            final = self.directory / step_dir_name(step)
            # Rank 0 owns the run directory: another rank may look after rank 0 has already
            # committed this step (a plain state it does not write itself).
            if self._rank in (None, 0) and final.exists():
                raise CheckpointExistsError(
                    f"step {step} already has a checkpoint",
                    path=final,
                    hint="save each step once; delete the directory by hand to save it again",
                )
            clean = _clean_metrics(metrics)
            self._check_ranked_metrics(step, clean)
            meta = dict(metadata or {})
            if METADATA_KEY in meta:
                raise ValueError(f"metadata key {METADATA_KEY!r} is reserved for the manager")
            meta[METADATA_KEY] = {"step": step, "metrics": clean, "run_id": self.run_id}
            mode = "async" if self.async_save else "sync"
            job = _SaveJob(step, state, clean, meta, mode, started)
            job.distributed = _is_distributed_save(state, self._rank, self.process_group, self.timeout)
            if self._rank not in (None, 0) and not job.distributed:
                return final  # plain state in a distributed job: rank 0 writes it
            if not self.async_save:
                self._write(job)
                return final
            self._join_prepare()
            if job.distributed:  # this rank's chunks, copied to host memory
                from weightvault.frameworks.torch_distributed import stage

                job.state = stage(state, self._rank)
            else:
                job.state = snapshot_flat(state, self._cache)  # flattened and untied once, here
            job.stall = time.perf_counter() - started
            meta[METADATA_KEY]["stall_seconds"] = job.stall
            if self._executor is None:
                self._executor = ThreadPoolExecutor(1, thread_name_prefix="weightvault-save")
            self._inflight_step = step
            self._future = self._executor.submit(self._write, job)
            return final

    def prepare(self, state: Any) -> None:
        """Allocate and touch the async snapshot buffers for ``state`` on a helper thread.

        The first async save otherwise allocates them while training waits, and fresh memory
        costs 2-4x the copy itself (a page fault and kernel zeroing per page; page-locked
        memory for CUDA tensors is slower still). Only shapes and dtypes are read, so training
        may go on meanwhile; a save waits for the preparation to finish. Tensors that appear
        later (e.g. optimizer moments after the first step) get buffers at their first save.
        Does nothing for a synchronous manager.
        """
        self._check_writable()
        if not self.async_save:
            return
        with self._save_lock:
            self._join_prepare()
            thread = threading.Thread(
                target=self._prepare_worker, args=(state,), name="weightvault-prepare", daemon=True
            )
            self._prepare_thread = thread
            thread.start()

    def _prepare_worker(self, state: Any) -> None:
        # A failure here is not fatal: the snapshot then allocates its buffers itself (and
        # raises there, in the caller's thread, if it really cannot).
        with contextlib.suppress(Exception):
            self.prepared_bytes += prepare_snapshot(state, self._cache)

    def _join_prepare(self) -> None:
        thread, self._prepare_thread = self._prepare_thread, None
        if thread is not None:
            thread.join()

    def _check_ranked_metrics(self, step: int, metrics: dict[str, Any]) -> None:
        """Refuse a save that lacks a metric a best-K policy ranks by.

        Without it the step can never be "best", and a misspelt metric name (in ``best=`` or in
        the save) would let retention delete the real best checkpoint without a word. A step
        that was deliberately not evaluated says so with ``metrics={name: None}``.
        """
        absent = [m for m in _ranked_metrics(self.policy, self._best) if m not in metrics]
        if absent:
            given = ", ".join(sorted(metrics)) or "none"
            raise CheckpointPolicyError(
                f"save of step {step} lacks the metric {', '.join(map(repr, absent))} that the "
                f"retention policy keeps the best checkpoints by (metrics given: {given})",
                path=self.directory,
                hint=f"pass metrics={{{absent[0]!r}: value}}, or {{{absent[0]!r}: None}} for a "
                "step that was not evaluated; check the spelling of best=",
            )

    def wait_until_finished(self) -> None:
        """Block until the save in flight (if any) has committed; re-raise its failure."""
        with self._save_lock:
            self._wait_and_raise()

    def _wait_and_raise(self) -> None:
        future, self._future = self._future, None
        self._inflight_step = None
        if future is not None:
            future.result()  # re-raises the background failure in the caller's thread

    def _check_writable(self) -> None:
        if self.read_only:
            raise UnsupportedOperationError("this CheckpointManager is read-only", path=self.directory)
        if self._closed:
            raise UnsupportedOperationError("this CheckpointManager is closed", path=self.directory)

    def _write(self, job: _SaveJob) -> None:
        """Write, commit, then apply retention. Runs in the caller (sync) or the writer thread."""
        final = self.directory / step_dir_name(job.step)
        write_started = time.perf_counter()
        stats: dict[str, Any] = {}
        base = self._incremental_base() if self.incremental else None

        def record(size_bytes: int) -> dict[str, bytes]:
            # Written into the step directory before its COMMITTED marker and its rename.
            job.state = None  # let the snapshot buffers' references go as soon as possible
            return {RECORD_FILE: self._record_bytes(job, write_started, size_bytes, stats, base)}

        try:
            # The shard layer builds the directory under a temporary name (which a crash leaves
            # for _remove_leftovers) and renames it to step-N: the commit.
            if job.distributed:  # every rank its own chunks; rank 0 commits
                from weightvault.frameworks.torch_distributed import save_distributed

                save_distributed(
                    final, job.state, metadata=job.metadata, shard_size=self.shard_size,
                    fsync=self.fsync, process_group=self.process_group, timeout=self.timeout,
                    before_commit=record, incremental=self.incremental, base=base, stats=stats,
                )  # fmt: skip
            else:
                save_native(
                    final, job.state, metadata=job.metadata, shard_size=self.shard_size,
                    single_file=False, fsync=self.fsync, progress=False, before_commit=record,
                    incremental=self.incremental, base=base, stats=stats,
                )  # fmt: skip
        except OSError as exc:
            error = CheckpointSaveError(
                f"saving step {job.step} failed: {exc.strerror or exc}; earlier checkpoints are intact",
                path=final,
                hint=_hint_for(exc),
            )
            error.errno = exc.errno  # callers may test for ENOSPC/EFBIG like any OSError
            raise error from exc
        finally:
            job.state = None
        if self._rank in (None, 0):  # once, after the commit
            self._apply_retention()

    def _record_bytes(
        self, job: _SaveJob, write_started: float, size_bytes: int, stats: dict[str, Any], base: Any
    ) -> bytes:
        """The manager's record of a step (``checkpoint.json``), written before ``COMMITTED``:
        ``stats`` holds what the save really wrote (links and server-side copies write nothing)."""
        now, stamp = _now()
        rec = {
            "format": RECORD_FORMAT,
            "version": 1,
            "step": job.step,
            "run_id": self.run_id,
            "saved_at": stamp,
            "time": now,
            "metrics": job.metrics,
            "mode": job.mode,
            "stall_seconds": job.stall if job.stall is not None else time.perf_counter() - job.started,
            "write_seconds": time.perf_counter() - write_started,
            "size_bytes": size_bytes,
            "written_bytes": stats.get("written_bytes", size_bytes),
        }
        if self.incremental:
            rec["incremental"] = {"base": None if base is None else base.name}
        return json.dumps(rec, ensure_ascii=False, indent=1, allow_nan=False).encode()

    def _incremental_base(self) -> Path | None:
        """The checkpoint an incremental save links unchanged shards from: the newest committed
        step (retention never deletes the newest, and the next save starts only after it)."""
        found = scan_run(self.directory)
        return found[-1].path if found else None

    # -- retention and run state --------------------------------------------------------------------
    def _apply_retention(self) -> None:
        with self._state_lock:
            found = scan_run(self.directory)
            keep = self.policy.keep([c.record for c in found]) if found else {}
            held = consumer_holds(
                self.directory, [c.step for c in found], self.consumer_timeout,
                self.consumer_max_pending, time.time(),
            )  # fmt: skip
            for step, reasons in held.items():
                keep.setdefault(step, []).extend(reasons)
            if found and found[-1].step not in keep:
                keep[found[-1].step] = ["newest"]  # the newest committed checkpoint is never deleted
            kept = [_with_reasons(c, keep[c.step]) for c in found if c.step in keep]
            doomed = [c for c in found if c.step not in keep]
            self._write_state(kept)
            for c in doomed:
                self._delete_owned(c.step)

    def _delete_owned(self, step: int) -> None:
        path = self.directory / step_dir_name(step)
        if _read_record(path, step) is None:  # not provably ours: leave it alone
            warnings.warn(f"not deleting {path}: not a checkpoint written by a manager", WeightVaultUserWarning, stacklevel=3)
            return
        # Rename first, so the step leaves listings atomically; a crash mid-delete leaves a
        # temp-named directory that the next writer removes.
        doomed = path.with_name(f"{path.name}{TMP_MARK}del-{uuid.uuid4().hex[:12]}")
        os.rename(path, doomed)
        remove_tree(doomed)

    def _write_state(self, checkpoints: list[CheckpointInfo]) -> None:
        with self._state_lock:
            self._store_state(self._run_state(checkpoints, self._read_run_state()))

    def _run_state(self, checkpoints: list[CheckpointInfo], old: dict[str, Any]) -> dict[str, Any]:
        """The run's state file: settings, latest, best, and each kept checkpoint (a step that has
        no reason this time keeps the one recorded before)."""
        kept = {c.step: c for c in checkpoints}
        previous = {c.get("step"): c.get("kept_because") or [] for c in old.get("checkpoints", [])}
        rows = []
        for c in checkpoints:
            row = c.to_dict()
            if not row["kept_because"]:
                row["kept_because"] = list(previous.get(c.step, []))
            rows.append(row)
        best = None
        if self._best is not None:
            ranked = self._best.ranked([c.record for c in kept.values()])
            best = ranked[0].step if ranked else None
        return {
            "format": RUN_FORMAT,
            "version": 1,
            "run_id": self.run_id,
            "created": self._created,
            "updated": _stamp(),
            "settings": self._settings,
            "latest": max(kept) if kept else None,
            "best": best,
            "checkpoints": rows,
        }

    def _read_run_state(self) -> dict[str, Any]:
        return read_state(self.directory)

    def _store_state(self, state: dict[str, Any]) -> None:
        with atomic_write(self.directory / STATE_FILE, fsync=self.fsync) as f:
            f.write(json.dumps(state, indent=1, allow_nan=False).encode())

    def _remove_leftovers(self) -> list[str]:
        """Delete temp files/dirs of interrupted saves and deletes. Only called under the lock."""
        removed = []
        for name in os.listdir(self.directory):
            if LEFTOVER_RE.match(name):
                remove_tree(self.directory / name)
                removed.append(name)
        return removed

    # -- lifetime ---------------------------------------------------------------------------------
    def close(self) -> None:
        """Finish the save in flight (re-raising its failure), then release the writer lock."""
        if self._closed or self.read_only:
            self._closed = True
            return
        try:
            self.wait_until_finished()
        finally:
            self._closed = True
            self._join_prepare()
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None
            self._cache.clear()
            self._lock.release()

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.close()
            return
        # Already unwinding an error: still finish and unlock, but do not mask the first error.
        with contextlib.suppress(Exception):
            self.close()

    def __repr__(self) -> str:
        mode = "read-only" if self.read_only else ("async" if self.async_save else "sync")
        return f"CheckpointManager({os.fspath(self.directory)!r}, {mode}, policy={self.policy!r})"


def _load_step(path: Path, framework: str, device: Any, verify: bool) -> Any:
    """Load a committed step; a step deleted while it was read says so (not "shard missing")."""
    from weightvault.api import load

    try:
        return load(path, framework=framework, device=device, verify=verify)
    except (WeightVaultError, OSError) as exc:
        deleted = deleted_step_error(path)
        if deleted is not None:
            raise deleted from exc
        raise


def _with_reasons(c: CheckpointInfo, reasons: list[str]) -> CheckpointInfo:
    return CheckpointInfo(**{**c.__dict__, "kept_because": list(reasons)})


def _best_from_state(state: dict[str, Any]) -> KeepBestK | None:
    best = (state.get("settings") or {}).get("best")
    if isinstance(best, dict) and isinstance(best.get("metric"), str):
        with contextlib.suppress(TypeError, ValueError):
            return KeepBestK(best["metric"], best.get("mode", "max"), int(best.get("k", 1)))
    return None


def _ranked_metrics(policy: Any, best: KeepBestK | None) -> list[str]:
    """Metric names that best-K policies (inside ``policy`` or ``best=``) rank by."""
    found: list[str] = [] if best is None else [best.metric]
    stack = [policy]
    while stack:
        p = stack.pop()
        if isinstance(p, KeepBestK) and p.metric not in found:
            found.append(p.metric)
        stack.extend(getattr(p, "policies", ()) if isinstance(p, AnyOf) else ())
    return found


def _distributed_rank(process_group: Any) -> int | None:
    """This rank in a torch.distributed job (None outside one)."""
    import sys

    if process_group is None and "torch.distributed" not in sys.modules:
        return None
    from weightvault.frameworks.torch_distributed import job_rank

    return job_rank(process_group)


def _is_distributed_save(state: Any, rank: int | None, process_group: Any, timeout: float | None) -> bool:
    """A save every rank takes part in: a process group given, or DTensors in the state. Makes
    the save's coordination group now, on the caller's (main) thread, for the writer thread."""
    if rank is None:
        return False
    from weightvault.frameworks.torch_distributed import holds_dtensor, prepare_group

    if process_group is None and not holds_dtensor(state):
        return False  # e.g. DDP: rank 0 saves its replica, as without torch.distributed
    prepare_group(process_group, timeout)
    return True


# Settings that decide what retention deletes (async_save does not).
_POLICY_SETTINGS = (
    "max_to_keep", "keep_every_n_steps", "keep_period_hours", "best", "custom_policy",
)  # fmt: skip


def _check_same_policy(state: dict[str, Any], settings: dict[str, Any], directory: Path) -> None:
    """Refuse to reopen a run whose stored retention settings differ from the given ones."""
    stored = state.get("settings")
    if not isinstance(stored, dict):
        return  # a new run, or one written before settings were stored
    changed = [
        f"{key}: stored {_show_setting(stored.get(key))}, given {_show_setting(settings.get(key))}"
        for key in _POLICY_SETTINGS
        if stored.get(key) != settings.get(key)
    ]
    if changed:
        raise CheckpointPolicyError(
            "the run was created with other retention settings; the next save would delete "
            "checkpoints by the new ones (" + "; ".join(changed) + ")",
            path=directory,
            hint="reopen with the stored settings (`weightvault runs DIR --json` shows them), "
            "or pass allow_policy_change=True to adopt the new ones",
        )


def _policy_id(policy: Any) -> str:
    """A custom policy as stored in the run: its repr, without memory addresses (a class
    without a dataclass repr would otherwise look changed in every process)."""
    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(policy))


def _show_setting(value: Any) -> str:
    if isinstance(value, dict) and "metric" in value:
        return f"({value['metric']!r}, {value.get('mode')!r}, {value.get('k')})"
    return repr(value)


def _hint_for(exc: OSError) -> str | None:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "free disk space or lower max_to_keep; the failed save left nothing behind"
    if exc.errno == errno.EFBIG:
        return "a file exceeded the size limit (ulimit -f or the filesystem's); lower shard_size"
    return None


def _report_unobserved(ref: weakref.ref[CheckpointManager]) -> None:
    """At exit, say so if a background save failed and nobody called save/wait/close again."""
    mgr = ref()
    if mgr is None or mgr._future is None or not mgr._future.done():
        return
    exc = mgr._future.exception()
    if exc is not None:
        import sys

        sys.stderr.write(f"weightvault: background save of step {mgr._inflight_step} failed and was never observed: {exc}\n")
