"""Hostile and corrupt pickles: payloads never run, damaged files raise the exact error class."""

from __future__ import annotations

import copyreg
import io
import os
import pickle
import struct
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import weightvault
from weightvault.core.unpickler import BASE_ALLOWED, safe_unpickle
from weightvault.errors import (
    InvalidHeaderError,
    InvalidOffsetError,
    TruncatedFileError,
    UnsafePickleError,
)
from weightvault.formats.pytorch import PyTorchFormat

torch = pytest.importorskip("torch")


# -- payloads: each one would create ``marker`` if it ran ------------------------------------------
class _OsSystem:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (os.system, (f"touch {self.marker}",))


class _Exec:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


class _Eval:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (eval, (f"open({str(self.marker)!r}, 'w').close()",))


class _Popen:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (subprocess.Popen, (["touch", str(self.marker)],))


PAYLOADS = {"os.system": _OsSystem, "exec": _Exec, "builtins.eval": _Eval, "subprocess.Popen": _Popen}


def _hostile_state(marker: Path, payload: str) -> dict[str, Any]:
    """A valid-looking checkpoint with the payload nested deep inside it."""
    return {
        "model": {"fc.weight": torch.ones(2, 2), "fc.bias": torch.zeros(2)},
        "optimizer": {"state": {0: {"step": torch.tensor(1.0)}}, "param_groups": [{"lr": 0.1, "hook": PAYLOADS[payload](marker)}]},
    }


@pytest.mark.parametrize("payload", list(PAYLOADS))
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_payload_inside_checkpoint_never_runs(tmp_path: Path, payload: str, legacy: bool) -> None:
    marker = tmp_path / "pwned"
    p = tmp_path / "evil.pt"
    torch.save(_hostile_state(marker, payload), p, _use_new_zipfile_serialization=not legacy)
    assert not marker.exists()
    with pytest.raises(UnsafePickleError) as exc:
        weightvault.open(p)
    assert str(p) in str(exc.value)
    with pytest.raises(UnsafePickleError):
        weightvault.load(p)
    assert not marker.exists()


def test_payloads_are_real(tmp_path: Path) -> None:
    """Guard against a vacuous test above: the unsafe loader does run each payload."""
    for name, cls in PAYLOADS.items():
        marker = tmp_path / f"ran-{name}"
        obj = pickle.loads(pickle.dumps(cls(marker), protocol=2))  # noqa: S301 - the point of the test
        if isinstance(obj, subprocess.Popen):
            obj.wait()
        assert marker.exists(), name


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_every_protocol_goes_through_find_class(tmp_path: Path, protocol: int) -> None:
    marker = tmp_path / "pwned"
    data = pickle.dumps({"x": [1, _OsSystem(marker)]}, protocol=protocol)
    with pytest.raises(UnsafePickleError, match="system"):
        safe_unpickle(data, allowed=BASE_ALLOWED, path="mem.pkl")
    assert not marker.exists()


def test_inst_and_obj_opcodes_are_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    inst = b"(S'touch " + str(marker).encode() + b"'\nios\nsystem\n."  # INST os.system
    obj = b"\x80\x02(cos\nsystem\nX" + struct.pack("<I", 6 + len(str(marker))) + b"touch " + str(marker).encode() + b"o."
    for data in (inst, obj):
        with pytest.raises(UnsafePickleError):
            safe_unpickle(data, allowed=BASE_ALLOWED)
    assert not marker.exists()


def test_ext_opcode_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    code = 0x7F3A
    copyreg.add_extension("os", "system", code)
    try:
        data = b"\x80\x02\x83" + struct.pack("<H", code) + b"X" + struct.pack("<I", 6 + len(str(marker)))
        data += b"touch " + str(marker).encode() + b"\x85R."
        with pytest.raises(UnsafePickleError, match="os.system|posix.system"):
            safe_unpickle(data, allowed=BASE_ALLOWED)
    finally:
        copyreg.remove_extension("os", "system", code)
    assert not marker.exists()


def test_payload_as_storage_type_in_persistent_id(tmp_path: Path) -> None:
    """A global hidden where the storage class should be is refused like any other."""
    marker = tmp_path / "pwned"
    p = tmp_path / "evil.pt"
    PyTorchFormat.write(p, {"w": np.ones(2, np.float32)})
    with zipfile.ZipFile(p) as zf:
        records = {i.filename: zf.read(i) for i in zf.infolist()}
    name = next(n for n in records if n.endswith("data.pkl"))
    records[name] = records[name].replace(b"ctorch\nFloatStorage\n", b"cos\nsystem\n")
    _rezip(p, records)
    with pytest.raises(UnsafePickleError, match="system"):
        weightvault.open(p)
    assert not marker.exists()


def test_payload_in_legacy_header_pickles(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    p = tmp_path / "legacy.pt"
    torch.save({"w": torch.ones(2)}, p, _use_new_zipfile_serialization=False)
    data = p.read_bytes()
    magic = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)
    evil_version = pickle.dumps(_OsSystem(marker), protocol=2)
    version_len = len(pickle.dumps(1001, protocol=2))
    p.write_bytes(magic + evil_version + data[len(magic) + version_len :])
    with pytest.raises(UnsafePickleError):
        weightvault.open(p)
    assert not marker.exists()


