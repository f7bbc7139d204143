"""String tensors (issue #13.1): a TF1 string variable survives TF -> native -> TF, is listed by
``ls``, and a target that cannot hold strings refuses it by name unless told to skip it."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import weightvault
from weightvault import errors
from weightvault.formats.native import MANIFEST_KEY, NativeReader, decode_strings, encode_strings

VOCAB = [b"a", b""]


@pytest.fixture(scope="module")
def tf1_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real TF1 Saver checkpoint holding a string variable next to a float one."""
    tf = pytest.importorskip("tensorflow")
    d = tmp_path_factory.mktemp("tf1")
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.Variable(np.arange(6, dtype=np.float32).reshape(2, 3), name="dense/kernel")
        tf.compat.v1.Variable(VOCAB, name="vocab")
        tf.compat.v1.Variable([[b"x\x00y", b"\xff"], [b"", b"long" * 10]], name="table")
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            tf.compat.v1.train.Saver().save(sess, str(d / "model.ckpt"))
    return d


def test_tf_bundle_lists_and_returns_string_tensors(tf1_ckpt: Path) -> None:
    with weightvault.open(tf1_ckpt) as r:
        assert sorted(r.keys()) == ["dense/kernel", "table", "vocab"]
        info = r.info("vocab")
        assert info.dtype == "string" and info.shape == (2,) and info.nbytes > 0
        got = r.get("vocab")
        assert got.dtype == object and got.shape == (2,) and list(got) == VOCAB
        assert r.get("table").tolist() == [[b"x\x00y", b"\xff"], [b"", b"long" * 10]]
        assert r.byte_span("vocab") is None


def test_tf1_strings_survive_native_and_back_to_tensorflow(tf1_ckpt: Path, tmp_path: Path) -> None:
    tf = pytest.importorskip("tensorflow")
    native = tmp_path / "n.safetensors"
    report = weightvault.convert(tf1_ckpt, native)
    assert report.skipped == {}
    with weightvault.open(native) as r:
        assert r.info("vocab").dtype == "string" and r.info("table").shape == (2, 2)
        assert list(r.get("vocab")) == VOCAB
        assert r.verify().ok
    loaded = weightvault.load(native)
    assert list(loaded["vocab"]) == VOCAB and loaded["table"][0, 0] == b"x\x00y"
    # the directory form too, and back to a TF bundle that TensorFlow itself reads
    directory = tmp_path / "nd"
    weightvault.convert(native, directory)
    weightvault.convert(directory, tmp_path / "back", to="tf_bundle")
    ckpt = tf.train.load_checkpoint(str(tmp_path / "back"))
    assert ckpt.get_variable_to_dtype_map()["vocab"] == tf.string
    assert list(ckpt.get_tensor("vocab")) == VOCAB
    assert ckpt.get_tensor("table").tolist() == [[b"x\x00y", b"\xff"], [b"", b"long" * 10]]
    np.testing.assert_array_equal(ckpt.get_tensor("dense/kernel"), np.arange(6, dtype=np.float32).reshape(2, 3))


def test_native_string_tensor_is_readable_by_stock_safetensors(tmp_path: Path) -> None:
    from safetensors import safe_open

    strings = np.array([[b"ab", b""], [b"\x00", b"xyz"]], dtype=object)
    p = weightvault.save({"s": strings, "w": np.ones(2, np.float32)}, tmp_path / "m.safetensors")
    with safe_open(p, "np") as f:
        stored = f.get_tensor("s")
        manifest = json.loads(f.metadata()[MANIFEST_KEY])
    assert stored.dtype == np.uint8 and stored.ndim == 1
    assert manifest["tensors"]["s"] == {**manifest["tensors"]["s"], "dtype": "string", "shape": [2, 2], "stored_as": "uint8"}
    # the documented layout: n+1 u64le offsets, then the bytes
    offsets = np.frombuffer(stored[:40].tobytes(), "<u8").tolist()
    assert offsets == [0, 2, 2, 3, 6] and stored[40:].tobytes() == b"ab\x00xyz"
    assert decode_strings(stored, (2, 2), path="x", tensor="s").tolist() == strings.tolist()


