"""The evaluator: a separate process that evaluates every new checkpoint of a run, once.

It watches the run directory with :func:`weightvault.watch` (never takes a lock, never sees a
partial checkpoint), loads each checkpoint's EMA weights into a fresh model with
``weightvault.restore(..., use_ema=True)`` and prints the step and the test accuracy. It exits
after ``--timeout`` seconds without a new checkpoint, or once it has evaluated ``--until-step``.

    python examples/digits/eval.py --run-dir runs/digits --timeout 60
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import MLP, accuracy, load_data

import weightvault
from weightvault.errors import CheckpointNotFoundError, FormatNotFoundError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--data", default=None)
    ap.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="seconds without a new checkpoint before exiting",
    )
    ap.add_argument("--poll", type=float, default=0.2)
    ap.add_argument(
        "--until-step",
        type=int,
        default=None,
        help="exit after evaluating this step (or a later one)",
    )
    ap.add_argument(
        "--log", default=None, help="also append one JSON line per evaluation to this file"
    )
    args = ap.parse_args(argv)

    torch.set_num_threads(1)
    data = load_data(args.data)
    print(f"watching {args.run_dir} (timeout {args.timeout:g}s)", flush=True)
    for step, path in weightvault.watch(args.run_dir, timeout=args.timeout, poll=args.poll):
        model = MLP(data.features)
        try:
            report = weightvault.restore(model, path, use_ema=True)
        except (CheckpointNotFoundError, FileNotFoundError, FormatNotFoundError):
            # Retention deleted it between the listing and the read: the trainer never waits for us.
            print(f"step {step:5d}  skipped (deleted by retention before evaluation)", flush=True)
            _log(args.log, {"step": step, "skipped": True})
            continue
        acc = accuracy(model, data.test)
        print(
            f"step {step:5d}  test_acc(ema) {acc:.4f}  [{len(report.loaded)} tensors from {path.name}]",
            flush=True,
        )
        _log(args.log, {"step": step, "test_acc": acc, "tensors": len(report.loaded)})
        if args.until_step is not None and step >= args.until_step:
            break
    print("evaluator done", flush=True)
    return 0


def _log(path: str | None, record: dict) -> None:
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    sys.exit(main())
