"""Hostile TensorFlow and ONNX files (#12, #13): each is made by the real framework, then crafted.

Every one must be refused with a single clean :class:`WeightVaultError` naming the file (and the
tensor where one is involved), one ``ERROR`` line on the CLI, no code run, nothing read outside the
named file or directory, and no allocation of what the header claims (tracemalloc watches numpy).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import sys
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import weightvault
from weightvault import errors
from weightvault.core.protobuf import Writer, get_bytes, get_message, get_messages, get_str, iter_fields, parse
from weightvault.core.sstable import read_table, write_table
from weightvault.formats.tf_bundle import BundleEntry, _parse_entry, encode_tensor_name_slice

#: what reading a refused file may allocate at most (the claims below are GiB to EiB)
_PEAK_LIMIT = 64 << 20

# -- watching what a read does -------------------------------------------------------------------------
_EVENTS: list[tuple[str, Any]] | None = None
_CODE_EVENTS = {"exec", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "subprocess.Popen", "ctypes.dlopen"}


#: Python's own files (a lazy import inside an error path is not the reader opening a file)
_PYTHON_TREES = tuple({sys.prefix, sys.base_prefix, os.path.dirname(os.path.dirname(weightvault.__file__))})


def _is_import(event: tuple[str, Any]) -> bool:
    code = event[1]
    return event[0] == "exec" and str(getattr(code, "co_filename", "")).startswith(_PYTHON_TREES)


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _EVENTS is not None and (event == "open" or event in _CODE_EVENTS):
        _EVENTS.append((event, args[0] if args else None))


if not getattr(sys, "_weightvault_tf_onnx_audit", False):  # audit hooks cannot be removed: add once
    sys.addaudithook(_audit)
    sys._weightvault_tf_onnx_audit = True  # type: ignore[attr-defined]


@contextlib.contextmanager
def _watch() -> Iterator[list[tuple[str, Any]]]:
    global _EVENTS
    events: list[tuple[str, Any]] = []
    _EVENTS = events
    try:
        yield events
    finally:
        _EVENTS = None


def _read_everything(path: Path, fmt: str | None) -> None:
    with weightvault.open(path, format=fmt) as r:
        for name in r.keys():
            np.asarray(r.get(name)).sum()
        for name in getattr(r, "string_keys", list)():
            r.get_strings(name)
        r.verify()
        r.metadata  # noqa: B018


def _assert_refused(
    path: Path,
    cli_run: Any,
    *,
    fmt: str | None = None,
    inside: Path | None = None,
    error: type[errors.WeightVaultError] = errors.CorruptFileError,
    match: str | None = None,
    tensor: str | None = None,
) -> errors.WeightVaultError:
    """Read ``path`` fully: one clean ``error``, no code, no file opened outside ``inside``."""
    inside = (inside or (path if path.is_dir() else path.parent)).resolve()
    with contextlib.suppress(errors.WeightVaultError):  # imports every module this read needs first
        _read_everything(path, fmt)
    tracemalloc.start()
    try:
        with _watch() as events, pytest.raises(error, match=match) as exc:
            _read_everything(path, fmt)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < _PEAK_LIMIT, f"reading allocated {peak} bytes"
    assert not [e for e in events if e[0] in _CODE_EVENTS and not _is_import(e)], events
    opened = [os.fsdecode(a) for e, a in events if e == "open" and isinstance(a, (str, bytes, os.PathLike))]
    opened = [p for p in opened if not p.startswith(_PYTHON_TREES)]
    outside = [p for p in opened if not os.path.realpath(p).startswith(str(inside) + os.sep)]
    assert not outside, f"read outside {inside}: {outside}"
    err = exc.value
    assert err.path is not None and os.path.realpath(err.path).startswith(str(inside)), err.path
    assert err.path in str(err)
    if tensor is not None:
        assert err.tensor == tensor and repr(tensor) in str(err)
    args = ["stats", path] + (["--format", fmt] if fmt else [])
    code, out, stderr = cli_run(*args)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2 and lines and lines[0].startswith("ERROR ") and err.path in lines[0], stderr
    assert not [line for line in lines if line.startswith("ERROR")][1:], stderr
    assert "Traceback" not in stderr
    return err


@pytest.fixture(scope="module")
def tf() -> Any:
    return pytest.importorskip("tensorflow")


# -- TensorFlow checkpoints ----------------------------------------------------------------------------
def _saver_checkpoint(tf: Any, prefix: Path) -> None:
    """A TF1 Saver checkpoint with a partitioned variable ``w`` [130, 3] (two slices) and ``b`` [3]."""
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.get_variable("w", initializer=tf.constant(np.arange(390, dtype=np.float32).reshape(130, 3)),
                                  partitioner=tf.compat.v1.fixed_size_partitioner(2))
        tf.compat.v1.get_variable("b", initializer=tf.constant([1.0, 2.0, 3.0]))
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            tf.compat.v1.train.Saver().save(sess, str(prefix))


@pytest.fixture(scope="module")
def saver_dir(tf: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("saver") / "run"
    _saver_checkpoint(tf, d / "model.ckpt")
    return d


@pytest.fixture
def run(saver_dir: Path, tmp_path: Path) -> Path:
    """A fresh copy of the Saver run directory, plus a real checkpoint beside it in ``secret/``."""
    shutil.copytree(saver_dir, tmp_path / "run")
    shutil.copytree(saver_dir, tmp_path / "secret")
    return tmp_path / "run"


def _entry_bytes(e: BundleEntry) -> bytes:
    shape = Writer()
    for dim in e.shape:
        shape.message(2, Writer().varint(1, dim))
    w = Writer().varint(1, e.dtype_code).message(2, shape)
    for field, value in ((3, e.shard_id), (4, e.offset), (5, e.size)):
        if value:
            w.varint(field, value)
    w.fixed32(6, e.crc32c)
    for extents in e.slices:
        sl = Writer()
        for start, length in extents:
            ext = Writer().varint(1, start) if start else Writer()
            if length != -1:
                ext.varint(2, length)
            sl.message(1, ext)
        w.message(7, sl)
    return w.tobytes()


def _rewrite_entry(index: Path, key: str, change: Any) -> None:
    """Re-encode one BundleEntryProto of a TF-written .index after ``change(entry)``."""
    table = read_table(index.read_bytes())
    out = []
    for k, v in table:
        if k == key.encode():
            entry = _parse_entry(key, v, str(index))
            change(entry)
            v = _entry_bytes(entry)
        out.append((k, v))
    index.write_bytes(write_table(out))


def test_state_file_relative_escape(run: Path, cli_run: Any) -> None:
    (run / "checkpoint").write_text('model_checkpoint_path: "../secret/model.ckpt"\n')
    _assert_refused(run, cli_run, error=errors.InvalidHeaderError, match="leaves the checkpoint directory")


def test_state_file_absolute_escape(run: Path, cli_run: Any) -> None:
    target = run.parent / "secret" / "model.ckpt"
    (run / "checkpoint").write_text(f'model_checkpoint_path: "{target}"\nall_model_checkpoint_paths: "{target}"\n')
    (run / "model.ckpt.index").rename(run / "renamed.index")  # no same-named checkpoint here to fall back on
    _assert_refused(run, cli_run, error=errors.InvalidHeaderError, match="leaves the checkpoint directory")


def test_index_linked_out_of_the_directory(run: Path, cli_run: Any) -> None:
    (run / "model.ckpt.index").unlink()
    (run / "model.ckpt.index").symlink_to(run.parent / "secret" / "model.ckpt.index")
    (run / "checkpoint").write_text('model_checkpoint_path: "model.ckpt"\n')
    _assert_refused(run, cli_run, error=errors.InvalidHeaderError)


def test_data_shard_linked_out_of_the_directory(run: Path, cli_run: Any) -> None:
    (data,) = run.glob("model.ckpt.data-*")
    data.unlink()
    data.symlink_to(run.parent / "secret" / data.name)  # same bytes: only the link gives it away
    _assert_refused(run, cli_run, error=errors.InvalidHeaderError, match="links outside")


def test_state_file_nested_too_deep(run: Path, cli_run: Any) -> None:
    (run / "checkpoint").write_text("model_checkpoint_path: \"model.ckpt\"\n" + "a {" * 50_000 + "}" * 50_000)
    _assert_refused(run, cli_run, error=errors.ResourceLimitError, match="nested")
    with weightvault.open(run / "model.ckpt") as r:  # the prefix named directly still reads
        assert "checkpoints" not in r.metadata and sorted(r.keys()) == ["b", "w"]


def test_partitioned_variable_full_shape_lies_32_gib(run: Path, cli_run: Any) -> None:
    def lie(e: BundleEntry) -> None:  # [130, 3] float32 -> [2^31, 4]: 32 GiB from two 780-byte slices
        e.shape = (1 << 31, 4)

    _rewrite_entry(run / "model.ckpt.index", "w", lie)
    _assert_refused(run, cli_run, error=errors.InvalidOffsetError, match="elements", tensor="w")


def test_partitioned_variable_full_shape_lies_64_gib(run: Path, cli_run: Any) -> None:
    def lie(e: BundleEntry) -> None:  # 64 GiB of float32 rows; the two slices TF wrote stay valid
        e.shape = ((64 << 30) // 12, 3)

    _rewrite_entry(run / "model.ckpt.index", "w", lie)
    _assert_refused(run, cli_run, error=errors.InvalidOffsetError, match="elements", tensor="w")


def test_partitioned_variable_slice_spec_lies(run: Path, cli_run: Any) -> None:
    """A slice claiming 2^31 rows whose entry holds 65 rows: refused before the 24 GiB array."""
    big = [(65, (1 << 31) - 65), (0, 3)]

    def lie(e: BundleEntry) -> None:
        e.shape = (1 << 31, 3)
        e.slices = [[(0, 65), (0, 3)], big]

    _rewrite_entry(run / "model.ckpt.index", "w", lie)
    index = run / "model.ckpt.index"
    old = encode_tensor_name_slice("w", [(65, 65), (0, 3)])
    new = encode_tensor_name_slice("w", big)
    index.write_bytes(write_table(sorted((new if k == old else k, v) for k, v in read_table(index.read_bytes()))))
    _assert_refused(run, cli_run, error=errors.InvalidOffsetError, match="needs", tensor="w")


def test_partitioned_variable_slice_outside_shape(run: Path, cli_run: Any) -> None:
    def lie(e: BundleEntry) -> None:
        e.slices[1][0] = (1 << 40, 65)

    _rewrite_entry(run / "model.ckpt.index", "w", lie)
    _assert_refused(run, cli_run, error=errors.InvalidOffsetError, match="outside dimension", tensor="w")


def test_unknown_dtype_names_file_and_tensor(run: Path, cli_run: Any) -> None:
    def lie(e: BundleEntry) -> None:
        e.dtype_code = 20  # DT_RESOURCE

    _rewrite_entry(run / "model.ckpt.index", "b", lie)
    _assert_refused(run, cli_run, error=errors.UnknownDtypeError, tensor="b")


def test_string_tensor_length_overflow(tf: Any, tmp_path: Path) -> None:
    """A 10-byte varint string length (2^69) used to reach an OverflowError in the CRC of lengths."""
    prefix = tmp_path / "s" / "ckpt"
    tf.raw_ops.SaveV2(prefix=str(prefix), tensor_names=["names", "x"], shape_and_slices=["", ""],
                      tensors=[tf.constant([b"ab"]), tf.constant([1.5])])
    data = Path(f"{prefix}.data-00000-of-00001")
    blob = data.read_bytes()
    table = dict(read_table(Path(f"{prefix}.index").read_bytes()))
    entry = _parse_entry("names", table[b"names"], "")
    evil = b"\xff" * 9 + b"\x7f" + blob[entry.offset + 1 : entry.offset + entry.size]
    data.write_bytes(blob[: entry.offset] + evil + blob[entry.offset + entry.size :])
    shift = len(evil) - entry.size

    def grow(e: BundleEntry) -> None:
        e.size = len(evil)

    def move(e: BundleEntry) -> None:
        e.offset += shift if e.offset > entry.offset else 0

    _rewrite_entry(Path(f"{prefix}.index"), "names", grow)
    _rewrite_entry(Path(f"{prefix}.index"), "x", move)
    with weightvault.open(prefix) as r:
        np.testing.assert_array_equal(r.get("x"), [1.5])
        result = r.verify()
        assert not result.ok and "names" in result.failures[0] and str(tmp_path) in result.failures[0]
        with pytest.raises(errors.InvalidOffsetError):
            r.get_strings("names")


# -- frozen graphs -------------------------------------------------------------------------------------
def _frozen(tf: Any, path: Path) -> None:
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 3], name="x")
        w = tf.compat.v1.get_variable("w", initializer=np.eye(3, dtype=np.float32))
        tf.identity(tf.matmul(x, w) * tf.constant(2.0, name="two"), name="y")
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            frozen = tf.compat.v1.graph_util.convert_variables_to_constants(sess, graph.as_graph_def(), ["y"])
    path.write_bytes(frozen.SerializeToString())


def _rewrite_const(path: Path, name: str, tensor_proto: bytes) -> None:
    """Replace the ``value`` TensorProto of one Const node of a GraphDef."""
    out = Writer()
    for field, wire, value in iter_fields(path.read_bytes()):
        if field == 1 and get_str(parse(value), 1) == name:
            node = Writer()
            for f, w, v in iter_fields(value):
                if f == 5 and get_str(parse(v), 1) == "value":
                    v = Writer().string(1, "value").message(2, Writer().bytes(8, tensor_proto)).tobytes()
                node.field(f, w, v)
            value = node.tobytes()
        out.field(field, wire, value)
    path.write_bytes(out.tobytes())


def _const_proto(path: Path, name: str) -> bytes:
    for node in get_messages(parse(path.read_bytes()), 1):
        if get_str(node, 1) == name:
            for attr in get_messages(node, 5):
                if get_str(attr, 1) == "value":
                    return get_bytes(get_message(attr, 2), 8)
    raise AssertionError(name)


def _shape(*dims: int) -> Writer:
    shape = Writer()
    for d in dims:
        shape.message(2, Writer().varint(1, d))
    return shape


def test_const_claiming_5e18_elements_with_content(tf: Any, tmp_path: Path, cli_run: Any) -> None:
    pb = tmp_path / "g.pb"
    _frozen(tf, pb)
    content = get_bytes(parse(_const_proto(pb, "w")), 4)
    _rewrite_const(pb, "w", Writer().varint(1, 1).message(2, _shape(5 * 10**18)).bytes(4, content).tobytes())
    _assert_refused(pb, cli_run, error=errors.InvalidOffsetError, match="tensor_content", tensor="w")


def test_const_claiming_5e18_elements_filled(tf: Any, tmp_path: Path, cli_run: Any) -> None:
    pb = tmp_path / "g.pb"
    _frozen(tf, pb)
    _rewrite_const(pb, "w", Writer().varint(1, 1).message(2, _shape(5 * 10**18)).packed_float(5, [1.0]).tobytes())
    _assert_refused(pb, cli_run, error=errors.ResourceLimitError, tensor="w")


def test_56_byte_graph_filling_2_gib(tf: Any, tmp_path: Path, cli_run: Any) -> None:
    graph = tf.Graph()
    with graph.as_default():
        tf.constant(1.0, shape=[1 << 29], name="big")  # TF stores one float_val and the shape
    pb = tmp_path / "fill.pb"
    pb.write_bytes(graph.as_graph_def().SerializeToString())
    assert pb.stat().st_size < 100
    _assert_refused(pb, cli_run, error=errors.ResourceLimitError, tensor="big")
    small = tmp_path / "small.pb"  # the same fill at a size the limit allows still reads
    g2 = tf.Graph()
    with g2.as_default():
        tf.constant(3.0, shape=[1000], name="ok")
    small.write_bytes(g2.as_graph_def().SerializeToString())
    with weightvault.open(small) as r:
        np.testing.assert_array_equal(r.get("ok"), np.full(1000, 3.0, np.float32))


def test_float_val_with_a_wide_value(tf: Any, tmp_path: Path, cli_run: Any) -> None:
    pb = tmp_path / "g.pb"
    _frozen(tf, pb)
    _rewrite_const(pb, "two", Writer().varint(1, 1).message(2, Writer()).varint(5, 1 << 40).tobytes())
    _assert_refused(pb, cli_run, error=errors.InvalidHeaderError, tensor="two")


# -- ONNX ------------------------------------------------------------------------------------------
@pytest.fixture
def onnx_model(tmp_path: Path) -> Path:
    """A model saved by onnx with its initializer in external data ``w.bin``."""
    onnx = pytest.importorskip("onnx")
    from onnx import helper, numpy_helper

    w = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(3, 4), "w")
    graph = helper.make_graph([helper.make_node("Identity", ["w"], ["y"])], "g", [],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [3, 4])], [w])
    d = tmp_path / "model"
    d.mkdir()
    onnx.save_model(helper.make_model(graph), str(d / "m.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="w.bin", size_threshold=0)
    (tmp_path / "secret.bin").write_bytes(np.arange(12, dtype=np.float32).tobytes())
    with weightvault.open(d / "m.onnx") as r:
        assert r.info("w").extra["storage"] == "external"
    return d / "m.onnx"


def _set_location(model: Path, location: str) -> None:
    import onnx

    m = onnx.load(str(model), load_external_data=False)
    for entry in m.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = location
    model.write_bytes(m.SerializeToString())


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "nul", "directory", "symlink"])
def test_onnx_external_data_escapes(onnx_model: Path, kind: str, cli_run: Any) -> None:
    secret = onnx_model.parent.parent / "secret.bin"
    location = {"dotdot": "../secret.bin", "absolute": str(secret), "nul": "w.bin\x00.txt",
                "directory": "sub", "symlink": "link.bin"}[kind]
    (onnx_model.parent / "sub").mkdir()
    (onnx_model.parent / "link.bin").symlink_to(secret)
    _set_location(onnx_model, location)
    _assert_refused(onnx_model, cli_run, error=errors.InvalidHeaderError, tensor="w")


def test_onnx_data_linked_like_the_hugging_face_cache(onnx_model: Path, tmp_path: Path) -> None:
    """snapshots/<rev>/m.onnx and w.bin link into blobs/: the data lies beside the model's target."""
    blobs, snap = tmp_path / "blobs", tmp_path / "snapshots" / "rev"
    blobs.mkdir()
    snap.mkdir(parents=True)
    for name, blob in (("m.onnx", "aaa"), ("w.bin", "bbb")):
        shutil.copy(onnx_model.parent / name, blobs / blob)
        (snap / name).symlink_to(Path("../..") / "blobs" / blob)
    with weightvault.open(snap / "m.onnx") as r:
        np.testing.assert_array_equal(r.get("w"), np.arange(12, dtype=np.float32).reshape(3, 4))


