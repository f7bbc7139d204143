"""Hostile Keras HDF5 files: real Keras 3 files, altered with h5py the way an attacker would.

Nothing outside the named file may be read (external links, virtual datasets, external raw
storage, soft links that dangle or loop), nothing unbounded allocated (unwritten chunks of a huge
dataset), and every h5py / zip failure must come out as a WeightVaultError naming the file.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import weightvault
from weightvault.core.limits import expansion_limit
from weightvault.errors import (
    InvalidHeaderError,
    ResourceLimitError,
    TruncatedFileError,
    UnsupportedOperationError,
    WeightVaultError,
)
from weightvault.formats.keras_h5 import KerasFormat, check_superblock

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
h5py = pytest.importorskip("h5py")

SECRET = b"TOP-SECRET-BYTES" * 4  # 64 bytes another file holds; they must never come back
SECRET_VALUES = np.frombuffer(SECRET, np.float32)


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A small model saved by Keras itself in all three containers."""
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4, name="d1"), keras.layers.Dense(2, name="d2")])
    d = tmp_path_factory.mktemp("hostile_keras")
    model.save_weights(d / "m.weights.h5")
    model.save(d / "m.keras")
    model.save(d / "m.h5")
    (d / "secret.bin").write_bytes(SECRET)
    with h5py.File(d / "secret.h5", "w") as f:
        f["x"] = SECRET_VALUES.reshape(4, 4)
    return {"dir": d, "model": model}


def _copy(real: dict[str, Any], tmp_path: Path, name: str = "m.weights.h5") -> Path:
    dst = tmp_path / name
    shutil.copy(real["dir"] / name, dst)
    return dst


def _read_all(path: Path) -> list[np.ndarray]:
    with weightvault.open(path) as reader:
        return [reader.get(k) for k in reader.keys()]


def _assert_refused(path: Path, *words: str) -> WeightVaultError:
    with pytest.raises(WeightVaultError) as err:
        arrays = _read_all(path)
        # if reading ever succeeds, the other file's bytes must at least not be in the result
        assert not any(SECRET[:16] in a.tobytes() for a in arrays)
    assert str(path) in str(err.value)
    for w in words:
        assert w in str(err.value)
    return err.value


def _into_keras_archive(real: dict[str, Any], h5_file: Path, out: Path) -> Path:
    """Replace model.weights.h5 inside the real .keras archive."""
    with zipfile.ZipFile(real["dir"] / "m.keras") as src, zipfile.ZipFile(out, "w") as dst:
        for zi in src.infolist():
            data = h5_file.read_bytes() if zi.filename == "model.weights.h5" else src.read(zi)
            dst.writestr(zi, data)
    return out


# -- A: reads outside the named file -----------------------------------------------------------------
def test_untouched_real_files_still_read(real: dict[str, Any]) -> None:
    for name in ("m.weights.h5", "m.keras", "m.h5"):
        arrays = _read_all(real["dir"] / name)
        assert len(arrays) == 4


def test_external_link_to_another_file_is_refused(real: dict[str, Any], tmp_path: Path) -> None:
    path = _copy(real, tmp_path)
    with h5py.File(path, "a") as f:
        del f["layers/dense/vars/0"]
        f["layers/dense/vars/0"] = h5py.ExternalLink(str(real["dir"] / "secret.h5"), "/x")
    err = _assert_refused(path, "external link", "layers/dense/vars/0")
    assert isinstance(err, InvalidHeaderError)


def test_external_link_to_a_group_is_refused(real: dict[str, Any], tmp_path: Path) -> None:
    """A link on the way (not on the dataset itself) must not be followed either."""
    path = _copy(real, tmp_path)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["vars/0"] = SECRET_VALUES.reshape(4, 4)
        f["vars/1"] = np.zeros(4, np.float32)
    with h5py.File(path, "a") as f:
        del f["layers/dense"]
        f["layers/dense"] = h5py.ExternalLink(str(other), "/")
    _assert_refused(path, "external link")


def test_external_link_in_legacy_h5_is_refused(real: dict[str, Any], tmp_path: Path) -> None:
    path = _copy(real, tmp_path, "m.h5")
    with h5py.File(path, "a") as f:
        layer = f["model_weights/d1"]
        weight = [w.decode() if isinstance(w, bytes) else w for w in layer.attrs["weight_names"]][0]
        del layer[weight]
        layer[weight] = h5py.ExternalLink(str(real["dir"] / "secret.h5"), "/x")
    _assert_refused(path, "external link")


