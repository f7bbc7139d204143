"""Tables at an ordinary 80-column terminal hide nothing: no number cut, no column dropped.

Each command runs in a real pseudo-terminal (``os.openpty`` with its size set by ``TIOCSWINSZ``
and ``COLUMNS=80``), so rich sees a terminal exactly as a user's shell gives it. The same command
with ``--json`` gives the numbers; each must appear whole in the table, every column header must
be there, and long tensor names, folded over several lines, must read back in full.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import numpy as np
import pytest

import weightvault

WIDTH = 80
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")
LONG = "model.encoder.layers.11.attention.self_attention.query_key_value"  # 64 characters


def run_in_terminal(*args: str | Path, columns: int = WIDTH) -> str:
    """Run the CLI with stdout on a pty of ``columns`` columns; the text it shows, without escapes."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    env = {**os.environ, "COLUMNS": str(columns), "LINES": "50", "TERM": "xterm-256color"}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "weightvault", *map(str, args)],
        stdin=slave, stdout=slave, stderr=subprocess.PIPE, env=env, close_fds=True,
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.stderr is not None
    with proc.stderr:
        err = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert "Traceback" not in err, err
    text = _ANSI.sub("", b"".join(chunks).decode()).replace("\r\n", "\n").replace("\r", "")
    return text


def run_json(*args: str | Path) -> dict:
    result = subprocess.run(
        [sys.executable, "-m", "weightvault", *map(str, args), "--json"], capture_output=True, text=True, check=False
    )
    assert result.stdout, result.stderr
    return json.loads(result.stdout)


def g6(value: float) -> str:
    """How the tables print a statistic: whole numbers in full, others to 6 significant digits."""
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.6g}"


def assert_fits_and_nothing_cut(text: str) -> None:
    """No ellipsis; table lines fit (a footer or title naming a long temporary path may wrap)."""
    assert "…" not in text, text
    for line in text.splitlines():
        if "/tmp" not in line and "pytest-" not in line:
            assert len(line) <= WIDTH, f"{len(line)} columns: {line!r}"


def assert_tokens(text: str, tokens: list[str]) -> None:
    """Each token appears whole: not as the start of a longer number, not cut."""
    for token in tokens:
        pattern = r"(?<![\w.+-])" + re.escape(token) + r"(?![\w.])"
        assert re.search(pattern, text), f"{token!r} not shown whole in:\n{text}"


def assert_headers(text: str, headers: list[str]) -> None:
    for header in headers:
        assert re.search(r"(?<!\w)" + re.escape(header) + r"(?!\w)", text), f"header {header!r} missing:\n{text}"


def column_stream(text: str, header: str, next_header: str | None, after: int = 0) -> str | None:
    """Concatenated cells of a left-justified column in the table layout (None: record layout)."""
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if line.lstrip().startswith(("name", "source", "status", "change")) and header in line:
            start = line.index(header, after)
            if next_header and next_header not in line[start + len(header) :]:
                return None
            end = line.index(next_header, start + len(header)) if next_header else None
            return "".join(row[start:end].strip() for row in lines[index + 1 :])
    return None


def first_cells(text: str) -> str:
    """The record layout's row titles (and the table layout's first column), concatenated."""
    return "".join(line.split("  ")[0] for line in text.splitlines() if line and not line.startswith(" "))


def assert_names_whole(text: str, header: str, next_header: str | None, names: list[str], after: int = 0) -> None:
    stream = column_stream(text, header, next_header, after)
    if stream is not None and stream.startswith("".join(names)[:4]):
        assert "".join(names) in stream, f"{names} not whole in column {header!r}:\n{text}"
    else:
        assert "".join(names) in first_cells(text), f"{names} not whole:\n{text}"


# -- the files --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tables")
    rng = np.random.default_rng(3)
    tensors = {
        f"{LONG}.weight": np.full((768, 12), -1.99472e-05, np.float32),
        f"{LONG}.bias": rng.normal(size=12).astype(np.float32) * np.float32(1e-7),
        "head.scale": np.array([np.nan, np.inf, -np.inf, 123456.789, -0.000123456], np.float32),
        "steps": np.arange(1_000_000, 1_000_010, dtype=np.int64),
    }
    return Path(weightvault.save(tensors, root / "m.safetensors"))


def test_ls_at_80_columns(model: Path) -> None:
    text = run_in_terminal("ls", model)
    doc = run_json("ls", model)
    assert_fits_and_nothing_cut(text)
    assert_headers(text, ["name", "dtype", "shape", "size"])
    shapes = ["[" + ", ".join(map(str, t["shape"])) + "]" for t in doc["tensors"]]
    assert_tokens(text, [t["dtype"] for t in doc["tensors"]])
    for shape in shapes:
        assert shape in text, shape
    assert f"{doc['total_parameters']:,} model parameters" in text
    assert_names_whole(text, "name", "dtype", [t["name"] for t in doc["tensors"]])


def test_stats_at_80_columns(model: Path) -> None:
    text = run_in_terminal("stats", model)
    doc = run_json("stats", model)
    assert_fits_and_nothing_cut(text)
    assert_headers(text, ["name", "dtype", "min", "max", "mean", "std", "zeros", "nan", "inf"])
    tokens = []
    for row in doc["tensors"]:
        tokens += [g6(row[k]) for k in ("min", "max", "mean", "std") if row[k] is not None]
        tokens += [str(row[k]) for k in ("zeros", "nan", "inf")]
    assert "-1.99472e-05" in tokens  # the number of the issue
    assert_tokens(text, tokens)
    assert_names_whole(text, "name", "dtype", [t["name"] for t in doc["tensors"]])