@pytest.mark.parametrize(
    "value",
    [
        np.array([b"a", b"", b"xyz\x00"], dtype=object),
        np.array([[b"fixed", b"w"]]),  # numpy S dtype
        np.array(b"scalar", dtype=object),
        np.empty((0, 3), dtype=object),
    ],
)
def test_string_arrays_round_trip_in_both_native_forms(tmp_path: Path, value: np.ndarray) -> None:
    for path in (tmp_path / "f.safetensors", tmp_path / "d"):
        back = weightvault.load(weightvault.save({"s": value, "n": {"deep": value}}, path, fsync=False))
        for got in (back["s"], back["n"]["deep"]):
            assert got.dtype == object and got.shape == value.shape
            assert got.tolist() == value.astype(object).tolist()
        torch_back = weightvault.load(path, framework="torch")  # no torch string tensor: stays numpy
        assert isinstance(torch_back["s"], np.ndarray) and torch_back["s"].tolist() == value.tolist()


def test_safetensors_target_refuses_strings_and_names_the_flag(tf1_ckpt: Path, tmp_path: Path) -> None:
    dst = tmp_path / "x.safetensors"
    with pytest.raises(errors.UnsupportedOperationError, match="cannot hold strings") as exc:
        weightvault.convert(tf1_ckpt, dst, to="safetensors")
    assert exc.value.tensor in ("table", "vocab")
    assert "--skip-unsupported" in (exc.value.hint or "") and "skip_unsupported=True" in (exc.value.hint or "")
    assert "and 1 more" in str(exc.value)
    assert not dst.exists()
    report = weightvault.convert(tf1_ckpt, dst, to="safetensors", skip_unsupported=True)
    assert sorted(report.skipped) == ["table", "vocab"]
    assert sorted(report.to_dict()["skipped"]) == ["table", "vocab"]
    with weightvault.open(dst) as r:
        assert r.keys() == ["dense/kernel"]


def test_pytorch_target_refuses_strings_too(tf1_ckpt: Path, tmp_path: Path) -> None:
    with pytest.raises(errors.UnsupportedOperationError, match="pytorch format cannot hold strings"):
        weightvault.convert(tf1_ckpt, tmp_path / "x.pt")


def test_direct_safetensors_write_of_strings_is_refused(tmp_path: Path) -> None:
    from weightvault.formats.safetensors import SafetensorsFormat

    with weightvault.open(weightvault.save({"s": np.array([b"a"], dtype=object)}, tmp_path / "n.safetensors")) as r:
        with pytest.raises(errors.UnsupportedOperationError, match="string") as exc:
            SafetensorsFormat.write(tmp_path / "x.safetensors", r.as_mapping())
    assert exc.value.tensor == "s"


