"""The whole pipeline in one go (what ``make demo`` runs).

1. start the evaluator (``eval.py``) watching the run directory, as a separate process;
2. start training (``train.py``) and kill it with SIGKILL once a checkpoint past ``--kill-at``
   has committed (an async save may be in flight: it must leave nothing visible behind);
3. start training again: it resumes from the latest committed checkpoint and runs to the end;
4. the evaluator exits after the final checkpoint; fine-tune (``finetune.py``) from the best one;
5. print a summary: steps, resume point, kept checkpoints and why, best accuracy, evaluations.

    python examples/digits/demo.py                 # work dir: ./demo-out/digits
    python examples/digits/demo.py --json summary.json --steps 300 --save-every 25 --kill-at 100
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _script(name: str, *args: str) -> list[str]:
    return [sys.executable, str(HERE / name), *args]


def _latest_committed(run_dir: Path) -> int | None:
    from weightvault.checkpoint.manager import scan_run

    found = scan_run(run_dir)
    return found[-1].step if found else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--workdir", default="demo-out/digits")
    ap.add_argument("--data", default=None, help="MNIST IDX directory (default: sklearn digits)")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--save-every", type=int, default=50)
    ap.add_argument(
        "--kill-at", type=int, default=250, help="SIGKILL the trainer once this step has committed"
    )
    ap.add_argument(
        "--step-delay", type=float, default=0.01, help="seconds per step, so the kill lands mid-run"
    )
    ap.add_argument("--finetune-steps", type=int, default=60)
    ap.add_argument("--json", default=None, help="write the summary as JSON to this file")
    args = ap.parse_args(argv)
    if not 0 < args.kill_at < args.steps:
        ap.error("--kill-at must be between 0 and --steps")

    started = time.perf_counter()
    work = Path(args.workdir)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    run_dir, eval_log = work / "run", work / "eval.jsonl"
    data = ["--data", args.data] if args.data else []
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    train_cmd = _script(
        "train.py", "--run-dir", str(run_dir), "--steps", str(args.steps), "--save-every", str(args.save_every),
        "--step-delay", str(args.step_delay), *data,
    )  # fmt: skip

    print(f"[demo] evaluator and trainer start; run directory {run_dir}", flush=True)
    evaluator = subprocess.Popen(
        _script(
            "eval.py",
            "--run-dir",
            str(run_dir),
            "--timeout",
            "120",
            "--until-step",
            str(args.steps),
            "--log",
            str(eval_log),
            *data,
        ),
        env=env,
    )
    first_out = work / "train-1.log"
    with open(first_out, "w") as log:
        trainer = subprocess.Popen(train_cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        while True:
            latest = _latest_committed(run_dir)
            if latest is not None and latest >= args.kill_at:
                break
            if trainer.poll() is not None:
                evaluator.kill()
                print(Path(first_out).read_text(), file=sys.stderr)
                raise SystemExit(
                    "[demo] the trainer ended before it could be killed (raise --step-delay)"
                )
            time.sleep(0.02)
        trainer.send_signal(signal.SIGKILL)
        trainer.wait()
    from weightvault.core.io import TMP_MARK

    # An async save in flight at the kill leaves a temporary directory; it is never listed as a
    # checkpoint, and the resumed trainer's manager removes it at start.
    leftovers = sorted(p.name for p in run_dir.iterdir() if TMP_MARK in p.name)
    resume_point = _latest_committed(run_dir)
    print(
        f"[demo] SIGKILLed the trainer after step {latest} committed; leftovers of a save in flight: {leftovers or 'none'}",
        flush=True,
    )

    second_out = work / "train-2.log"
    proc = subprocess.run(train_cmd, capture_output=True, text=True, env=env, check=False)
    second_out.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        evaluator.kill()
        raise SystemExit(f"[demo] resumed training failed:\n{proc.stdout}{proc.stderr}")
    sys.stdout.write(
        "".join(
            f"[train] {line}\n"
            for line in proc.stdout.splitlines()
            if line.startswith(("resuming", "done"))
        )
    )
    resumed_line = next(
        (line for line in proc.stdout.splitlines() if line.startswith("resuming from step")), ""
    )
    resumed_from = int(resumed_line.split()[3]) if resumed_line else None

    try:
        evaluator.wait(timeout=180)
    except subprocess.TimeoutExpired:
        evaluator.kill()
        raise SystemExit("[demo] the evaluator did not finish") from None

    ft_json = work / "finetune.json"
    ft = subprocess.run(
        _script("finetune.py", "--from", str(run_dir), "--steps", str(args.finetune_steps), "--json", str(ft_json), *data),
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    if ft.returncode != 0:
        raise SystemExit(f"[demo] fine-tuning failed:\n{ft.stdout}{ft.stderr}")
    finetune = json.loads(ft_json.read_text())

    summary = _summary(
        run_dir,
        eval_log,
        args,
        resume_point,
        resumed_from,
        leftovers,
        finetune,
        time.perf_counter() - started,
    )
    _print_summary(summary)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    return 0


def _summary(
    run_dir, eval_log, args, resume_point, resumed_from, leftovers, finetune, seconds
) -> dict:
    from weightvault.checkpoint.manager import scan_run

    kept = scan_run(run_dir)
    evals = (
        [json.loads(line) for line in eval_log.read_text().splitlines()]
        if eval_log.exists()
        else []
    )
    evaluated = [e for e in evals if not e.get("skipped")]
    best_val = max(kept, key=lambda c: c.metrics.get("val_acc", -1.0))
    best_test = max(evaluated, key=lambda e: e["test_acc"]) if evaluated else None
    report = finetune["report"]
    return {
        "steps": args.steps,
        "save_every": args.save_every,
        "killed_after_step": resume_point,
        "resumed_from": resumed_from,
        "leftovers_after_kill": leftovers,
        "final_step": kept[-1].step if kept else None,
        "kept": [
            {"step": c.step, "val_acc": c.metrics.get("val_acc"), "kept_because": c.kept_because}
            for c in kept
        ],
        "best_step": best_val.step,
        "best_val_acc": best_val.metrics.get("val_acc"),
        "evaluated_steps": [e["step"] for e in evaluated],
        "skipped_steps": [e["step"] for e in evals if e.get("skipped")],
        "best_test_step": best_test["step"] if best_test else None,
        "best_test_acc": best_test["test_acc"] if best_test else None,
        "finetune": {
            "checkpoint": Path(finetune["checkpoint"]).name,
            "loaded": report["counts"]["loaded"],
            "skipped": report["counts"]["skipped"],
            "missing": report["counts"]["missing"],
            "acc_before": finetune["acc_before"],
            "acc_after": finetune["acc_after"],
        },
        "seconds": round(seconds, 1),
    }


def _print_summary(s: dict) -> None:
    kept = ", ".join(f"{k['step']} ({'+'.join(k['kept_because']) or '?'})" for k in s["kept"])
    rows = [
        (
            "steps trained",
            f"{s['final_step']} of {s['steps']} (checkpoint every {s['save_every']})",
        ),
        ("killed (SIGKILL) after", f"step {s['killed_after_step']} committed"),
        ("resumed from", f"step {s['resumed_from']}"),
        (
            "leftovers after the kill",
            ", ".join(s["leftovers_after_kill"]) or "none (cleaned up / nothing in flight)",
        ),
        ("kept checkpoints", f"{len(s['kept'])}: {kept}"),
        ("best by val accuracy (EMA)", f"step {s['best_step']}: {s['best_val_acc']:.4f}"),
        (
            "evaluator",
            f"{len(s['evaluated_steps'])} checkpoints evaluated once each: {s['evaluated_steps']}",
        ),
        (
            "best test accuracy (EMA)",
            f"step {s['best_test_step']}: {s['best_test_acc']:.4f}"
            if s["best_test_step"] is not None
            else "-",
        ),
        (
            "fine-tune (parity, new head)",
            (
                f"from {s['finetune']['checkpoint']}: loaded {s['finetune']['loaded']} tensors, "
                f"head skipped ({s['finetune']['skipped']}); test acc "
                f"{s['finetune']['acc_before']:.3f} -> {s['finetune']['acc_after']:.3f}"
            ),
        ),
        ("wall time", f"{s['seconds']} s"),
    ]
    width = max(len(r[0]) for r in rows)
    print("\n== digits pipeline summary ==")
    for key, value in rows:
        print(f"{key.ljust(width)}  {value}")


if __name__ == "__main__":
    sys.exit(main())
