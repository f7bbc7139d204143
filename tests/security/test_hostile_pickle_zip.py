"""Hostile and corrupt pickles and zips (issue #12): files torch and numpy really wrote, then
mutated. Each case must end in one WeightVaultError naming the file, run no code, read nothing
outside the file, stay small in memory, and leave later reads in the same process unaffected."""

from __future__ import annotations

import os
import pickle
import shutil
import struct
import time
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

import weightvault
from weightvault.core.limits import MAX_NESTING, expansion_limit
from weightvault.core.unpickler import BASE_ALLOWED, OrderedDict, safe_unpickle
from weightvault.errors import (
    CorruptFileError,
    InvalidHeaderError,
    ResourceLimitError,
    TruncatedFileError,
    UnknownDtypeError,
    UnsafePickleError,
    UnsupportedOperationError,
    WeightVaultError,
)
from weightvault.formats.numpy_npz import NumpyFormat
from weightvault.formats.oneflow import OneFlowFormat
from weightvault.formats.pytorch import PyTorchFormat

torch = pytest.importorskip("torch")

ONEFLOW_FIXTURE = Path("/work/shared/fixtures/oneflow/3x3_i3o3_conv2d")


# -- helpers -------------------------------------------------------------------------------------
def _state() -> dict[str, object]:
    torch.manual_seed(0)
    return {"fc.weight": torch.randn(3, 4), "fc.bias": torch.randn(3), "steps": torch.arange(5)}


def _saved(tmp_path: Path, name: str = "good.pt") -> tuple[Path, dict[str, object]]:
    sd = _state()
    p = tmp_path / name
    torch.save(sd, p)
    return p, sd


