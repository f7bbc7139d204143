"""PyTorch .pt/.pth/.bin: torch writes what we read, torch.load(weights_only=True) reads what we write."""

from __future__ import annotations

import json
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import weightvault
from weightvault.core.dtypes import DTYPES
from weightvault.errors import ChecksumMismatchError, UnsafePickleError, UnsupportedOperationError
from weightvault.formats.pytorch import PyTorchFormat, PyTorchReader
from weightvault.registry import detect_format
from weightvault.testing.formats import FormatTests

torch = pytest.importorskip("torch")
from weightvault.frameworks.torch import tensor_to_numpy, torch_dtype  # noqa: E402

ALL_DTYPES = tuple(DTYPES)


class TestPyTorchConformance(FormatTests):
    format_name = "pytorch"
    suffix = ".pt"
    dtypes = ALL_DTYPES


# -- helpers -------------------------------------------------------------------------------------
def _np(t: Any) -> np.ndarray:
    return tensor_to_numpy(t)


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Bitwise equality with dtype and shape (NaN payloads and -0.0 count)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return bool(np.array_equal(np.ascontiguousarray(a).reshape(-1).view(np.uint8),
                               np.ascontiguousarray(b).reshape(-1).view(np.uint8)))


def _torch_tensor(name: str, shape: tuple[int, ...], seed: int = 0) -> Any:
    g = torch.Generator().manual_seed(seed)
    dt = torch_dtype(name)
    if name == "bool":
        return torch.randint(0, 2, shape, generator=g).bool()
    if dt.is_floating_point or dt.is_complex:
        return (torch.randn(shape, generator=g, dtype=torch.float64 if dt.is_complex else torch.float32) * 3).to(dt)
    info = torch.iinfo(dt)
    hi = min(info.max, 2**31 - 1)
    lo = max(info.min, -(2**31))
    return torch.randint(lo, hi, shape, generator=g, dtype=torch.int64).to(dt)


def _assert_tree_equal(ours: Any, theirs: Any, where: str = "") -> None:
    if isinstance(theirs, torch.Tensor):
        assert isinstance(ours, np.ndarray), where
        assert _same(ours, _np(theirs)), where
        return
    if isinstance(theirs, dict):
        assert isinstance(ours, dict), where
        assert list(ours) == list(theirs), where
        for k in theirs:
            _assert_tree_equal(ours[k], theirs[k], f"{where}/{k}")
        return
    if isinstance(theirs, (list, tuple)):
        assert type(ours) is type(theirs), where
        assert len(ours) == len(theirs), where
        for i, (a, b) in enumerate(zip(ours, theirs)):
            _assert_tree_equal(a, b, f"{where}/{i}")
        return
    assert type(ours) is type(theirs) and ours == theirs, (where, ours, theirs)


