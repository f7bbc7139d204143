"""Go gob streams of gorgonia *tensor.Dense: the real ToadOCR file, and both directions checked by
real Go (tests/go/gobcheck, a standard-library program mirroring Dense's GobEncode/GobDecode)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import weightvault
from weightvault.errors import (
    InvalidHeaderError,
    TruncatedFileError,
    UnknownDtypeError,
    UnsupportedOperationError,
)
from weightvault.formats.gob import GobFormat
from weightvault.testing.formats import FormatTests

GO_SRC = Path(__file__).resolve().parents[1] / "go" / "gobcheck"


@pytest.fixture(scope="session")
def toad(fixtures_dir: Path) -> Path:
    return fixtures_dir / "gob" / "toadocr_snn_weights"


@pytest.fixture(scope="session")
def gobcheck(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the Go helper offline into a temporary directory (GOCACHE/GOPATH there too)."""
    go = shutil.which("go")
    if go is None:
        pytest.fail("the Go toolchain is required for the gob tests: apt-get install -y golang-go")
    tmp = tmp_path_factory.mktemp("gobcheck")
    env = {
        **os.environ,
        "GOCACHE": str(tmp / "cache"),
        "GOPATH": str(tmp / "gopath"),
        "GOFLAGS": "-mod=mod",
        "GOPROXY": "off",
        "GOTOOLCHAIN": "local",
        "CGO_ENABLED": "0",
    }
    exe = tmp / "gobcheck"
    subprocess.run([go, "build", "-o", str(exe), "."], cwd=GO_SRC, env=env, check=True, capture_output=True)
    return exe