def _records(p: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(p) as z:
        return {i.filename: z.read(i) for i in z.infolist()}


def _rezip(p: Path, records: dict[str, bytes], method: int = zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(p, "w", compression=method) as z:
        for name, data in records.items():
            z.writestr(name, data)
    return p


def _pkl_name(records: dict[str, bytes]) -> str:
    return next(n for n in records if n.endswith("/data.pkl"))


def _inject(pkl: bytes, payload: bytes) -> bytes:
    """``payload`` (leaving nothing on the stack) right after the PROTO opcode of a real pickle."""
    assert pkl[:1] == b"\x80"
    return pkl[:2] + payload + pkl[2:]


def _hostile_pt(tmp_path: Path, payload: bytes, name: str = "hostile.pt") -> Path:
    good, _ = _saved(tmp_path, "base_" + name)
    recs = _records(good)
    recs[_pkl_name(recs)] = _inject(recs[_pkl_name(recs)], payload)
    return _rezip(tmp_path / name, recs)


def _assert_reads_right(p: Path, sd: dict[str, object]) -> None:
    with weightvault.open(p) as r:
        assert sorted(r.keys()) == sorted(sd)
        for k, v in sd.items():
            np.testing.assert_array_equal(r.get(k), v.numpy())  # type: ignore[attr-defined]


def _refused(p: Path, error: type[Exception] = WeightVaultError, **options: object) -> WeightVaultError:
    with pytest.raises(error) as info:
        with weightvault.open(p, **options) as r:
            for name in r.keys():
                r.get(name)
    exc = info.value
    assert isinstance(exc, WeightVaultError)
    assert str(p) in str(exc) or (exc.path is not None and str(p) in exc.path), str(exc)
    return exc


def _one_error_line(cli_run, *args: object) -> str:  # noqa: ANN001
    code, out, err = cli_run(*args)
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[0].startswith("ERROR "), err
    assert len([line for line in lines if line.startswith("ERROR")]) == 1
    assert "Traceback" not in err + out
    return lines[0]


def _s(text: str) -> bytes:
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


# -- A: one file must not change how later files read ---------------------------------------------
#: BUILD payloads on objects every reader shares; each leaves the stack as it found it (POP)
SHARED_BUILDS = {
    # slot state: setattr(OrderedDict, "__setitem__", set): later dicts come out empty or fail
    "ordered_dict_slots": b"ccollections\nOrderedDict\nN}" + _s("__setitem__") + b"cbuiltins\nset\ns\x86b0",
    # dict state on the class: would write into the class's __dict__
    "ordered_dict_dict": b"ccollections\nOrderedDict\n}" + _s("__setitem__") + b"Nsb0",
    # a function stand-in's defaults
    "function_defaults": b"c_codecs\nencode\nN}" + _s("__defaults__") + b"(" + _s("rot13") + b"tsb0",
    # a torch marker (a frozen dataclass instance shared by the allowlist of one load)
    "torch_marker": b"ctorch\nFloatStorage\nN}" + _s("dtype") + _s("int8") + b"s\x86b0",
}


@pytest.mark.parametrize("payload", list(SHARED_BUILDS))
def test_build_on_a_shared_stand_in_is_refused_and_later_reads_are_right(
    tmp_path: Path, payload: str, cli_run
) -> None:  # noqa: ANN001
    hostile = _hostile_pt(tmp_path, SHARED_BUILDS[payload])
    good, sd = _saved(tmp_path)
    exc = _refused(hostile, UnsafePickleError)
    assert "nothing was changed" in str(exc)
    _assert_reads_right(good, sd)  # same process, after the hostile read
    assert "__setitem__" not in OrderedDict.__dict__
    line = _one_error_line(cli_run, "diff", hostile, good)
    assert str(hostile) in line
    code, out, _ = cli_run("diff", good, good)
    assert code == 0 and "3 equal, 0 changed" in out
    _assert_reads_right(good, sd)


def test_build_on_an_instance_keeps_state_dict_metadata(tmp_path: Path) -> None:
    """What torch itself does with BUILD (``state_dict()._metadata``) still reads."""
    p = tmp_path / "m.pt"
    torch.save(torch.nn.Linear(2, 3).state_dict(), p)
    with weightvault.open(p) as r:
        assert r.metadata["pytorch"]["state_dict_metadata"][""] == {"version": 1}


def test_stand_in_classes_are_immutable() -> None:
    with pytest.raises(UnsafePickleError):
        OrderedDict.update = None  # type: ignore[method-assign]
    with pytest.raises(UnsafePickleError):
        del OrderedDict.__doc__


def test_build_slot_state_on_an_instance_is_refused() -> None:
    data = b"\x80\x02ccollections\nOrderedDict\n)RN}" + _s("__class__") + b"Ns\x86b."
    with pytest.raises(UnsafePickleError):
        safe_unpickle(data, allowed=BASE_ALLOWED, path="x.pkl")


def test_oneflow_build_on_shared_stand_in_then_good_dir(tmp_path: Path) -> None:
    hostile = tmp_path / "hostile"
    shutil.copytree(ONEFLOW_FIXTURE, hostile)
    pk = hostile / "pickled_data"
    pk.write_bytes(_inject(pk.read_bytes(), SHARED_BUILDS["ordered_dict_slots"]))
    _refused(hostile, UnsafePickleError)
    with OneFlowFormat.open(ONEFLOW_FIXTURE) as r:
        assert len(r.keys()) == 2 and all(r.get(k).size for k in r.keys())


# -- B: tiny files that would cost gigabytes or hang -------------------------------------------------
def _pt_with_pickle(tmp_path: Path, pkl: bytes, name: str = "p.pt") -> Path:
    return _rezip(tmp_path / name, {"archive/data.pkl": pkl, "archive/byteorder": b"little", "archive/version": b"3\n"})


def test_exponentially_shared_lists_are_refused_fast(tmp_path: Path) -> None:
    node: list[object] = [torch.zeros(1)]
    for _ in range(120):  # 2**120 paths, under the nesting limit
        node = [node, node]
    p = tmp_path / "dag.pt"
    torch.save(node, p)
    assert p.stat().st_size < 20_000
    tracemalloc.start()
    start = time.monotonic()
    try:
        exc = _refused(p, ResourceLimitError)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert "nodes" in str(exc)
    assert time.monotonic() - start < 20 and peak < 64 << 20


def test_a_little_sharing_still_reads(tmp_path: Path) -> None:
    sd = _state()
    p = tmp_path / "shared.pt"
    torch.save({"model": sd, "ema": sd}, p)
    with weightvault.open(p) as r:
        assert sorted(r.keys()) == sorted([f"model/{k}" for k in sd] + [f"ema/{k}" for k in sd])


def test_huge_memo_index_costs_nothing(tmp_path: Path) -> None:
    pkl = b"\x80\x02]r\x00\x00\x00\x08."  # EMPTY_LIST, LONG_BINPUT 2**27, STOP: 9 bytes
    assert len(pkl) == 9
    p = _pt_with_pickle(tmp_path, pkl)
    tracemalloc.start()
    try:
        with weightvault.open(p) as r:
            assert r.keys() == []
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20


def test_memo_get_of_a_missing_index(tmp_path: Path) -> None:
    _refused(_pt_with_pickle(tmp_path, b"\x80\x02j\x00\x00\x00\x08."), InvalidHeaderError)


@pytest.mark.parametrize("kind", ["lists", "marks", "tuples"])
def test_deep_nesting_is_refused(tmp_path: Path, kind: str) -> None:
    n = 50_000
    if kind == "lists":  # EMPTY_LIST n times, then APPEND n-1 times: nested n deep without MARK
        pkl = b"\x80\x02" + b"]" * n + b"a" * (n - 1) + b"."
    elif kind == "marks":
        pkl = b"\x80\x02" + b"(" * n + b"."
    else:
        pkl = b"\x80\x02" + b")" + b"\x85" * n + b"."
    exc = _refused(_pt_with_pickle(tmp_path, pkl), ResourceLimitError)
    assert str(MAX_NESTING) in str(exc)


def test_nesting_below_the_limit_reads(tmp_path: Path) -> None:
    obj: object = torch.ones(1)
    for _ in range(MAX_NESTING - 5):
        obj = [obj]
    p = tmp_path / "deep.pt"
    torch.save(obj, p)
    with weightvault.open(p) as r:
        assert len(r.keys()) == 1


def test_self_containing_list_is_refused(tmp_path: Path) -> None:
    loop: list[object] = [torch.ones(1)]
    loop.append(loop)
    p = tmp_path / "loop.pt"
    torch.save(loop, p)
    _refused(p, InvalidHeaderError)


def test_giant_length_fields_allocate_nothing(tmp_path: Path) -> None:
    for pkl in (
        b"\x80\x04\x95" + struct.pack("<Q", 1 << 40) + b"N.",  # FRAME of 1 TiB
        b"\x80\x05\x96" + struct.pack("<Q", 1 << 40) + b".",  # BYTEARRAY8 of 1 TiB
        b"\x80\x04\x8d" + struct.pack("<Q", 1 << 40) + b".",  # BINUNICODE8
        b"\x80\x02\x8b" + struct.pack("<i", 1 << 30) + b".",  # LONG4 of 1 GiB
    ):
        tracemalloc.start()
        try:
            _refused(_pt_with_pickle(tmp_path, pkl), InvalidHeaderError)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 32 << 20


# zip bombs: raw deflate streams built by repeating one fully flushed block, so a 2 GiB stream
# costs milliseconds to make
def _deflate_bomb(prefix: bytes, total: int) -> bytes:
    chunk = 1 << 20
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = c.compress(prefix) + c.flush(zlib.Z_FULL_FLUSH)
    block = c.compress(bytes(chunk)) + c.flush(zlib.Z_FULL_FLUSH)
    again = c.compress(bytes(chunk)) + c.flush(zlib.Z_FULL_FLUSH)
    assert block == again
    return head + block * (total // chunk) + c.flush()


def _raw_zip(path: Path, members: list[tuple[str, int, bytes, int, int]]) -> Path:
    """A zip written by hand: (name, method, stored bytes, declared size, crc) per member, so the
    declared sizes can lie."""
    out, central = bytearray(), bytearray()
    for name, method, data, declared, crc in members:
        raw = name.encode()
        offset = len(out)
        out += struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, method, 0, 0x21, crc, len(data), declared, len(raw), 0)
        out += raw + data
        central += struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, 0, method, 0, 0x21, crc, len(data),
                               declared, len(raw), 0, 0, 0, 0, 0, offset) + raw
    eocd = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, len(members), len(members), len(central), len(out), 0)
    path.write_bytes(bytes(out + central + eocd))
    return path


