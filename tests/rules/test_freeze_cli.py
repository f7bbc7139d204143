"""Freezing a TF1 training checkpoint from the CLI: ``convert CKPT frozen.pb --template graph.pb``.

A real TF1 graph trained a few steps with Adam (slots ``X/Adam``, ``X/Adam_1``, ``beta1_power``,
``beta2_power``, ``global_step``) and an ExponentialMovingAverage; the template is the frozen graph
TF itself writes (``convert_variables_to_constants``) from *other* (initial) values. The frozen
output is imported with ``tf.compat.v1.import_graph_def`` and run: it must give what the original
graph gives with the checkpoint restored (``--ema``: restored through ``ema.variables_to_restore()``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import weightvault

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

tf = pytest.importorskip("tensorflow")
tf1 = tf.compat.v1
RTOL, ATOL = 1e-5, 1e-6


@pytest.fixture(scope="module")
def tf1_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    from _tf1_adam import make_tf1_adam_run

    return make_tf1_adam_run(tmp_path_factory.mktemp("freeze"))


def _run_frozen(pb: Path, x: np.ndarray) -> np.ndarray:
    graph_def = tf1.GraphDef()
    graph_def.ParseFromString(pb.read_bytes())
    graph = tf.Graph()
    with graph.as_default():
        tf1.import_graph_def(graph_def, name="")
        with tf1.Session(graph=graph) as sess:
            return sess.run("out:0", {"x:0": x})


def test_freeze_skips_optimizer_slots_and_matches_tf(tf1_run, cli_run, tmp_path: Path) -> None:
    d, dst = tf1_run["dir"], tmp_path / "frozen.pb"
    code, out, err = cli_run("convert", tf1_run["ckpt"], dst, "--template", d / "graph.pb")
    assert code == 0, err
    np.testing.assert_allclose(_run_frozen(dst, tf1_run["x"]), tf1_run["raw"], rtol=RTOL, atol=ATOL)
    # 11 optimizer/bookkeeping tensors (8 Adam slots, 2 beta powers, global_step) in one line.
    slots = [line for line in out.splitlines() if "optimizer slot" in line]
    assert len(slots) == 1 and slots[0].startswith("skipped 11 "), out
    assert "EMA shadow" in out and "--ema" in out
    assert out.rstrip().endswith("(tf_graph, 4 tensors)")


def test_freeze_with_ema_matches_variables_to_restore(tf1_run, cli_run, tmp_path: Path) -> None:
    d, dst = tf1_run["dir"], tmp_path / "frozen_ema.pb"
    code, out, err = cli_run("convert", tf1_run["ckpt"], dst, "--template", d / "graph.pb", "--ema")
    assert code == 0, err
    np.testing.assert_allclose(_run_frozen(dst, tf1_run["x"]), tf1_run["ema"], rtol=RTOL, atol=ATOL)
    assert "replaced by its EMA shadow" in out


def test_unknown_tensor_is_refused_with_a_cli_tip(tf1_run, cli_run, tmp_path: Path) -> None:
    import weightvault

    src = tmp_path / "extra.npz"
    state = {"fc1/kernel": np.zeros((4, 8), "float32"), "head/kernel": np.zeros((8, 3), "float32")}
    np.savez(src, **state)
    code, _, err = cli_run("convert", src, tmp_path / "o.pb", "--template", tf1_run["dir"] / "graph.pb")
    assert code != 0
    assert "head/kernel" in err and "-w strict=false" in err and "strict=False" not in err.split("(")[0]
    report = weightvault.convert(
        src, tmp_path / "o.pb", write_options={"template": tf1_run["dir"] / "graph.pb", "strict": False}
    )
    assert report.skipped == {"head/kernel": "no Const node of this name in the template"}


def test_ema_without_shadows_is_an_error(tf1_run, cli_run, tmp_path: Path) -> None:
    src = tmp_path / "plain.npz"
    np.savez(src, **{"fc1/kernel": np.zeros((4, 8), "float32")})
    code, _, err = cli_run("convert", src, tmp_path / "o.pb", "--template", tf1_run["dir"] / "graph.pb", "--ema")
    assert code != 0 and "ExponentialMovingAverage" in err and "--ema" in err


@pytest.mark.parametrize("template", ["inference.pb", "inference_resource.pb"])
@pytest.mark.parametrize("ema", [False, True], ids=["raw", "ema"])
def test_freeze_an_inference_graph_with_variables(tf1_run, cli_run, tmp_path: Path, template: str, ema: bool) -> None:
    """The usual TF1 freeze: the template is the graph the program wrote (variables, initialisers,
    Saver ops), not an already frozen one. Variables become Consts; init/save/restore ops go."""
    d, dst = tf1_run["dir"], tmp_path / "frozen.pb"
    code, out, err = cli_run("convert", tf1_run["ckpt"], dst, "--template", d / template, *(["--ema"] if ema else []))
    assert code == 0, err
    np.testing.assert_allclose(_run_frozen(dst, tf1_run["x"]), tf1_run["ema" if ema else "raw"], rtol=RTOL, atol=ATOL)
    graph_def = tf1.GraphDef()
    graph_def.ParseFromString(dst.read_bytes())
    ops = {node.op for node in graph_def.node}
    assert not ops & {"VariableV2", "VarHandleOp", "ReadVariableOp", "Assign", "AssignVariableOp", "SaveV2", "RestoreV2"}
    assert sum(node.op == "Const" and node.name.endswith(("kernel", "bias")) for node in graph_def.node) == 4


def test_freeze_refuses_a_graph_variable_the_checkpoint_lacks(tf1_run, cli_run, tmp_path: Path) -> None:
    d = tf1_run["dir"]
    partial = tmp_path / "partial.npz"
    with weightvault.open(tf1_run["ckpt"]) as r:
        np.savez(partial, **{n: r.get(n) for n in r.keys() if n != "fc2/bias" and r.info(n).dtype != "string"})
    code, _, err = cli_run("convert", partial, tmp_path / "f.pb", "--template", d / "inference.pb")
    assert code != 0 and "fc2/bias" in err and "no value" in err
