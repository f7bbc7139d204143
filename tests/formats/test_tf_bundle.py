"""TensorFlow checkpoint V2 bundles: real TF writes what we read and reads what we write."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest

import weightvault
from weightvault.core.ema_names import ema_names, raw_name_of
from weightvault.core.sstable import read_table, write_table
from weightvault.errors import (
    ChecksumMismatchError,
    InvalidHeaderError,
    TensorNotFoundError,
    TruncatedFileError,
)
from weightvault.formats.tf_bundle import TFBundleFormat, encode_tensor_name_slice
from weightvault.inspect import diff as inspect_diff
from weightvault.testing.formats import FormatTests


@pytest.fixture(scope="module")
def tf() -> Any:
    tf = pytest.importorskip("tensorflow")
    return tf


def _expected(fixtures_dir: Path, name: str) -> dict[str, np.ndarray]:
    z = np.load(fixtures_dir / "tensorflow" / "expected" / f"{name}.npz", allow_pickle=True)
    return {k.replace("|", "/"): z[k] for k in z.files}


# -- fixtures written by TensorFlow ------------------------------------------------------------------
def test_tf1_saver_fixture_matches_expected(fixtures_dir: Path) -> None:
    expected = _expected(fixtures_dir, "tf1_saver")
    with weightvault.open(fixtures_dir / "tensorflow" / "tf1_saver") as r:
        assert r.format == "tf_bundle"
        assert sorted(r.keys()) == sorted(expected)  # string tensors are listed too (dtype "string")
        for name, want in expected.items():
            if name == "misc/strings":
                assert r.info(name).dtype == "string"
                assert list(r.get_strings(name)) == list(r.get(name)) == list(want)
                continue
            got = r.get(name)
            assert got.shape == want.shape, name
            if name == "misc/bf16":
                assert got.dtype == ml_dtypes.bfloat16
            np.testing.assert_array_equal(got.astype(want.dtype), want, err_msg=name)
        assert r.info("misc/scalar_f16").dtype == "float16"
        assert r.metadata["global_step"] == 1000
        assert r.metadata["string_tensors"] == {"misc/strings": [3]}
        assert r.verify().ok and r.verify().checked == 15


def test_tf1_fixture_opens_by_prefix_index_and_data(fixtures_dir: Path) -> None:
    d = fixtures_dir / "tensorflow" / "tf1_saver"
    for p in (d / "model.ckpt-1000", d / "model.ckpt-1000.index", d / "model.ckpt-1000.data-00000-of-00001"):
        with weightvault.open(p) as r:
            assert r.format == "tf_bundle"
            assert "layer1/weights" in r.keys()


def test_ema_names_on_tf1_fixture(fixtures_dir: Path) -> None:
    with weightvault.open(fixtures_dir / "tensorflow" / "tf1_saver") as r:
        mapping = ema_names(r.keys())
        assert mapping == {f"layer{i}/{w}": f"layer{i}/{w}/ExponentialMovingAverage"
                           for i in (1, 2) for w in ("weights", "biases")}
        expected = _expected(fixtures_dir, "tf1_saver")
        np.testing.assert_array_equal(r.get(mapping["layer2/biases"]),
                                      expected["layer2/biases/ExponentialMovingAverage"])
    assert raw_name_of("model_ema.module.fc.weight") == "fc.weight"
    assert raw_name_of("state_dict_ema/conv.bias") == "conv.bias"
    assert raw_name_of("fc.weight") is None


def test_tf2_object_fixture_names(fixtures_dir: Path) -> None:
    names = sorted(str(n) for n in _expected(fixtures_dir, "tf2_object_names")["names"])
    d = fixtures_dir / "tensorflow" / "tf2_object"
    with TFBundleFormat.open(d, names="raw") as r:
        assert sorted(r.keys() + r.string_keys()) == names
        meta = r.metadata
        assert meta["object_based"] and meta["save_counter"] == 2
        assert [(c["prefix"], c["exists"], c["latest"]) for c in meta["checkpoints"]] == [
            ("ckpt-1", True, False), ("ckpt-2", True, True)]
        stored = r.get("optimizer/_trainable_variables/0/.ATTRIBUTES/VARIABLE_VALUE")
    with TFBundleFormat.open(d, names="object") as r:  # the older spelling of "raw"
        assert sorted(r.keys() + r.string_keys()) == names
    with TFBundleFormat.open(d) as r:  # readable names by default
        keys = r.keys()
        assert len(keys) == len(set(keys)) == len(names) - 1
        for want in ("model/conv/kernel", "model/bn/moving_mean", "model/lstm/lstm_cell/recurrent_kernel",
                     "epoch", "save_counter"):
            assert want in keys, want
        np.testing.assert_array_equal(r.get("model/conv/kernel"), stored)
        # the stored spelling still works in readable mode
        np.testing.assert_array_equal(r.get("optimizer/_trainable_variables/0/.ATTRIBUTES/VARIABLE_VALUE"), stored)
        assert r.info("model/conv/kernel").extra["checkpoint_key"].endswith("VARIABLE_VALUE")
    with TFBundleFormat.open(d / "ckpt-1") as r:
        assert [c["current"] for c in r.metadata["checkpoints"]] == [True, False]


# -- TensorFlow writes, we read -----------------------------------------------------------------------
def _tf1_checkpoint(tf: Any, prefix: Path) -> dict[str, Any]:
    values: dict[str, Any] = {
        "dense/kernel": np.arange(12, dtype=np.float32).reshape(3, 4) / 7,
        "dense/bias": np.array([1.5, -2.0, 0.0, 3.25], np.float32),
        "misc/bf16": np.array([0.5, -1.25, 3.0], ml_dtypes.bfloat16),
        "misc/half": np.array([[1.5, -0.25]], np.float16),
        "misc/flag": np.array([True, False, True]),
        "misc/i64_scalar": np.array(42, np.int64),
        "misc/u8": np.array([0, 255, 7], np.uint8),
        "misc/c64": np.array([1 + 2j, -3j], np.complex64),
        "misc/empty": np.zeros((0, 3), np.float32),
    }
    part = np.arange(800, dtype=np.float64).reshape(200, 4)  # slices start at 0, 67, 134
    graph = tf.Graph()
    with graph.as_default():
        for name, arr in values.items():
            tf.compat.v1.Variable(arr, name=name)
        tf.compat.v1.get_variable("part", initializer=tf.constant(part),
                                  partitioner=tf.compat.v1.fixed_size_partitioner(3))
        tf.compat.v1.Variable([b"a", b"\x00\xffz", b""], name="misc/strings")
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            saver.save(sess, str(prefix), global_step=7)
    return {**values, "part": part}


def test_tf1_saver_output_reads_identically(tf: Any, tmp_path: Path) -> None:
    values = _tf1_checkpoint(tf, tmp_path / "model.ckpt")
    with weightvault.open(tmp_path) as r:
        assert r.metadata["step_from_name"] == 7
        assert r.metadata["checkpoints"][0]["prefix"].endswith("model.ckpt-7")  # TF writes absolute paths
        assert r.metadata["checkpoints"][0]["exists"]
        assert sorted(r.keys()) == sorted([*values, "misc/strings"])
        for name, want in values.items():
            got = r.get(name)
            assert got.dtype == want.dtype and got.shape == want.shape, name
            np.testing.assert_array_equal(got, want, err_msg=name)
        assert r.info("part").extra == {"slices": 3}
        assert list(r.get_strings("misc/strings")) == [b"a", b"\x00\xffz", b""]
        strings = r.get("misc/strings")
        assert strings.dtype == object and strings.shape == (3,) and list(strings) == [b"a", b"\x00\xffz", b""]
        assert r.verify().ok


def test_slice_key_encoding_matches_tf(tf: Any, tmp_path: Path) -> None:
    _tf1_checkpoint(tf, tmp_path / "m")
    keys = [k for k, _ in read_table((tmp_path / "m-7.index").read_bytes())]
    assert encode_tensor_name_slice("part", [(0, 67), (0, 4)]) in keys
    # starts/lengths >= 64 take OrderedCode's two-byte form
    assert encode_tensor_name_slice("part", [(67, 67), (0, 4)]) in keys
    assert encode_tensor_name_slice("part", [(134, 66), (0, 4)]) in keys
    assert encode_tensor_name_slice("v", [(0, 2), (0, -1)]) == bytes.fromhex("0076000101028082807f")


def test_merged_bundle_with_two_shards(tf: Any, tmp_path: Path) -> None:
    a = {"a/x": np.arange(6, dtype=np.float32), "a/y": np.ones((2, 2), np.int32)}
    b = {"b/z": np.full(5, 9, np.int64)}
    for prefix, tensors in (("p1", a), ("p2", b)):
        tf.raw_ops.SaveV2(prefix=str(tmp_path / prefix), tensor_names=list(tensors),
                          shape_and_slices=[""] * len(tensors), tensors=[tf.constant(v) for v in tensors.values()])
    tf.raw_ops.MergeV2Checkpoints(checkpoint_prefixes=[str(tmp_path / "p1"), str(tmp_path / "p2")],
                                  destination_prefix=str(tmp_path / "merged"))
    assert (tmp_path / "merged.data-00001-of-00002").exists()
    with TFBundleFormat.open(tmp_path / "merged") as r:
        assert r.metadata["num_shards"] == 2
        assert {r.info(k).extra["shard"] for k in r.keys()} == {0, 1}
        for name, want in {**a, **b}.items():
            np.testing.assert_array_equal(r.get(name), want)
        assert r.verify().ok


def _keras_tf2_checkpoint(tf: Any, directory: Path) -> tuple[Any, str]:
    """tf.train.Checkpoint of a compiled, trained Keras model and its Adam optimizer."""
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="dense"),
                              keras.layers.Dense(2, name="head")])
    opt = keras.optimizers.Adam(1e-3)
    model.compile(optimizer=opt, loss="mse")
    model.fit(np.ones((8, 4), np.float32), np.ones((8, 2), np.float32), epochs=1, verbose=0)
    ckpt = tf.train.Checkpoint(model=model, optimizer=opt, epoch=tf.Variable(5, dtype=tf.int64))
    return model, ckpt.save(str(directory / "ckpt"))


def test_tf2_keras_checkpoint_readable_and_raw_names(tf: Any, tmp_path: Path) -> None:
    model, prefix = _keras_tf2_checkpoint(tf, tmp_path)
    with TFBundleFormat.open(tmp_path) as r:  # readable names by default
        readable = r.keys()
        assert len(readable) == len(set(readable))
        for var in model.weights:  # the name Keras gives each variable, under the root child
            assert f"model/{var.path}" in readable, var.path
            np.testing.assert_array_equal(r.get(f"model/{var.path}"), var.numpy())
        assert {"epoch", "save_counter"} <= set(readable)
        # the compiled model tracks the optimizer too; its variables are still named from the root
        slots = [n for n in readable if n.endswith(("_momentum", "_velocity"))]
        assert len(slots) == 2 * len(model.weights)
        assert all(n.startswith("optimizer/") for n in slots + ["optimizer/adam/iteration"])
        assert not [n for n in readable if n.startswith("model/") and "adam" in n]
        assert not [n for n in readable if ".ATTRIBUTES" in n]
        kernel = model.get_layer("dense").kernel
        raw_key = r.info(f"model/{kernel.path}").extra["checkpoint_key"]
        assert raw_key.endswith("/.ATTRIBUTES/VARIABLE_VALUE")
        np.testing.assert_array_equal(r.get(raw_key), kernel.numpy())  # either spelling reads
    with TFBundleFormat.open(prefix, names="raw") as r:
        raw = r.keys()
        assert raw_key in raw and len(raw) == len(readable)
        assert all(k.endswith("/.ATTRIBUTES/VARIABLE_VALUE") for k in raw)
        np.testing.assert_array_equal(r.get(f"model/{kernel.path}"), kernel.numpy())
    reader = tf.train.load_checkpoint(prefix)
    stored = reader.get_variable_to_shape_map()
    assert sorted(raw) == sorted(k for k in stored if k != "_CHECKPOINTABLE_OBJECT_GRAPH")


def test_tf2_names_convert_and_diff_consistently(tf: Any, tmp_path: Path) -> None:
    _keras_tf2_checkpoint(tf, tmp_path)
    readable_npz, raw_npz = tmp_path / "readable.npz", tmp_path / "raw.npz"
    weightvault.convert(tmp_path, readable_npz)
    weightvault.convert(tmp_path, raw_npz, read_options={"names": "raw"})
    with weightvault.open(tmp_path) as src, weightvault.open(readable_npz) as out:
        assert out.keys() == src.keys()
        assert inspect_diff(src, out).identical
    with weightvault.open(tmp_path, names="raw") as src, weightvault.open(raw_npz) as out:
        assert out.keys() == src.keys()
        assert inspect_diff(src, out).identical


def test_tf2_names_in_the_cli(tf: Any, tmp_path: Path, cli_run) -> None:
    import json

    model, prefix = _keras_tf2_checkpoint(tf, tmp_path)
    kernel = model.get_layer("dense").kernel
    code, out, err = cli_run("ls", tmp_path, "--json")
    assert code == 0, err
    names = [t["name"] for t in json.loads(out)["tensors"]]
    assert f"model/{kernel.path}" in names and "epoch" in names
    code, out, err = cli_run("ls", tmp_path, "-o", "names=raw", "--json")
    raw = [t["name"] for t in json.loads(out)["tensors"]]
    assert len(raw) == len(names) and all(n.endswith("/.ATTRIBUTES/VARIABLE_VALUE") for n in raw)
    code, out, err = cli_run("show", tmp_path, f"model/{kernel.path}")
    assert code == 0 and out.startswith(f"model/{kernel.path}  float32 [4, 3]")
    code, out, err = cli_run("show", tmp_path, "dense/kernel")  # the layer's own name
    assert code != 0 and f"did you mean model/{kernel.path}?" in err
    code, out, err = cli_run("show", tmp_path, "epoch")
    assert code == 0 and out.splitlines()[-1].strip() == "5"
    # convert with either naming, then diff against the source opened the same way
    code, _, err = cli_run("convert", tmp_path, tmp_path / "out.safetensors")
    assert code == 0, err
    code, out, err = cli_run("diff", tmp_path, tmp_path / "out.safetensors")
    assert code == 0, out + err
    code, _, err = cli_run("convert", tmp_path, tmp_path / "raw.safetensors", "-o", "names=raw")
    assert code == 0, err
    with weightvault.open(tmp_path / "raw.safetensors") as r:
        assert sorted(r.keys()) == sorted(raw)
    code, out, err = cli_run("diff", tmp_path, tmp_path / "raw.safetensors")
    assert code == 1  # readable names against raw keys: every tensor added and removed


# -- we write, TensorFlow reads -----------------------------------------------------------------------
def _sample() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {
        "layer1/weights": rng.standard_normal((5, 4)).astype(np.float32),
        "layer1/biases": rng.standard_normal(4).astype(np.float32),
        "half": rng.standard_normal((2, 3)).astype(np.float16),
        "bf16": rng.standard_normal(7).astype(ml_dtypes.bfloat16),
        "f64": rng.standard_normal((2, 2)),
        "flag": np.array([True, False]),
        "i32": np.array([-5, 7, 2**31 - 1], np.int32),
        "global_step": np.array(1234, np.int64),
        "u16": np.array([1, 65535], np.uint16),
        "c128": np.array([1 - 1j], np.complex128),
    }


@pytest.mark.parametrize("num_shards", [1, 3])
def test_tf_reads_what_we_write(tf: Any, tmp_path: Path, num_shards: int) -> None:
    tensors = _sample()
    strings = {"names": np.array([b"alpha", b"", b"\x00bin"], dtype=object)}
    TFBundleFormat.write(tmp_path / "ckpt", tensors, num_shards=num_shards, strings=strings)
    assert (tmp_path / f"ckpt.data-{num_shards - 1:05d}-of-{num_shards:05d}").exists()
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt")
    listed = dict(tf.train.list_variables(str(tmp_path)))
    assert {k: tuple(v) for k, v in listed.items()} == {
        **{k: v.shape for k, v in tensors.items()}, "names": (3,)}
    reader = tf.train.load_checkpoint(str(tmp_path / "ckpt"))
    for name, want in tensors.items():
        got = reader.get_tensor(name)
        assert got.dtype == want.dtype, name
        np.testing.assert_array_equal(got, want, err_msg=name)
    assert list(reader.get_tensor("names")) == [b"alpha", b"", b"\x00bin"]
    with TFBundleFormat.open(tmp_path, check_crc=True) as r:
        assert r.verify().ok
        assert list(r.get_strings("names")) == [b"alpha", b"", b"\x00bin"]


def test_tf1_saver_restores_what_we_write(tf: Any, tmp_path: Path) -> None:
    tensors = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "scope/b": np.array([3.5, -1], np.float64),
               "scope/h": np.array([0.5], np.float16)}
    TFBundleFormat.write(tmp_path, tensors)  # a directory: dir/ckpt + checkpoint file
    graph = tf.Graph()
    with graph.as_default():
        variables = {n: tf.compat.v1.Variable(np.zeros_like(v), name=n) for n, v in tensors.items()}
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session() as sess:
            saver.restore(sess, tf.train.latest_checkpoint(str(tmp_path)))
            for name, var in variables.items():
                np.testing.assert_array_equal(sess.run(var), tensors[name])


def test_index_is_byte_identical_to_tf(tf: Any, tmp_path: Path) -> None:
    # Enough long names to need two 256 KiB data blocks and the separator logic between them.
    rng = np.random.default_rng(0)
    tensors = {f"tower_{i % 7}/{'block_' * 12}{i:05d}/kernel": rng.standard_normal(i % 5 + 1).astype(np.float32)
               for i in range(2600)}
    tensors["scalar"] = np.array(1.0, np.float32)
    tensors["empty"] = np.zeros((0,), np.float32)
    tf.raw_ops.SaveV2(prefix=str(tmp_path / "tf"), tensor_names=list(tensors), shape_and_slices=[""] * len(tensors),
                      tensors=[tf.constant(v) for v in tensors.values()])
    with TFBundleFormat.open(tmp_path / "tf") as r:
        order = sorted(r.keys(), key=lambda k: r.info(k).extra["offset"])
        TFBundleFormat.write(tmp_path / "ours", {k: r.get(k) for k in order}, state_file=False)
    ours, theirs = (tmp_path / "ours.index").read_bytes(), (tmp_path / "tf.index").read_bytes()
    assert len(theirs) > 2 * 262144 or len(read_table(theirs)) > 2000
    assert ours == theirs
    assert (tmp_path / "ours.data-00000-of-00001").read_bytes() == (tmp_path / "tf.data-00000-of-00001").read_bytes()
    assert write_table(read_table(theirs)) == theirs


def test_writer_updates_state_file(tmp_path: Path) -> None:
    TFBundleFormat.write(tmp_path / "ckpt-1", {"a": np.ones(2, np.float32)})
    TFBundleFormat.write(tmp_path / "ckpt-2", {"a": np.zeros(2, np.float32)})
    with weightvault.open(tmp_path) as r:
        assert r.metadata["model_checkpoint_path"] == "ckpt-2"
        assert [c["prefix"] for c in r.metadata["checkpoints"]] == ["ckpt-1", "ckpt-2"]
        np.testing.assert_array_equal(r.get("a"), np.zeros(2, np.float32))


# -- corrupt input ------------------------------------------------------------------------------------
@pytest.fixture
def written(tmp_path: Path) -> Path:
    TFBundleFormat.write(tmp_path / "ck", {"w": np.arange(1000, dtype=np.float32), "b": np.ones(3, np.float32)})
    return tmp_path / "ck"


def test_truncated_index(written: Path) -> None:
    index = written.with_name("ck.index")
    index.write_bytes(index.read_bytes()[:30])
    with pytest.raises(TruncatedFileError, match="footer"):
        TFBundleFormat.open(written)


def test_bad_magic(written: Path) -> None:
    index = written.with_name("ck.index")
    data = bytearray(index.read_bytes())
    data[-1] ^= 0xFF
    index.write_bytes(bytes(data))
    with pytest.raises(InvalidHeaderError, match="magic"):
        TFBundleFormat.open(written)


def test_block_crc_mismatch(written: Path) -> None:
    index = written.with_name("ck.index")
    data = bytearray(index.read_bytes())
    data[3] ^= 0x01  # inside the first data block
    index.write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatchError, match="block CRC"):
        TFBundleFormat.open(written)


def test_data_shard_too_short(written: Path) -> None:
    shard = written.with_name("ck.data-00000-of-00001")
    shard.write_bytes(shard.read_bytes()[:-5])
    with pytest.raises(TruncatedFileError) as exc:
        TFBundleFormat.open(written)
    assert "data-00000-of-00001" in str(exc.value)


def test_data_crc_mismatch(written: Path) -> None:
    shard = written.with_name("ck.data-00000-of-00001")
    data = bytearray(shard.read_bytes())
    data[100] ^= 0x40
    shard.write_bytes(bytes(data))
    with TFBundleFormat.open(written) as r:
        result = r.verify()
        assert not result.ok and "'w'" in result.failures[0]
    with TFBundleFormat.open(written, check_crc=True) as r, pytest.raises(ChecksumMismatchError):
        r.get("w")


def test_missing_tensor(written: Path) -> None:
    with TFBundleFormat.open(written) as r, pytest.raises(TensorNotFoundError):
        r.get("nope")


# -- shared conformance suite -------------------------------------------------------------------------
class TestTFBundleConformance(FormatTests):
    format_name = "tf_bundle"
    suffix = ".index"
    dtypes = ("float32", "float64", "float16", "bfloat16", "int8", "uint8", "int16", "uint16", "int32",
              "uint32", "int64", "uint64", "bool", "complex64", "complex128")
    name_style = "slashed"


# -- #12: the state file never leads out of the directory ---------------------------------------------
def test_copied_saver_directory_reads_its_own_files(tf: Any, tmp_path: Path) -> None:
    """A TF1 Saver records absolute paths; a copy of the run directory reads the copy's files."""
    import shutil

    values = _tf1_checkpoint(tf, tmp_path / "orig" / "model.ckpt")
    assert str(tmp_path / "orig") in (tmp_path / "orig" / "checkpoint").read_text()
    shutil.copytree(tmp_path / "orig", tmp_path / "copy")
    (tmp_path / "orig" / "model.ckpt-7.data-00000-of-00001").write_bytes(b"")  # the original is gone
    with weightvault.open(tmp_path / "copy") as r:
        assert r.prefix == str(tmp_path / "copy" / "model.ckpt-7")
        np.testing.assert_array_equal(r.get("part"), values["part"])
        listed = r.metadata["checkpoints"][0]
        assert listed["outside_directory"] and not listed["exists"]