def test_virtual_dataset_mapping_another_file_is_refused(real: dict[str, Any], tmp_path: Path) -> None:
    path = _copy(real, tmp_path)
    with h5py.File(path, "a") as f:
        del f["layers/dense/vars/0"]
        layout = h5py.VirtualLayout(shape=(4, 4), dtype="f4")
        layout[:] = h5py.VirtualSource(str(real["dir"] / "secret.h5"), "x", shape=(4, 4))
        f["layers/dense/vars"].create_virtual_dataset("0", layout)
    # h5py itself would return the other file's values:
    with h5py.File(path, "r") as f:
        assert f["layers/dense/vars/0"][()].tobytes() == SECRET
    _assert_refused(path, "virtual dataset", "layers/dense/vars/0")


def test_external_raw_storage_is_refused(real: dict[str, Any], tmp_path: Path) -> None:
    path = _copy(real, tmp_path)
    with h5py.File(path, "a") as f:
        del f["layers/dense/vars/0"]
        f["layers/dense/vars"].create_dataset("0", shape=(4, 4), dtype="f4", external=[(str(real["dir"] / "secret.bin"), 0, 64)])
    with h5py.File(path, "r") as f:  # what plain h5py does with it
        assert f["layers/dense/vars/0"][()].tobytes() == SECRET
    _assert_refused(path, "external file", "secret.bin")


@pytest.mark.parametrize("target", ["/etc/passwd", "../../etc/passwd"])
def test_external_storage_pointing_at_system_files_is_refused(real: dict[str, Any], tmp_path: Path, target: str) -> None:
    path = _copy(real, tmp_path)
    with h5py.File(path, "a") as f:
        del f["layers/dense_1/vars/1"]
        f["layers/dense_1/vars"].create_dataset("1", shape=(2,), dtype="u1", external=[(target, 0, 2)])
    _assert_refused(path, "external file")


def test_external_storage_inside_a_keras_archive_is_refused(real: dict[str, Any], tmp_path: Path) -> None:
    h5 = _copy(real, tmp_path)
    with h5py.File(h5, "a") as f:
        del f["layers/dense/vars/0"]
        f["layers/dense/vars"].create_dataset("0", shape=(4, 4), dtype="f4", external=[(str(real["dir"] / "secret.bin"), 0, 64)])
    _assert_refused(_into_keras_archive(real, h5, tmp_path / "x.keras"), "external file")


def test_external_link_inside_a_keras_archive_is_refused(real: dict[str, Any], tmp_path: Path) -> None:
    h5 = _copy(real, tmp_path)
    with h5py.File(h5, "a") as f:
        del f["layers/dense_1/vars/0"]
        f["layers/dense_1/vars/0"] = h5py.ExternalLink(str(real["dir"] / "secret.h5"), "/x")
    _assert_refused(_into_keras_archive(real, h5, tmp_path / "x.keras"), "external link")


def test_dangling_and_looping_soft_links_are_refused(real: dict[str, Any], tmp_path: Path) -> None:
    dangling = _copy(real, tmp_path, "m.weights.h5")
    with h5py.File(dangling, "a") as f:
        del f["layers/dense/vars/0"]
        f["layers/dense/vars/0"] = h5py.SoftLink("/nowhere/at/all")
    _assert_refused(dangling, "leads nowhere")
    looping = tmp_path / "loop.weights.h5"
    shutil.copy(real["dir"] / "m.weights.h5", looping)
    with h5py.File(looping, "a") as f:
        del f["layers/dense/vars/0"]
        f["layers/dense/vars/0"] = h5py.SoftLink("/layers/dense/vars/0")
        f["spin_a"] = h5py.SoftLink("/spin_b")
        f["spin_b"] = h5py.SoftLink("/spin_a")
    _assert_refused(looping, "loops")


def test_soft_link_through_an_external_link_is_refused(real: dict[str, Any], tmp_path: Path) -> None:
    path = _copy(real, tmp_path)
    with h5py.File(path, "a") as f:
        f["elsewhere"] = h5py.ExternalLink(str(real["dir"] / "secret.h5"), "/")
        del f["layers/dense/vars/0"]
        f["layers/dense/vars/0"] = h5py.SoftLink("/elsewhere/x")
    _assert_refused(path, "external link")