def _pt_members(tmp_path: Path) -> tuple[str, bytes]:
    good, _ = _saved(tmp_path, "one.pt")
    torch.save({"x": torch.zeros(1)}, good)
    recs = _records(good)
    return _pkl_name(recs), recs[_pkl_name(recs)]


def _bounded(fn) -> None:  # noqa: ANN001
    tracemalloc.start()
    start = time.monotonic()
    try:
        fn()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, peak
    assert time.monotonic() - start < 30


@pytest.mark.parametrize("declared", ["honest", "lying"])
def test_pt_storage_bomb(tmp_path: Path, declared: str) -> None:
    pkl_name, pkl = _pt_members(tmp_path)
    prefix = pkl_name.rsplit("/", 1)[0]
    bomb = _deflate_bomb(b"", 2 << 30)
    size = (2 << 30) if declared == "honest" else 4  # the pickle's storage holds 1 float32
    p = _raw_zip(tmp_path / "bomb.pt", [
        (pkl_name, 0, pkl, len(pkl), zlib.crc32(pkl)),
        (f"{prefix}/byteorder", 0, b"little", 6, zlib.crc32(b"little")),
        (f"{prefix}/data/0", 8, bomb, size, 0),
    ])
    _bounded(lambda: _refused(p, ResourceLimitError))