def _assert_torch_equal(a: Any, b: Any, where: str = "") -> None:
    if isinstance(b, torch.Tensor):
        assert isinstance(a, torch.Tensor), where
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert _same(_np(a), _np(b)), where
        return
    if isinstance(b, dict):
        assert list(a) == list(b), where
        for k in b:
            _assert_torch_equal(a[k], b[k], f"{where}/{k}")
        return
    if isinstance(b, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_torch_equal(x, y, f"{where}/{i}")
        return
    assert type(a) is type(b) and a == b, (where, a, b)


def _train_state() -> dict[str, Any]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3), torch.nn.Linear(3, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    model(torch.randn(5, 4)).sum().backward()
    opt.step()
    sched.step()
    return {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "epoch": 3,
        "metric": 0.125,
        "note": "résumé",
        "flags": [True, None],
        "rng": torch.get_rng_state(),
    }


# -- torch writes, we read -----------------------------------------------------------------------
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_read_every_dtype_written_by_torch(tmp_path: Path, legacy: bool) -> None:
    sd = {f"t_{name}": _torch_tensor(name, (3, 2), i) for i, name in enumerate(ALL_DTYPES)}
    sd["scalar"] = torch.tensor(2.5, dtype=torch.bfloat16)
    sd["empty"] = torch.zeros(0, 3)
    p = tmp_path / "all.pt"
    torch.save(sd, p, _use_new_zipfile_serialization=not legacy)
    assert detect_format(p) is PyTorchFormat
    with weightvault.open(p) as r:
        assert isinstance(r, PyTorchReader)
        assert r.metadata["pytorch"]["container"] == ("legacy" if legacy else "zip")
        assert r.keys() == list(sd)
        for name, t in sd.items():
            info = r.info(name)
            assert info.shape == tuple(t.shape), name
            assert _same(r.get(name), _np(t)), name


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_views_and_shared_storages(tmp_path: Path, legacy: bool) -> None:
    base = torch.arange(60, dtype=torch.float32).reshape(6, 10)
    sd = {
        "base": base,
        "transposed": base.t(),
        "row": base[2],
        "column": base[:, 3],
        "strided": base[1::2, ::3],
        "tail": base.view(-1)[37:],
        "scalar_view": base[5, 9],
    }
    p = tmp_path / "views.pt"
    torch.save(sd, p, _use_new_zipfile_serialization=not legacy)
    with weightvault.open(p) as r:
        keys = {r.storage_of(n)[0] for n in sd}
        assert len(keys) == 1  # one shared storage
        assert r.storage_of("row")[1] == 20
        assert r.info("transposed").extra["stride"] == [1, 10]
        for name, t in sd.items():
            assert _same(r.get(name), _np(t)), name


def test_read_training_checkpoint_with_optimizer(tmp_path: Path) -> None:
    state = _train_state()
    p = tmp_path / "train.pth"
    torch.save(state, p)
    with weightvault.open(p) as r:
        assert "model/0.weight" in r.keys()
        assert "optimizer/state/0/exp_avg" in r.keys()
        assert "rng" in r.keys()
        assert r.metadata["pytorch"]["tree"]["t"] == "dict"
    loaded = weightvault.load(p)
    _assert_tree_equal(loaded, state)
    assert 0 in loaded["optimizer"]["state"]  # int keys survive
    assert loaded["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)


def test_flat_state_dict_keeps_keys_and_metadata(tmp_path: Path) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    p = tmp_path / "sd.pt"
    torch.save(model.state_dict(), p)
    with weightvault.open(p) as r:
        assert r.keys() == list(model.state_dict())
        meta = r.metadata["pytorch"]
        assert "tree" not in meta
        assert meta["state_dict_metadata"]["1"]["version"] == 2


# -- we write, torch reads -----------------------------------------------------------------------
@pytest.mark.parametrize("mmap", [False, True], ids=["read", "mmap"])
def test_torch_loads_what_we_write(tmp_path: Path, mmap: bool) -> None:
    rng = np.random.default_rng(0)
    tensors: dict[str, np.ndarray] = {}
    for i, name in enumerate(ALL_DTYPES):
        t = _torch_tensor(name, (2, 3), i)
        tensors[f"t_{name}"] = _np(t)
    tensors["scalar"] = np.array(1.5, np.float64)
    tensors["empty"] = np.zeros((0, 4), np.int32)
    tensors["fortran"] = np.asfortranarray(rng.standard_normal((3, 4)).astype(np.float32))
    tensors["big_endian"] = np.arange(5, dtype=">i4")
    p = tmp_path / "ours.pt"
    PyTorchFormat.write(p, tensors)
    with zipfile.ZipFile(p) as zf:
        assert zf.testzip() is None  # every CRC-32 is right
        for info in zf.infolist():
            local_extra = 30 + len(info.filename)
            with open(p, "rb") as f:
                f.seek(info.header_offset + 28)
                extra_len = int.from_bytes(f.read(2), "little")
            assert (info.header_offset + local_extra + extra_len) % 64 == 0, info.filename
    loaded = torch.load(p, weights_only=True, mmap=mmap)
    assert list(loaded) == list(tensors)
    for name, arr in tensors.items():
        expected = arr.astype(arr.dtype.newbyteorder("<")) if arr.dtype.byteorder == ">" else arr
        assert _same(_np(loaded[name]), expected), name


@pytest.mark.parametrize("mmap", [False, True], ids=["read", "mmap"])
def test_ties_survive_our_writer(tmp_path: Path, mmap: bool) -> None:
    base = np.arange(40, dtype=np.float32).reshape(5, 8)
    tensors = {"w": base, "w_t": base.T, "row": base[3], "cols": base[:, 1::2], "same": base, "free": np.ones(3)}
    p = tmp_path / "tied.pt"
    PyTorchFormat.write(p, tensors)
    loaded = torch.load(p, weights_only=True, mmap=mmap)
    ptrs = {n: loaded[n].untyped_storage().data_ptr() for n in tensors}
    assert len({ptrs[n] for n in ("w", "w_t", "row", "cols", "same")}) == 1
    assert ptrs["free"] != ptrs["w"]
    assert loaded["w_t"].stride() == (1, 8)
    assert loaded["row"].storage_offset() == 24
    for name, arr in tensors.items():
        assert _same(_np(loaded[name]), np.ascontiguousarray(arr)), name
    # the tie is real: writing through one name shows through the other
    if not mmap:
        loaded["w"][0, 0] = -1
        assert loaded["same"][0, 0] == -1 and loaded["w_t"][0, 0] == -1


def test_structure_option_writes_a_training_checkpoint(tmp_path: Path) -> None:
    state = _train_state()
    tied = torch.randn(3, 3)
    state["tied_a"], state["tied_b"] = tied, tied.t()
    p = tmp_path / "ckpt.pt"
    PyTorchFormat.write(p, {}, structure=state)
    for mmap in (False, True):
        back = torch.load(p, weights_only=True, mmap=mmap)
        _assert_torch_equal(back, state)
        assert back["tied_a"].untyped_storage().data_ptr() == back["tied_b"].untyped_storage().data_ptr()


@pytest.mark.parametrize("middle", ["mid.safetensors", "mid_native"])
def test_checkpoint_roundtrips_through_other_formats(tmp_path: Path, middle: str) -> None:
    state = _train_state()
    src = tmp_path / "train.pth"
    torch.save(state, src)
    weightvault.convert(src, tmp_path / middle)
    back = tmp_path / "back.pth"
    weightvault.convert(tmp_path / middle, back)
    loaded = torch.load(back, weights_only=True)
    _assert_torch_equal(loaded, state)
    # and the nn.Module takes it
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3), torch.nn.Linear(3, 2))
    model.load_state_dict(loaded["model"])


