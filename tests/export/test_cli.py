"""``weightvault export-hw`` / ``import-hw`` and reading an export folder with ls/show."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import weightvault
from weightvault.export.numbers import quantize


def _ckpt(tmp_path: Path) -> Path:
    rng = np.random.default_rng(5)
    sd = {
        "fc.weight": rng.uniform(-0.9, 0.9, (4, 3)).astype(np.float32),
        "fc.bias": np.array([0.5, 1.5, -3.0, 0.25], np.float32),  # two values out of Q1.15 range
        "gru.weight_ih_l0": rng.uniform(-0.9, 0.9, (6, 2)).astype(np.float32),
        "bn.num_batches_tracked": np.array(7, np.int64),
    }
    path = tmp_path / "m.safetensors"
    weightvault.save(sd, path)
    return path


def test_export_table_and_saturation_warning(tmp_path: Path, cli_run) -> None:
    ckpt = _ckpt(tmp_path)
    code, out, err = cli_run(
        "export-hw",
        ckpt,
        tmp_path / "o",
        "--format",
        "coe",
        "--number",
        "q1.15",
        "--exclude",
        "bn.*",
        "--split",
        "gru.weight_*:0:gru",
        "--one-memory",
        "weights",
        "--bram-depth",
        "64",
    )
    assert code == 0, err
    header = out.splitlines()[0].split()
    assert header == [
        "name",
        "shape",
        "number",
        "max_abs_err",
        "rms_err",
        "saturated",
        "memory",
        "base",
        "words",
    ]
    rows = {ln.split()[0]: ln.split() for ln in out.splitlines()[1:] if ln.strip()}
    assert rows["fc.bias"][5] == "2"
    assert rows["gru.weight_ih_l0.n"][7] == "24"  # fc.weight 12 + fc.bias 4 + r 4 + z 4
    assert "bn.num_batches_tracked" not in rows
    assert err.count("WARNING") == 1
    assert (
        "WARNING fc.bias: 2 of 4 values out of range [-1, 0.999969] of Q1.15 and saturated" in err
    )
    side = json.loads((tmp_path / "o" / "export.json").read_text())
    bias = next(t for t in side["tensors"] if t["name"] == "fc.bias")
    assert bias["error"]["saturated"] == 2 and bias["error"]["max_abs"] == 2.0
    assert side["memories"][0]["depth"] == 64
    assert (tmp_path / "o" / "memory_map.vh").exists()


def test_export_json_and_options(tmp_path: Path, cli_run) -> None:
    ckpt = _ckpt(tmp_path)
    code, out, err = cli_run(
        "export-hw",
        ckpt,
        tmp_path / "o",
        "--format",
        "mem",
        "--number",
        "int8",
        "--per-channel",
        "0",
        "--zero-point",
        "--lanes",
        "4",
        "--lane-order",
        "msb",
        "--transpose",
        "fc.weight:1,0",
        "--order",
        "F",
        "--include",
        "fc.*",
        "--json",
    )
    assert code == 0, err
    data = json.loads(out)
    assert [t["name"] for t in data["tensors"]] == ["fc.weight", "fc.bias"]
    w = data["tensors"][0]
    assert w["shape"] == [3, 4] and w["order"] == "F" and w["lanes"] == 4
    assert w["lane_order"] == "msb" and len(w["number"]["scale"]) == 3
    assert w["number"]["symmetric"] is False


def test_import_hw_writes_native_checkpoint(tmp_path: Path, cli_run) -> None:
    ckpt = _ckpt(tmp_path)
    cli_run(
        "export-hw",
        ckpt,
        tmp_path / "o",
        "--format",
        "c",
        "--number",
        "ap_fixed<8,3>",
        "--include",
        "fc.*",
    )
    code, out, err = cli_run("import-hw", tmp_path / "o", tmp_path / "back.safetensors")
    assert code == 0, err
    assert "wrote 2 tensors" in out
    back = weightvault.load(tmp_path / "back.safetensors")
    src = weightvault.load(ckpt)
    q = quantize(src["fc.weight"], "ap_fixed<8,3>")
    np.testing.assert_array_equal(back["fc.weight"], q.dequantized().astype(np.float32))
    code, _, err = cli_run("import-hw", tmp_path / "o", tmp_path / "codes.safetensors", "--codes")
    assert code == 0, err
    codes = weightvault.load(tmp_path / "codes.safetensors")["fc.weight"]
    assert codes.dtype == np.int8 and np.array_equal(codes, q.codes)


def test_ls_and_show_read_an_export_folder(tmp_path: Path, cli_run) -> None:
    ckpt = _ckpt(tmp_path)
    cli_run(
        "export-hw",
        ckpt,
        tmp_path / "o",
        "--format",
        "mif",
        "--number",
        "Q1.7",
        "--include",
        "fc.*",
    )
    code, out, _ = cli_run("ls", tmp_path / "o")
    assert code == 0 and "fc.weight" in out and "(hwexport)" in out
    code, out, _ = cli_run("show", tmp_path / "o", "fc.bias", "-o", "values=codes")
    assert code == 0
    assert "int8" in out and "[  64,  127, -128,   32]" in out


def test_errors_are_one_line(tmp_path: Path, cli_run) -> None:
    ckpt = _ckpt(tmp_path)
    code, _, err = cli_run("export-hw", ckpt, tmp_path / "o", "--number", "Q1.99")
    assert code == 2 and err.startswith("ERROR") and "Q1.99" in err
    code, _, err = cli_run(
        "export-hw", ckpt, tmp_path / "o", "--number", "q1.15", "--bram-depth", "4"
    )
    assert code == 2 and "BRAM depth is 4" in err and "TIP" in err
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    code, _, err = cli_run("export-hw", ckpt, tmp_path / "busy")
    assert code == 2 and "refusing to replace" in err


def test_fpga_example_runs(tmp_path: Path) -> None:
    import importlib.util

    script = Path(__file__).resolve().parents[2] / "examples" / "fpga" / "export_article_net.py"
    spec = importlib.util.spec_from_file_location("export_article_net", script)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    module.main(["--out", str(tmp_path / "fpga")])
    side = json.loads((tmp_path / "fpga" / "bram" / "export.json").read_text())
    names = [t["name"] for t in side["tensors"]]
    assert names[:3] == ["fc1.weight", "fc1.bias", "fc2.weight"]
    assert "gru.weight_ih_l0.z" in names and side["number"] == "Q1.15"
    assert (tmp_path / "fpga" / "bram" / "weights.coe").exists()
    assert len(list((tmp_path / "fpga" / "per-tensor").glob("*.coe"))) == len(names)
