"""examples/object_store/run_local.py runs end to end against its own local moto server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("moto.server")
pytest.importorskip("s3fs")

ROOT = Path(__file__).resolve().parents[2]


def test_object_store_example_runs():
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "object_store" / "run_local.py"), "--steps", "4",
         "--train-seconds", "0.1"],
        capture_output=True, text=True, timeout=300, env=env, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = proc.stdout
    assert "kept [2, 3, 4]" in out
    assert "the evaluator saw steps [2, 3, 4]" in out
    assert "2 checksums verified" in out
    assert "3 checkpoint(s); latest 4" in out
