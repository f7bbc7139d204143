"""TensorFlow V1 checkpoints (``Saver(write_version=SaverDef.V1)``), written by real TensorFlow.

Every tensor is compared with the value the session held when it saved (and with
``tf.train.load_checkpoint`` where TF's own V1 reader supports the tensor: it refuses float16 and
partitioned V1 tensors). Corrupt variants are edited with TF's own protobuf classes and re-tabled
with valid block CRCs, so that each reaches the check it is meant to hit.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest

import weightvault
from weightvault.core.sstable import read_table, write_table
from weightvault.errors import (
    ChecksumMismatchError,
    CorruptFileError,
    InvalidHeaderError,
    InvalidOffsetError,
    TensorNotFoundError,
    TruncatedFileError,
    UnknownDtypeError,
    UnsupportedOperationError,
)
from weightvault.formats.tf_bundle import encode_tensor_name_slice
from weightvault.formats.tf_v1 import TFV1Format, TFV1Reader

tf = pytest.importorskip("tensorflow")
tf1 = tf.compat.v1
pb = pytest.importorskip("tensorflow.core.util.saved_tensor_slice_pb2")

NUMERIC = ("f32", "scope/f64", "i32", "i64", "flag", "h16", "i8", "u8", "i16", "c64", "part", "cols", "big",
           "global_step")  # fmt: skip


def _save_v1(directory: Path, *, sharded: bool = False) -> dict[str, Any]:
    """A V1 checkpoint of every dtype V1 can save; returns the path TF names and the values."""
    rng = np.random.default_rng(0)
    graph = tf.Graph()
    with graph.as_default():
        with tf1.device("/cpu:0"):  # with sharded=True, this device's variables get a shard of their own
            tf1.get_variable("f32", initializer=rng.normal(size=(3, 4)).astype(np.float32))
            tf1.get_variable("scope/f64", initializer=np.array([1.5, -2.25, 1e300]))
        tf1.get_variable("i32", initializer=np.int32(-7))  # a scalar, and a negative varint
        tf1.get_variable("i64", initializer=np.array([1, -2, 2**62], np.int64))
        tf1.get_variable("flag", initializer=np.array([True, False, True]))
        tf1.get_variable("h16", initializer=np.array([1.5, -0.0, 65504], np.float16))
        tf1.get_variable("i8", initializer=np.array([-128, 127], np.int8))
        tf1.get_variable("u8", initializer=np.array([0, 255], np.uint8))
        tf1.get_variable("i16", initializer=np.array([-32768, 5], np.int16))
        tf1.get_variable("c64", initializer=np.array([1 + 2j, -3j], np.complex64))
        tf1.Variable([b"hello", b"", b"\xff\x00"], name="names")
        part = tf1.get_variable("part", [10, 4], initializer=tf1.random_normal_initializer(seed=1),
                                partitioner=tf1.fixed_size_partitioner(3))
        cols = tf1.get_variable("cols", [3, 8], initializer=tf1.random_normal_initializer(seed=2),
                                partitioner=tf1.fixed_size_partitioner(2, axis=1))
        # bigger than a 256 KiB table block: its record gets a block of its own (TF never splits it)
        tf1.get_variable("big", [300, 1000], initializer=tf1.random_normal_initializer(seed=3))
        step = tf1.train.get_or_create_global_step()
        saver = tf1.train.Saver(write_version=tf1.train.SaverDef.V1, sharded=sharded)
        with tf1.Session(graph=graph) as sess:
            sess.run(tf1.global_variables_initializer())
            sess.run(step.assign(42))
            values = {v.op.name: sess.run(v) for v in tf1.global_variables() if "/part_" not in v.op.name}
            values["part"] = sess.run(part.as_tensor())
            values["cols"] = sess.run(cols.as_tensor())
            path = saver.save(sess, str(directory / "model.ckpt"))
    return {"path": path, "values": values}


@pytest.fixture(scope="module")
def v1(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _save_v1(tmp_path_factory.mktemp("tf_v1"))


def _expect(values: dict[str, Any], name: str) -> np.ndarray:
    return np.asarray(values[name])


def test_reads_every_dtype_and_partition(v1: dict[str, Any]) -> None:
    with weightvault.open(v1["path"]) as r:
        assert r.format == "tf_v1"
        assert sorted(r.keys()) == sorted((*NUMERIC, "names"))
        for name in NUMERIC:
            got = r.get(name)
            expected = _expect(v1["values"], name)
            assert got.dtype == expected.dtype, name
            assert got.shape == expected.shape, name
            np.testing.assert_array_equal(got, expected, err_msg=name)
        assert r.info("part").extra["slices"] == 3
        assert r.info("cols").extra["slices"] == 2
        assert r.info("big").extra["slices"] == 1
        assert r.info("i32").shape == ()
        assert r.skipped == {}
        assert r.info("names").dtype == "string" and r.info("names").shape == (3,)
        assert list(r.get("names")) == list(r.get_strings("names")) == [b"hello", b"", b"\xff\x00"]
        meta = r.metadata
        assert meta["checkpoint_version"] == "V1"
        assert meta["global_step"] == 42
        assert meta["partitioned"] == {"part": 3, "cols": 2}
        assert meta["string_tensors"] == {"names": [3]}


def test_matches_tf_load_checkpoint(v1: dict[str, Any]) -> None:
    """TF's own V1 reader agrees on every tensor it can read (not float16, not partitioned)."""
    ckpt = tf.train.load_checkpoint(v1["path"])
    compared, refused = set(), set()
    with TFV1Reader(v1["path"]) as r:
        assert set(ckpt.get_variable_to_shape_map()) == set(r.keys())
        assert r.string_keys() == ["names"]
        for name, dtype in ckpt.get_variable_to_dtype_map().items():
            try:
                theirs = ckpt.get_tensor(name)
            except tf.errors.UnimplementedError:
                refused.add(name)
                continue
            ours = r.get(name)
            np.testing.assert_array_equal(ours, theirs, err_msg=name)
            compared.add(name)
    assert {"f32", "scope/f64", "i32", "i64", "flag", "big", "names"} <= compared
    assert refused <= {"part", "cols", "h16", "i8", "u8", "i16", "c64"}


