"""Conventions users expect (issue 14, items 1, 2 and 6): format names people type, declared and
checked -o/-w options, convert's --dtype/--include/--exclude, exit statuses and plain messages."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import weightvault
from weightvault.core.io import TMP_MARK, atomic_write
from weightvault.errors import InvalidHeaderError, UnsafePickleError, UnsupportedOperationError
from weightvault.registry import (
    ALIASES,
    available_formats,
    format_title,
    get_format,
    known_formats,
    resolve_name,
)

torch = pytest.importorskip("torch")


@pytest.fixture
def small(tmp_path: Path) -> Path:
    return weightvault.save({"w": np.arange(6, dtype=np.float32).reshape(2, 3)}, tmp_path / "s.safetensors")


# -- 1. names people type ------------------------------------------------------------------------

TYPED = {
    "torch": "pytorch", "pt": "pytorch", "pytorch": "pytorch", "tf": "tf_bundle", "tensorflow": "tf_bundle",
    "tf-bundle": "tf_bundle", "npz": "numpy", "npy": "numpy", "h5": "keras", "keras": "keras",
    "st": "safetensors", "safetensors": "safetensors", "hf": "safetensors", "onnx": "onnx", "gguf": "gguf",
    "gob": "gob", "weightvault": "native", "native": "native", "tf_v1": "tf_v1", "TF-V1": "tf_v1",
}  # fmt: skip


@pytest.mark.parametrize(("typed", "name"), list(TYPED.items()))
def test_names_people_type_resolve(typed: str, name: str) -> None:
    assert resolve_name(typed) == name
    assert get_format(typed).name == name


def test_every_registered_format_keeps_its_name() -> None:
    for name in known_formats:
        assert resolve_name(name) == name
    assert all(target in known_formats for target in ALIASES.values())


@pytest.mark.parametrize(
    ("to", "ending", "fmt"),
    [("torch", "o.bin", "pytorch"), ("st", "o.bin", "safetensors"), ("npz", "o.bin", "numpy"),
     ("h5", "o.weights.h5", "keras"), ("tf", "ckpt/model", "tf_bundle"), ("weightvault", "o-dir", "native")],
)  # fmt: skip
def test_convert_to_an_alias_writes_that_format(to: str, ending: str, fmt: str, small: Path, tmp_path: Path, cli_run) -> None:
    dst = tmp_path / ending
    code, out, err = cli_run("convert", small, dst, "--to", to)
    assert code == 0, err
    assert f"({fmt}, 1 tensors)" in out
    with weightvault.open(dst, format=to) as r:
        assert r.format == fmt and np.array_equal(r.get("w"), np.arange(6, dtype=np.float32).reshape(2, 3))


def test_unknown_format_answers_did_you_mean(small: Path, tmp_path: Path, cli_run) -> None:
    code, _, err = cli_run("convert", small, tmp_path / "o", "--to", "safetensor")
    assert code == 2 and "unknown format 'safetensor'; did you mean 'safetensors'" in err
    assert not (tmp_path / "o").exists()
    code, _, err = cli_run("ls", small, "--format", "pytroch")
    assert code == 2 and "did you mean 'pytorch'" in err
    code, _, err = cli_run("ls", small, "--format", "zzzz")
    assert code == 2 and "did you mean" not in err and "known formats: " in err


def test_help_lists_choices_and_to_only_writable_ones(cli_run) -> None:
    _, out, _ = cli_run("convert", "--help")
    flat = " ".join(out.split())
    to_help = flat[flat.index("--to FORMAT") : flat.index("--rules [")]
    format_help = flat[flat.index("--format FORMAT") :]
    for name in ("torch", "pt", "tf", "npz", "st", "hf", "onnx", "gob", "weightvault", "native", "keras", "h5"):
        assert f" {name}," in to_help or f" {name}." in to_help, name
    for read_only in ("gguf", "tf_v1", "hwexport"):
        assert read_only not in to_help and read_only in format_help
    assert "--dtype" in flat and "--include GLOB" in flat and "--exclude GLOB" in flat


def test_formats_command_lists_option_keys(cli_run) -> None:
    code, out, _ = cli_run("formats", "h5")
    assert code == 0 and out.startswith("keras: ")
    assert "layout" in out and "paths" in out and "also called: h5" in out
    code, out, _ = cli_run("formats", "torch", "--json")
    doc = json.loads(out)
    assert doc["name"] == "pytorch" and set(doc["write_options"]) == {"structure", "crc32", "fsync", "progress"}
    assert "pt" in doc["aliases"]
    code, out, _ = cli_run("formats", "gguf")
    assert code == 0 and "read-only" in out
    code, _, err = cli_run("formats", "nope")
    assert code == 2 and "unknown format 'nope'" in err


def test_every_format_declares_its_options() -> None:
    for name, fmt in available_formats().items():
        assert isinstance(fmt.read_options, dict), name
        assert isinstance(fmt.write_options, dict), name
        assert all(isinstance(v, str) and v and "\n" not in v for v in {**fmt.read_options, **fmt.write_options}.values())
        if not fmt.can_write:
            assert fmt.write_options == {}, name
        # keyword parameters the writer spells out are declared (the rest come through **options)
        params = inspect.signature(fmt.write).parameters
        spelled = {p for p, v in params.items() if v.kind is v.KEYWORD_ONLY and p != "metadata"}
        assert spelled <= set(fmt.write_options), (name, spelled - set(fmt.write_options))


@pytest.mark.parametrize("name", sorted(known_formats))
def test_unknown_read_option_is_refused_listing_the_valid_ones(name: str, small: Path) -> None:
    fmt = get_format(name)
    with pytest.raises(UnsupportedOperationError) as err:
        weightvault.open(small, format=name, bogus=1)
    valid = ", ".join(sorted(fmt.read_options)) or "none"
    assert f"unknown {name} read option(s): bogus; valid: {valid}" in str(err.value)
    assert f"weightvault formats {name}" in err.value.hint


@pytest.mark.parametrize("name", sorted(n for n, f in available_formats().items() if f.can_write))
def test_unknown_write_option_is_refused_before_anything_is_written(name: str, small: Path, tmp_path: Path, cli_run) -> None:
    dst = tmp_path / "out" / "x"
    code, _, err = cli_run("convert", small, dst, "--to", name, "-w", "bogus=1")
    assert code == 2 and f"unknown {name} write option(s): bogus; valid: " in err
    assert not (tmp_path / "out").exists()


def test_known_write_option_still_works(small: Path, tmp_path: Path, cli_run) -> None:
    code, _, err = cli_run("convert", small, tmp_path / "x.npz", "-w", "compress=true")
    assert code == 0, err


# -- 2. convert ------------------------------------------------------------------------------------


@pytest.fixture
def bf16_pt(tmp_path: Path) -> Path:
    path = tmp_path / "bf.pt"
    torch.save(
        {
            "enc.w": torch.randn(2, 3).to(torch.bfloat16),
            "enc.b": torch.zeros(3, dtype=torch.float16),
            "steps": torch.tensor(7),
            "mask": torch.tensor([True, False]),
        },
        path,
    )
    return path


def test_dtype_casts_floating_tensors_only(bf16_pt: Path, tmp_path: Path, cli_run) -> None:
    dst = tmp_path / "o.npz"
    code, out, err = cli_run("convert", bf16_pt, dst)
    assert code == 2 and "--dtype float32" in err  # the TIP the new option answers
    code, out, err = cli_run("convert", bf16_pt, dst, "--dtype", "fp32")
    assert code == 0, err
    assert "cast(dtype=float32, from_dtype=bfloat16)" in out and "cast(dtype=float32, from_dtype=float16)" in out
    assert "not cast (1 int64, 1 bool)" in out
    with np.load(dst) as data:
        assert data["enc.w"].dtype == np.float32 and data["enc.b"].dtype == np.float32
        assert data["steps"].dtype == np.int64 and data["mask"].dtype == bool
        expected = torch.load(bf16_pt)["enc.w"].float().numpy()
        assert np.array_equal(data["enc.w"], expected)


def test_dtype_is_in_the_dry_run_plan_and_json(bf16_pt: Path, tmp_path: Path, cli_run) -> None:
    code, out, _ = cli_run("convert", bf16_pt, tmp_path / "o.safetensors", "--dtype", "float16", "--dry-run")
    assert code == 0 and "cast(dtype=float16, from_dtype=bfloat16)" in out and "would write" in out
    assert not (tmp_path / "o.safetensors").exists()
    code, out, _ = cli_run("convert", bf16_pt, tmp_path / "o.safetensors", "--dtype", "float16", "--json")
    doc = json.loads(out)
    rows = {r["target"]: r["transforms"] for r in doc["tensors"]}
    assert rows["enc.b"] == "copy"  # already float16
    assert doc["uncast"] == {"steps": "int64", "mask": "bool"}
    code, _, err = cli_run("convert", bf16_pt, tmp_path / "o.npz", "--dtype", "int8")
    assert code == 2 and "not a floating dtype" in err


def test_include_exclude_select_source_tensors(bf16_pt: Path, tmp_path: Path, cli_run) -> None:
    dst = tmp_path / "o.safetensors"
    code, out, err = cli_run("convert", bf16_pt, dst, "--include", "enc.*", "--exclude", "*.b", "--to", "st")
    assert code == 0, err
    with weightvault.open(dst) as r:
        assert r.keys() == ["enc.w"]
    assert "dropped 3 tensors: left out by --include/--exclude (enc.b, steps, …)" in out
    report = weightvault.convert(bf16_pt, tmp_path / "p.safetensors", exclude=["mask"], to="safetensors")
    assert [row["target"] for row in report.rows] == ["enc.w", "enc.b", "steps"]


def test_dropped_optimizer_slots_are_one_line(tmp_path: Path, cli_run) -> None:
    rng = np.random.default_rng(0)
    tensors = {"dense/kernel": rng.standard_normal((3, 2)).astype(np.float32), "dense/bias": np.zeros(2, np.float32),
               "global_step": np.array(5, np.int64)}  # fmt: skip
    for var in ("dense/kernel", "dense/bias"):
        tensors[f"{var}/Adam"] = np.zeros_like(tensors[var])
        tensors[f"{var}/Adam_1"] = np.zeros_like(tensors[var])
    src = tmp_path / "ckpt" / "model"
    src.parent.mkdir()
    get_format("tf_bundle").write(src, tensors)
    code, out, err = cli_run("convert", src, tmp_path / "o.safetensors", "--rules", "tf1-to-torch")
    assert code == 0, err
    dropped = [line for line in out.splitlines() if line.startswith("dropped")]
    assert len(dropped) == 1 and dropped[0].startswith("dropped 5 tensors: optimizer slot or bookkeeping (")
    code, out, _ = cli_run("convert", src, tmp_path / "o.safetensors", "--rules", "tf1-to-torch", "--json")
    assert len(json.loads(out)["dropped"]) == 5  # --json keeps every name


def test_destination_parents_are_created_and_home_expanded(small: Path, tmp_path: Path, cli_run, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    code, out, err = cli_run("convert", small, "~/a/b/c.pt")
    assert code == 0, err
    assert (tmp_path / "home" / "a" / "b" / "c.pt").is_file()
    assert str(tmp_path / "home" / "a" / "b" / "c.pt") in out
    report = weightvault.convert(small, tmp_path / "x" / "y" / "z.npz")
    assert Path(report.dst).is_file()
    report = weightvault.convert(small, tmp_path / "dry" / "z.npz", dry_run=True)
    assert not (tmp_path / "dry").exists()  # a dry run creates nothing


def test_os_errors_name_the_destination_not_the_temporary_file(small: Path, tmp_path: Path, cli_run) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"x")
    with pytest.raises(NotADirectoryError) as err, atomic_write(blocker / "x.pt") as f:
        f.write(b"x")
    assert err.value.filename == str(blocker / "x.pt") and TMP_MARK not in str(err.value)
    # a write that fails for lack of room (EFBIG under a file-size limit, as ENOSPC on a full disk)
    script = textwrap.dedent(
        f"""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        from weightvault.cli import main
        main(["convert", {str(src_big(tmp_path))!r}, {str(tmp_path / "big.npz")!r}])
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"ERROR {tmp_path / 'big.npz'}: File too large"), result.stderr
    assert TMP_MARK not in result.stderr
    assert [p.name for p in tmp_path.iterdir() if TMP_MARK in p.name] == []


