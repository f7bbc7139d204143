"""The digits pipeline end to end: train, SIGKILL, resume, evaluator, fine-tune (examples/digits/demo.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("sklearn")

DEMO = Path(__file__).resolve().parents[1] / "examples" / "digits" / "demo.py"


def test_digits_demo_kill_resume_evaluate(tmp_path: Path) -> None:
    steps, every, kill_at = 200, 20, 80
    summary_path = tmp_path / "summary.json"
    proc = subprocess.run(
        [sys.executable, str(DEMO), "--workdir", str(tmp_path / "work"), "--json", str(summary_path),
         "--steps", str(steps), "--save-every", str(every), "--kill-at", str(kill_at),
         "--step-delay", "0.01", "--finetune-steps", "20"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    s = json.loads(summary_path.read_text())
    assert "digits pipeline summary" in proc.stdout

    # killed mid-run, resumed from the latest committed checkpoint, finished
    assert s["killed_after_step"] >= kill_at and s["killed_after_step"] < steps
    assert s["resumed_from"] == s["killed_after_step"]
    assert s["final_step"] == steps

    # retention: the newest 5 plus up to 2 best by validation accuracy, all multiples of save_every
    kept = [k["step"] for k in s["kept"]]
    assert 5 <= len(kept) <= 7
    last_five = list(range(steps - 4 * every, steps + 1, every))
    assert kept[-5:] == last_five
    assert all(k % every == 0 for k in kept)
    for k in s["kept"]:
        assert k["kept_because"], k
    assert s["best_step"] in kept and 0.5 < s["best_val_acc"] <= 1.0

    # the evaluator saw each checkpoint once, in order, and never a partial one
    seen = s["evaluated_steps"] + s["skipped_steps"]
    assert len(seen) == len(set(seen))
    assert s["evaluated_steps"] == sorted(s["evaluated_steps"])
    assert set(last_five) <= set(s["evaluated_steps"])
    assert all(step % every == 0 for step in seen)
    assert s["best_test_acc"] > 0.8

    # fine-tuning loaded the body and left the new head alone
    ft = s["finetune"]
    assert ft["loaded"] == 4 and ft["skipped"] == 2 and ft["missing"] == 0
    assert ft["acc_after"] > 0.6