def test_state_file_path_leaving_the_directory_is_refused(tf: Any, tmp_path: Path) -> None:
    _tf1_checkpoint(tf, tmp_path / "other" / "model.ckpt")
    run = tmp_path / "run"
    run.mkdir()
    TFBundleFormat.write(run, {"w": np.ones(2, np.float32)})
    for bad in ("../other/model.ckpt-7", str(tmp_path / "other" / "model.ckpt-7"), "a\\000b"):
        (run / "checkpoint").write_text(f'model_checkpoint_path: "{bad}"\n')
        with pytest.raises(InvalidHeaderError, match="leaves the checkpoint directory") as exc:
            weightvault.open(run)
        assert exc.value.path == str(run / "checkpoint")
    (run / "checkpoint").write_text('model_checkpoint_path: "ckpt"\n')  # relative, inside: fine
    with weightvault.open(run) as r:
        assert r.keys() == ["w"]


# -- #13.15: slice keys at OrderedCode's one/two/three-byte boundaries -------------------------------
_BOUNDARY_VARIABLES = {  # name: (shape, partitions, axis) -> slice starts/lengths 63..65, 127/128, 8192/8193
    "a": ((128, 3), 2, 0), "b": ((129, 2), 2, 0), "c": ((191, 2), 3, 0), "d": ((255, 1), 2, 0),
    "e": ((16385, 1), 2, 0), "f": ((2, 127), 2, 1),
}  # fmt: skip