def test_diff_at_80_columns(model: Path, tmp_path: Path) -> None:
    with weightvault.open(model) as r:
        tensors = {n: np.asarray(r.get(n)) for n in r.keys()}
    tensors[f"{LONG}.bias"] = tensors[f"{LONG}.bias"] + np.float32(0.000123457)
    tensors[f"{LONG}.extra_parameter_added_in_b"] = np.ones(3, np.float32)
    other = weightvault.save(tensors, tmp_path / "other.safetensors")
    text = run_in_terminal("diff", model, other)
    doc = run_json("diff", model, other)
    assert_fits_and_nothing_cut(text)
    assert_headers(text, ["change", "name", "detail"])
    tokens = []
    for change in doc["value_changed"]:
        tokens += [g6(change["max_abs"]), g6(change["max_rel"]), f"{change['changed']}/{change['numel']}"]
    assert_tokens(text, tokens)
    assert_names_whole(text, "name", "detail", [c["name"] for c in doc["value_changed"]] and [f"{LONG}.extra_parameter_added_in_b"])


def test_runs_at_80_columns(tmp_path: Path) -> None:
    from weightvault.checkpoint.manager import CheckpointManager

    run = tmp_path / "run"
    with CheckpointManager(run, max_to_keep=None, fsync=False, best=("val_loss", "min")) as mgr:
        for step, loss in ((1_000_000, 0.123456789), (2_000_000, 0.0000987654321), (3_000_000, 12345.678)):
            mgr.save(step, {"w": np.zeros(4, np.float32)}, metrics={"val_loss": loss, "accuracy_top5": 1 - loss / 1e5})
    text = run_in_terminal("runs", run)
    doc = run_json("runs", run)
    assert_fits_and_nothing_cut(text)
    assert_headers(text, ["step", "saved", "metrics", "size", "stall", "kept because"])
    tokens = []
    for ckpt in doc["checkpoints"]:
        tokens.append(str(ckpt["step"]))
        tokens += [f"{k}={g6(v)}" for k, v in ckpt["metrics"].items()]
    assert_tokens(text, tokens)


def test_convert_dry_run_at_80_columns(model: Path, tmp_path: Path) -> None:
    args = ("convert", model, tmp_path / "out.safetensors", "--dry-run", "--rename", r"^model\.encoder\.=enc.")
    text = run_in_terminal(*args)
    doc = run_json(*args)
    assert_fits_and_nothing_cut(text)
    assert_headers(text, ["source", "shape", "target", "transforms"])
    for row in doc["tensors"]:
        assert "[" + ", ".join(map(str, row["target_shape"])) + "]" in text
    assert_names_whole(text, "source", "shape", [", ".join(r["sources"]) for r in doc["tensors"]])
    header = next(line for line in text.splitlines() if line.startswith("source"))
    assert_names_whole(text, "target", "shape", [r["target"] for r in doc["tensors"]], after=header.index("target"))


def test_restore_report_at_80_columns(model: Path, tmp_path: Path) -> None:
    target = weightvault.save(
        {
            f"{LONG}.weight": np.zeros((768, 13), np.float32),  # shape mismatch
            f"{LONG}.a_parameter_the_checkpoint_lacks": np.zeros(2, np.float32),  # missing
            "steps": np.zeros(10, np.int64),
        },
        tmp_path / "target.safetensors",
    )
    text = run_in_terminal("restore-report", model, "--target", target)
    doc = run_json("restore-report", model, "--target", target)["report"]
    assert_fits_and_nothing_cut(text)
    assert_headers(text, ["status", "model name", "checkpoint key", "checkpoint shape", "model shape"])
    for bad in doc["mismatched"]:
        assert_tokens(text, [", ".join(map(str, bad["source_shape"])), ", ".join(map(str, bad["target_shape"]))])
    assert_tokens(text, [f"{k.replace('mismatched', 'shape mismatch')} {v}" for k, v in doc["counts"].items()])
    names = [r["name"] for r in doc["mismatched"] + doc["unexpected"]] + doc["missing"]  # in row order
    assert_names_whole(text, "model name", "checkpoint key", names)
    keys = [r["source"] for r in doc["mismatched"] + doc["unexpected"]]
    header = next(line for line in text.splitlines() if line.startswith("status"))
    assert_names_whole(text, "checkpoint key", "checkpoint shape", keys, after=header.index("checkpoint key"))


def test_piped_output_is_never_narrowed(model: Path) -> None:
    """Not a terminal: one row per line whatever COLUMNS says, so scripts can cut columns."""
    result = subprocess.run(
        [sys.executable, "-m", "weightvault", "stats", str(model)],
        capture_output=True, text=True, check=True, env={**os.environ, "COLUMNS": "40"},
    )
    rows = result.stdout.splitlines()
    assert rows[0].split() == ["name", "dtype", "min", "max", "mean", "std", "zeros", "nan", "inf"]
    assert any(line.startswith(f"{LONG}.weight ") and "-1.99472e-05" in line for line in rows)
