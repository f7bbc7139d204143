"""``weightvault convert`` with rules: report, dry run, JSON, rename/map, manifest plan, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import weightvault
from weightvault.transforms import Plan


@pytest.fixture
def keras_like(tmp_path: Path) -> Path:
    """A Keras-named file (as a Keras reader would give) stored as native safetensors."""
    rng = np.random.default_rng(0)
    src = tmp_path / "k.safetensors"
    weightvault.save(
        {
            "fc/kernel": rng.normal(size=(4, 3)).astype("float32"),
            "fc/bias": rng.normal(size=3).astype("float32"),
            "rnn/gru_cell/kernel": rng.normal(size=(3, 6)).astype("float32"),
            "rnn/gru_cell/recurrent_kernel": rng.normal(size=(2, 6)).astype("float32"),
            "rnn/gru_cell/bias": rng.normal(size=(2, 6)).astype("float32"),
            "conv/kernel": rng.normal(size=(3, 3, 2, 4)).astype("float32"),
            "optimizer/iterations": np.array(3, dtype=np.int64),
        },
        src,
    )
    return src


def test_dry_run_writes_nothing_and_prints_the_plan(cli_run, keras_like: Path, tmp_path: Path) -> None:
    dst = tmp_path / "out.safetensors"
    code, out, _ = cli_run("convert", keras_like, dst, "--rules", "keras-to-torch", "--hint", "conv=conv", "--dry-run")
    assert code == 0, out
    assert not dst.exists()
    assert list(tmp_path.iterdir()) == [keras_like]  # no temp files left behind either
    assert "fc/kernel" in out and "fc.weight" in out and "[4, 3]" in out and "[3, 4]" in out
    assert "reorder_gates(src=zrh, dst=rzh, axis=0)" in out
    dropped = [line for line in out.splitlines() if line.startswith("dropped ")]
    assert dropped == ["dropped 1 tensor: optimizer state or bookkeeping (optimizer/iterations)"]
    assert f"would write {dst}" in out


def test_json_report_lists_every_source_with_target_transforms_shapes(cli_run, keras_like: Path, tmp_path: Path) -> None:
    dst = tmp_path / "out.safetensors"
    code, out, _ = cli_run("convert", keras_like, dst, "--rules", "keras-to-torch", "--hint", "conv=conv", "--json")
    assert code == 0, out
    doc = json.loads(out)
    assert doc["rules"] == "keras-to-torch" and doc["dry_run"] is False and dst.exists()
    rows = {r["target"]: r for r in doc["tensors"]}
    assert rows["conv.weight"] == {
        "target": "conv.weight",
        "sources": ["conv/kernel"],
        "source_shapes": [[3, 3, 2, 4]],
        "target_shape": [4, 2, 3, 3],
        "transforms": "transpose(perm=[3, 2, 0, 1])",
        "note": "conv",
    }
    assert rows["rnn.bias_hh_l0"]["sources"] == ["rnn/gru_cell/bias"]
    assert rows["rnn.bias_hh_l0"]["transforms"] == "take(axis=0, index=1) -> reorder_gates(src=zrh, dst=rzh, axis=0)"
    used = {s for r in doc["tensors"] for s in r["sources"]} | set(doc["dropped"])
    with weightvault.open(keras_like) as reader:
        assert used == set(reader.keys())  # every source tensor is accounted for
    with weightvault.open(dst) as out_reader:
        for name, row in rows.items():
            assert list(out_reader.info(name).shape) == row["target_shape"]


def test_native_manifest_records_the_plan_and_it_replays(keras_like: Path, tmp_path: Path) -> None:
    dst = tmp_path / "out"
    weightvault.convert(keras_like, dst, rules="keras-to-torch", hints={"conv": "conv"}, rename=[(r"^rnn\.", "gru.")])
    with weightvault.open(dst) as out, weightvault.open(keras_like) as src:
        manifest = out.manifest
        assert manifest["source"]["format"] == src.format
        plan = Plan.from_dict(manifest["transforms"])
        assert "gru.weight_ih_l0" in [s.target for s in plan.steps]
        replay = plan.apply(src)
        for name in out.keys():
            np.testing.assert_array_equal(replay[name], out.get(name))


def test_rename_and_map(cli_run, keras_like: Path, tmp_path: Path) -> None:
    name_map = tmp_path / "map.json"
    name_map.write_text(json.dumps({"fc.weight": "head.weight", "fc.bias": "head.bias"}))
    dst = tmp_path / "out.safetensors"
    code, out, _ = cli_run(
        "convert", keras_like, dst, "--rules", "keras-to-torch", "--hint", "conv=conv",
        "--map", name_map, "--rename", r"^rnn\.(.*)_l0$=gru.\1_l0", "--json",
    )  # fmt: skip
    assert code == 0, out
    keys = set(weightvault.load(dst))
    gru = {f"gru.{p}_{m}_l0" for p in ("weight", "bias") for m in ("ih", "hh")}
    assert keys == {"head.weight", "head.bias", "conv.weight"} | gru


def test_rename_collision_is_an_error(cli_run, keras_like: Path, tmp_path: Path) -> None:
    code, _out, err = cli_run(
        "convert", keras_like, tmp_path / "o.safetensors", "--rules", "keras-to-torch", "--hint", "conv=conv",
        "--rename", r"\.bias$=.weight",
    )  # fmt: skip
    assert code == 2
    assert "two rules produce 'fc.weight'" in err and "--rename" in err
    assert not (tmp_path / "o.safetensors").exists()


def test_bad_map_file_is_rejected(keras_like: Path, tmp_path: Path) -> None:
    from weightvault.errors import WeightVaultError

    bad = tmp_path / "map.json"
    bad.write_text(json.dumps({"a": 1}))
    with pytest.raises(WeightVaultError, match="string to string"):
        weightvault.convert(keras_like, tmp_path / "o.safetensors", rules="keras-to-torch", name_map=bad)


def test_missing_hint_fails_with_a_tip(cli_run, keras_like: Path, tmp_path: Path) -> None:
    code, _out, err = cli_run("convert", keras_like, tmp_path / "o.safetensors", "--rules", "keras-to-torch")
    assert code == 2
    assert "conv/kernel" in err and "4-D kernel" in err
    assert "TIP pass --hint conv=conv" in err


def test_unknown_rule_set_and_bad_hint_syntax(cli_run, keras_like: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from weightvault.cli import cli

    result = CliRunner().invoke(cli, ["convert", str(keras_like), str(tmp_path / "o"), "--rules", "caffe-to-torch"])
    assert result.exit_code == 2 and "caffe-to-torch" in result.output
    result = CliRunner().invoke(cli, ["convert", str(keras_like), str(tmp_path / "o"), "--rules", "keras-to-torch", "--hint", "conv"])
    assert result.exit_code == 2 and "is not KEY=VALUE" in result.output
    with pytest.raises(weightvault.errors.WeightVaultError, match="unknown rule set"):
        weightvault.convert(keras_like, tmp_path / "o", rules="caffe-to-torch")


def test_hint_globs(keras_like: Path, tmp_path: Path) -> None:
    report = weightvault.convert(keras_like, tmp_path / "o", rules="keras-to-torch", hints={"co*": "conv"}, dry_run=True)
    rows = {r["target"]: r for r in report.to_dict()["tensors"]}
    assert rows["conv.weight"]["target_shape"] == [4, 2, 3, 3]


def test_no_rules_rename_only(cli_run, keras_like: Path, tmp_path: Path) -> None:
    dst = tmp_path / "o.safetensors"
    code, out, _ = cli_run("convert", keras_like, dst, "--rename", "/=.")
    assert code == 0, out
    got = weightvault.load(dst)
    assert "fc.kernel" in got and got["fc.kernel"].shape == (4, 3)  # names change, layouts do not