def test_partitioned_variables_at_varint_boundaries(tf: Any, tmp_path: Path) -> None:
    graph = tf.Graph()
    with graph.as_default():
        variables = {}
        for name, (shape, parts, axis) in _BOUNDARY_VARIABLES.items():
            init = np.arange(np.prod(shape), dtype=np.float32).reshape(shape) - 1000
            variables[name] = tf.compat.v1.get_variable(
                name, initializer=tf.constant(init),
                partitioner=tf.compat.v1.fixed_size_partitioner(parts, axis=axis),
            )
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            tf.compat.v1.train.Saver().save(sess, str(tmp_path / "tf" / "m"))
    index = (tmp_path / "tf" / "m.index").read_bytes()
    slice_keys = {k for k, _ in read_table(index) if k[:1] == b"\x00"}
    for edge in ((64, 64), (65, 64), (128, 63), (128, 127), (8193, 8192)):
        name = {(64, 64): "a", (65, 64): "b", (128, 63): "c", (128, 127): "d", (8193, 8192): "e"}[edge]
        width = _BOUNDARY_VARIABLES[name][0][1]
        assert encode_tensor_name_slice(name, [edge, (0, width)]) in slice_keys, (name, edge)
    assert encode_tensor_name_slice("f", [(0, 2), (64, 63)]) in slice_keys
    reader = tf.train.load_checkpoint(str(tmp_path / "tf" / "m"))
    with weightvault.open(tmp_path / "tf" / "m") as r:
        assert sorted(r.keys()) == sorted(_BOUNDARY_VARIABLES)
        ours = {name: r.get(name) for name in r.keys()}
    for name in _BOUNDARY_VARIABLES:
        np.testing.assert_array_equal(ours[name], reader.get_tensor(name), err_msg=name)
    # Written back (as whole tensors), TF's Saver restores them into the partitioned variables.
    (tmp_path / "ours").mkdir()
    TFBundleFormat.write(tmp_path / "ours", ours)
    with graph.as_default(), tf.compat.v1.Session() as sess:
        tf.compat.v1.train.Saver().restore(sess, str(tmp_path / "ours" / "ckpt"))
        for name, var in variables.items():
            np.testing.assert_array_equal(sess.run(tf.convert_to_tensor(var)), ours[name], err_msg=name)