@pytest.mark.parametrize("declared", ["honest", "lying"])
def test_pt_pickle_bomb(tmp_path: Path, declared: str, cli_run) -> None:  # noqa: ANN001
    bomb = _deflate_bomb(b"\x80\x02N", 2 << 30)
    p = _raw_zip(tmp_path / "bomb.pt", [("archive/data.pkl", 8, bomb, (2 << 30) if declared == "honest" else 100, 0)])
    _bounded(lambda: _refused(p, ResourceLimitError))
    assert str(p) in _one_error_line(cli_run, "ls", p)


@pytest.mark.parametrize("declared", ["honest", "lying"])
def test_npz_bomb(tmp_path: Path, declared: str) -> None:
    real = tmp_path / "real.npz"
    np.savez(real, x=np.zeros(16, np.float32))
    npy = _records(real)["x.npy"]
    header = npy[: len(npy) - 64]
    bomb = _deflate_bomb(header, 2 << 30)
    size = (2 << 30) if declared == "honest" else len(npy)
    p = _raw_zip(tmp_path / "bomb.npz", [("x.npy", 8, bomb, size, zlib.crc32(npy))])
    _bounded(lambda: _refused(p, ResourceLimitError))


def test_expansion_limit_can_be_raised_for_a_trusted_file(tmp_path: Path) -> None:
    arr = np.zeros(1 << 21, np.float32)  # 8 MiB of zeros deflate ~1000:1
    p = tmp_path / "z.npz"
    np.savez_compressed(p, x=arr)
    with expansion_limit(1 << 20):
        _refused(p, ResourceLimitError)
    with expansion_limit(1 << 24), NumpyFormat.open(p) as r:
        np.testing.assert_array_equal(r.get("x"), arr)


def test_compressed_pt_still_reads(tmp_path: Path) -> None:
    good, sd = _saved(tmp_path)
    rezipped = _rezip(tmp_path / "deflated.pt", _records(good), zipfile.ZIP_DEFLATED)
    _assert_reads_right(rezipped, sd)


# -- C/D: zip structure --------------------------------------------------------------------------------
def _patch_central(data: bytes, field_offset: int, fmt: str, value: int) -> bytes:
    """Set a field of every central directory entry."""
    out = bytearray(data)
    pos = out.find(b"PK\x01\x02")
    while pos != -1:
        struct.pack_into(fmt, out, pos + field_offset, value)
        pos = out.find(b"PK\x01\x02", pos + 4)
    return bytes(out)


