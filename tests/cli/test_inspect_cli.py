"""ls, show, stats, diff, verify, formats, convert: exact output where it matters, --json always."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import weightvault


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    return weightvault.save(
        {
            "encoder.layer.weight": np.array([[0.123456, -1.5], [2.0, 1e-5]], np.float32),
            "encoder.layer.bias": np.zeros(2, np.float32),
            "head[0]": np.array([np.nan, 1.0, np.inf], np.float32),
        },
        tmp_path / "m.safetensors",
        metadata={"step": 10},
    )


def test_ls_table_and_totals(ckpt: Path, cli_run) -> None:
    code, out, _ = cli_run("ls", ckpt)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["name", "dtype", "shape", "size"]
    assert "head[0]" in out  # no markup interpretation of brackets
    assert lines[-1] == "3 tensors, 9 model parameters, 36 B (native)"


def test_ls_json(ckpt: Path, cli_run) -> None:
    code, out, _ = cli_run("ls", ckpt, "--json")
    doc = json.loads(out)
    assert code == 0 and doc["version"] == "1" and doc["format"] == "native"
    assert [t["name"] for t in doc["tensors"]] == ["encoder.layer.weight", "encoder.layer.bias", "head[0]"]
    assert doc["metadata"] == {"step": 10}


def test_show_print_options(ckpt: Path, cli_run) -> None:
    code, out, _ = cli_run("show", ckpt, "encoder.layer.weight", "--precision", "2", "--no-sci")
    assert code == 0
    assert out.splitlines()[1:] == ["[[ 0.12, -1.50],", " [ 2.00,  0.00]]"]  # fixed, like torch
    code, out, _ = cli_run("show", ckpt, "encoder.layer.weight", "--precision", "3", "--sci")
    assert "1.235e-01" in out and "1.000e-05" in out
    code, out, _ = cli_run("show", ckpt, "encoder.layer.weight", "--json")
    assert json.loads(out)["values"] == [[pytest.approx(0.123456), -1.5], [2.0, pytest.approx(1e-5)]]


def test_show_threshold_summarises(tmp_path: Path, cli_run) -> None:
    p = weightvault.save({"v": np.arange(100, dtype=np.int32)}, tmp_path / "v.safetensors")
    code, out, _ = cli_run("show", p, "v", "--threshold", "10", "--edgeitems", "2")
    assert out.splitlines()[1] == "[ 0,  1, ..., 98, 99]"


def test_stats_counts_nan_inf_zeros(ckpt: Path, cli_run) -> None:
    code, out, err = cli_run("stats", ckpt, "--json")
    rows = {r["name"]: r for r in json.loads(out)["tensors"]}
    assert rows["encoder.layer.bias"]["zeros"] == 2
    assert rows["head[0]"]["nan"] == 1 and rows["head[0]"]["inf"] == 1
    assert rows["encoder.layer.weight"]["min"] == pytest.approx(-1.5)
    code, out, err = cli_run("stats", ckpt)
    assert "NaN or Inf: head[0]" in err


def test_diff_reports_each_kind_and_exit_status(tmp_path: Path, cli_run) -> None:
    a = weightvault.save({"same": np.ones(3), "changed": np.zeros(3), "gone": np.ones(1), "resh": np.ones(4)}, tmp_path / "a.safetensors")
    b = weightvault.save({"same": np.ones(3), "changed": np.array([0, 0.5, 0]), "new": np.ones(1), "resh": np.ones((2, 2))}, tmp_path / "b.safetensors")
    code, out, _ = cli_run("diff", a, b, "--json")
    doc = json.loads(out)
    assert code == 1
    assert doc["added"] == ["new"] and doc["removed"] == ["gone"]
    assert doc["shape_changed"] == [{"name": "resh", "a": [4], "b": [2, 2]}]
    assert doc["value_changed"][0]["name"] == "changed" and doc["value_changed"][0]["max_abs"] == 0.5
    code, out, _ = cli_run("diff", a, a)
    assert code == 0 and out.strip().endswith("4 equal, 0 changed, 0 added, 0 removed, 0 reshaped")
    c = weightvault.save({"x": np.array([1.0, 2.0])}, tmp_path / "c.safetensors")
    d = weightvault.save({"x": np.array([1.0, 2.001])}, tmp_path / "d.safetensors")
    assert cli_run("diff", c, d)[0] == 1
    assert cli_run("diff", c, d, "--atol", "0.01")[0] == 0
    assert cli_run("diff", c, d, "--rtol", "0.001")[0] == 0


def test_verify_ok_and_corrupt(ckpt: Path, cli_run) -> None:
    code, out, _ = cli_run("verify", ckpt)
    assert code == 0 and out.startswith("OK: 3 tensors checked")
    data = bytearray(ckpt.read_bytes())
    data[-1] ^= 1
    ckpt.write_bytes(bytes(data))
    code, out, err = cli_run("verify", ckpt, "--json")
    doc = json.loads(out)
    assert code == 1 and not doc["ok"] and "head[0]" in doc["failures"][0]


def test_errors_are_one_line_and_nonzero(tmp_path: Path, cli_run) -> None:
    code, out, err = cli_run("ls", tmp_path / "nope.pt")
    assert code == 2 and err.startswith("ERROR ") and len(err.strip().splitlines()) == 1
    junk = tmp_path / "junk.xyz"
    junk.write_bytes(b"\x07" * 64)
    code, _, err = cli_run("ls", junk)
    assert code == 2 and "not a weight file" in err and "TIP" in err
    # A known ending picks that format's reader, which says what is wrong with the file.
    junk_bin = tmp_path / "junk.bin"
    junk_bin.write_bytes(b"\x07" * 64)
    code, _, err = cli_run("ls", junk_bin)
    assert code == 2 and "not a torch.save file" in err


def test_convert_to_plain_safetensors_and_back(ckpt: Path, tmp_path: Path, cli_run) -> None:
    out_path = tmp_path / "plain.safetensors"
    code, out, err = cli_run("convert", ckpt, out_path, "--to", "safetensors")
    assert code == 0, err
    back = tmp_path / "back"
    assert cli_run("convert", out_path, back)[0] == 0
    with weightvault.open(back) as r:
        assert r.manifest["source"] == {"path": str(out_path), "format": "safetensors"}
    assert cli_run("diff", ckpt, back)[0] == 0


def test_formats_lists_native(cli_run) -> None:
    code, out, _ = cli_run("formats", "--json")
    rows = {r["name"]: r for r in json.loads(out)["formats"]}
    assert rows["native"]["write"] and rows["safetensors"]["read"]


def test_console_script_and_module_entry_points(ckpt: Path) -> None:
    for cmd in ([sys.executable, "-m", "weightvault"], [str(Path(sys.executable).with_name("weightvault"))]):
        result = subprocess.run([*cmd, "ls", str(ckpt), "--json"], capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["total_parameters"] == 9
    result = subprocess.run([sys.executable, "-m", "weightvault", "ls", "/nonexistent.pt"], capture_output=True, text=True, check=False)
    assert result.returncode == 2 and result.stderr.startswith("ERROR") and "Traceback" not in result.stderr


def test_core_import_pulls_no_framework() -> None:
    code = "import sys, weightvault; weightvault.open; print(sorted(m for m in ('torch','tensorflow','jax','keras','h5py','onnx') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_ls_on_a_tensorflow_run_directory_lists_every_checkpoint(fixtures_dir: Path, cli_run) -> None:
    code, out, err = cli_run("ls", fixtures_dir / "tensorflow" / "tf2_object")
    assert code == 0, err
    tail = out.splitlines()[-3:]
    assert tail == ["checkpoints in this directory (2):", "  ckpt-1", "  ckpt-2  <- latest"]
    code, out, _ = cli_run("ls", fixtures_dir / "tensorflow" / "tf2_object", "--json")
    prefixes = [c["prefix"].rsplit("/", 1)[-1] for c in json.loads(out)["metadata"]["checkpoints"]]
    assert prefixes == ["ckpt-1", "ckpt-2"]


@pytest.mark.parametrize("json_flag", [[], ["--json"]], ids=["table", "json"])
def test_output_cut_short_by_a_pipe_ends_quietly(tmp_path: Path, json_flag: list[str]) -> None:
    """`weightvault ls big.pt | head -1`: no traceback, no ERROR line when head stops reading."""
    path = tmp_path / "many.safetensors"
    weightvault.save({f"layer{i}.weight": np.zeros(2, np.float32) for i in range(4000)}, path)  # > 64 KiB listing
    proc = subprocess.Popen([sys.executable, "-m", "weightvault", "ls", *json_flag, str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()  # what head does after its line
    err = proc.stderr.read().decode()
    proc.stderr.close()
    proc.wait(timeout=60)
    assert first.strip()
    assert err == ""
