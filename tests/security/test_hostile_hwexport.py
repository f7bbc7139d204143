"""Hostile export-hw folders: a sidecar (export.json) and memory files edited to attack the reader.

Each folder is written by ``weightvault.export_hw`` and then edited. Every read ends in a clean
error naming the file, reads nothing outside the folder and allocates nothing the files cannot
justify. (Found by the fuzzer's hwexport seeds; these pin each check.)
"""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import weightvault
from weightvault.errors import CorruptFileError, UnexpectedReadError


def _export(tmp_path: Path, file_format: str, number: str = "int8") -> Path:
    rng = np.random.default_rng(0)
    tensors = {"w": rng.uniform(-1, 1, (4, 3)).astype(np.float32), "b": rng.uniform(-1, 1, 4).astype(np.float32)}
    out = tmp_path / f"hw-{file_format}"
    weightvault.export_hw(tensors, out, file_format=file_format, number=number, per_channel=number == "int8")
    return out


def _edit_sidecar(folder: Path, change: Callable[[dict[str, Any]], None]) -> None:
    side = folder / "export.json"
    doc = json.loads(side.read_text())
    change(doc)
    side.write_text(json.dumps(doc))


def _entry(doc: dict[str, Any], name: str = "w") -> dict[str, Any]:
    return next(t for t in doc["tensors"] if t["name"] == name)


def _read_all(folder: Path) -> None:
    with weightvault.open(folder) as r:
        for name in r.keys():
            np.asarray(r.get(name)).tobytes()


def _refused(folder: Path, match: str) -> CorruptFileError:
    tracemalloc.start()
    try:
        with pytest.raises(CorruptFileError, match=match) as err:
            _read_all(folder)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert not isinstance(err.value, UnexpectedReadError), err.value  # a real check, not the net
    assert str(folder) in str(err.value)
    assert peak < 32 << 20
    return err.value


def test_a_file_name_leaving_the_folder_is_refused(tmp_path: Path) -> None:
    folder = _export(tmp_path, "coe")
    secret = tmp_path / "secret.coe"
    secret.write_text((folder / "w.coe").read_text())  # a valid memory file: only the path is wrong
    _edit_sidecar(folder, lambda d: [m.update(file="../secret.coe") for m in d["memories"]])
    _refused(folder, "leaves")


def test_a_nul_byte_in_a_file_name_is_refused(tmp_path: Path) -> None:
    folder = _export(tmp_path, "coe")
    _edit_sidecar(folder, lambda d: [m.update(file="w.coe\x00.txt") for m in d["memories"]])
    _refused(folder, "NUL")


@pytest.mark.parametrize(("field", "value", "match"), [
    ("count", 2**40, "not the number of elements"),
    ("lanes", 2**40, "lanes"),
    ("bits", 0, "bits"),
    ("shape", [2**62, 2**62, 0, -1], "shape"),
    ("base", -5, "non-negative"),
    ("words", "many", "non-negative int"),
    ("file", None, "str"),
])
def test_lying_fields_are_refused_before_allocating(tmp_path: Path, field: str, value: Any, match: str) -> None:
    folder = _export(tmp_path, "coe")
    _edit_sidecar(folder, lambda d: _entry(d).update({field: value}))
    _refused(folder, match)


def test_per_channel_scales_must_match_the_axis(tmp_path: Path) -> None:
    folder = _export(tmp_path, "mif")
    _edit_sidecar(folder, lambda d: _entry(d)["number"].update(scale=[0.1] * 70))
    _refused(folder, "scale has 70 values")


def test_a_zero_point_too_large_for_int64_is_refused(tmp_path: Path) -> None:
    folder = _export(tmp_path, "mif")
    _edit_sidecar(folder, lambda d: _entry(d)["number"].update(zero_point=[2**64] * 4))
    _refused(folder, "not numeric")


def test_deeply_nested_sidecar_is_refused(tmp_path: Path) -> None:
    folder = _export(tmp_path, "coe")
    text = (folder / "export.json").read_text()
    (folder / "export.json").write_text(text[:-1] + ', "x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    _refused(folder, "nested")


def test_non_ascii_bytes_in_a_memory_file(tmp_path: Path) -> None:
    folder = _export(tmp_path, "coe")
    (folder / "w.coe").write_bytes((folder / "w.coe").read_bytes().replace(b",", b"\xff", 1))
    _refused(folder, "not ASCII")


def test_unknown_mif_radix(tmp_path: Path) -> None:
    folder = _export(tmp_path, "mif")
    mif = folder / "w.mif"
    mif.write_text(mif.read_text().replace("DATA_RADIX=HEX", "DATA_RADIX=HHEX"))
    _refused(folder, "radix 'HHEX'")


def test_npy_memory_with_a_lying_header_goes_through_our_reader(tmp_path: Path) -> None:
    folder = _export(tmp_path, "npy")
    npy = folder / "w.npy"
    data = npy.read_bytes()
    npy.write_bytes(data.replace(b"(4, 3)", b"(4, 3000000000)".ljust(6), 1))  # claims 12 GB
    _refused(folder, "w.npy")


def test_a_missing_memory_file(tmp_path: Path) -> None:
    folder = _export(tmp_path, "coe")
    (folder / "w.coe").unlink()
    _refused(folder, "cannot be read")


def test_cli_prints_one_error_line(tmp_path: Path, cli_run: Any) -> None:
    folder = _export(tmp_path, "coe")
    _edit_sidecar(folder, lambda d: _entry(d).update(count=2**40))
    code, _, err = cli_run("stats", folder)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and lines[0].startswith("ERROR ") and "Traceback" not in err