@pytest.mark.parametrize(
    ("case", "error"),
    [
        ("zip_version", InvalidHeaderError),  # zipfile: NotImplementedError("zip file version 25.5")
        ("header_offset", CorruptFileError),  # local header offset past the end
        ("bzip2", UnsupportedOperationError),
        ("compress_size", TruncatedFileError),  # member runs past the end of the file
        ("truncated", CorruptFileError),
        ("deflate_garbage", CorruptFileError),  # zlib.error
    ],
)
@pytest.mark.parametrize("fmt", ["pt", "npz"])
def test_damaged_zip_containers(tmp_path: Path, case: str, error: type[Exception], fmt: str, cli_run) -> None:  # noqa: ANN001
    if fmt == "pt":
        good, _ = _saved(tmp_path)
    else:
        good = tmp_path / "good.npz"
        np.savez(good, a=np.arange(6.0), b=np.ones((2, 2), np.int32))
    data = good.read_bytes()
    p = tmp_path / f"bad.{fmt}"
    if case == "zip_version":
        data = _patch_central(data, 6, "<H", 255)
    elif case == "header_offset":
        data = _patch_central(data, 42, "<I", len(data) + 1000)
    elif case == "compress_size":
        data = _patch_central(data, 20, "<I", len(data) * 2)
    elif case == "bzip2":
        _rezip(p, _records(good), zipfile.ZIP_BZIP2)
        data = p.read_bytes()
    elif case == "truncated":
        data = data[: len(data) // 2]
    elif case == "deflate_garbage":
        _rezip(p, _records(good), zipfile.ZIP_DEFLATED)
        data = bytearray(p.read_bytes())
        with zipfile.ZipFile(p) as z:
            for info in z.infolist():
                start = info.header_offset + 30 + len(info.filename.encode())
                data[start : start + info.compress_size] = b"\xff" * info.compress_size
        data = bytes(data)
    p.write_bytes(data)
    _refused(p, error)
    _one_error_line(cli_run, "ls", p)


def test_duplicate_member_names(tmp_path: Path) -> None:
    good, _ = _saved(tmp_path)
    recs = list(_records(good).items())
    p = tmp_path / "dup.pt"
    with pytest.warns(UserWarning), zipfile.ZipFile(p, "w") as z:
        for name, data in [*recs, recs[-1]]:
            z.writestr(name, data)
    _refused(p, InvalidHeaderError)
    q = tmp_path / "dup.npz"
    with pytest.warns(UserWarning), zipfile.ZipFile(q, "w") as z:
        arr = _records(_npz(tmp_path))["a.npy"]
        z.writestr("a.npy", arr)
        z.writestr("a.npy", arr)
    _refused(q, CorruptFileError)


def _npz(tmp_path: Path) -> Path:
    p = tmp_path / "src.npz"
    np.savez(p, a=np.arange(4.0))
    return p


def test_traversal_member_names_touch_nothing_outside(tmp_path: Path) -> None:
    """Member names are only looked up, never used as paths: ``../x`` reads as a plain name and
    nothing is created or read next to the file."""
    arr = _records(_npz(tmp_path))["a.npy"]
    p = tmp_path / "sub" / "t.npz"
    p.parent.mkdir()
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("../../escape.npy", arr)
    before = sorted(os.listdir(tmp_path))
    with NumpyFormat.open(p) as r:
        np.testing.assert_array_equal(r.get("../../escape"), np.arange(4.0))
    assert sorted(os.listdir(tmp_path)) == before
    good, _ = _saved(tmp_path)
    recs = _records(good)
    prefix = _pkl_name(recs).split("/")[0]
    evil = {k.replace(prefix, "../../x", 1): v for k, v in recs.items()}
    q = _rezip(tmp_path / "sub" / "t.pt", evil)
    _refused(q, InvalidHeaderError)  # no "<archive>/data.pkl" where the first record says
    assert sorted(os.listdir(tmp_path)) == sorted(before + ["good.pt"])


# -- D: pickles abusing allowed globals -------------------------------------------------------------
@pytest.mark.parametrize(
    ("numel", "offset", "size", "stride", "extra", "error"),
    [
        (4, 0, (1 << 62, 1 << 62), (1, 1), (), InvalidHeaderError),  # giant size
        (4, 0, (-1,), (1,), (), InvalidHeaderError),  # negative size
        (4, 0, (2,), (-1,), (), InvalidHeaderError),  # negative stride
        (4, 5, (1,), (1,), (), CorruptFileError),  # offset past the storage
        (4, 1 << 70, (1,), (1,), (), CorruptFileError),
        (1 << 60, 0, (4,), (1,), (), CorruptFileError),  # storage claims more than its record
        (-4, 0, (4,), (1,), (), InvalidHeaderError),
        (4, 0, (1,) * 65, (1,) * 65, (), InvalidHeaderError),  # more dims than numpy has
        (4, 0, (2, 1), (1, 1 << 70), (), None),  # stride of a size-1 dim is never followed: reads
        (4, 0, (4,), (1,), ("extra",), UnsafePickleError),  # wrong persistent-id arity
    ],
)
def test_abused_tensor_rebuild_arguments(tmp_path: Path, numel: int, offset: int, size: tuple[int, ...],
                                         stride: tuple[int, ...], extra: tuple[object, ...],
                                         error: type[Exception] | None) -> None:
    pkl = _storage_pickle(numel, offset, size, stride, extra)
    p = _rezip(tmp_path / "abuse.pt", {"archive/data.pkl": pkl, "archive/data/0": np.arange(4, dtype=np.float32).tobytes(),
                                      "archive/byteorder": b"little"})
    if error is None:
        with weightvault.open(p) as r:
            np.testing.assert_array_equal(r.get("w"), [[0.0], [1.0]])
        return
    _refused(p, error)


def _storage_pickle(numel: int, offset: int, size: tuple[int, ...], stride: tuple[int, ...],
                    extra: tuple[object, ...]) -> bytes:
    """data.pkl by hand: {'w': _rebuild_tensor_v2(pid, offset, size, stride, False, OrderedDict())}."""
    def num(v: int) -> bytes:
        if 0 <= v < 1 << 31:
            return b"J" + struct.pack("<i", v)
        raw = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
        return b"\x8a" + bytes([len(raw)]) + raw

    def tup(vals: tuple[int, ...]) -> bytes:
        return b"(" + b"".join(num(v) for v in vals) + b"t"

    pid = b"(" + _s("storage") + b"ctorch\nFloatStorage\n" + _s("0") + _s("cpu") + num(numel)
    pid += b"".join(_s(str(e)) for e in extra) + b"tQ"
    body = b"ctorch._utils\n_rebuild_tensor_v2\n(" + pid + num(offset) + tup(size) + tup(stride)
    body += b"\x89ccollections\nOrderedDict\n)RtR"
    return b"\x80\x02}" + _s("w") + body + b"s."


def test_payload_nested_in_allowed_call_arguments_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = b"cos\nsystem\n" + _s(f"touch {marker}") + b"\x85R"
    pkl = b"\x80\x02cbuiltins\nset\n(" + evil + b"\x85tR."
    with pytest.raises(UnsafePickleError):
        safe_unpickle(pkl, allowed=BASE_ALLOWED, path="x")
    assert not marker.exists()


# -- C: NumPy ----------------------------------------------------------------------------------------
def _npy_bytes(header: str, data: bytes) -> bytes:
    body = (header + " " * (-(len(header) + 11) % 64) + "\n").encode("latin-1")
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(body)) + body + data