def test_legacy_module_persistent_id_is_refused(tmp_path: Path) -> None:
    buf = io.BytesIO()
    for part in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}):
        pickle.dump(part, buf, protocol=2)

    class P(pickle.Pickler):
        def persistent_id(self, obj: Any) -> Any:
            return ("module", "Net", "net.py", "class Net: ...") if obj == "MODULE" else None

    P(buf, protocol=2).dump({"m": "MODULE"})
    pickle.dump([], buf, protocol=2)
    p = tmp_path / "module.pt"
    p.write_bytes(buf.getvalue())
    with pytest.raises(UnsafePickleError, match="model class"):
        weightvault.open(p)


# -- corrupt files ---------------------------------------------------------------------------------
def _rezip(p: Path, records: dict[str, bytes]) -> None:
    with zipfile.ZipFile(p, "w", zipfile.ZIP_STORED) as zf:
        for name, data in records.items():
            zf.writestr(name, data)


def _torch_file(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    p = tmp_path / "m.pt"
    torch.save({"weight": torch.arange(64, dtype=torch.float32), "bias": torch.ones(4)}, p)
    with zipfile.ZipFile(p) as zf:
        return p, {i.filename: zf.read(i) for i in zf.infolist()}


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.95])
def test_truncated_zip(tmp_path: Path, keep: float) -> None:
    p, _ = _torch_file(tmp_path)
    data = p.read_bytes()
    p.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(TruncatedFileError) as exc:
        weightvault.open(p, format="pytorch")
    assert str(p) in str(exc.value)


def test_corrupt_data_pkl(tmp_path: Path) -> None:
    p, records = _torch_file(tmp_path)
    name = next(n for n in records if n.endswith("data.pkl"))
    records[name] = records[name][:-20]  # cut inside the pickle
    _rezip(p, records)
    with pytest.raises(InvalidHeaderError) as exc:
        weightvault.open(p)
    assert "data.pkl" in str(exc.value)
    records[name] = b"\x80\x02\xff\xfe garbage"
    _rezip(p, records)
    with pytest.raises(InvalidHeaderError):
        weightvault.open(p)


def test_storage_smaller_than_the_tensor_claims(tmp_path: Path) -> None:
    p, records = _torch_file(tmp_path)
    name = next(n for n in records if n.endswith("/data/0"))
    records[name] = records[name][:100]
    _rezip(p, records)
    with pytest.raises(InvalidOffsetError) as exc:
        weightvault.open(p)
    assert exc.value.tensor == "weight"
    assert str(p) in str(exc.value)


def test_huge_claimed_storage_is_not_allocated(tmp_path: Path) -> None:
    """A pickle claiming a 4 TB storage fails on the size check, not with MemoryError."""
    p, records = _torch_file(tmp_path)
    name = next(n for n in records if n.endswith("data.pkl"))
    # storage numel 64 (BININT1 0x40) -> 2**40 (LONG1), tensor size likewise
    pkl = records[name]
    pkl = pkl.replace(b"X\x03\x00\x00\x00cpuq\x06K@", b"X\x03\x00\x00\x00cpuq\x06\x8a\x06\x00\x00\x00\x00\x00\x01")
    assert pkl != records[name]
    records[name] = pkl
    _rezip(p, records)
    with pytest.raises(InvalidOffsetError) as exc:
        weightvault.open(p)
    assert exc.value.tensor == "weight"


def test_strided_view_past_the_storage(tmp_path: Path) -> None:
    p = tmp_path / "v.pt"
    base = torch.arange(12, dtype=torch.float32)
    torch.save({"v": base.as_strided((3, 3), (4, 1))}, p)
    with zipfile.ZipFile(p) as zf:
        records = {i.filename: zf.read(i) for i in zf.infolist()}
    name = next(n for n in records if n.endswith("data.pkl"))
    # stride (4, 1) -> (5, 1): last element at 2*5+2 = 12, one past the 12-element storage
    records[name] = records[name].replace(b"K\x04K\x01\x86", b"K\x05K\x01\x86")
    assert records[name] != zipfile.ZipFile(p).read(name)
    _rezip(p, records)
    with pytest.raises(InvalidOffsetError) as exc:
        weightvault.open(p)
    assert exc.value.tensor == "v"


def test_missing_storage_record(tmp_path: Path) -> None:
    p, records = _torch_file(tmp_path)
    del records[next(n for n in records if n.endswith("/data/1"))]
    _rezip(p, records)
    with pytest.raises(InvalidHeaderError, match="data/1"):
        weightvault.open(p)


def test_legacy_storage_size_past_end(tmp_path: Path) -> None:
    p = tmp_path / "legacy.pt"
    torch.save({"w": torch.ones(1000)}, p, _use_new_zipfile_serialization=False)
    data = bytearray(p.read_bytes())
    header_at = len(data) - 4000 - 8
    assert struct.unpack("<q", data[header_at : header_at + 8])[0] == 1000
    data[header_at : header_at + 8] = struct.pack("<q", 10**15)
    p.write_bytes(bytes(data))
    with pytest.raises(TruncatedFileError):
        weightvault.open(p)
    p.write_bytes(bytes(data[: header_at + 100]))
    with pytest.raises(TruncatedFileError):
        weightvault.open(p)


def test_unknown_persistent_id_is_refused() -> None:
    class P(pickle.Pickler):
        def persistent_id(self, obj: Any) -> Any:
            return ("evil", "x") if obj == "X" else None

    buf = io.BytesIO()
    P(buf, protocol=2).dump({"a": "X"})
    with pytest.raises(UnsafePickleError, match="persistent id"):
        safe_unpickle(buf.getvalue(), allowed=BASE_ALLOWED)