def _rewrite_initializer(model: Path, tensor_proto: bytes) -> None:
    """Swap the (single) initializer of an onnx-saved model for ``tensor_proto``."""
    def graph(buf: Any) -> bytes:
        w = Writer()
        for field, wire, value in iter_fields(buf):
            w.field(field, wire, tensor_proto if field == 5 else value)
        return w.tobytes()

    out = Writer()
    for field, wire, value in iter_fields(model.read_bytes()):
        out.field(field, wire, graph(value) if field == 7 else value)
    model.write_bytes(out.tobytes())


def test_onnx_typed_data_claiming_a_huge_shape(tmp_path: Path, cli_run: Any) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import helper

    t = helper.make_tensor("w", onnx.TensorProto.FLOAT, [1], [1.0])
    p = tmp_path / "typed.onnx"
    onnx.save_model(helper.make_model(helper.make_graph([], "g", [], [], [t])), str(p))
    # dims [2^20, 2^20] (4 TiB of float32) over one float_data value
    _rewrite_initializer(p, Writer().varint(1, 1 << 20).varint(1, 1 << 20).varint(2, 1).packed_float(4, [1.0])
                         .string(8, "w").tobytes())
    _assert_refused(p, cli_run, error=errors.InvalidOffsetError, match="needs", tensor="w")