def test_soft_link_inside_the_file_still_reads(real: dict[str, Any], tmp_path: Path) -> None:
    """A soft link to a dataset of the same file is legal HDF5 and harmless: it is followed."""
    path = _copy(real, tmp_path)
    with h5py.File(path, "a") as f:
        value = f["layers/dense_1/vars/1"][()]
        f["spare/bias"] = value
        del f["layers/dense_1/vars/1"]
        f["layers/dense_1/vars/1"] = h5py.SoftLink("/spare/bias")
    with weightvault.open(path) as reader:
        np.testing.assert_array_equal(reader.get("d2/bias"), value)


def test_hard_link_cycle_does_not_hang(real: dict[str, Any], tmp_path: Path) -> None:
    path = _copy(real, tmp_path)
    with h5py.File(path, "a") as f:
        g = f.create_group("cycle")
        g["a"] = g
        g["b"] = g  # 2^depth paths if walked naively
    assert len(_read_all(path)) == 4


def test_filter_plugin_datasets_are_refused(real: dict[str, Any], tmp_path: Path) -> None:
    """An unknown filter id makes HDF5 search for and load a plugin library: refused before."""
    path = _copy(real, tmp_path)
    with h5py.File(path, "a") as f:
        del f["layers/dense_1/vars/1"]
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_chunk((2,))
        dcpl.set_filter(32001, h5py.h5z.FLAG_OPTIONAL)  # blosc's id, not built in
        space = h5py.h5s.create_simple((2,))
        h5py.h5d.create(f["layers/dense_1/vars"].id, b"1", h5py.h5t.NATIVE_FLOAT, space, dcpl=dcpl)
    with pytest.raises(UnsupportedOperationError, match="filter 32001"):
        _read_all(path)


# -- B: bounded memory and time, wrapped errors -----------------------------------------------------------
@pytest.mark.parametrize("shape", [((1 << 28) + 1024,), (1 << 20, 1 << 20)])  # just over 1 GiB; 4 TiB
def test_unwritten_chunks_of_a_huge_dataset_are_refused(real: dict[str, Any], tmp_path: Path, shape: tuple[int, ...]) -> None:
    path = tmp_path / "bomb.weights.h5"
    with h5py.File(path, "w", libver="earliest") as f:
        vars_group = f.create_group("layers/dense/vars")
        vars_group.create_dataset("0", shape=shape, dtype="f4", chunks=(1 << 10,) * len(shape))
        vars_group.create_dataset("1", data=np.zeros(2, np.float32))
    assert path.stat().st_size < 8192
    with weightvault.open(path) as reader:
        assert reader.info("dense/kernel").shape == shape  # describing it costs nothing
        with pytest.raises(ResourceLimitError) as err:
            reader.get("dense/kernel")
    assert "layers/dense/vars/0" in str(err.value) and err.value.hint


def test_small_fill_valued_dataset_still_reads(tmp_path: Path) -> None:
    path = tmp_path / "fill.weights.h5"
    with h5py.File(path, "w") as f:
        f.create_group("layers/dense/vars").create_dataset("0", shape=(128, 128), dtype="f4", chunks=(16, 16), fillvalue=0.5)
    with weightvault.open(path) as reader:
        assert (reader.get("dense/kernel") == 0.5).all()
    with expansion_limit(1024), weightvault.open(path) as reader, pytest.raises(ResourceLimitError):
        reader.get("dense/kernel")  # the same file over a lowered limit: the check is really applied


def test_superblock_lies_are_caught_before_h5py(real: dict[str, Any], tmp_path: Path) -> None:
    data = bytearray((real["dir"] / "m.weights.h5").read_bytes())
    assert data[8] == 0  # Keras writes superblock version 0 (h5py's default libver)
    cases = {
        "version": (8, b"\x07"),
        "offsets": (13, b"\x05"),
        "leaf K": (16, b"\x00\x00"),
        "base": (24, (99).to_bytes(8, "little")),
        "end of file": (40, (len(data) * 1000).to_bytes(8, "little")),
        "driver info": (48, (100).to_bytes(8, "little")),
        "root header": (64, (len(data) * 10).to_bytes(8, "little")),
    }
    for what, (offset, patch) in cases.items():
        bad = bytearray(data)
        bad[offset : offset + len(patch)] = patch
        with pytest.raises((InvalidHeaderError, TruncatedFileError)) as err:
            check_superblock(_reader(bytes(bad)), len(bad), path="x.h5")
        path = tmp_path / f"{what.replace(' ', '_')}.weights.h5"
        path.write_bytes(bad)
        with pytest.raises(type(err.value)):
            KerasFormat.open(path)
    check_superblock(_reader(bytes(data)), len(data), path="x.h5")  # the real file passes
    for cut in (8, 14, 20, 40):  # cut inside the superblock: a clean error, not an IndexError
        path = tmp_path / f"cut{cut}.weights.h5"
        path.write_bytes(bytes(data[:cut]))
        with pytest.raises(TruncatedFileError):
            KerasFormat.open(path)