def test_floats_are_zero_copy_views(v1: dict[str, Any]) -> None:
    with TFV1Reader(v1["path"]) as r:
        big = r.get("big")
        assert not big.flags.writeable and not big.flags.owndata


def test_verify_reports_block_crcs(v1: dict[str, Any]) -> None:
    with TFV1Reader(v1["path"]) as r:
        result = r.verify()
    assert result.ok and result.checked == len(NUMERIC) + 1 and result.unchecked == 0


@pytest.mark.parametrize("how", ["file", "directory", "state_file"])
def test_run_directory_and_state_file(v1: dict[str, Any], tmp_path: Path, how: str) -> None:
    # TF wrote an absolute path into `checkpoint`; copied elsewhere it points outside the copy,
    # so the reader takes the same name inside the directory instead of leaving it.
    copy = tmp_path / "run"
    shutil.copytree(Path(v1["path"]).parent, copy)
    target = {"file": copy / "model.ckpt", "directory": copy, "state_file": copy / "checkpoint"}[how]
    with weightvault.open(target) as r:
        assert r.format == "tf_v1"
        assert r.files == [str(copy / "model.ckpt")]
        np.testing.assert_array_equal(r.get("f32"), v1["values"]["f32"])
        assert r.metadata["checkpoints"][0]["exists"]