def test_cli_convert_skip_unsupported_prints_what_it_left_out(cli_run: Any, tf1_ckpt: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from weightvault.cli import cli

    result = CliRunner().invoke(cli, ["convert", str(tf1_ckpt), str(tmp_path / "a.safetensors"), "--to", "safetensors"])
    assert result.exit_code != 0 and "--skip-unsupported" in result.output + result.stderr
    code, out, _ = cli_run("convert", tf1_ckpt, tmp_path / "b.safetensors", "--to", "safetensors", "--skip-unsupported")
    assert code == 0
    assert "skipped 2 (string tensor; the safetensors format cannot hold strings): table, vocab" in out
    code, out, _ = cli_run("convert", tf1_ckpt, tmp_path / "c.safetensors", "--to", "safetensors",
                           "--skip-unsupported", "--json")  # fmt: skip
    assert code == 0 and sorted(json.loads(out)["skipped"]) == ["table", "vocab"]


def test_ls_shows_string_tensors(cli_run: Any, tf1_ckpt: Path, tmp_path: Path) -> None:
    native = weightvault.convert(tf1_ckpt, tmp_path / "n.safetensors").dst
    for path in (tf1_ckpt, native):
        code, out, _ = cli_run("ls", path)
        assert code == 0
        line = next(li for li in out.splitlines() if li.startswith("vocab"))
        assert "string" in line and "[2]" in line
        assert "6 model parameters" in out  # strings are not parameters
        code, out, _ = cli_run("ls", path, "--json")
        doc = json.loads(out)
        vocab = next(t for t in doc["tensors"] if t["name"] == "vocab")
        assert vocab["dtype"] == "string" and vocab["shape"] == [2]
        assert doc["skipped"] == {}


def test_entries_a_reader_skipped_are_refused_listed_and_shown(
    cli_run: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = weightvault.save({"w": np.ones(2, np.float32)}, tmp_path / "src.safetensors")
    monkeypatch.setattr(NativeReader, "skipped", property(lambda self: {"names": "dtype <U3 is text, not a tensor"}))
    with pytest.raises(errors.UnsupportedOperationError, match="<U3") as exc:
        weightvault.convert(src, tmp_path / "dst.safetensors")  # even to native: it cannot be read
    assert exc.value.tensor == "names" and "--skip-unsupported" in (exc.value.hint or "")
    report = weightvault.convert(src, tmp_path / "dst.safetensors", skip_unsupported=True)
    assert list(report.skipped) == ["names"]
    code, out, _ = cli_run("ls", src)
    assert code == 0 and "1 entries not readable as tensors" in out and "names: dtype <U3" in out
    code, out, _ = cli_run("ls", src, "--json")
    assert json.loads(out)["skipped"] == {"names": "dtype <U3 is text, not a tensor"}


# -- hostile string encodings --------------------------------------------------------------------


def _with_stored(tmp_path: Path, stored: bytes, shape: list[int]) -> Path:
    """A single-file native checkpoint whose string tensor 's' holds ``stored`` as its uint8 bytes."""
    p = weightvault.save({"s": np.array([b"ab", b"c"], dtype=object)}, tmp_path / "s.safetensors", fsync=False)
    data = p.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    manifest = json.loads(header["__metadata__"][MANIFEST_KEY])
    manifest["tensors"]["s"]["shape"] = shape
    manifest["tensors"]["s"].pop("checksum", None)
    header["__metadata__"][MANIFEST_KEY] = json.dumps(manifest)
    header["s"] = {"dtype": "U8", "shape": [len(stored)], "data_offsets": [0, len(stored)]}
    raw = json.dumps(header).encode()
    p.write_bytes(struct.pack("<Q", len(raw)) + raw + stored)
    return p


def _offsets(*values: int) -> bytes:
    return np.array(values, "<u8").tobytes()


@pytest.mark.parametrize(
    ("stored", "shape", "match"),
    [
        (_offsets(0, 2) + b"ab", [2], "needs 24 bytes of offsets"),  # too few offsets
        (_offsets(0, 3, 2) + b"ab", [2], "not increasing"),  # ends right, but goes back
        (_offsets(0, 1, 9) + b"abc", [2], "not increasing from 0"),  # runs past the bytes
        (_offsets(1, 2, 3) + b"abc", [2], "not increasing from 0"),
        (_offsets(0, 1, 2**64 - 1) + b"ab", [2], "not increasing from 0"),
        (_offsets(0, 2, 3) + b"abc", [2**40], "needs"),  # a huge shape is not allocated
    ],
)
def test_hostile_string_encodings(tmp_path: Path, stored: bytes, shape: list[int], match: str) -> None:
    p = _with_stored(tmp_path, stored, shape)
    with pytest.raises(errors.InvalidOffsetError, match=match) as exc:
        with weightvault.open(p) as r:
            r.get("s")
    assert exc.value.tensor == "s" and str(p) in str(exc.value)
    with pytest.raises(errors.InvalidOffsetError):
        weightvault.load(p)


def test_a_string_row_must_be_stored_as_uint8(tmp_path: Path) -> None:
    p = _with_stored(tmp_path, _offsets(0, 2, 3) + b"abc", [2])
    with weightvault.open(p) as r:
        assert r.get("s").tolist() == [b"ab", b"c"]  # the fixture itself is valid
    data = p.read_bytes()
    p.write_bytes(data.replace(b'\\"stored_as\\": \\"uint8\\"', b'\\"stored_as\\": \\"int8\\" '))
    with pytest.raises(errors.InvalidHeaderError, match="stored_as uint8"):
        weightvault.open(p)


def test_encode_strings_layout_is_stable() -> None:
    assert encode_strings(np.array([b"hi", b""], dtype=object)).tobytes() == _offsets(0, 2, 2) + b"hi"
    assert encode_strings(np.empty(0, dtype=object)).tobytes() == _offsets(0)


def test_stats_show_and_diff_handle_string_tensors(cli_run: Any, tmp_path: Path) -> None:
    a = weightvault.save({"vocab": np.array([b"a", b"b"], dtype=object), "w": np.ones(2)}, tmp_path / "a.safetensors")
    b = weightvault.save({"vocab": np.array([b"a", b"c"], dtype=object), "w": np.ones(2)}, tmp_path / "b.safetensors")
    code, out, _ = cli_run("stats", a)
    assert code == 0 and next(li for li in out.splitlines() if li.startswith("vocab")).split()[1] == "string"
    code, out, _ = cli_run("show", a, "vocab")
    assert code == 0 and "b'a', b'b'" in out
    code, out, _ = cli_run("diff", a, b)
    assert code == 1 and "1/2 differ" in out and "1 equal, 1 changed" in out  # 1: they differ
    code, out, _ = cli_run("diff", a, a)
    assert code == 0 and "2 equal, 0 changed" in out