def test_pt_to_pt_keeps_shared_storages(tmp_path: Path) -> None:
    base = torch.randn(4, 6)
    src = tmp_path / "a.pt"
    torch.save({"w": base, "v": base[1:3], "t": base.t()}, src)
    dst = tmp_path / "b.pt"
    weightvault.convert(src, dst)
    back = torch.load(dst, weights_only=True, mmap=True)
    assert len({back[n].untyped_storage().data_ptr() for n in ("w", "v", "t")}) == 1
    assert torch.equal(back["t"], base.t()) and torch.equal(back["v"], base[1:3])


def test_writer_refuses_objects_torch_cannot_load_safely(tmp_path: Path) -> None:
    with pytest.raises(weightvault.errors.UnsupportedObjectError):
        PyTorchFormat.write(tmp_path / "x.pt", {}, structure={"obj": object()})
    assert not (tmp_path / "x.pt").exists()


# -- shared fixtures ------------------------------------------------------------------------------
def test_fixture_state_dicts_match_torch(fixtures_dir: Path) -> None:
    folder = fixtures_dir / "pytorch"
    for name in ("net_state_dict.pt", "net_state_dict_legacy.pt", "ddp_prefixed.pt"):
        theirs = torch.load(folder / name, weights_only=True)
        with weightvault.open(folder / name) as r:
            assert r.keys() == list(theirs), name
            for key, t in theirs.items():
                assert _same(r.get(key), _np(t)), (name, key)
    with weightvault.open(folder / "ddp_prefixed.pt") as r:
        assert all(k.startswith("module.") for k in r.keys())


def test_fixture_train_checkpoint(fixtures_dir: Path) -> None:
    path = fixtures_dir / "pytorch" / "train_checkpoint.pth"
    theirs = torch.load(path, weights_only=True)
    ours = weightvault.load(path)
    _assert_tree_equal(ours, theirs)
    assert ours["note"] == "resume-me" and ours["epoch"] == 7
    assert ours["torch_rng"].dtype == np.uint8


def test_fixture_whole_module_is_refused_with_advice(fixtures_dir: Path) -> None:
    with pytest.raises(UnsafePickleError) as exc:
        weightvault.open(fixtures_dir / "pytorch" / "whole_module.pt")
    text = str(exc.value) + (exc.value.hint or "")
    assert "__main__.Net" in text
    assert "model.state_dict()" in text
    assert "whole_module.pt" in text


def test_torchscript_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "scripted.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated in torch 2.13
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), p)
    with pytest.raises(UnsupportedOperationError) as exc:
        weightvault.open(p)
    assert "TorchScript" in str(exc.value) and "state_dict" in (exc.value.hint or "")


def test_verify_checks_record_crcs(tmp_path: Path) -> None:
    p = tmp_path / "v.pt"
    torch.save({"a": torch.arange(100, dtype=torch.float32), "b": torch.ones(3)}, p)
    result = weightvault.verify(p)
    assert result.checked == 2
    with weightvault.open(p) as r:
        offset = r._storage_records["0"].data_offset  # noqa: SLF001 - locate the bytes to damage
    data = bytearray(p.read_bytes())
    data[offset + 17] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatchError) as exc:
        weightvault.verify(p)
    assert "'a'" in str(exc.value) or "a:" in str(exc.value)