def src_big(tmp_path: Path) -> Path:
    return weightvault.save({"w": np.ones(100_000, np.float32)}, tmp_path / "big.safetensors")


def test_keras_paths_option_loads_a_json_file_or_says_the_shape(small: Path, tmp_path: Path, cli_run) -> None:
    h5py = pytest.importorskip("h5py")
    paths = tmp_path / "paths.json"
    paths.write_text(json.dumps({"w": "layers/dense/vars/0"}))
    dst = tmp_path / "o.weights.h5"
    code, _, err = cli_run("convert", small, dst, "-w", f"paths={paths}")
    assert code == 0, err
    with h5py.File(dst, "r") as f:
        assert f["layers/dense/vars/0"].shape == (2, 3)
    paths.write_text(json.dumps(["w"]))
    code, _, err = cli_run("convert", small, dst, "-w", f"paths={paths}")
    assert code == 2 and "expected {\"tensor name\": \"HDF5 dataset path\"" in err and "got list" in err
    code, _, err = cli_run("convert", small, dst, "-w", f"paths={tmp_path / 'missing.json'}")
    assert code == 2 and "no such file" in err


# -- 6. exit statuses and messages ------------------------------------------------------------------


def _wv(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "weightvault", *map(str, args)], capture_output=True, text=True,
                          check=False, timeout=120)  # fmt: skip