def _reader(data: bytes) -> Any:
    return lambda at, n: data[at : at + n]


def test_user_block_before_the_superblock(tmp_path: Path) -> None:
    path = tmp_path / "ub.weights.h5"
    with h5py.File(path, "w", userblock_size=8192) as f:
        f.create_group("layers/dense/vars")["0"] = np.ones((2, 2), np.float32)
    with weightvault.open(path, format="keras") as reader:
        np.testing.assert_array_equal(reader.get("dense/kernel"), np.ones((2, 2), np.float32))


def test_latest_libver_superblock_passes(tmp_path: Path) -> None:
    path = tmp_path / "v3.weights.h5"
    with h5py.File(path, "w", libver="latest") as f:
        f.create_group("layers/dense/vars")["0"] = np.ones((2, 2), np.float32)
    assert path.read_bytes()[8] == 3
    with weightvault.open(path) as reader:
        np.testing.assert_array_equal(reader.get("dense/kernel"), np.ones((2, 2), np.float32))


def _mutants(data: bytes, count: int, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        bad = bytearray(data)
        for _ in range(int(rng.integers(1, 4))):
            i = int(rng.integers(0, len(bad) - 8))
            if rng.integers(2):
                bad[i] ^= 1 << int(rng.integers(8))
            else:
                bad[i : i + 8] = int(rng.integers(0, 1 << 62)).to_bytes(8, "little")
        out.append(bytes(bad))
    return out


_WORKER = """
import sys
import weightvault
from weightvault.errors import WeightVaultError
for p in sys.argv[1:]:
    try:
        with weightvault.open(p, format="keras") as r:
            for k in r.keys():
                r.get(k)
            r.metadata
        print("ok", p, flush=True)
    except WeightVaultError:
        print("clean", p, flush=True)
    except BaseException as e:
        print("FOREIGN", p, type(e).__name__, str(e)[:200], flush=True)
"""


@pytest.mark.parametrize("name", ["m.weights.h5", "m.h5"])
def test_mutated_real_files_fail_cleanly(real: dict[str, Any], tmp_path: Path, name: str) -> None:
    """Bit flips and lying 8-byte fields anywhere in a real file: a result or a WeightVaultError,
    never a foreign exception (run in a child, so an HDF5 hang fails the test instead of the run)."""
    data = (real["dir"] / name).read_bytes()
    paths = []
    for i, bad in enumerate(_mutants(data, 60, seed=len(name))):
        p = tmp_path / f"mut{i}{name[1:]}"
        p.write_bytes(bad)
        paths.append(str(p))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(weightvault.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, "-c", _WORKER, *paths], capture_output=True, text=True, timeout=240, env=env)
    lines = res.stdout.splitlines()
    assert res.returncode == 0, res.stderr[-2000:]
    assert len(lines) == len(paths)
    foreign = [line for line in lines if line.startswith("FOREIGN")]
    assert not foreign, foreign


