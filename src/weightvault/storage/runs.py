"""A checkpoint run on an object store, as readers see it: the listing of committed steps.

The same layout as a local run directory (see :mod:`weightvault.checkpoint.manager`), as
prefixes: ``<run>/step-00000100/`` holds a native checkpoint plus the manager's
``checkpoint.json``, and counts only when its ``COMMITTED`` object is there (written last, deleted
first). ``weightvault-run.json`` is the index; the listing is the truth. These functions are
what ``scan_run``, ``watch``, ``runs`` and the manager call for a URL.
"""

from __future__ import annotations

import json
from typing import Any

from weightvault.errors import CheckpointDeletedError
from weightvault.formats.native import COMMIT_MARKER
from weightvault.storage.location import Location

__all__ = ["read_consumers", "read_record", "read_state", "scan_run"]

#: largest run/record/consumer JSON read
MAX_JSON = 16 << 20


def _json(loc: Location) -> Any:
    try:
        info = loc.info()
        if info is None or int(info.get("size") or 0) > MAX_JSON:
            return None
        return json.loads(loc.read_range(0, int(info.get("size") or 0)) or b"null")
    except (OSError, ValueError):
        return None


def read_record(step_dir: Location, step: int) -> dict[str, Any] | None:
    """The manager's record of a committed step prefix, or None if it is not one of ours."""
    from weightvault.checkpoint.manager import RECORD_FILE, RECORD_FORMAT

    if not step_dir.child(COMMIT_MARKER).exists():
        return None
    record = _json(step_dir.child(RECORD_FILE))
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT or record.get("step") != step:
        return None
    return record


def read_state(run: Location) -> dict[str, Any]:
    from weightvault.checkpoint.manager import RUN_FORMAT, STATE_FILE

    state = _json(run.child(STATE_FILE))
    return state if isinstance(state, dict) and state.get("format") == RUN_FORMAT else {}


def step_prefixes(run: Location) -> list[tuple[int, Location]]:
    """Every ``step-N`` prefix under the run (committed or not), in step order."""
    from weightvault.checkpoint.manager import STEP_RE

    found = []
    for entry in run.listdir():
        m = STEP_RE.match(entry["base"])
        if m and entry.get("type") == "directory":
            found.append((int(m.group(1)), run.child(entry["base"])))
    return sorted(found, key=lambda x: x[0])


def scan_run(run: Location) -> list[Any]:
    """Committed checkpoints of a run in step order (``CheckpointInfo``, ``path`` a Location)."""
    from weightvault.checkpoint.manager import _info_from_record

    reasons = {
        int(c["step"]): list(c.get("kept_because") or [])
        for c in read_state(run).get("checkpoints", [])
        if isinstance(c, dict) and isinstance(c.get("step"), int)
    }
    found = []
    for step, loc in step_prefixes(run):
        record = read_record(loc, step)
        if record is not None:
            found.append(_info_from_record(loc, record, reasons.get(step, [])))  # type: ignore[arg-type]
    return found


def read_consumers(run: Location) -> dict[str, dict[str, Any]]:
    from weightvault.checkpoint.manager import CONSUMER_FORMAT, CONSUMER_NAME_RE, CONSUMERS_DIR

    found = {}
    root = run.child(CONSUMERS_DIR)
    for entry in root.listdir():
        name, _, ext = entry["base"].rpartition(".")
        if ext != "json" or not CONSUMER_NAME_RE.match(name):
            continue
        data = _json(root.child(entry["base"]))
        if isinstance(data, dict) and data.get("format") == CONSUMER_FORMAT:
            found[name] = data
    return found


def deleted_step_error(step_dir: Location) -> CheckpointDeletedError | None:
    from weightvault.checkpoint.manager import STATE_FILE, STEP_RE

    m = STEP_RE.match(step_dir.name)
    if m is None or not step_dir.parent.child(STATE_FILE).exists():
        return None
    step = int(m.group(1))
    if read_record(step_dir, step) is not None:
        return None
    return CheckpointDeletedError(
        f"step {step} was deleted by retention before it could be read",
        path=step_dir.url,
        hint="the writer's retention does not wait for readers: watch(dir, consumer=NAME) makes it "
        "keep each step until NAME has read it, or keep more checkpoints (max_to_keep)",
    )


def uncommitted(run: Any) -> list[str]:
    """Names of step prefixes without ``COMMITTED`` (interrupted saves or deletes)."""
    from weightvault.storage import location

    loc = location(run)
    return [p.name for _s, p in step_prefixes(loc) if not p.child(COMMIT_MARKER).exists()]