@pytest.mark.parametrize(
    ("header", "data", "error"),
    [
        ("{'descr': '<f3', 'fortran_order': False, 'shape': (2,), }", b"\0" * 8, UnknownDtypeError),
        ("{'descr': '<i16', 'fortran_order': False, 'shape': (2,), }", b"\0" * 32, UnknownDtypeError),
        ("{'descr': '<f4', 'fortran_order': False, 'shape': (%s), }" % ("1," * 65), b"\0" * 4, InvalidHeaderError),
        ("{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776, 1099511627776, 0), }", b"",
         InvalidHeaderError),
        ("{'descr': '<f4', 'fortran_order': False, 'shape': (100,), }", b"\0" * 8, TruncatedFileError),
    ],
)
@pytest.mark.parametrize("container", ["npy", "npz", "npz_deflated"])
def test_bad_npy_members(tmp_path: Path, header: str, data: bytes, error: type[Exception], container: str) -> None:
    raw = _npy_bytes(header, data)
    if container == "npy":
        p = tmp_path / "bad.npy"
        p.write_bytes(raw)
    else:
        p = tmp_path / "bad.npz"
        method = zipfile.ZIP_DEFLATED if container == "npz_deflated" else zipfile.ZIP_STORED
        _rezip(p, {"ok.npy": _records(_npz(tmp_path))["a.npy"], "bad.npy": raw}, method)
    exc = _refused(p, error)
    assert exc.tensor == "bad"


# -- C/D: OneFlow -------------------------------------------------------------------------------------
def _oneflow_copy(tmp_path: Path) -> Path:
    d = tmp_path / "model"
    shutil.copytree(ONEFLOW_FIXTURE, d)
    return d


def _tensor_dirs(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_dir())


def test_oneflow_out_symlink_outside_is_refused(tmp_path: Path, cli_run) -> None:  # noqa: ANN001
    d = _oneflow_copy(tmp_path)
    t = _tensor_dirs(d)[0]
    size = (t / "out").stat().st_size
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"S" * size)  # the right size: only the containment check can refuse it
    (t / "out").unlink()
    (t / "out").symlink_to(secret)
    exc = _refused(d, InvalidHeaderError)
    assert "outside" in str(exc)
    _one_error_line(cli_run, "show", d, "weight")


