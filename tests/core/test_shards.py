"""The shard-directory layer (core/shards.py): the plan, the writer, the index reader, and the
three users (native directories, sharded safetensors repositories, CheckpointManager steps)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

import weightvault
from weightvault.checkpoint import manager as manager_module
from weightvault.checkpoint.manager import CheckpointManager
from weightvault.checkpoint.snapshot import snapshot_flat, take_snapshot
from weightvault.core import shards
from weightvault.core.io import TMP_MARK
from weightvault.core.safetensors_io import TensorSource
from weightvault.core.shards import (
    ShardPlan,
    plan_shards,
    read_index,
    resolve_shard,
    shard_directory,
    split_ties,
)
from weightvault.errors import (
    CheckpointNotFoundError,
    HeaderTooLargeError,
    InvalidHeaderError,
)
from weightvault.formats import native
from weightvault.formats.safetensors import SafetensorsFormat


def _src(name: str, nbytes: int, fill: int = 1) -> TensorSource:
    arr = np.full(nbytes, fill % 256, np.uint8)
    return TensorSource(name, "uint8", (nbytes,), lambda: arr)


def _sizes(plan: ShardPlan, sources: list[TensorSource]) -> list[int]:
    size = {s.name: s.nbytes for s in sources}
    return [sum(size[n] for n in names) for _, names in plan.shards]


# -- plan ----------------------------------------------------------------------------------------------


def test_plan_groups_in_order_under_the_cap() -> None:
    sources = [_src(f"t{i}", n) for i, n in enumerate([40, 30, 30, 50, 10, 60, 5])]
    plan = plan_shards(sources, 100)
    assert [list(names) for _, names in plan.shards] == [["t0", "t1", "t2"], ["t3", "t4"], ["t5", "t6"]]
    assert _sizes(plan, sources) == [100, 60, 65]
    assert plan.files == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    assert plan.total_bytes == 225 and plan.is_sharded
    # the two views are the same data
    assert plan.tensor_to_filename == {n: f for f, ns in plan.filename_to_tensors.items() for n in ns}
    assert list(plan.tensor_to_filename) == [s.name for s in sources]  # order kept
    with pytest.raises(AttributeError):
        plan.max_bytes = 1  # type: ignore[misc]  # frozen: a plan is data


def test_plan_is_stable_step_to_step() -> None:
    # Same names and sizes, other values: the same shards with the same tensors (incremental
    # checkpoints hard-link unchanged shards on this).
    sizes = [17, 99, 3, 64, 64, 1, 250, 8]
    first = plan_shards([_src(f"w{i}", n, fill=1) for i, n in enumerate(sizes)], 128)
    again = plan_shards([_src(f"w{i}", n, fill=7) for i, n in enumerate(sizes)], 128)
    assert first == again
    # a tensor appended at the end changes no earlier shard's contents
    grown = plan_shards([_src(f"w{i}", n) for i, n in enumerate([*sizes, 5])], 128)
    assert grown.shards[0][1] == first.shards[0][1]


def test_plan_gives_a_tensor_over_the_cap_its_own_shard() -> None:
    sources = [_src("a", 10), _src("huge", 500), _src("b", 10), _src("c", 10)]
    plan = plan_shards(sources, 100)
    assert [list(names) for _, names in plan.shards] == [["a"], ["huge"], ["b", "c"]]
    assert plan_shards([_src("huge", 500)], 100).shards[0][1] == ("huge",)


def test_plan_of_nothing_is_one_empty_shard_and_names_are_unique() -> None:
    plan = plan_shards([], 100)
    assert plan.shards == (("model-00001-of-00001.safetensors", ()),) and not plan.is_sharded
    with pytest.raises(ValueError, match="'a' is planned twice"):
        plan_shards([_src("a", 1), _src("a", 1)], 100)


def test_ties_are_split_off_before_planning() -> None:
    torch = pytest.importorskip("torch")
    w = torch.arange(6.0).reshape(2, 3)
    base = np.arange(8, dtype=np.float32)
    found = {"w": w, "tied": w, "view": w.view(2, 3), "half": w[:1], "np": base, "np2": base[:]}
    unique, aliases = split_ties(found)
    # same storage, offset, shape, strides and dtype: tied; a slice of it is not
    assert list(unique) == ["w", "half", "np"]
    assert aliases == {"tied": "w", "view": "w", "np2": "np"}


def test_tied_tensors_are_stored_once_in_every_user(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    w = torch.ones(4, 4)
    state = {"enc": w, "dec": w, "b": torch.zeros(3)}
    weightvault.save(state, tmp_path / "ck", shard_size=1)
    files = sorted(p.name for p in (tmp_path / "ck").iterdir() if p.suffix == ".safetensors")
    stored = [k for f in files for k in safetensors.numpy.load_file(tmp_path / "ck" / f)]
    assert sorted(stored) == ["b", "enc"] and len(files) == 2
    with weightvault.open(tmp_path / "ck") as r:
        assert r.aliases == {"dec": "enc"}
    flat = snapshot_flat(state)  # the async snapshot unties once, and the writer takes it as is
    assert list(flat.tensors) == ["enc", "b"] and flat.aliases == {"dec": "enc"}
    copy = take_snapshot(state)
    assert copy["enc"] is copy["dec"] and copy["enc"] is not w


# -- writer --------------------------------------------------------------------------------------------


def _write(path: Path, sources: list[TensorSource], **kw: object) -> list[str]:
    plan = plan_shards(sources, 100)
    with shard_directory(path, fsync=False) as d:
        d.write_shards(sources, plan, metadata=lambda f: {"format": "pt", "shard": f})
        d.write_file("manifest.json", b"{}")
        d.commit("COMMITTED", b"{}")
        with pytest.raises(RuntimeError, match="already committed by COMMITTED"):
            d.write_file("late.json", b"{}")
        assert d.nbytes == sum(os.path.getsize(d.root / n) for n in d.written)
        return list(d.written)


def test_writer_puts_the_marker_last_and_reads_back(tmp_path: Path) -> None:
    sources = [_src("a", 60, 1), _src("b", 60, 2), _src("c", 10, 3)]
    written = _write(tmp_path / "out", sources)
    shard_files = plan_shards(sources, 100).files
    assert written == [*shard_files, "manifest.json", "COMMITTED"]
    assert sorted(os.listdir(tmp_path)) == ["out"]  # no temporary directory left
    assert sorted(os.listdir(tmp_path / "out")) == sorted(written)  # nothing after the marker
    # every shard is a valid safetensors file for the safetensors library itself
    got = safetensors.numpy.load_file(tmp_path / "out" / shard_files[1])
    assert list(got) == ["b", "c"] and (got["b"] == 2).all() and (got["c"] == 3).all()


class _Boom(RuntimeError):
    pass


@pytest.mark.parametrize("when", ["second shard", "extra file", "marker"])
def test_a_crash_leaves_no_marker_and_no_directory(tmp_path: Path, when: str) -> None:
    def broken() -> np.ndarray:
        raise _Boom("disk gone")

    sources = [_src("a", 80), TensorSource("b", "uint8", (80,), broken if when == "second shard" else (lambda: np.zeros(80, np.uint8)))]
    plan = plan_shards(sources, 100)
    final = tmp_path / "ck"
    with pytest.raises(_Boom), shard_directory(final, fsync=True) as d:
        d.write_shards(sources, plan, metadata=lambda f: {})
        if when == "extra file":
            raise _Boom("between files")
        d.write_file("manifest.json", b"{}")
        if when == "marker":
            raise _Boom("just before the marker")
        d.commit("COMMITTED", b"{}")
    assert os.listdir(tmp_path) == []  # neither the final name nor a temporary one


def test_a_crash_keeps_the_old_directory(tmp_path: Path) -> None:
    final = tmp_path / "ck"
    weightvault.save({"x": np.ones(3, np.float32)}, final)
    before = sorted(os.listdir(final))
    with pytest.raises(_Boom), shard_directory(final) as d:
        d.write_file("manifest.json", b"{}")
        raise _Boom("mid-write")
    assert sorted(os.listdir(final)) == before and sorted(os.listdir(tmp_path)) == ["ck"]
    assert (weightvault.load(final)["x"] == 1).all()


def test_native_directory_is_what_readers_expect(tmp_path: Path) -> None:
    state = {"a": np.arange(30, dtype=np.float32), "b": np.ones((5, 5), np.float64), "c": np.zeros(2, np.int8)}
    weightvault.save(state, tmp_path / "ck", shard_size=250)
    root = tmp_path / "ck"
    index = json.loads((root / "model.safetensors.index.json").read_text())
    assert index == {
        "metadata": {"total_size": 120 + 200 + 2},
        "weight_map": {
            "a": "model-00001-of-00002.safetensors",
            "b": "model-00002-of-00002.safetensors",
            "c": "model-00002-of-00002.safetensors",
        },
    }
    for name, file in index["weight_map"].items():  # the safetensors library reads every shard
        assert (safetensors.numpy.load_file(root / file)[name] == state[name]).all()
    manifest = json.loads((root / "manifest.json").read_text())
    assert [list(row) for row in manifest["tensors"].values()][0] == ["dtype", "shape", "checksum", "file"]
    assert json.loads((root / "COMMITTED").read_text()) == {
        "files": ["manifest.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    }
    # the text layout main has always written: one-space indent, UTF-8, a marker of a few bytes
    assert (root / "COMMITTED").read_text().startswith('{\n "files": [\n  "manifest.json"')


def test_safetensors_repository_is_what_transformers_expects(tmp_path: Path) -> None:
    tensors = {"w": np.arange(40, dtype=np.float32), "b": np.ones(3, np.float16)}
    SafetensorsFormat.write(tmp_path / "repo", tensors, metadata={"note": "x"}, shard_size=100)
    index_text = (tmp_path / "repo" / "model.safetensors.index.json").read_text()
    assert index_text.startswith('{\n  "metadata": {\n    "note": "x",')  # indent 2, as transformers
    index = json.loads(index_text)
    assert index["metadata"]["total_size"] == 166
    assert index["weight_map"] == {
        "w": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"
    }
    for name, file in index["weight_map"].items():
        with safetensors.safe_open(tmp_path / "repo" / file, "np") as f:
            assert f.metadata() == {"format": "pt", "note": "x"}
            assert (f.get_tensor(name) == tensors[name]).all()


# -- reader --------------------------------------------------------------------------------------------


def test_read_index_refuses_over_the_cap_before_reading(tmp_path: Path) -> None:
    (tmp_path / "index.json").write_bytes(b"{" + b" " * 99 + b"}")
    assert read_index(tmp_path, "index.json", max_bytes=101) == b"{" + b" " * 99 + b"}"
    with pytest.raises(HeaderTooLargeError, match=r"index.json is 101 bytes, over the 100 cap") as info:
        read_index(tmp_path, "index.json", max_bytes=100)
    assert info.value.path == os.fspath(tmp_path / "index.json")
    with pytest.raises(CheckpointNotFoundError, match="no other.json"):
        read_index(tmp_path, "other.json", max_bytes=100)


@pytest.mark.parametrize("bad", ["../outside.safetensors", "/etc/passwd", "sub/../../x", "link.safetensors"])
def test_paths_that_leave_the_directory_are_refused(tmp_path: Path, bad: str) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    (tmp_path / "outside.safetensors").write_bytes(b"x")
    (root / "link.safetensors").symlink_to(tmp_path / "outside.safetensors")
    with pytest.raises(InvalidHeaderError, match="leaves the model's directory|resolves outside") as info:
        resolve_shard(root, bad, path=root / "model.safetensors.index.json", tensor="w")
    assert bad in str(info.value) and info.value.path == os.fspath(root / "model.safetensors.index.json")
    with pytest.raises(InvalidHeaderError, match="leaves the model's directory|resolves outside"):
        read_index(root, bad, max_bytes=100)


def test_sharded_repository_names_the_index_and_the_shard(tmp_path: Path) -> None:
    SafetensorsFormat.write(tmp_path / "repo", {"w": np.ones(4, np.float32)}, shard_size=100)
    (tmp_path / "secret.safetensors").write_bytes((tmp_path / "repo" / "model-00001-of-00001.safetensors").read_bytes())
    index = tmp_path / "repo" / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"w": "../secret.safetensors"}}))
    with pytest.raises(InvalidHeaderError, match="'../secret.safetensors' leaves") as info:
        weightvault.open(tmp_path / "repo")
    assert info.value.tensor == "w" and "repo" in (info.value.path or "")
    index.write_text(json.dumps({"weight_map": {"w": "gone.safetensors"}}))
    with pytest.raises(CheckpointNotFoundError, match="shard gone.safetensors is missing"):
        weightvault.open(tmp_path / "repo")


def test_symlinked_index_inside_a_directory_is_refused(tmp_path: Path) -> None:
    SafetensorsFormat.write(tmp_path / "repo", {"w": np.ones(4, np.float32)}, shard_size=100)
    index = tmp_path / "repo" / "model.safetensors.index.json"
    os.replace(index, tmp_path / "elsewhere.json")
    index.symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(InvalidHeaderError, match="resolves outside"):
        weightvault.open(tmp_path / "repo")
    # named by the caller, the index may be a link (the Hugging Face cache links every file)
    with weightvault.open(index) as r:
        assert r.keys() == ["w"]


def test_native_manifest_over_the_cap_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    weightvault.save({"x": np.ones(3, np.float32)}, tmp_path / "ck")
    size = (tmp_path / "ck" / "manifest.json").stat().st_size
    monkeypatch.setattr(native, "MAX_MANIFEST_BYTES", size - 1)
    with pytest.raises(HeaderTooLargeError, match=f"manifest.json is {size} bytes, over the {size - 1} cap"):
        weightvault.open(tmp_path / "ck")
    monkeypatch.setattr(native, "MAX_MANIFEST_BYTES", size)
    with weightvault.open(tmp_path / "ck") as r:
        assert r.keys() == ["x"]


# -- the checkpoint manager's steps -----------------------------------------------------------------


@pytest.mark.parametrize("async_save", [False, True])
def test_manager_step_record_before_marker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, async_save: bool) -> None:
    order: list[str] = []
    real = shards.ShardDirectory.write_file

    def spy(self: shards.ShardDirectory, name: str, data: bytes) -> None:
        order.append(name)
        real(self, name, data)

    monkeypatch.setattr(shards.ShardDirectory, "write_file", spy)
    with CheckpointManager(tmp_path, async_save=async_save, fsync=False, shard_size=64) as mgr:
        mgr.save(1, {"a": np.ones(20, np.float32), "b": np.zeros(20, np.float32)})
    step = tmp_path / "step-00000001"
    assert order == ["manifest.json", "model.safetensors.index.json", "checkpoint.json", "COMMITTED"]
    record = json.loads((step / "checkpoint.json").read_text())
    # size_bytes is the checkpoint's files, the record itself not counted (as it always was)
    files = [p for p in step.iterdir() if p.name != "checkpoint.json"]
    assert record["size_bytes"] == sum(p.stat().st_size for p in files)
    assert sorted(n for n in os.listdir(tmp_path) if n.startswith("step-")) == ["step-00000001"]


def test_manager_crash_before_commit_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = shards.ShardDirectory.commit

    def crash(self: shards.ShardDirectory, marker: str, data: bytes) -> None:
        if "step-00000002" in os.fspath(self.root):
            raise _Boom("power cut")
        real(self, marker, data)

    monkeypatch.setattr(shards.ShardDirectory, "commit", crash)
    with CheckpointManager(tmp_path, fsync=False) as mgr:
        mgr.save(1, {"a": np.ones(3, np.float32)})
        with pytest.raises(_Boom):
            mgr.save(2, {"a": np.ones(3, np.float32)})
        assert mgr.steps() == [1]
    assert [n for n in os.listdir(tmp_path) if n.startswith("step-")] == ["step-00000001"]
    assert not any(TMP_MARK in n for n in os.listdir(tmp_path))
    assert manager_module.scan_run(tmp_path)[0].step == 1


@pytest.mark.parametrize("async_save", [False, True])
def test_manager_flattens_and_unties_once_per_save(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, async_save: bool
) -> None:
    from weightvault.checkpoint import snapshot

    calls = {"flatten": 0, "split_ties": 0, "unflatten": 0}

    def counting(module: object, name: str) -> None:
        real = getattr(module, name)

        def wrapper(*args: object, **kwargs: object) -> object:
            calls[name] += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapper)

    with CheckpointManager(tmp_path, async_save=async_save, fsync=False) as mgr:
        w = np.ones(4, np.float32)
        for module in (snapshot, native):
            for name in ("flatten", "split_ties", "unflatten"):
                if hasattr(module, name):
                    counting(module, name)
        mgr.save(1, {"w": w, "tied": w, "opt": {"m": [np.zeros(2, np.float32)]}})
        mgr.wait_until_finished()
        assert calls == {"flatten": 1, "split_ties": 1, "unflatten": 0}
        with weightvault.open(mgr.path(1)) as r:
            assert r.aliases == {"tied": "w"}
