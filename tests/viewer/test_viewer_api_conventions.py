"""The viewer's data layer for issue 14 item 8: roles in diffs, best/latest/kept in runs, tall heat-maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import weightvault
from weightvault.checkpoint.manager import CheckpointManager
from weightvault.viewer.data import ViewerData, heatmap


def test_diff_rows_carry_the_tensor_role(tmp_path: Path) -> None:
    a = {"fc.weight": np.zeros((2, 2), np.float32), "optimizer/state/0/exp_avg": np.zeros(4, np.float32),
         "optimizer/state/0/step": np.array(1.0, np.float32), "rng": np.zeros(8, np.uint8), "bn.running_mean": np.zeros(2, np.float32)}
    b = {k: v + 1 for k, v in a.items()}
    b["new.ema.weight"] = np.ones(2, np.float32)
    pa = weightvault.save(a, tmp_path / "a.safetensors", fsync=False)
    pb = weightvault.save(b, tmp_path / "b.safetensors", fsync=False)
    data = ViewerData([pa, pb])
    report = data.diff("0", "1")
    roles = {row["name"]: row["role"] for row in report["value_changed"]}
    assert roles == {"fc.weight": "model", "optimizer/state/0/exp_avg": "optimizer", "optimizer/state/0/step": "other",
                     "rng": "other", "bn.running_mean": "buffer"}
    assert [(r["name"], r["role"]) for r in report["added"]] == [("new.ema.weight", "ema")]
    data.close()


def _run(root: Path, best: tuple[str, str, int] | None, losses: list[float]) -> Path:
    with CheckpointManager(root, max_to_keep=2, best=best, fsync=False) as mgr:
        for i, loss in enumerate(losses, 1):
            mgr.save(i * 10, {"w": np.full(2, i, np.float32)}, metrics={"loss": loss, "acc": 1 - loss})
    return root


def test_run_marks_best_latest_and_why_kept(tmp_path: Path) -> None:
    run = _run(tmp_path / "run", ("acc", "max", 1), [0.9, 0.1, 0.5, 0.7])  # best acc: step 20
    data = ViewerData([run])
    answer = data.runs()["runs"][0]
    rows = {c["step"]: c for c in answer["checkpoints"]}
    assert sorted(rows) == [20, 30, 40]
    assert answer["best"]["step"] == 20 and answer["best"]["metric"] == "acc" and answer["best"]["mode"] == "max"
    assert [s for s, c in rows.items() if c["best"]] == [20]
    assert [s for s, c in rows.items() if c["latest"]] == [40]
    assert rows[20]["kept_because"] == ["best #1 by acc (max)"]
    assert rows[30]["kept_because"] == ["latest 2"]


def test_run_without_best_setting_falls_back_to_lowest_loss(tmp_path: Path) -> None:
    run = _run(tmp_path / "run", None, [0.9, 0.1, 0.5])
    with CheckpointManager(tmp_path / "run2", max_to_keep=None, fsync=False) as mgr:
        mgr.save(1, {"w": np.zeros(1, np.float32)}, metrics={"acc": 0.5})
    data = ViewerData([run, tmp_path / "run2"])
    first, second = data.runs()["runs"]
    assert first["best"]["step"] == 20 and first["best"]["metric"] == "loss" and "no best=" in first["best"]["source"]
    assert second["best"] is None and not any(c["best"] for c in second["checkpoints"])


def test_tall_heatmap_keeps_its_columns_and_shows_block_max() -> None:
    arr = np.zeros((50_000, 8), np.float32)
    arr[12_345, 3] = -7.0
    h = heatmap(arr, 96)
    assert (h["rows"], h["cols"]) == (96, 8) and h["downsampled"] and h["block"] == [521, 1]
    peaks = np.array([np.nan if v is None else v for v in h["max_abs"]]).reshape(96, 8)
    row = int(12_345 * 96 / 50_000)
    assert peaks[row, 3] == 7.0 and np.count_nonzero(peaks) == 1 and h["max_abs_max"] == 7.0
    means = np.array(h["values"]).reshape(96, 8)
    assert means[row, 3] == pytest.approx(-7.0 / 521, rel=0.01)  # block of 520 or 521 rows


@pytest.mark.parametrize(("shape", "cells"), [((300, 200), (96, 64)), ((8, 50_000), (8, 96)), ((1000, 2), (96, 2)), ((40, 3000), (16, 96))])
def test_heatmap_grid(shape: tuple[int, int], cells: tuple[int, int]) -> None:
    h = heatmap(np.ones(shape, np.float32), 96)
    assert (h["rows"], h["cols"]) == cells
    assert all(v == 1.0 for v in h["values"]) and all(v == 1.0 for v in h["max_abs"])