@pytest.fixture(scope="session")
def go_fixtures(gobcheck: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gobfix")
    for case in ("mixed", "types", "masked", "view", "shifted"):
        subprocess.run([str(gobcheck), "write", case, str(out / f"{case}.gob")], check=True, capture_output=True)
    return out


def go_decode(gobcheck: Path, path: Path, n: int, *types: str) -> dict:
    res = subprocess.run([str(gobcheck), "decode", str(path), str(n), *types], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


# -- the real ToadOCR file -------------------------------------------------------------------------
def test_toadocr_reads_with_names_and_epoch(toad: Path) -> None:
    with weightvault.open(toad, names=["hidden", "final"]) as r:
        assert r.format == "gob"
        assert r.keys() == ["hidden", "final"]
        assert r.info("hidden").shape == (100, 784) and r.info("hidden").dtype == "float64"
        assert r.info("final").shape == (10, 100)
        assert r.metadata["trailing"] == [20]
        assert r.metadata["trailing_types"] == ["int"]
        hidden = r.get("hidden")
        assert hidden[0, 0] == pytest.approx(-0.0034788578580055417, abs=0)
        assert np.isfinite(hidden).all() and hidden.std() > 0


def test_toadocr_default_names_and_comma_string(toad: Path) -> None:
    with GobFormat.open(toad) as r:
        assert r.keys() == ["tensor_0", "tensor_1"]
    with GobFormat.open(toad, names="hidden,final") as r:
        assert r.keys() == ["hidden", "final"]
    with pytest.raises(UnsupportedOperationError, match="3 names"):
        GobFormat.open(toad, names="a,b,c")


def test_toadocr_reencodes_byte_for_byte(toad: Path, tmp_path: Path) -> None:
    with GobFormat.open(toad) as r:
        GobFormat.write(tmp_path / "out", r.as_mapping(), metadata=r.metadata)
    assert (tmp_path / "out").read_bytes() == toad.read_bytes()
    # user names: identical when told not to embed them
    with GobFormat.open(toad, names=["hidden", "final"]) as r:
        GobFormat.write(tmp_path / "named", r.tensors(), metadata=r.metadata, embed_names=False)
    assert (tmp_path / "named").read_bytes() == toad.read_bytes()


def test_toadocr_values_match_go(toad: Path, gobcheck: Path) -> None:
    doc = go_decode(gobcheck, toad, 2, "int")
    with GobFormat.open(toad) as r:
        for i, t in enumerate(doc["tensors"]):
            expected = np.array([float(x) for x in t["data"]]).reshape(t["shape"])
            assert np.array_equal(r.get(f"tensor_{i}"), expected)
    assert doc["trailing"] == [20]


def test_names_embedded_and_trailing_metadata(toad: Path, tmp_path: Path, gobcheck: Path) -> None:
    with GobFormat.open(toad, names="hidden,final") as r:
        GobFormat.write(tmp_path / "w.gob", r.tensors(), metadata={"trailing": [21, "note"]})
    with GobFormat.open(tmp_path / "w.gob") as r:
        assert r.keys() == ["hidden", "final"]
        assert r.metadata["names"] == "embedded"
        assert r.metadata["trailing"] == [21, "note"]
    # a Go program that reads hidden, final, epoch still works, and sees the names struct after
    doc = go_decode(gobcheck, tmp_path / "w.gob", 2, "int", "string", "names")
    assert doc["trailing"] == [21, "note", {"Names": ["hidden", "final"]}]


def test_write_names_order_is_checked(tmp_path: Path) -> None:
    t = {"a": np.ones(2), "b": np.zeros(3)}
    GobFormat.write(tmp_path / "o.gob", t, names=["b", "a"])
    with GobFormat.open(tmp_path / "o.gob") as r:
        assert r.keys() == ["b", "a"]
    with pytest.raises(UnsupportedOperationError, match="every tensor"):
        GobFormat.write(tmp_path / "x.gob", t, names=["a"])


# -- trailing Go values through other formats ---------------------------------------------------------
@pytest.mark.parametrize(
    ("mid", "to"),
    [("t.npz", None), ("t.safetensors", "safetensors"), ("t.safetensors", None), ("t.pt", None)],
    ids=["npz", "safetensors", "native", "pt"],
)
@pytest.mark.parametrize("names", [None, ["hidden", "final"]], ids=["default-names", "named"])
def test_toadocr_round_trip_through_other_formats(
    toad: Path, tmp_path: Path, gobcheck: Path, mid: str, to: str | None, names: list[str] | None
) -> None:
    """gob -> npz / safetensors / .pt -> gob: the trailing epoch comes back as a Go int after the
    two tensors, and no names value is added that the Go program would have to decode."""
    weightvault.convert(toad, tmp_path / mid, to=to, read_options={"names": names} if names else None)
    back = tmp_path / "back.gob"
    weightvault.convert(tmp_path / mid, back, to="gob")
    original = go_decode(gobcheck, toad, 2, "int", "eof")
    assert original["trailing"] == [20]
    assert go_decode(gobcheck, back, 2, "int", "eof") == original
    assert back.read_bytes() == toad.read_bytes()


def test_carried_metadata_is_invisible_to_numpy_and_torch(toad: Path, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    weightvault.convert(toad, tmp_path / "t.npz")
    weightvault.convert(toad, tmp_path / "t.pt")
    with np.load(tmp_path / "t.npz") as z:
        assert z.files == ["tensor_0", "tensor_1"]
    state = torch.load(tmp_path / "t.pt", weights_only=True)
    assert list(state) == ["tensor_0", "tensor_1"]
    for name in ("t.npz", "t.pt"):
        with weightvault.open(tmp_path / name) as r:
            assert r.metadata["trailing"] == [20] and r.metadata["trailing_types"] == ["int"]


def test_names_value_is_kept_only_when_the_source_had_one(toad: Path, tmp_path: Path, gobcheck: Path) -> None:
    with GobFormat.open(toad, names="hidden,final") as r:
        GobFormat.write(tmp_path / "named.gob", r.tensors(), metadata={"trailing": [20]})  # no gob provenance
    weightvault.convert(tmp_path / "named.gob", tmp_path / "n.npz")
    weightvault.convert(tmp_path / "n.npz", tmp_path / "again.gob")
    with GobFormat.open(tmp_path / "again.gob") as r:
        assert r.keys() == ["hidden", "final"] and r.metadata["names"] == "embedded"
    assert go_decode(gobcheck, tmp_path / "again.gob", 2, "int", "names", "eof")["trailing"][1] == {
        "Names": ["hidden", "final"]
    }


# -- Go writes, we read ----------------------------------------------------------------------------
def test_go_written_mixed(go_fixtures: Path) -> None:
    with GobFormat.open(go_fixtures / "mixed.gob", names="a,b,c") as r:
        a, b, c = r.get("a"), r.get("b"), r.get("c")
        meta = r.metadata
    i, j = np.mgrid[0:3, 0:4]
    assert a.dtype == np.float32 and np.array_equal(a, (i + j / 8 - 0.75).astype(np.float32))
    assert b.dtype == np.int64 and np.array_equal(b, (np.arange(6) * 1000 - 2500).reshape(2, 3))
    assert c.tolist() == [True, False, True, False, True]
    assert meta["column_major"] == ["a"]
    assert meta["trailing"] == [7, 2.5, "hello", [1, -2, 300]]
    assert meta["trailing_types"] == ["int", "float64", "string", "[]int"]
    assert meta["go_types"] == {"a": "[]float32", "b": "[]int", "c": "[]bool"}


def test_go_written_types_and_scalar(go_fixtures: Path) -> None:
    with GobFormat.open(go_fixtures / "types.gob") as r:
        got = r.tensors()
        assert r.metadata["trailing"] == [42, True]
    assert got["tensor_0"].dtype == np.int32 and got["tensor_0"].tolist() == [-(2**31), 2**31 - 1, 0, 5]
    assert got["tensor_1"].tolist() == [[-128, 127], [0, -1]]
    assert got["tensor_2"].dtype == np.uint8 and got["tensor_2"].tolist() == [0, 128, 255]
    assert got["tensor_3"].dtype == np.uint16 and got["tensor_3"].tolist() == [65535, 1]
    assert got["tensor_4"].tolist() == [1 + 2j, -0.5 + 0j]
    assert got["tensor_5"].tolist() == [-(1 << 62), 1 << 62]
    assert got["tensor_6"].shape == () and float(got["tensor_6"]) == 3.25


@pytest.mark.parametrize("case", ["mixed", "types", "masked"])
def test_go_written_files_reencode_byte_for_byte(go_fixtures: Path, tmp_path: Path, case: str) -> None:
    src = go_fixtures / f"{case}.gob"
    with GobFormat.open(src) as r:
        GobFormat.write(tmp_path / "re.gob", r.tensors(), metadata=r.metadata)
    assert (tmp_path / "re.gob").read_bytes() == src.read_bytes()


def test_go_written_view_honours_strides(go_fixtures: Path) -> None:
    with GobFormat.open(go_fixtures / "view.gob") as r:
        assert r.get("tensor_0").tolist() == [[0.0, 1.0], [3.0, 4.0]]


def test_shifted_type_ids(go_fixtures: Path) -> None:
    """Another gob user ran first in the Go process: ids differ, the values do not."""
    assert (go_fixtures / "shifted.gob").read_bytes() != (go_fixtures / "mixed.gob").read_bytes()
    with GobFormat.open(go_fixtures / "shifted.gob") as s, GobFormat.open(go_fixtures / "mixed.gob") as m:
        for name in m.keys():
            assert np.array_equal(s.get(name), m.get(name))
        assert s.metadata["trailing"] == m.metadata["trailing"]


def test_mask_modes(go_fixtures: Path) -> None:
    p = go_fixtures / "masked.gob"
    with GobFormat.open(p) as r:
        assert r.keys() == ["tensor_0", "tensor_0.mask"]
        assert r.get("tensor_0.mask").tolist() == [[False, True], [False, False]]
        assert r.metadata["masks"] == {"tensor_0": "tensor_0.mask"}
    with GobFormat.open(p, mask="nan") as r:
        got = r.get("tensor_0")
        assert np.isnan(got[0, 1]) and got[1, 1] == 4.0
    with GobFormat.open(p, mask="drop") as r:
        assert r.keys() == ["tensor_0"] and r.metadata["masks_dropped"] == ["tensor_0"]
    with pytest.raises(UnsupportedOperationError, match="masked"):
        GobFormat.open(p, mask="error")


# -- we write, Go reads ----------------------------------------------------------------------------
def test_our_files_decode_in_go(tmp_path: Path, gobcheck: Path) -> None:
    rng = np.random.default_rng(3)
    tensors = {
        "w": rng.standard_normal((3, 5)).astype(np.float32),
        "cm": np.arange(6, dtype=np.float64).reshape(2, 3) / 7,
        "i": np.array([[-(2**40), 0, 2**40]], np.int64),
        "b": np.array([True, False, True]),
        "u8": np.array([0, 7, 255], np.uint8),
        "c": np.array([1.5 - 2j], np.complex128),
        "s": np.array(2.5),
        "e": np.zeros((0, 4), np.float32),
    }
    p = tmp_path / "ours.gob"
    GobFormat.write(p, tensors, trailing=[9, 0.125, "x", [4, 5]], column_major=["cm"])
    doc = go_decode(gobcheck, p, len(tensors), "int", "float64", "string", "[]int", "names")
    assert doc["trailing"][:4] == [9, 0.125, "x", [4, 5]]
    assert doc["trailing"][4] == {"Names": list(tensors)}
    for (name, arr), t in zip(tensors.items(), doc["tensors"]):
        assert t["shape"] == (list(arr.shape) or None), name
        if arr.dtype.kind == "c":
            vals = np.array([complex(x.replace("i", "j")) for x in t["data"]])
        elif arr.dtype == bool:
            vals = np.array([x == "true" for x in t["data"]])
        else:
            vals = np.array([float(x) if arr.dtype.kind == "f" else int(x) for x in t["data"]], arr.dtype)
        order = "F" if t["order"] == 1 else "C"
        assert np.array_equal(vals.reshape(arr.shape, order=order), arr), name
    assert doc["tensors"][1]["order"] == 1 and doc["tensors"][1]["strides"] == [1, 2]
    assert doc["tensors"][0]["type"] == "[]float32" and doc["tensors"][2]["type"] == "[]int"


# -- corrupt and hostile streams -------------------------------------------------------------------
def test_truncated_stream(toad: Path, tmp_path: Path) -> None:
    p = tmp_path / "cut"
    p.write_bytes(toad.read_bytes()[:5000])
    with pytest.raises(TruncatedFileError, match="cut"):
        GobFormat.open(p)


def test_huge_count_is_refused_before_allocating(tmp_path: Path) -> None:
    # The data slice claims 2**60 elements inside a tiny message.
    src = tmp_path / "small.gob"
    GobFormat.write(src, {"a": np.ones(2)}, embed_names=False)
    data = src.read_bytes()
    i = data.index(b"[]float64") + len(b"[]float64")
    i = data.index(bytes.fromhex("0002fef03f"), i)  # singleton 00, count 2, 1.0
    bad = data[: i + 1] + bytes.fromhex("f8") + (2**60).to_bytes(8, "big") + data[i + 2 :]
    (tmp_path / "bad.gob").write_bytes(bad)
    with pytest.raises((InvalidHeaderError, TruncatedFileError)):
        GobFormat.open(tmp_path / "bad.gob")


def test_garbage_after_valid_head(toad: Path, tmp_path: Path) -> None:
    data = bytearray(toad.read_bytes())
    data[49] ^= 0xFF  # the wireType field delta of the first inner stream's Shape definition
    (tmp_path / "bad").write_bytes(bytes(data))
    with pytest.raises(InvalidHeaderError):
        with GobFormat.open(tmp_path / "bad") as r:
            r.tensors()


def test_unknown_data_type_and_sniff(tmp_path: Path) -> None:
    with pytest.raises(UnknownDtypeError):
        GobFormat.write(tmp_path / "h.gob", {"h": np.ones(2, np.float16)})
    (tmp_path / "junk").write_bytes(b"\x0a\xff\x81" + os.urandom(64))
    assert not GobFormat.sniff(tmp_path / "junk", (tmp_path / "junk").read_bytes())
    assert not GobFormat.sniff(tmp_path, b"")


class TestGobConformance(FormatTests):
    format_name = "gob"
    suffix = ".gob"
    dtypes = ("float32", "float64", "int8", "uint8", "int16", "int32", "int64", "uint16", "uint32", "bool")