def test_oneflow_meta_and_pickle_symlinks_outside_are_refused(tmp_path: Path) -> None:
    d = _oneflow_copy(tmp_path)
    t = _tensor_dirs(d)[0]
    outside = tmp_path / "meta_elsewhere"
    shutil.copy(t / "meta", outside)
    (t / "meta").unlink()
    (t / "meta").symlink_to(outside)
    _refused(d, InvalidHeaderError)
    e = _oneflow_copy(tmp_path / "2")
    outside_pk = tmp_path / "pk_elsewhere"
    shutil.copy(e / "pickled_data", outside_pk)
    (e / "pickled_data").unlink()
    (e / "pickled_data").symlink_to(outside_pk)
    _refused(e, InvalidHeaderError)


def test_oneflow_symlink_inside_the_directory_still_reads(tmp_path: Path) -> None:
    d = _oneflow_copy(tmp_path)
    t = _tensor_dirs(d)[0]
    shutil.move(t / "out", d / "kept_out")
    (t / "out").symlink_to(d / "kept_out")
    with OneFlowFormat.open(d) as r, OneFlowFormat.open(ONEFLOW_FIXTURE) as ref:
        for k in ref.keys():
            np.testing.assert_array_equal(r.get(k), ref.get(k))


def _repickle_paths(d: Path, new_path: str) -> None:
    pk = d / "pickled_data"
    raw = pk.read_bytes()
    assert raw[2] == 0x95 and struct.unpack("<Q", raw[3:11])[0] == len(raw) - 11  # one FRAME
    raw = raw[:2] + raw[11:]  # frames are optional: drop it so strings may change length
    for t in _tensor_dirs(d):
        old = t.name.encode()
        assert b"\x8c" + bytes([len(old)]) + old in raw
        raw = raw.replace(b"\x8c" + bytes([len(old)]) + old, _s(new_path))
    pk.write_bytes(raw)


@pytest.mark.parametrize("new_path", ["tensor\x003", "../../etc", "/etc", "pickled_data"])
def test_oneflow_hostile_tensor_paths(tmp_path: Path, new_path: str) -> None:
    d = _oneflow_copy(tmp_path)
    _repickle_paths(d, new_path)
    _refused(d, CorruptFileError)


def test_oneflow_out_that_is_a_directory(tmp_path: Path) -> None:
    d = _oneflow_copy(tmp_path)
    t = _tensor_dirs(d)[0]
    (t / "out").unlink()
    (t / "out").mkdir()
    _refused(d, CorruptFileError)


def test_oneflow_deeply_nested_meta(tmp_path: Path) -> None:
    d = _oneflow_copy(tmp_path)
    t = _tensor_dirs(d)[0]
    (t / "meta").write_text("shape {" * 20_000 + "}" * 20_000)
    _refused(d, CorruptFileError)


def test_oneflow_modules_sharing_children_exponentially(tmp_path: Path) -> None:
    """Shared children hidden in pickled modules' attributes are counted too."""
    d = _oneflow_copy(tmp_path)
    pk = d / "pickled_data"
    mod = b"coneflow.nn.modules.container\nSequential\n)\x81"
    body = b"\x80\x02}(" + _s("protocol_version") + b"K\x01" + _s("data")
    body += mod + b"}" + _s("_modules") + b"}" + _s("a") + b"N" + b"ssb" + b"q\x000"  # module 0
    for i in range(1, 100):  # module i has children a and b, both module i-1 (memo i-1)
        body += mod + b"}" + _s("_modules") + b"}(" + _s("a") + b"h" + bytes([i - 1]) + _s("b") + b"h"
        body += bytes([i - 1]) + b"usb" + b"q" + bytes([i]) + (b"0" if i < 99 else b"")
    pk.write_bytes(body + b"u.")
    start = time.monotonic()
    _refused(d, ResourceLimitError)
    assert time.monotonic() - start < 20


def test_npz_member_with_an_empty_name(tmp_path: Path) -> None:
    """Found by mutation: zipfile's is_dir() raises IndexError on an empty member name."""
    arr = _records(_npz(tmp_path))["a.npy"]
    p = _raw_zip(tmp_path / "empty.npz", [("", 0, arr, len(arr), zlib.crc32(arr))])
    _refused(p, InvalidHeaderError)