def test_onnx_typed_data_counted_before_decoding(tmp_path: Path) -> None:
    """A million int64_data varints for a [1] tensor are refused on their byte count, not decoded
    into a million Python ints first."""
    onnx = pytest.importorskip("onnx")
    from onnx import helper

    t = onnx.TensorProto(name="w", data_type=onnx.TensorProto.INT64, dims=[1])
    t.int64_data.extend(range(1 << 20))
    p = tmp_path / "many.onnx"
    onnx.save_model(helper.make_model(helper.make_graph([], "g", [], [], [t])), str(p))
    with weightvault.open(p) as r:
        tracemalloc.start()
        try:
            with pytest.raises(errors.InvalidOffsetError, match="1048576 values"):
                r.get("w")
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak < 8 << 20, peak


def test_onnx_float_data_with_a_wide_value(tmp_path: Path, cli_run: Any) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import helper

    p = tmp_path / "wide.onnx"
    t = helper.make_tensor("w", onnx.TensorProto.FLOAT, [1], [1.0])
    onnx.save_model(helper.make_model(helper.make_graph([], "g", [], [], [t])), str(p))
    # float_data (4) as a varint wider than 32 bits: used to be an OverflowError
    _rewrite_initializer(p, Writer().varint(1, 1).varint(2, 1).varint(4, 1 << 40).string(8, "w").tobytes())
    _assert_refused(p, cli_run, error=errors.InvalidHeaderError, tensor="w")