def test_metadata_is_json(tmp_path: Path) -> None:
    p = tmp_path / "t.pth"
    torch.save(_train_state(), p)
    with weightvault.open(p) as r:
        json.dumps(r.metadata, allow_nan=False)


def test_big_endian_archive_is_swapped(tmp_path: Path) -> None:
    tensors = {
        "f32": np.array([1.5, -2.25, 3e8], np.float32),
        "i16": np.array([[1, -2], [300, -32768]], np.int16),
        "c64": np.array([1 + 2j, -3.5j], np.complex64),
        "u8": np.arange(4, dtype=np.uint8),
    }
    p = tmp_path / "le.pt"
    PyTorchFormat.write(p, tensors)
    with zipfile.ZipFile(p) as zf:
        records = {i.filename: zf.read(i) for i in zf.infolist()}
    prefix = next(iter(records)).split("/")[0]
    records[f"{prefix}/byteorder"] = b"big"
    for key, arr in zip(range(len(tensors)), tensors.values()):
        component = arr.dtype.itemsize // 2 if arr.dtype.kind == "c" else arr.dtype.itemsize
        raw = np.frombuffer(records[f"{prefix}/data/{key}"], f"<u{component}")
        records[f"{prefix}/data/{key}"] = raw.astype(f">u{component}").tobytes()
    be = tmp_path / "be.pt"
    with zipfile.ZipFile(be, "w") as zf:
        for name, data in records.items():
            zf.writestr(name, data)
    with weightvault.open(be) as r:
        assert r.metadata["pytorch"]["byteorder"] == "big"
        for name, arr in tensors.items():
            assert _same(r.get(name), arr), name


def test_unicode_destination_name(tmp_path: Path) -> None:
    p = tmp_path / "modèle 1.pt"
    PyTorchFormat.write(p, {"w": np.ones(2, np.float32)})
    assert torch.equal(torch.load(p, weights_only=True)["w"], torch.ones(2))


# -- a native training checkpoint converted to .pt keeps its structure (#13.7) ------------------------
def _training_state() -> dict[str, Any]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    scaler = torch.amp.GradScaler("cpu")
    for _ in range(3):
        loss = model(torch.randn(5, 4)).square().mean()
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        sched.step()
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "scaler": scaler.state_dict(), "step": 3}


def _assert_same_tree(got: Any, want: Any, where: str = "") -> None:
    if isinstance(want, torch.Tensor):
        assert isinstance(got, torch.Tensor), where
        assert got.dtype == want.dtype and got.shape == want.shape, where
        assert torch.equal(got, want), where
    elif isinstance(want, dict):
        assert isinstance(got, dict) and list(got) == list(want), where
        for k in want:
            _assert_same_tree(got[k], want[k], f"{where}/{k}")
    elif isinstance(want, (list, tuple)):
        assert type(got) is type(want) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            _assert_same_tree(g, w, f"{where}/{i}")
    else:
        assert type(got) is type(want) and got == want, (where, got, want)


def test_native_training_checkpoint_converts_to_a_nested_pt(tmp_path: Path, cli_run: Any) -> None:
    state = _training_state()
    assert state["optimizer"]["state"] and state["scaler"]["_growth_tracker"] == 3
    weightvault.save(state, tmp_path / "ckpt")
    code, _, err = cli_run("convert", tmp_path / "ckpt", tmp_path / "out.pt")
    assert code == 0, err
    back = torch.load(tmp_path / "out.pt", weights_only=True)
    _assert_same_tree(back, state)
    _assert_same_tree(back, weightvault.load(tmp_path / "ckpt", framework="torch"))
    # and it resumes training objects
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.load_state_dict(back["model"])
    opt.load_state_dict(back["optimizer"])
    torch.optim.lr_scheduler.StepLR(opt, step_size=1).load_state_dict(back["scheduler"])
    torch.amp.GradScaler("cpu").load_state_dict(back["scaler"])


def test_native_flat_state_dict_still_converts_flat(tmp_path: Path) -> None:
    sd = torch.nn.Linear(3, 2).state_dict()
    weightvault.save(dict(sd), tmp_path / "flat")
    weightvault.convert(tmp_path / "flat", tmp_path / "flat.pt")
    back = torch.load(tmp_path / "flat.pt", weights_only=True)
    _assert_same_tree(back, dict(sd))