def test_corrupt_keras_archive_members_are_wrapped(real: dict[str, Any], tmp_path: Path) -> None:
    src = real["dir"] / "m.keras"
    # a deflated config.json whose compressed bytes are damaged: zlib.error inside zipfile
    bad = tmp_path / "zlib.keras"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(bad, "w") as zout:
        for zi in zin.infolist():
            zout.writestr(zi.filename, zin.read(zi), compress_type=zipfile.ZIP_DEFLATED if zi.filename == "config.json" else zipfile.ZIP_STORED)
    raw = bytearray(bad.read_bytes())
    with zipfile.ZipFile(io.BytesIO(bytes(raw))) as z:
        zi = z.getinfo("config.json")
        start = zi.header_offset + 30 + len(zi.filename.encode()) + len(zi.extra)
    raw[start : start + 8] = b"\xff" * 8
    bad.write_bytes(bytes(raw))
    with pytest.raises(zlib.error), zipfile.ZipFile(bad) as z:
        z.read("config.json")  # the foreign error the reader must wrap
    with pytest.raises(InvalidHeaderError, match="not a readable .keras archive"):
        KerasFormat.open(bad)
    # a bad CRC: zipfile.BadZipFile
    crc = tmp_path / "crc.keras"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(crc, "w") as zout:
        for zi in zin.infolist():
            data = zin.read(zi)
            zout.writestr(zi, data.replace(b'"name"', b'"nAme"', 1) if zi.filename == "config.json" else data)
    raw = bytearray(crc.read_bytes())
    raw[raw.find(b'"nAme"') + 2] = ord("a")  # bytes no longer match the stored CRC
    crc.write_bytes(bytes(raw))
    with pytest.raises(InvalidHeaderError):
        KerasFormat.open(crc)


@pytest.mark.parametrize("member", ["config.json", "metadata.json"])
@pytest.mark.parametrize(
    ("config", "error"),
    [
        ("{not json", InvalidHeaderError),
        ("[" * 100_000 + "]" * 100_000, ResourceLimitError),  # json.loads itself runs out of stack
        ('{"a": ' * 900 + "1" + "}" * 900, ResourceLimitError),  # parses, but would break jsonable/json.dumps
    ],
)
def test_bad_json_config_is_wrapped(real: dict[str, Any], tmp_path: Path, config: str, error: type, member: str) -> None:
    out = tmp_path / "cfg.keras"
    with zipfile.ZipFile(real["dir"] / "m.keras") as zin, zipfile.ZipFile(out, "w") as zout:
        for zi in zin.infolist():
            zout.writestr(zi, config if zi.filename == member else zin.read(zi))
    with pytest.raises(error) as err:
        KerasFormat.open(out)
    assert str(out) in str(err.value)


def test_model_config_nested_too_deep_is_not_fatal(real: dict[str, Any], tmp_path: Path) -> None:
    path = _copy(real, tmp_path, "m.h5")
    with h5py.File(path, "a") as f:
        f.attrs["model_config"] = "[" * 50_000 + "]" * 50_000
    with weightvault.open(path) as reader:
        assert "config" not in reader.metadata["keras"]
        assert len(reader.keys()) == 4


def test_huge_attribute_is_refused_before_allocation(real: dict[str, Any], tmp_path: Path) -> None:
    """An attribute's dataspace is read before its data; a lying one must not be allocated."""
    path = _copy(real, tmp_path)
    with h5py.File(path, "a") as f:
        f["layers/dense/vars"].attrs["name"] = np.zeros(1000, np.float32)
    data = bytearray(path.read_bytes())
    # the dataspace message stores the dimension (1000) as an 8-byte length: make it 2^40
    needle = (1000).to_bytes(8, "little")
    at = data.find(needle)
    assert at > 0
    data[at : at + 8] = (1 << 40).to_bytes(8, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(WeightVaultError):
        _read_all(path)


def test_bad_superblock_inside_a_keras_archive(real: dict[str, Any], tmp_path: Path) -> None:
    """The check runs on the in-memory copy too, and the buffer is released on the way out."""
    h5 = _copy(real, tmp_path)
    data = bytearray(h5.read_bytes())
    data[8] = 7  # superblock version
    h5.write_bytes(bytes(data))
    with pytest.raises(InvalidHeaderError, match="superblock version"):
        KerasFormat.open(_into_keras_archive(real, h5, tmp_path / "bad.keras"))


def test_weight_that_is_not_a_dataset(real: dict[str, Any], tmp_path: Path) -> None:
    """A legacy weight name that leads to a committed datatype or a group (fuzz finding)."""
    path = _copy(real, tmp_path, "m.h5")
    with h5py.File(path, "a") as f:
        layer = f["model_weights/d1"]
        names = [w.decode() if isinstance(w, bytes) else w for w in layer.attrs["weight_names"]]
        del layer[names[0]]
        layer[names[0]] = np.dtype("f4")  # a named datatype where the kernel was
        del layer[names[1]]
        layer.create_group(names[1])
    with weightvault.open(path) as reader:
        for name in reader.keys()[:2]:
            with pytest.raises(InvalidHeaderError, match="not a dataset"):
                reader.info(name)
