"""Verbatim byte spans: readers say where a tensor's bytes lie, writers stream them file to file.

``convert`` between formats that store tensors as raw little-endian bytes (native, safetensors,
PyTorch) copies those bytes through one small buffer instead of materialising tensors; these
tests hold that path to the same results as the plain one, with the real torch and safetensors
on either side.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

import weightvault
from weightvault.abc.format import ByteSpan
from weightvault.core import io as wv_io
from weightvault.errors import TruncatedFileError
from weightvault.formats.native import NativeReader
from weightvault.formats.numpy_npz import NumpyReader
from weightvault.formats.pytorch import PyTorchFormat, PyTorchReader
from weightvault.formats.safetensors import SafetensorsReader, ShardedSafetensorsReader
from weightvault.formats.tf_bundle import TFBundleReader
from weightvault.registry import get_format

torch = pytest.importorskip("torch")
st_numpy = pytest.importorskip("safetensors.numpy")

SPAN_READERS = (NativeReader, PyTorchReader, SafetensorsReader, ShardedSafetensorsReader, NumpyReader, TFBundleReader)


def _state() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        "embed": rng.standard_normal((300, 64)).astype(np.float32),
        "bias": rng.standard_normal(64).astype(np.float16),
        "ids": rng.integers(-5, 5, (7, 3)).astype(np.int64),
        "mask": rng.integers(0, 2, 11).astype(bool),
        "scalar": np.array(3.5, np.float64),
        "empty": np.zeros((0, 4), np.float32),
    }


def _pread(span: ByteSpan) -> bytes:
    with open(span.path, "rb") as f:
        return os.pread(f.fileno(), span.nbytes, span.offset)


def _write_source(kind: str, root: Path) -> Path:
    state = _state()
    if kind == "torch-zip":
        p = root / "src.pt"
        base = torch.arange(60, dtype=torch.float32).reshape(6, 10)
        sd = {k: torch.from_numpy(v) for k, v in state.items()}
        sd.update(row=base[2], tail=base.view(-1)[37:], transposed=base.t(), base=base)
        torch.save(sd, p)
    elif kind == "torch-legacy":
        p = root / "src.pt"
        torch.save({k: torch.from_numpy(v) for k, v in state.items()}, p, _use_new_zipfile_serialization=False)
    elif kind == "safetensors":
        p = root / "src.safetensors"
        st_numpy.save_file(state, p, metadata={"format": "pt"})
    elif kind == "safetensors-repo":
        p = root / "repo"
        weightvault.convert(_write_source("safetensors", root), p, to="safetensors",
                            write_options={"shard_size": 20_000})
    elif kind == "npy":
        p = root / "embed.npy"
        np.save(p, state["embed"])
    elif kind == "npz":
        p = root / "src.npz"
        np.savez(p, **state)
    elif kind == "npz-deflated":
        p = root / "src.npz"
        np.savez_compressed(p, **state)
    elif kind == "native-file":
        p = weightvault.save(state, root / "src.safetensors")
    else:
        p = weightvault.save(state, root / "native", shard_size=20_000)
    return Path(p)


@pytest.mark.parametrize("kind", ["torch-zip", "torch-legacy", "safetensors", "safetensors-repo",
                                  "native-file", "native-dir", "npy", "npz", "tf1-saver"])
def test_spans_hold_exactly_the_tensor_bytes(tmp_path: Path, kind: str, fixtures_dir: Path) -> None:
    if kind == "tf1-saver":  # written by TensorFlow's Saver (see ../shared/fixtures/README.md)
        src = fixtures_dir / "tensorflow" / "tf1_saver"
    else:
        src = _write_source(kind, tmp_path)
    with weightvault.open(src) as r:
        assert isinstance(r, SPAN_READERS)
        spanned = 0
        for name in r.keys():
            arr = np.asarray(r.get(name))
            span = r.byte_span(name)
            if arr.size == 0 or not arr.flags.c_contiguous or r.info(name).dtype == "string":
                assert span is None, name  # nothing to copy, or not a contiguous run of bytes
                continue
            assert span is not None, name
            assert span.nbytes == arr.nbytes, name
            assert _pread(span) == np.ascontiguousarray(arr).tobytes(), name
            spanned += 1
        assert spanned >= (1 if kind == "npy" else 5)


def test_what_needs_reordering_or_inflating_has_no_span(tmp_path: Path, fixtures_dir: Path) -> None:
    _write_source("npz-deflated", tmp_path)
    np.save(tmp_path / "fortran.npy", np.asfortranarray(np.arange(12.0).reshape(3, 4)))
    np.save(tmp_path / "big.npy", np.arange(5, dtype=">i4"))
    for path in ("src.npz", "fortran.npy", "big.npy"):
        with weightvault.open(tmp_path / path) as r:
            assert all(r.byte_span(n) is None for n in r.keys()), path
    # a CRC-checking TF reader promises the check on every read: no span may bypass it
    with TFBundleReader(fixtures_dir / "tensorflow" / "tf1_saver", check_crc=True) as r:
        assert all(r.byte_span(n) is None for n in r.keys())


def test_views_of_one_storage_get_spans_inside_it(tmp_path: Path) -> None:
    src = _write_source("torch-zip", tmp_path)
    with weightvault.open(src) as r:
        base, row, tail = r.byte_span("base"), r.byte_span("row"), r.byte_span("tail")
        assert base is not None and row is not None and tail is not None
        assert row.offset == base.offset + 20 * 4 and row.nbytes == 10 * 4
        assert tail.offset == base.offset + 37 * 4 and tail.nbytes == 23 * 4
        assert r.byte_span("transposed") is None  # strided: its bytes are not a run in the file


def test_big_endian_and_compressed_records_have_no_span(tmp_path: Path) -> None:
    tensors = {"f32": np.array([1.5, -2.25, 3e8], np.float32), "i16": np.array([1, -2, 300], np.int16)}
    p = tmp_path / "le.pt"
    PyTorchFormat.write(p, tensors)
    with zipfile.ZipFile(p) as zf:
        records = {i.filename: zf.read(i) for i in zf.infolist()}
    prefix = next(iter(records)).split("/")[0]
    deflated = tmp_path / "deflated.pt"
    with zipfile.ZipFile(deflated, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in records.items():
            zf.writestr(name, data)
    records[f"{prefix}/byteorder"] = b"big"
    for key, arr in enumerate(tensors.values()):
        records[f"{prefix}/data/{key}"] = arr.astype(arr.dtype.newbyteorder(">")).tobytes()
    big = tmp_path / "be.pt"
    with zipfile.ZipFile(big, "w") as zf:
        for name, data in records.items():
            zf.writestr(name, data)
    for path in (big, deflated):
        with weightvault.open(path) as r:
            assert all(r.byte_span(n) is None for n in tensors), path.name
        out = tmp_path / f"{path.stem}.native"
        weightvault.convert(path, out)
        with weightvault.open(out) as r:
            for name, arr in tensors.items():
                assert np.array_equal(r.get(name), arr) and r.get(name).dtype == arr.dtype.newbyteorder("<")


def _no_spans(monkeypatch: pytest.MonkeyPatch) -> None:
    for cls in SPAN_READERS:
        monkeypatch.setattr(cls, "byte_span", lambda self, name: None)
    monkeypatch.setattr(PyTorchReader, "buffer_spans", lambda self: {})


@pytest.mark.parametrize("small_chunks", [False, True], ids=["one-chunk", "many-chunks"])
def test_native_to_torch_via_spans_is_byte_identical_to_the_plain_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_chunks: bool
) -> None:
    if small_chunks:
        monkeypatch.setattr(wv_io, "COPY_CHUNK_BYTES", 1000)  # 300x64 float32 = 77 chunks
    src = _write_source("native-dir", tmp_path)
    (tmp_path / "spans").mkdir()
    (tmp_path / "plain").mkdir()
    weightvault.convert(src, tmp_path / "spans" / "model.pt")
    with monkeypatch.context() as m:
        _no_spans(m)
        weightvault.convert(src, tmp_path / "plain" / "model.pt")
    spans_bytes = (tmp_path / "spans" / "model.pt").read_bytes()
    assert spans_bytes == (tmp_path / "plain" / "model.pt").read_bytes()
    with zipfile.ZipFile(tmp_path / "spans" / "model.pt") as zf:
        assert zf.testzip() is None  # every record's CRC-32 is right
    for mmap in (False, True):
        loaded = torch.load(tmp_path / "spans" / "model.pt", weights_only=True, mmap=mmap)
        for name, arr in _state().items():
            assert np.array_equal(loaded[name].numpy(), arr), name


@pytest.mark.parametrize("small_chunks", [False, True], ids=["one-chunk", "many-chunks"])
@pytest.mark.parametrize("target", ["native", "safetensors"])
def test_torch_to_safetensors_via_spans_matches_the_plain_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_chunks: bool, target: str
) -> None:
    if small_chunks:
        monkeypatch.setattr(wv_io, "COPY_CHUNK_BYTES", 1000)
    src = _write_source("torch-zip", tmp_path)
    spans, plain = tmp_path / "spans.safetensors", tmp_path / "plain.safetensors"
    weightvault.convert(src, spans, to=target)
    with monkeypatch.context() as m:
        _no_spans(m)
        weightvault.convert(src, plain, to=target)
    if target == "safetensors":
        assert spans.read_bytes() == plain.read_bytes()
    else:  # the manifest records a creation time; tensors and checksums must agree
        with weightvault.open(spans) as a, weightvault.open(plain) as b:
            assert a.keys() == b.keys()
            for name in a.keys():
                assert a.info(name).extra["checksum"] == b.info(name).extra["checksum"], name
            count = len(a.keys())
        assert weightvault.verify(spans).checked == count
    loaded = st_numpy.load_file(spans)
    reference = torch.load(src, weights_only=True)
    for name, t in reference.items():
        assert np.array_equal(loaded[name], t.contiguous().numpy()), name


def test_write_span_streams_through_chunks_and_sees_every_byte(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wv_io, "COPY_CHUNK_BYTES", 4096)
    payload = np.random.default_rng(1).integers(0, 256, 50_000, dtype=np.uint8).tobytes()
    src = tmp_path / "src.bin"
    src.write_bytes(b"H" * 123 + payload + b"T" * 7)
    seen: list[bytes] = []
    out = io.BytesIO()
    with open(src, "rb") as f:
        wv_io.write_span(out, ByteSpan(str(src), f.fileno(), 123, len(payload)), lambda c: seen.append(bytes(c)))
    assert out.getvalue() == payload
    assert b"".join(seen) == payload and len(seen) == 13  # ceil(50000 / 4096)


def test_write_span_past_the_end_names_the_source(tmp_path: Path) -> None:
    src = tmp_path / "short.bin"
    src.write_bytes(b"x" * 100)
    with open(src, "rb") as f, pytest.raises(TruncatedFileError) as err:
        wv_io.write_span(io.BytesIO(), ByteSpan(str(src), f.fileno(), 50, 100))
    assert "short.bin" in str(err.value) and "byte 100" in str(err.value)


@pytest.mark.parametrize("target", ["model.pt", "model.safetensors"])
def test_source_shrinking_during_convert_fails_cleanly(tmp_path: Path, target: str) -> None:
    src = _write_source("native-file", tmp_path)
    dst = tmp_path / "out" / target
    dst.parent.mkdir()
    dst.write_bytes(b"the previous file")
    with weightvault.open(src) as r:
        os.truncate(src, 200)  # after open validated it: the copy itself must notice
        fmt = PyTorchFormat if target.endswith(".pt") else get_format("native")
        with pytest.raises(TruncatedFileError) as err:
            fmt.write(dst, r.as_mapping(), metadata=r.metadata)
    assert str(src) in str(err.value)
    assert dst.read_bytes() == b"the previous file"
    assert sorted(p.name for p in dst.parent.iterdir()) == [target]  # no temporary left behind


class _RecordedBar:
    """Stands in for core.progress.progress_bar: records the total and every advance."""

    def __init__(self) -> None:
        self.totals: list[int] = []
        self.advanced = 0

    def __call__(self, label: str, total: int, *, enabled: bool | None = None):  # noqa: ANN204
        import contextlib

        self.totals.append(total)

        @contextlib.contextmanager
        def bar():  # noqa: ANN202
            def advance(n: int) -> None:
                self.advanced += n

            yield advance

        return bar()


@pytest.mark.parametrize("target", ["model.pt", "model.safetensors", "repo"])
@pytest.mark.parametrize("via_spans", [True, False], ids=["spans", "arrays"])
def test_writers_report_progress_over_every_tensor_byte(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: str, via_spans: bool
) -> None:
    import weightvault.formats.pytorch as pt_mod
    import weightvault.formats.safetensors as st_mod

    bar = _RecordedBar()
    monkeypatch.setattr(pt_mod if target.endswith(".pt") else st_mod, "progress_bar", bar)
    src = _write_source("native-file", tmp_path)
    if not via_spans:
        _no_spans(monkeypatch)
    options = {"shard_size": 20_000} if target == "repo" else {}
    weightvault.convert(src, tmp_path / target, to="pytorch" if target.endswith(".pt") else "safetensors",
                        write_options=options)
    expected = sum(a.nbytes for a in _state().values())
    assert bar.totals == [expected] and bar.advanced == expected


# (the TF fixture holds a bfloat16 tensor, which .npy has no code for: that pair is refused)
@pytest.mark.parametrize(("source", "target"), [
    (s, t) for s in ("native-file", "npz", "tf1-saver", "torch-zip", "torch-legacy")
    for t in ("out.npz", "out.pt", "out.safetensors")
    if (s, t) != ("tf1-saver", "out.npz")
])
def test_any_span_source_to_any_span_target_matches_the_plain_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fixtures_dir: Path, source: str, target: str
) -> None:
    src = fixtures_dir / "tensorflow" / "tf1_saver" if source == "tf1-saver" else _write_source(source, tmp_path)
    fmt = {"out.npz": "numpy", "out.pt": "pytorch", "out.safetensors": "safetensors"}[target]
    (tmp_path / "spans").mkdir()
    (tmp_path / "plain").mkdir()
    skip = source == "tf1-saver"  # its string tensor has no place in these formats
    weightvault.convert(src, tmp_path / "spans" / target, to=fmt, skip_unsupported=skip)
    with monkeypatch.context() as m:
        _no_spans(m)
        weightvault.convert(src, tmp_path / "plain" / target, to=fmt, skip_unsupported=skip)
    assert (tmp_path / "spans" / target).read_bytes() == (tmp_path / "plain" / target).read_bytes()
    with weightvault.open(src) as a, weightvault.open(tmp_path / "spans" / target) as b:
        names = [n for n in a.keys() if a.info(n).dtype != "string"]
        assert sorted(names) == sorted(b.keys())
        for name in names:
            assert np.array_equal(a.get(name), b.get(name)) and a.get(name).dtype == b.get(name).dtype, name


@pytest.mark.parametrize("target", ["model.pt", "model.safetensors", "native", "model.npz"])
def test_renaming_conversion_streams_bytes_without_reading_a_tensor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: str
) -> None:
    # The DDP case: strip "module." from every name. A rename hands each tensor over unchanged,
    # so the writer must stream spans and never ask the reader for an array.
    state = {f"module.{k}": torch.from_numpy(v) for k, v in _state().items() if v.size}
    torch.save(state, tmp_path / "ddp.pt")

    def no_reads(self: PyTorchReader, name: str) -> None:
        raise AssertionError(f"{name} was materialised")

    monkeypatch.setattr(PyTorchReader, "get", no_reads)
    to = {"model.pt": "pytorch", "model.safetensors": "safetensors", "native": "native", "model.npz": "numpy"}
    report = weightvault.convert(tmp_path / "ddp.pt", tmp_path / target, to=to[target], rename=[(r"^module\.", "")])
    assert sorted(row["target"] for row in report.to_dict()["tensors"]) == sorted(k[7:] for k in state)
    monkeypatch.undo()
    with weightvault.open(tmp_path / target) as r:
        for name, t in state.items():
            assert np.array_equal(r.get(name[7:]), t.numpy()), name


def test_transforming_conversion_to_native_holds_one_tensor_at_a_time(tmp_path: Path) -> None:
    import tracemalloc

    from weightvault.formats.native import NativeFormat
    from weightvault.transforms import Plan, Step
    from weightvault.transforms.base import Transpose

    rng = np.random.default_rng(0)
    src = weightvault.save({f"w{i}": rng.standard_normal((512, 512)).astype(np.float32) for i in range(16)},
                           tmp_path / "src.safetensors")  # 16 MiB in 1 MiB tensors
    plan = Plan("transpose", [Step(f"t{i}", (f"w{i}",), (Transpose((1, 0)),)) for i in range(16)])
    with weightvault.open(src) as r:
        tracemalloc.start()
        NativeFormat.write(tmp_path / "out.safetensors", plan.apply(r))
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        expected = {f"t{i}": np.ascontiguousarray(r.get(f"w{i}").T) for i in range(16)}
    assert peak < 6 * 2**20, f"peak {peak / 2**20:.1f} MiB: the writer kept transformed tensors alive"
    with weightvault.open(tmp_path / "out.safetensors") as out:
        for name, arr in expected.items():
            assert np.array_equal(out.get(name), arr), name


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_torch_to_torch_copies_storages_from_the_file_and_keeps_views(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, legacy: bool
) -> None:
    base = torch.arange(60, dtype=torch.float32).reshape(6, 10)
    emb = torch.randn(50, 8)
    sd = {"base": base, "row": base[2], "tail": base.view(-1)[37:], "transposed": base.t(),
          "emb": emb, "head": emb, "alone": torch.randn(3, 3)}
    torch.save(sd, tmp_path / "src.pt", _use_new_zipfile_serialization=not legacy)
    copied: list[int] = []
    real = wv_io.write_span

    def counting(f, span, on_chunk=None):  # noqa: ANN001, ANN202
        copied.append(span.nbytes)
        return real(f, span, on_chunk)

    import weightvault.formats.pytorch as pt_mod

    monkeypatch.setattr(pt_mod, "write_span", counting)
    weightvault.convert(tmp_path / "src.pt", tmp_path / "out.pt")
    assert sorted(copied) == sorted([60 * 4, 50 * 8 * 4, 9 * 4])  # three storages, each copied whole
    out = torch.load(tmp_path / "out.pt", weights_only=True)
    assert out["row"].untyped_storage().data_ptr() == out["base"].untyped_storage().data_ptr()
    assert out["head"].data_ptr() == out["emb"].data_ptr()
    for name, t in sd.items():
        assert torch.equal(out[name], t) and out[name].stride() == t.stride(), name