def test_exit_statuses_of_the_real_cli(small: Path, tmp_path: Path) -> None:
    other = weightvault.save({"w": np.zeros((2, 3), np.float32)}, tmp_path / "o.safetensors")
    assert _wv("diff", small, small).returncode == 0
    assert _wv("diff", small, other).returncode == 1  # differs
    assert _wv("ls").returncode == 2  # usage
    assert _wv("ls", small, "--bogus").returncode == 2
    missing = _wv("ls", tmp_path / "missing.pt")
    assert missing.returncode == 2 and missing.stderr.startswith("ERROR")  # bad file
    assert _wv("ls", small, "--format", "nope").returncode == 2  # unknown format
    assert _wv("ls", small, "-o", "bogus=1").returncode == 2  # bad option
    data = bytearray(small.read_bytes())
    data[-1] ^= 1
    small.write_bytes(bytes(data))
    failed = _wv("verify", small)
    assert failed.returncode == 1 and "FAILED" in failed.stdout  # verification failed


def test_ctrl_c_exits_130(small: Path) -> None:
    script = textwrap.dedent(
        """
        from weightvault.formats.native import NativeReader
        def get(self, name):
            raise KeyboardInterrupt
        NativeReader.get = get
        from weightvault.cli import main
        main()
        """
    )
    result = subprocess.run([sys.executable, "-c", script, "stats", str(small)], capture_output=True, text=True, check=False)
    assert result.returncode == 130 and result.stderr == ""


