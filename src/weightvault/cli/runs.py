"""``weightvault runs DIR``: the checkpoints of a training run and why each one is still there.

Reads the directory listing (the truth) and the run state file (for kept-because); takes no lock,
so it works while the trainer is writing.
"""

from __future__ import annotations

import datetime as _dt
import os
import stat
from pathlib import Path
from typing import Any

import click

from weightvault.cli.common import emit_json, human_bytes, json_option, print_table, warn
from weightvault.storage.cli import RunDirectory

__all__ = ["runs"]


def _format_metrics(metrics: dict[str, Any]) -> str:
    parts = []
    for key, value in metrics.items():
        shown = f"{value:.6g}" if isinstance(value, float) else str(value)
        parts.append(f"{key}={shown}")
    return " ".join(parts)


def disk_usage(step_dirs: list[Path]) -> dict[str, int]:
    """Bytes of the files in ``step_dirs``: ``sum_of_steps`` counts every file of every step
    (what each step holds on its own), ``on_disk`` counts each inode once (hard links shared
    between the steps of an incremental run are paid for once). Sizes are file sizes (st_size),
    so the two compare like for like; files that vanish meanwhile (retention) are skipped."""
    seen: set[tuple[int, int]] = set()
    total = unique = 0
    for step_dir in step_dirs:
        try:
            names = os.listdir(step_dir)
        except OSError:
            continue
        for name in names:
            try:
                st = os.lstat(step_dir / name)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            total += st.st_size
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                unique += st.st_size
    return {"on_disk": unique, "sum_of_steps": total}


def _written(c: Any) -> str:
    if c.written_bytes is None or c.size_bytes is None:
        return ""
    share = f" ({100 * c.written_bytes / c.size_bytes:.0f}%)" if c.size_bytes else ""
    return human_bytes(c.written_bytes) + share


def _local_time(ts: float) -> str:
    return _dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else ""


@click.command("runs")
@click.argument("directory", type=RunDirectory())  # a local directory or a URL (#17)
@json_option
def runs(directory: Path, as_json: bool) -> None:
    """List the checkpoints of a run directory: step, time, metrics, size, bytes written,
    kept-because, and the run's disk use (each hard-linked file counted once) against the sum of
    its steps."""
    from weightvault.checkpoint.manager import (
        LEFTOVER_RE,
        STATE_FILE,
        _best_from_state,
        read_state,
        scan_run,
    )
    from weightvault.errors import CheckpointNotFoundError

    infos = scan_run(directory)
    state = read_state(directory)
    if not infos and not state:
        raise CheckpointNotFoundError(
            f"not a weightvault run directory (no {STATE_FILE} and no committed step directories)",
            path=directory,
        )
    latest = infos[-1].step if infos else None
    best_policy = _best_from_state(state)
    best = None
    if best_policy is not None:
        ranked = best_policy.ranked([c.record for c in infos])
        best = ranked[0].step if ranked else None
    if isinstance(directory, Path):
        leftovers = sorted(n for n in os.listdir(directory) if LEFTOVER_RE.match(n))
        usage = disk_usage([c.path for c in infos])
    else:  # object storage (#17): uncommitted step prefixes; no hard links there
        from weightvault.storage.runs import uncommitted

        leftovers = uncommitted(directory)
        steps_total = sum(c.size_bytes or 0 for c in infos)  # no links: every object is paid for
        usage = {"on_disk": steps_total, "sum_of_steps": steps_total}
    if as_json:
        emit_json(
            {
                "directory": os.fspath(directory),
                "run_id": state.get("run_id"),
                "settings": state.get("settings"),
                "latest": latest,
                "best": best,
                "best_metric": None if best_policy is None else {"metric": best_policy.metric, "mode": best_policy.mode},
                "checkpoints": [c.to_dict() for c in infos],
                "disk": {
                    "on_disk_bytes": usage["on_disk"],
                    "sum_of_steps_bytes": usage["sum_of_steps"],
                },
                "leftovers": leftovers,
            }
        )
        return
    rows = []
    for c in infos:
        marks = [m for m, s in (("latest", latest), ("best", best)) if s == c.step]
        rows.append(
            [
                c.step,
                _local_time(c.time),
                _format_metrics(c.metrics),
                human_bytes(c.size_bytes) if c.size_bytes is not None else "",
                _written(c),
                f"{c.stall_seconds:.3f}s {c.mode}" if c.stall_seconds is not None else c.mode,
                "; ".join(c.kept_because) or "(not yet retained)",
                ",".join(marks),
            ]
        )
    footer = f"{len(infos)} checkpoint(s); latest {latest}"
    if best_policy is not None:
        footer += f"; best {best} by {best_policy.metric} ({best_policy.mode})"
    # its own line: shared (hard-linked) files of an incremental run are counted once on disk
    footer += (
        f"\non disk {human_bytes(usage['on_disk'])}, sum of the steps "
        f"{human_bytes(usage['sum_of_steps'])}"
    )
    print_table(
        ["step", "saved", "metrics", "size", "written", "stall", "kept because", ""],
        rows,
        title=os.fspath(directory),
        footer=footer,
        justify={"step": "right", "size": "right", "written": "right", "stall": "right"},
        wrap=("metrics", "kept because"),
    )
    if leftovers:
        warn(f"{len(leftovers)} leftover(s) of an interrupted save or delete; the next writer removes them: {', '.join(leftovers)}")