@pytest.mark.parametrize("fmt", ["onnx", "tf_graph", "tf_bundle"])
def test_forced_format_on_a_pytorch_file(tmp_path: Path, fmt: str, cli_run: Any) -> None:
    torch = pytest.importorskip("torch")
    p = tmp_path / "model.pt"
    torch.save({"w": torch.ones(3)}, p)
    err = _assert_refused(p, cli_run, fmt=fmt, error=errors.InvalidHeaderError)
    assert "not a" in err.message or "not an" in err.message


# -- mutations of real files: only clean errors ---------------------------------------------------------
def _mutate(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        b = b or bytearray(1)
        i = rng.randrange(len(b))
        r = rng.random()
        if r < 0.5:
            b[i] = rng.randrange(256)
        elif r < 0.7:
            b[i] ^= 0x80
        elif r < 0.85:
            del b[i : i + rng.randint(1, 4)]
        else:
            b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 3)))
    return bytes(b)


def _only_clean_errors(path: Path, fmt: str) -> None:
    try:
        _read_everything(path, fmt)
    except errors.WeightVaultError as exc:
        assert exc.path is not None, exc


def test_mutated_files_raise_only_weightvault_errors(tf: Any, saver_dir: Path, onnx_model: Path,
                                                     tmp_path: Path) -> None:
    rng = random.Random(12)
    pb = tmp_path / "g.pb"
    _frozen(tf, pb)
    graph, onnx_bytes = pb.read_bytes(), (onnx_model.parent / "m.onnx").read_bytes()
    table = read_table((saver_dir / "model.ckpt.index").read_bytes())
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(saver_dir / "model.ckpt.data-00000-of-00001", work / "c.data-00000-of-00001")
    shutil.copy(onnx_model.parent / "w.bin", work / "w.bin")
    for _ in range(300):
        (work / "g.pb").write_bytes(_mutate(graph, rng))
        _only_clean_errors(work / "g.pb", "tf_graph")
        (work / "m.onnx").write_bytes(_mutate(onnx_bytes, rng))
        _only_clean_errors(work / "m.onnx", "onnx")
        entries = list(table)
        i = rng.randrange(len(entries))
        entries[i] = (entries[i][0], _mutate(entries[i][1], rng))
        (work / "c.index").write_bytes(write_table(entries))
        _only_clean_errors(work / "c", "tf_bundle")