def _one_of_each(root: Path) -> dict[str, Path]:
    """A small real file of every format that can be made here, by its registry name."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    root.mkdir()
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    files: dict[str, Path] = {}
    files["pytorch"] = root / "m.pt"
    torch.save({"w": torch.from_numpy(w)}, files["pytorch"])
    files["numpy"] = root / "m.npz"
    np.savez(files["numpy"], w=w)
    files["native"] = weightvault.save({"w": w}, root / "native.safetensors")
    files["safetensors"] = root / "plain.safetensors"
    get_format("safetensors").write(files["safetensors"], {"w": w})
    init = helper.make_tensor("w", TensorProto.FLOAT, [2, 3], w.ravel().tolist())
    graph = helper.make_graph([], "g", [], [helper.make_tensor_value_info("w", TensorProto.FLOAT, [2, 3])], [init])
    files["onnx"] = root / "m.onnx"
    onnx.save(helper.make_model(graph), files["onnx"])
    files["keras"] = root / "m.weights.h5"
    get_format("keras").write(files["keras"], {"dense/kernel": w})
    files["gob"] = root / "m.gob"
    get_format("gob").write(files["gob"], {"w": w})
    files["tf_bundle"] = root / "tf" / "ckpt"
    files["tf_bundle"].parent.mkdir()
    get_format("tf_bundle").write(files["tf_bundle"], {"w": w})
    files["tf_bundle"] = files["tf_bundle"].with_name("ckpt.index")  # a file every reader can try
    files["tf_graph"] = root / "frozen.pb"
    get_format("tf_graph").write(files["tf_graph"], {"w": w})
    gguf = pytest.importorskip("gguf")
    files["gguf"] = root / "m.gguf"
    writer = gguf.GGUFWriter(str(files["gguf"]), "llama")
    writer.add_tensor("w", w)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return files


def test_forced_format_on_another_formats_file_says_not_that_format(tmp_path: Path) -> None:
    files = _one_of_each(tmp_path / "files")
    for actual, path in files.items():
        with weightvault.open(path) as r:
            assert r.format == actual  # the files are what they claim
    checked = 0
    for actual, path in files.items():
        for forced in known_formats:
            fmt = get_format(forced)
            head = path.read_bytes()[:4096] if path.is_file() else b""
            if forced == actual or fmt.sniff(path, head):
                continue  # it looks like that format (a native file is a safetensors file)
            with pytest.raises(InvalidHeaderError) as err:
                weightvault.open(path, format=forced).close()
            title = format_title(forced)
            assert f"not a {title} file" in str(err.value) or f"not an {title} file" in str(err.value), (actual, forced, str(err.value))
            assert f"--format {forced}" in err.value.hint
            checked += 1
    assert checked >= 100


def test_onnx_forced_on_a_pt_file(tmp_path: Path, cli_run) -> None:
    pt = tmp_path / "m.pt"
    torch.save({"w": torch.ones(2)}, pt)
    code, _, err = cli_run("ls", pt, "--format", "onnx")
    assert code == 2
    assert err.splitlines()[0] == f"ERROR {pt}: not an ONNX file; it looks like PyTorch (pytorch)"
    assert "protobuf" not in err.splitlines()[0]


def test_pickled_object_without_tensors_says_it_holds_no_weights(tmp_path: Path, cli_run) -> None:
    (tmp_path / "hfargs.py").write_text("import dataclasses\n@dataclasses.dataclass\nclass TrainingArguments:\n    lr: float = 0.1\n")
    path = tmp_path / "training_args.bin"
    script = f"import sys, torch; sys.path.insert(0, {str(tmp_path)!r}); import hfargs; torch.save(hfargs.TrainingArguments(), {str(path)!r})"
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    rng = tmp_path / "rng_state.pth"
    torch.save({"numpy": np.random.default_rng(0).bit_generator.state, "np_legacy": np.random.get_state()}, rng)
    for p, what in ((path, "hfargs.TrainingArguments"), (rng, "numpy")):
        with pytest.raises(UnsafePickleError, match="the file holds no weights") as err:
            weightvault.open(p)
        assert what in str(err.value)
        code, _, out = cli_run("ls", p)
        assert code == 2 and "holds no weights" in out
    # with tensors beside a refused object, the refusal stays about the object
    mixed = tmp_path / "mixed.pth"
    torch.save({"w": torch.ones(2), "np": np.random.get_state()}, mixed)
    with pytest.raises(UnsafePickleError) as err:
        weightvault.open(mixed)
    assert "holds no weights" not in str(err.value)


def test_verify_without_checksums_says_so(tmp_path: Path, cli_run) -> None:
    npz = tmp_path / "m.npz"
    np.savez(npz, a=np.ones(2), b=np.zeros(3))
    code, out, _ = cli_run("verify", npz)
    assert code == 0 and out.strip() == "OK: 2 tensors read, no checksums in this format: nothing to verify against"
    native = weightvault.save({"a": np.ones(2)}, tmp_path / "n.safetensors")
    code, out, _ = cli_run("verify", native)
    assert code == 0 and out.startswith("OK: 1 tensors checked")


def test_environment_keeps_exit_status_documented() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert "**Exit status.**" in readme and "130" in readme
    assert os.fspath(Path(weightvault.__file__)).endswith(os.path.join("weightvault", "__init__.py"))


def test_a_target_with_several_sources_needs_all_of_them_kept() -> None:
    from weightvault.api import _filtered
    from weightvault.transforms.base import Concat
    from weightvault.transforms.plan import Plan, Step

    plan = Plan("r", [Step("gates", ("a/w", "b/w"), combine=Concat(0)), Step("c", ("c/w",))])
    kept = _filtered(plan, None, ["b/*"])
    assert [s.target for s in kept.steps] == ["c"]
    assert kept.dropped == {"b/w": "left out by --include/--exclude"}
    assert [s.target for s in _filtered(plan, ["*/w"], None).steps] == ["gates", "c"]
