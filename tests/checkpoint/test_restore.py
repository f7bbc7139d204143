"""weightvault.restore: selective, renamed, prefix-stripped restore with a report; restore-report CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import weightvault
from weightvault.errors import ShapeMismatchError, TensorNotFoundError
from weightvault.checkpoint.restore import RestoreReport, StrictRestoreError, compare, restore, select


class Net(torch.nn.Module):
    def __init__(self, classes: int = 10, grown: bool = False) -> None:
        super().__init__()
        self.body = torch.nn.Linear(6, 8)
        self.bn = torch.nn.BatchNorm1d(8)
        if grown:
            self.extra = torch.nn.Linear(8, 8)
        self.head = torch.nn.Linear(8, classes)


def _trained(seed: int = 0) -> Net:
    torch.manual_seed(seed)
    net = Net()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p))
        net.bn.running_mean.uniform_()
        net.bn.num_batches_tracked.fill_(42)
    return net


def _same(a: torch.nn.Module, b: torch.nn.Module, names: list[str]) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[n], sb[n]) for n in names)


@pytest.fixture
def src() -> Net:
    return _trained()


@pytest.fixture
def flat(tmp_path: Path, src: Net) -> Path:
    return weightvault.save(src.state_dict(), tmp_path / "flat.safetensors")


def test_plain_restore_loads_everything(flat: Path, src: Net) -> None:
    net = Net()
    report = restore(net, flat)
    assert isinstance(report, RestoreReport) and report.ok
    assert sorted(report.loaded_names) == sorted(src.state_dict())
    assert _same(net, src, list(src.state_dict()))
    assert report.renamed == [] and report.missing == [] and report.unexpected == []


def test_training_state_model_group_is_found(tmp_path: Path, src: Net) -> None:
    import weightvault.torch as wvt

    opt = torch.optim.Adam(src.parameters())
    path = wvt.save_training_state(tmp_path / "state", model=src, optimizer=opt, step=5)
    net = Net()
    report = restore(net, path)
    assert report.source_key == "model" and report.ok and _same(net, src, list(src.state_dict()))
    # optimizer tensors are outside the chosen group: not "unexpected"
    assert report.unexpected == []
    assert restore(Net(), path, source_key="model").ok
    with pytest.raises(TensorNotFoundError, match="no tensors under source_key 'nope'"):
        restore(Net(), path, source_key="nope")


def test_include_exclude(flat: Path, src: Net) -> None:
    net = Net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    report = restore(net, flat, include=["body.*"])
    assert sorted(report.loaded_names) == ["body.bias", "body.weight"]
    assert report.missing == [] and report.ok  # unselected names are not missing
    assert {r["reason"] for r in report.skipped} == {"not selected"} and len(report.skipped) == 7
    assert _same(net, src, ["body.weight", "body.bias"])
    assert torch.equal(net.head.weight, before["head.weight"])

    net2 = Net()
    report2 = restore(net2, flat, exclude=["head.*", "bn.num_batches_tracked"])
    assert "head.weight" not in report2.loaded_names and "bn.weight" in report2.loaded_names
    assert net2.bn.num_batches_tracked.item() == 0 and torch.equal(net2.bn.weight, src.bn.weight)


def test_select_for_partial_save(tmp_path: Path, src: Net) -> None:
    sd = src.state_dict()
    part = select(sd, include=["body.*", "bn.*"], exclude="bn.num_batches_tracked")
    assert sorted(part) == [
        "bn.bias",
        "bn.running_mean",
        "bn.running_var",
        "bn.weight",
        "body.bias",
        "body.weight",
    ]
    assert select(sd) == dict(sd)
    # the same globs on save itself
    path = weightvault.save(
        sd,
        tmp_path / "part.safetensors",
        include=["body.*", "bn.*"],
        exclude=["bn.num_batches_tracked"],
    )
    with weightvault.open(path) as reader:
        assert sorted(reader.keys()) == sorted(part)
    report = restore(Net(), path, strict=False)
    assert sorted(report.missing) == ["bn.num_batches_tracked", "head.bias", "head.weight"]


def test_rename_rules_and_files(tmp_path: Path, src: Net) -> None:
    renamed = {
        k.replace("body.", "encoder.layers.0.").replace("head.", "classifier."): v
        for k, v in src.state_dict().items()
    }
    path = weightvault.save(renamed, tmp_path / "renamed.safetensors")
    with pytest.raises(StrictRestoreError) as info:
        restore(Net(), path)
    assert "body.weight" in str(info.value) and "classifier.weight" in str(info.value)
    assert info.value.report.missing and info.value.report.unexpected

    rules = [(r"^encoder\.layers\.0\.", "body."), (r"^classifier\.", "head.")]
    net = Net()
    report = restore(net, path, rename=rules)
    assert report.ok and _same(net, src, list(src.state_dict()))
    assert ("classifier.weight", "head.weight") in report.renamed and len(report.renamed) == 4

    mapping = {"encoder.layers.0.weight": "body.weight", "encoder.layers.0.bias": "body.bias",
               "classifier.weight": "head.weight", "classifier.bias": "head.bias"}  # fmt: skip
    (tmp_path / "map.json").write_text(json.dumps(mapping))
    (tmp_path / "rules.yaml").write_text(
        '- ["^encoder\\\\.layers\\\\.0\\\\.", "body."]\n- ["^classifier\\\\.", "head."]\n'
    )
    for spec in (mapping, tmp_path / "map.json", tmp_path / "rules.yaml"):
        net = Net()
        assert restore(net, path, rename=spec).ok, spec
        assert torch.equal(net.head.weight, src.head.weight)


def test_strip_prefixes_both_sides(tmp_path: Path, src: Net) -> None:
    decorated = {f"_orig_mod.module.{k}": v for k, v in src.state_dict().items()}
    path = weightvault.save(decorated, tmp_path / "ddp_compiled.safetensors")
    net = Net()
    report = restore(net, path)
    assert report.ok and _same(net, src, list(src.state_dict()))
    assert ("_orig_mod.module.head.weight", "head.weight") in report.renamed

    class Wrapper(torch.nn.Module):  # a DDP-style wrapped target restored from a plain file
        def __init__(self) -> None:
            super().__init__()
            self.module = Net()

    flat = weightvault.save(src.state_dict(), tmp_path / "plain.safetensors")
    wrapped = Wrapper()
    assert restore(wrapped, flat).ok
    assert torch.equal(wrapped.module.head.weight, src.head.weight)
    # without stripping, nothing matches
    with pytest.raises(StrictRestoreError):
        restore(Net(), path, strip_prefixes=())


def test_grown_model_keeps_new_layers(flat: Path, src: Net) -> None:
    grown = Net(grown=True)
    init = grown.extra.weight.detach().clone()
    with pytest.raises(
        StrictRestoreError, match=r"missing in checkpoint: extra\.weight, extra\.bias"
    ):
        restore(grown, flat)
    assert not torch.equal(grown.body.weight, src.body.weight)  # refused restore changed nothing
    report = restore(grown, flat, strict=False)
    assert report.missing == ["extra.weight", "extra.bias"]
    assert torch.equal(grown.extra.weight, init)
    assert _same(grown, src, list(src.state_dict()))
    assert "missing  extra.weight" in str(report).replace("   ", "  ")


def test_shape_mismatch_is_an_error_naming_both_shapes(flat: Path, src: Net) -> None:
    small = Net(classes=3)
    before = {k: v.clone() for k, v in small.state_dict().items()}
    with pytest.raises(ShapeMismatchError) as info:
        restore(small, flat)
    msg = str(info.value)
    assert "head.weight" in msg and "(10, 8)" in msg and "(3, 8)" in msg and str(flat) in msg
    assert all(torch.equal(v, before[k]) for k, v in small.state_dict().items())  # nothing loaded

    report = restore(small, flat, allow_shape_mismatch=True)
    assert [m["name"] for m in report.mismatched] == ["head.weight", "head.bias"]
    assert report.mismatched[0]["source_shape"] == (10, 8) and report.mismatched[0][
        "target_shape"
    ] == (3, 8)
    assert torch.equal(small.head.weight, before["head.weight"])
    assert torch.equal(small.body.weight, src.body.weight)
    d = report.to_dict()
    assert (
        d["counts"]["mismatched"] == 2
        and d["mismatched"][0]["target_shape"] == [3, 8]
        and not d["ok"]
    )


def test_dtype_and_device(tmp_path: Path, src: Net) -> None:
    path = weightvault.save({k: v.double() if v.is_floating_point() else v for k, v in src.state_dict().items()},
                            tmp_path / "f64.safetensors")  # fmt: skip
    net = Net()
    report = restore(net, path, device="cpu")
    assert net.body.weight.dtype == torch.float32
    assert torch.equal(net.body.weight, src.body.weight.double().float())
    row = next(r for r in report.loaded if r["name"] == "body.weight")
    assert row["source_dtype"] == "float64" and row["dtype"] == "float32"
    assert any(r[0] == "loaded (cast)" for r in report.rows())

    net16 = Net()
    restore(net16, path, dtype="bfloat16")
    assert (
        net16.body.weight.dtype == torch.bfloat16
        and net16.bn.num_batches_tracked.dtype == torch.int64
    )
    assert torch.equal(net16.body.weight, src.body.weight.double().to(torch.bfloat16))


def test_numpy_dict_target(flat: Path, src: Net) -> None:
    target = {
        k: np.zeros(tuple(v.shape), np.float32 if v.is_floating_point() else np.int64)
        for k, v in src.state_dict().items()
    }
    ref = target["body.weight"]
    report = restore(target, flat)
    assert report.ok and target["body.weight"] is ref  # filled in place
    np.testing.assert_array_equal(ref, src.body.weight.detach().numpy())
    target16 = {"body.weight": np.zeros((8, 6), np.float32)}
    restore(target16, flat, strict=False, dtype="float16")
    assert target16["body.weight"].dtype == np.float16


def test_in_memory_source(src: Net) -> None:
    net = Net()
    assert restore(net, {"model": src.state_dict(), "step": 3}).ok
    assert torch.equal(net.head.bias, src.head.bias)


def test_report_str_and_dict(flat: Path) -> None:
    report = restore(Net(grown=True), flat, strict=False, exclude=["head.bias"])
    text = str(report)
    assert text.splitlines()[0].split() == [
        "status",
        "model",
        "name",
        "checkpoint",
        "key",
        "checkpoint",
        "shape",
        "model",
        "shape",
    ]
    assert "loaded 8, missing 2, unexpected 0, shape mismatch 0, skipped 1" in text
    d = report.to_dict()
    assert d["counts"] == {
        "loaded": 8,
        "missing": 2,
        "unexpected": 0,
        "mismatched": 0,
        "skipped": 1,
        "renamed": 0,
    }
    assert d["skipped"][0]["name"] == "head.bias"
    json.dumps(d)  # JSON-able


def test_restore_is_the_function_whatever_was_imported_first(flat: Path) -> None:
    import importlib
    import inspect

    importlib.import_module("weightvault.checkpoint.restore")  # the import the CLI does
    assert weightvault.restore is restore and inspect.isfunction(weightvault.restore)
    assert weightvault.restore(Net(), flat).ok


def test_ddp_prefixed_fixture(fixtures_dir: Path) -> None:
    path = fixtures_dir / "pytorch" / "ddp_prefixed.pt"
    with weightvault.open(path) as reader:
        keys = list(reader.keys())
    expected = torch.load(path, weights_only=True)
    expected = expected.get("state_dict", expected) if isinstance(expected, dict) else expected
    assert all(k.startswith("module.") for k in expected)
    target = {
        k[len("module.") :]: np.zeros(tuple(v.shape), np.float32)
        for k, v in expected.items()
        if v.is_floating_point()
    }
    report = restore(target, path, strict=False)
    assert report.loaded and not report.mismatched, str(report)
    for name in report.loaded_names:
        np.testing.assert_array_equal(target[name], expected["module." + name].float().numpy())
    assert keys


# -- CLI -----------------------------------------------------------------------------------------------


def test_cli_restore_report(cli_run, tmp_path: Path, src: Net) -> None:
    ckpt = weightvault.save(
        {f"module.{k}": v for k, v in src.state_dict().items()}, tmp_path / "ddp.safetensors"
    )
    target = weightvault.save(
        Net(classes=3, grown=True).state_dict(), tmp_path / "target.safetensors"
    )
    code, out, _ = cli_run("restore-report", ckpt, "--target", target, "--json")
    assert code == 0
    rep = json.loads(out)["report"]
    assert rep["counts"] == {
        "loaded": 7,
        "missing": 2,
        "unexpected": 0,
        "mismatched": 2,
        "skipped": 0,
        "renamed": 7,
    }
    assert rep["mismatched"][0] == {
        "name": "head.weight",
        "source": "module.head.weight",
        "source_shape": [10, 8],
        "target_shape": [3, 8],
    }

    code, out, _ = cli_run("restore-report", ckpt, "-t", target, "--strict")
    assert code == 1
    assert "shape mismatch  head.weight" in out and "missing" in out and "extra.weight" in out
    assert "loaded 7, missing 2" in out

    names = tmp_path / "expected.txt"
    names.write_text(
        "# model layout\nbody.weight 8x6\nbody.bias [8]\nhead.weight 4,8\nnew.weight\n"
    )
    code, out, _ = cli_run(
        "restore-report",
        ckpt,
        "-t",
        names,
        "--json",
        "--exclude",
        "bn.*",
        "--rename",
        r"^head\.bias$=gone.bias",
    )
    rep = json.loads(out)["report"]
    assert [m["name"] for m in rep["mismatched"]] == ["head.weight"]
    assert rep["missing"] == ["new.weight"]
    assert {u["name"] for u in rep["unexpected"]} == {"gone.bias"}
    assert {s["name"] for s in rep["skipped"]} == {
        "bn.weight",
        "bn.bias",
        "bn.running_mean",
        "bn.running_var",
        "bn.num_batches_tracked",
    }

    code, out, _ = cli_run("restore-report", ckpt, "-t", target)
    assert "body.weight" not in out  # by default only problems are listed
    code, out, _ = cli_run("restore-report", ckpt, "-t", target, "--all")
    assert any(line.split()[:2] == ["loaded", "body.weight"] for line in out.splitlines())


def test_compare_against_shapes_mapping(flat: Path) -> None:
    report = compare(flat, {"body.weight": (8, 6), "head.weight": (10, 8), "other": None})
    assert sorted(report.loaded_names) == ["body.weight", "head.weight"] and report.missing == [
        "other"
    ]
    assert len(report.unexpected) == 7


def test_torch_saved_training_checkpoint_fixture(fixtures_dir: Path) -> None:
    ckpt = fixtures_dir / "pytorch" / "train_checkpoint.pth"
    report = compare(ckpt, fixtures_dir / "pytorch" / "net_state_dict.pt")
    # the model group of a torch.save'd {"model", "optimizer", "scheduler", ...} is found by itself
    assert report.source_key == "model" and report.ok and len(report.loaded) > 10


# -- strict refuses what torch's strict refuses (#13.15) -----------------------------------------


def test_strict_refuses_unexpected_tensors_like_torch(tmp_path: Path, src: Net) -> None:
    extra = {**src.state_dict(), "extra.weight": torch.ones(3)}
    with pytest.raises(RuntimeError, match="Unexpected key"):
        Net().load_state_dict(extra, strict=True)  # what torch does
    torch.save(extra, tmp_path / "extra.pt")
    paths = [weightvault.save(extra, tmp_path / "extra.safetensors"), tmp_path / "extra.pt"]
    for path in paths:
        net = Net()
        before = {k: v.clone() for k, v in net.state_dict().items()}
        with pytest.raises(StrictRestoreError, match=r"unexpected in checkpoint: extra\.w") as e:
            restore(net, path)
        info = e
        assert [u["name"] for u in info.value.report.unexpected] == ["extra.weight"]
        assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())  # untouched
        report = restore(net, path, strict=False)  # loads what matches, lists the rest
        assert [u["name"] for u in report.unexpected] == ["extra.weight"] and not report.ok
        assert _same(net, src, list(src.state_dict()))


def test_strict_refuses_tensors_beside_a_model_name_prefix(tmp_path: Path, src: Net) -> None:
    """A flat state dict with ``model.*`` names: what is beside them is unexpected, not ignored."""
    flat = {f"model.{k}": v for k, v in src.state_dict().items()}
    flat["lm_head.weight"] = torch.ones(4, 8)
    path = weightvault.save(flat, tmp_path / "outer.safetensors")
    net = Net()
    beside = r"lm_head\.weight \(beside the model weights under 'model'\)"
    with pytest.raises(StrictRestoreError, match=beside):
        restore(net, path)
    assert not torch.equal(net.head.weight, src.head.weight)  # nothing loaded
    report = restore(net, path, strict=False)
    assert report.source_key == "model"
    assert [u["name"] for u in report.unexpected] == ["lm_head.weight"]
    assert _same(net, src, list(src.state_dict()))
    # naming the group says the rest is meant to stay behind; so does excluding it
    assert restore(Net(), path, source_key="model").ok
    assert restore(Net(), path, exclude=["lm_head.*"]).ok
    # a nested training state's other entries (optimizer, counters) are not the model's: no error
    opt = torch.optim.SGD(src.parameters(), lr=0.1, momentum=0.9)
    for p in src.parameters():
        p.grad = torch.ones_like(p)
    opt.step()  # momentum buffers: real optimizer state beside the model
    state = {"model": src.state_dict(), "optimizer": opt.state_dict()}
    state = weightvault.save(state, tmp_path / "st")
    assert restore(Net(), state).ok


def test_two_checkpoint_tensors_for_one_model_name_are_unexpected(tmp_path: Path, src: Net) -> None:
    other = _trained(seed=1)
    # "_orig_mod.*" sorts before the bare names in the file: the order must not decide
    both = {**{f"_orig_mod.{k}": v for k, v in other.state_dict().items()}, **src.state_dict()}
    path = weightvault.save(both, tmp_path / "both.safetensors")
    dup = r"_orig_mod\.head\.weight \(also maps to 'head\.weight'"
    with pytest.raises(StrictRestoreError, match=dup):
        restore(Net(), path)
    for source in (path, both):
        net = Net()
        report = restore(net, source, strict=False)
        assert _same(net, src, list(src.state_dict()))  # the exact names win over the stripped ones
        left = sorted(u["name"] for u in report.unexpected)
        assert left == sorted(f"_orig_mod.{k}" for k in src.state_dict())


# -- torch.compile's _orig_mod. prefix: restore and weightvault.torch.apply agree (#13.12) ---------


def _compile(module: torch.nn.Module) -> torch.nn.Module:
    return torch.compile(module, backend="eager")


@pytest.fixture(scope="module")
def compiled_pair() -> tuple[torch.nn.Module, torch.nn.Module]:
    """A real ``torch.compile`` wrapper (OptimizedModule; compiled lazily, so never run here)."""
    src = _trained()
    compiled = torch.compile(src, backend="eager")  # the wrapper is the same for every backend
    assert type(compiled).__name__ == "OptimizedModule"
    return src, compiled


def test_compiled_and_plain_states_load_both_ways_alike(tmp_path: Path, compiled_pair) -> None:
    import weightvault.torch as wvt

    src, compiled = compiled_pair
    names = list(src.state_dict())
    assert all(k.startswith("_orig_mod.") for k in compiled.state_dict())
    captured = {
        "compiled": wvt.capture(model=compiled, ema=weightvault.EMA(compiled), rng=False),
        "plain": wvt.capture(model=src, ema=weightvault.EMA(src), rng=False),
    }
    for label, state in captured.items():
        path = weightvault.save(state, tmp_path / label)
        loaded = weightvault.load(path, framework="torch")
        for target_kind in ("plain", "compiled"):
            via_apply, via_restore = Net(), Net()
            wrap = _compile if target_kind == "compiled" else (lambda m: m)
            ema = weightvault.EMA(wrap(Net()))
            wvt.apply(loaded, model=wrap(via_apply), ema=ema, rng=False)
            report = restore(wrap(via_restore), path)
            assert report.ok, (label, target_kind)
            assert _same(via_apply, src, names), (label, target_kind)
            assert _same(via_restore, src, names), (label, target_kind)
            shadows = {wvt_name.removeprefix("_orig_mod."): v for wvt_name, v in ema.shadow.items()}
            assert all(torch.equal(shadows[n], src.state_dict()[n]) for n in names)
    # a name that is really different is still refused by apply's strict loading
    bad = dict(captured["plain"]["model"])
    bad["nothere.weight"] = bad.pop("head.weight")
    with pytest.raises(RuntimeError, match="nothere.weight"):
        wvt.apply({"model": bad}, model=_compile(Net()), rng=False)


def test_one_prefix_stripper() -> None:
    from weightvault.checkpoint import ema, restore as restore_module
    from weightvault.checkpoint.restore import match_names, strip_wrappers

    assert strip_wrappers("_orig_mod.module.a.b") == strip_wrappers("module._orig_mod.a.b") == "a.b"
    matched = match_names(["_orig_mod.x", "y", "module.y"], ["x", "y"])
    assert matched == {"_orig_mod.x": "x", "y": "y"}
    key = "model_ema.module._orig_mod.w"
    assert ema.ema_source_names([key])[0] == {"w": key}
    assert not hasattr(restore_module, "_strip") and not hasattr(ema, "_strip_module")