def test_state_file_may_not_climb_out(v1: dict[str, Any], tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(v1["path"], tmp_path / "outside.ckpt")
    (run / "checkpoint").write_text('model_checkpoint_path: "../outside.ckpt"\n')
    with pytest.raises(InvalidHeaderError, match="leaves the model's directory"):
        TFV1Reader(run)


def test_sharded_saver(tmp_path: Path) -> None:
    saved = _save_v1(tmp_path, sharded=True)
    assert saved["path"].endswith("-?????-of-00002")
    shards = sorted(p.name for p in tmp_path.glob("model.ckpt-0000*"))
    assert shards == ["model.ckpt-00000-of-00002", "model.ckpt-00001-of-00002"]
    for target in (saved["path"], tmp_path, tmp_path / shards[1], tmp_path / "model.ckpt"):
        with weightvault.open(target) as r:
            assert r.format == "tf_v1" and r.metadata["num_shards"] == 2
            assert r.metadata["global_step"] == 42 and "step_from_name" not in r.metadata
            assert sorted(r.keys()) == sorted((*NUMERIC, "names"))
            for name in NUMERIC:
                np.testing.assert_array_equal(r.get(name), saved["values"][name], err_msg=name)
    with weightvault.open(tmp_path / "model.ckpt.meta") as r:  # the .meta finds the shards
        assert r.metadata["checkpoint"] == saved["path"]
        np.testing.assert_array_equal(r.get("part"), saved["values"]["part"])
    (tmp_path / shards[1]).unlink()
    with pytest.raises(TruncatedFileError, match="shard is missing"):
        TFV1Reader(saved["path"])


def test_ls_and_meta_cli(cli_run, v1: dict[str, Any]) -> None:
    code, out, _ = cli_run("ls", v1["path"])
    assert code == 0, out
    assert "(tf_v1)" in out and "part" in out and "[10, 4]" in out
    code, out, _ = cli_run("ls", v1["path"] + ".meta")
    assert code == 0, out
    assert f"{len(NUMERIC) + 1} tensors" in out and "[300, 1000]" in out
    with weightvault.open(v1["path"] + ".meta") as r:
        assert r.metadata["checkpoint"] == v1["path"]
        assert r.metadata["weights"] == f"read from the V1 checkpoint {v1['path']}"
        np.testing.assert_array_equal(r.get("part"), v1["values"]["part"])
        assert {v["name"] for v in r.metadata["variables"] if not v["in_checkpoint"]} == set()


def test_meta_without_checkpoint_says_so(v1: dict[str, Any], tmp_path: Path) -> None:
    shutil.copy(v1["path"] + ".meta", tmp_path / "lonely.meta")
    with weightvault.open(tmp_path / "lonely.meta") as r:
        assert r.keys() == []
        assert "no checkpoint beside this graph" in r.metadata["weights"]


@pytest.mark.parametrize(("dest", "to"), [("out.safetensors", None), ("native_out", None),
                                         ("plain.safetensors", "safetensors")])
def test_convert(v1: dict[str, Any], tmp_path: Path, dest: str, to: str | None) -> None:
    dst = tmp_path / dest
    keeps_strings = to is None  # the native format (file or directory) keeps string tensors
    if not keeps_strings:  # plain safetensors has no strings: refused, naming the tensor, unless skipped
        with pytest.raises(UnsupportedOperationError, match="names") as err:
            weightvault.convert(v1["path"], dst, to=to)
        assert "--skip-unsupported" in err.value.hint and not dst.exists()
    report = weightvault.convert(v1["path"], dst, to=to, skip_unsupported=not keeps_strings)
    assert list(report.skipped) == ([] if keeps_strings else ["names"])
    got = weightvault.load(dst)
    assert sorted(got) == sorted(NUMERIC + (("names",) if keeps_strings else ()))
    for name in NUMERIC:
        np.testing.assert_array_equal(got[name], v1["values"][name], err_msg=name)
    if keeps_strings:
        assert list(got["names"]) == [b"hello", b"", b"\xff\x00"]


def test_tf_cannot_save_bfloat16_in_v1(tmp_path: Path) -> None:
    """Why bfloat16 is tested on an edited file: TF's V1 saver refuses it."""
    graph = tf.Graph()
    with graph.as_default():
        tf1.Variable(tf.constant([1.5], tf.bfloat16), name="bf")
        saver = tf1.train.Saver(write_version=tf1.train.SaverDef.V1)
        with tf1.Session(graph=graph) as sess:
            sess.run(tf1.global_variables_initializer())
            with pytest.raises(tf.errors.UnimplementedError, match="bfloat16"):
                saver.save(sess, str(tmp_path / "bf.ckpt"))


# -- edited and corrupt files -----------------------------------------------------------------------


def _entries(path: str) -> list[tuple[bytes, bytes]]:
    return [(bytes(k), bytes(v)) for k, v in read_table(Path(path).read_bytes())]


def _meta(entries: list[tuple[bytes, bytes]]) -> Any:
    sts = pb.SavedTensorSlices()
    sts.ParseFromString(entries[0][1])
    return sts


def _write(path: Path, meta: Any, records: dict[bytes, bytes]) -> Path:
    path.write_bytes(write_table([(b"", meta.SerializeToString()), *sorted(records.items())]))
    return path


def _tensor_meta(sts: Any, name: str) -> Any:
    return next(t for t in sts.meta.tensor if t.name == name)


def test_bfloat16_record(v1: dict[str, Any], tmp_path: Path) -> None:
    """A bfloat16 tensor stored as V1 stores half: bit patterns in half_val."""
    entries = _entries(v1["path"])
    sts, records = _meta(entries), dict(entries[1:])
    values = np.array([1.5, -2.0, 3e38], ml_dtypes.bfloat16)
    t = sts.meta.tensor.add(name="bf", type=tf.bfloat16.as_datatype_enum)
    t.shape.dim.add(size=3)
    t.slice.add().extent.add()
    record = pb.SavedTensorSlices()
    record.data.name = "bf"
    record.data.slice.extent.add()
    record.data.data.half_val.extend(values.view(np.uint16).tolist())
    records[encode_tensor_name_slice("bf", [(0, -1)])] = record.SerializeToString()
    with TFV1Reader(_write(tmp_path / "bf.ckpt", sts, records)) as r:
        got = r.get("bf")
    assert got.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(got, values)


def test_truncated_file(v1: dict[str, Any], tmp_path: Path) -> None:
    data = Path(v1["path"]).read_bytes()
    for cut in (10, len(data) // 2, len(data) - 1):
        bad = tmp_path / f"cut{cut}.ckpt"
        bad.write_bytes(data[:cut])
        with pytest.raises(CorruptFileError) as info:
            weightvault.open(bad, format="tf_v1")
        assert str(bad) in str(info.value)
    # a cut file still starts like a V1 checkpoint, so detection names the right format
    with pytest.raises(CorruptFileError, match="table"):
        weightvault.open(tmp_path / f"cut{len(data) // 2}.ckpt")


def test_bit_flip_fails_block_crc(v1: dict[str, Any], tmp_path: Path) -> None:
    data = bytearray(Path(v1["path"]).read_bytes())
    record = next(v for k, v in _entries(v1["path"]) if k.startswith(b"\x00f32\x00"))
    data[data.find(record) + len(record) - 3] ^= 0x10  # inside f32's float values
    bad = tmp_path / "flip.ckpt"
    bad.write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatchError, match="CRC-32C") as info:
        TFV1Reader(bad)
    assert str(bad) in str(info.value)


def _edited(v1: dict[str, Any], tmp_path: Path, edit: Any) -> Path:
    entries = _entries(v1["path"])
    sts, records = _meta(entries), dict(entries[1:])
    edit(sts, records)
    return _write(tmp_path / "edited.ckpt", sts, records)


def _set_dims(shape: Any, dims: list[int]) -> None:
    del shape.dim[:]
    for d in dims:
        shape.dim.add(size=d)


def test_lying_shape_is_refused_before_allocating(v1: dict[str, Any], tmp_path: Path) -> None:
    bad = _edited(v1, tmp_path, lambda sts, rec: _set_dims(_tensor_meta(sts, "f32").shape, [100000, 100000]))
    with pytest.raises(InvalidOffsetError, match="needs at least 40000000000 stored bytes") as info:
        TFV1Reader(bad)
    assert info.value.tensor == "f32" and info.value.path == str(bad)


def test_record_with_too_few_values(v1: dict[str, Any], tmp_path: Path) -> None:
    def edit(sts: Any, records: dict[bytes, bytes]) -> None:
        _set_dims(_tensor_meta(sts, "f32").shape, [3, 3])  # 9 elements, the record holds 12
    with TFV1Reader(_edited(v1, tmp_path, edit)) as r:
        with pytest.raises(InvalidOffsetError, match="stores 12 values") as info:
            r.get("f32")
        assert info.value.tensor == "f32"


def test_varint_count_mismatch(v1: dict[str, Any], tmp_path: Path) -> None:
    def edit(sts: Any, records: dict[bytes, bytes]) -> None:
        key = encode_tensor_name_slice("i64", [(0, -1)])
        rec = pb.SavedTensorSlices.FromString(records[key])
        rec.data.data.int64_val.append(5)
        records[key] = rec.SerializeToString()
    with TFV1Reader(_edited(v1, tmp_path, edit)) as r:
        with pytest.raises(InvalidOffsetError, match="4 complete varints"):
            r.get("i64")


def _repartition(v1: dict[str, Any], tmp_path: Path, extents: list[tuple[int, int]]) -> Path:
    """``part`` ([10, 4]) with its first slice's record moved to rows ``extents[0]``."""
    def edit(sts: Any, records: dict[bytes, bytes]) -> None:
        t = _tensor_meta(sts, "part")
        first = t.slice[0]
        old = [(e.start, e.length if e.HasField("length") else -1) for e in first.extent]
        rec = pb.SavedTensorSlices.FromString(records.pop(encode_tensor_name_slice("part", old)))
        for proto in (first, rec.data.slice):
            proto.extent[0].start, proto.extent[0].length = extents[0]
        records[encode_tensor_name_slice("part", [extents[0], *old[1:]])] = rec.SerializeToString()
    return _edited(v1, tmp_path, edit)


def test_overlapping_slices(v1: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(InvalidOffsetError, match="overlap") as info:
        TFV1Reader(_repartition(v1, tmp_path, [(1, 4)]))
    assert info.value.tensor == "part"


def test_slice_outside_shape(v1: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(InvalidOffsetError, match="outside dimension 10"):
        TFV1Reader(_repartition(v1, tmp_path, [(8, 4)]))


def test_slices_leaving_a_hole(v1: dict[str, Any], tmp_path: Path) -> None:
    def edit(sts: Any, records: dict[bytes, bytes]) -> None:
        del _tensor_meta(sts, "part").slice[1]
    with pytest.raises(InvalidOffsetError, match="hold 28 of the 40 elements"):
        TFV1Reader(_edited(v1, tmp_path, edit))


def test_missing_record(v1: dict[str, Any], tmp_path: Path) -> None:
    def edit(sts: Any, records: dict[bytes, bytes]) -> None:
        del records[encode_tensor_name_slice("scope/f64", [(0, -1)])]
    with pytest.raises(TruncatedFileError, match="record of slice") as info:
        TFV1Reader(_edited(v1, tmp_path, edit))
    assert info.value.tensor == "scope/f64"


def test_record_naming_another_tensor(v1: dict[str, Any], tmp_path: Path) -> None:
    def edit(sts: Any, records: dict[bytes, bytes]) -> None:
        key = encode_tensor_name_slice("f32", [(0, -1), (0, -1)])
        rec = pb.SavedTensorSlices.FromString(records[key])
        rec.data.name = "other"
        records[key] = rec.SerializeToString()
    with TFV1Reader(_edited(v1, tmp_path, edit)) as r:
        with pytest.raises(InvalidHeaderError, match="record is named 'other'"):
            r.get("f32")
        assert not r.verify().ok


def test_unknown_dtype(v1: dict[str, Any], tmp_path: Path) -> None:
    def edit(sts: Any, records: dict[bytes, bytes]) -> None:
        _tensor_meta(sts, "f32").type = 21  # DT_VARIANT
    with pytest.raises(UnknownDtypeError, match="variant") as info:
        TFV1Reader(_edited(v1, tmp_path, edit))
    assert info.value.tensor == "f32"


def test_garbage_meta(tmp_path: Path) -> None:
    bad = tmp_path / "garbage.ckpt"
    bad.write_bytes(write_table([(b"", b"\x0a\x05\xff\xff\xff\xff\xff")]))
    with pytest.raises(InvalidHeaderError) as info:
        TFV1Reader(bad)
    assert str(bad) in str(info.value)


def test_unknown_tensor(v1: dict[str, Any]) -> None:
    with TFV1Reader(v1["path"]) as r:
        with pytest.raises(TensorNotFoundError, match="nope"):
            r.get("nope")


def test_sniff_is_specific(v1: dict[str, Any], fixtures_dir: Path) -> None:
    head = Path(v1["path"]).read_bytes()[:4096]
    assert TFV1Format.sniff(Path(v1["path"]), head)
    index = fixtures_dir / "tensorflow" / "tf1_saver" / "model.ckpt-1000.index"
    assert not TFV1Format.sniff(index, index.read_bytes()[:4096])
    assert not TFV1Format.sniff(fixtures_dir / "tensorflow" / "tf1_saver", b"")  # a V2 run directory
    with weightvault.open(fixtures_dir / "tensorflow" / "tf1_saver") as r:
        assert r.format == "tf_bundle"



# -- .meta facts: MetaGraphDefs older than TF 1.14 ----------------------------------------------------


def test_pre_1_14_meta_trainable_and_dtype_names(tmp_path: Path) -> None:
    """TF < 1.14 wrote no VariableDef.trainable: the trainable_variables collection says it."""
    meta_graph_pb2 = pytest.importorskip("tensorflow.core.protobuf.meta_graph_pb2")
    variable_pb2 = pytest.importorskip("tensorflow.core.framework.variable_pb2")
    graph = tf.Graph()
    with graph.as_default():
        tf1.get_variable("dense/kernel", [3, 2], use_resource=False)  # VariableV2, as TF 1.x made
        tf1.get_variable("dense/bias", [2], use_resource=True)
        tf1.Variable([b"a", b"b"], name="vocab", trainable=False, use_resource=False)
        tf1.Variable(0, name="counter", trainable=False, dtype=tf.int64)
        tf1.get_variable("table", [6, 2], trainable=False, partitioner=tf1.fixed_size_partitioner(2))
        saver = tf1.train.Saver(write_version=tf1.train.SaverDef.V1)
        with tf1.Session(graph=graph) as sess:
            sess.run(tf1.global_variables_initializer())
            prefix = saver.save(sess, str(tmp_path / "model.ckpt"))
    meta = meta_graph_pb2.MetaGraphDef()
    meta.ParseFromString(Path(prefix + ".meta").read_bytes())
    for collection in meta.collection_def.values():
        values = collection.bytes_list.value
        for i, raw in enumerate(values):
            vdef = variable_pb2.VariableDef.FromString(raw)
            vdef.ClearField("trainable")
            values[i] = vdef.SerializeToString()
    meta.meta_info_def.tensorflow_version = "1.10.0"
    old = tmp_path / "old.meta"
    old.write_bytes(meta.SerializeToString())
    for path in (prefix + ".meta", old):
        with weightvault.open(path) as r:
            facts = {v["name"]: v for v in r.metadata["variables"]}
        assert facts["dense/kernel"]["trainable"] is True, path
        assert facts["dense/bias"]["trainable"] is True, path
        assert facts["vocab"]["trainable"] is False, path
        assert facts["counter"]["trainable"] is False, path
        assert facts["vocab"]["dtype"] == "string", path  # DT_STRING_REF, not "7"
        assert facts["dense/kernel"]["dtype"] == "float32", path
        assert facts["counter"]["dtype"] == "int64", path
        assert facts["table/part_1"]["trainable"] is False, path
        assert (facts["table/part_1"]["partition_of"], facts["table/part_1"]["full_shape"]) == ("table", [6, 2])
    with weightvault.open(prefix + ".meta") as r:
        assert all(v["in_checkpoint"] for v in r.metadata["variables"])
        np.testing.assert_array_equal(r.get("table").shape, (6, 2))


# -- fuzz: any damage is a WeightVaultError, never another exception ------------------------------


def _exercise(path: Path) -> None:
    from weightvault.errors import WeightVaultError

    try:
        with TFV1Reader(path) as r:
            for name in r.keys():
                r.get(name)
            for name in r.string_keys():
                r.get_strings(name)
            r.metadata  # noqa: B018
            r.verify()
    except WeightVaultError as exc:
        assert str(path) in str(exc), exc


def test_damaged_records_raise_only_weightvault_errors(tmp_path: Path) -> None:
    graph = tf.Graph()
    with graph.as_default():
        tf1.get_variable("w", initializer=np.arange(12, dtype=np.float32).reshape(3, 4))
        tf1.get_variable("n", initializer=np.array([1, -300, 7], np.int64))
        tf1.get_variable("p", [6, 2], partitioner=tf1.fixed_size_partitioner(2))
        tf1.Variable([b"ab", b"c"], name="s")
        saver = tf1.train.Saver(write_version=tf1.train.SaverDef.V1)
        with tf1.Session(graph=graph) as sess:
            sess.run(tf1.global_variables_initializer())
            path = saver.save(sess, str(tmp_path / "small.ckpt"))
    entries = _entries(path)
    raw = Path(path).read_bytes()
    rng = np.random.default_rng(7)
    bad = tmp_path / "bad.ckpt"
    for i in range(300):
        if i % 3 == 0:  # damage the file itself: mostly caught by the block CRCs
            data = bytearray(raw)
            for _ in range(rng.integers(1, 4)):
                data[rng.integers(len(data))] = rng.integers(256)
            bad.write_bytes(bytes(data[: rng.integers(len(data) // 2, len(data) + 1)]))
        else:  # damage one record and re-table it with valid CRCs: reaches the proto decoding
            edited = [list(e) for e in entries]
            k = rng.integers(len(edited))
            value = bytearray(edited[k][1])
            for _ in range(rng.integers(1, 4)):
                if value:
                    value[rng.integers(len(value))] = rng.integers(256)
            edited[k][1] = bytes(value[: rng.integers(0, len(value) + 1)] if i % 5 == 0 else value)
            bad.write_bytes(write_table([(key, val) for key, val in edited]))
        _exercise(bad)


def test_float_tensors_have_byte_spans(v1: dict[str, Any]) -> None:
    with TFV1Reader(v1["path"]) as r:
        data = Path(v1["path"]).read_bytes()
        spans = {}
        for name in r.keys():
            span = r.byte_span(name)
            if span is None:
                continue
            spans[name] = span
            assert span.path == v1["path"]
            chunk = data[span.offset : span.offset + span.nbytes]
            np.testing.assert_array_equal(np.frombuffer(chunk, r.info(name).dtype).reshape(r.info(name).shape),
                                          v1["values"][name], err_msg=name)
    assert set(spans) == {"f32", "scope/f64", "c64", "big"}  # not varints, not half, not partitioned
