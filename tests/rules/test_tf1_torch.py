"""tf1-to-torch, verified by running TF1 graph-mode code (tf.compat.v1) and PyTorch.

* the 784-500-10 MNIST network of the TensorFlow Saver example (``layer1/weights``, ...) trained a
  few steps with an ExponentialMovingAverage: raw and ``--ema`` conversions each reproduce TF's
  outputs with the raw and the averaged weights;
* TF1 ``LSTMCell`` (stacked in a ``MultiRNNCell``), ``BasicLSTMCell`` and a bidirectional
  ``LSTMCell`` through ``dynamic_rnn``: fused ``[W_x; W_h]`` kernel, gates i,j,f,o and the
  run-time ``forget_bias`` become PyTorch ``nn.LSTM`` weights.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

tf = pytest.importorskip("tensorflow")
torch = pytest.importorskip("torch")

import weightvault  # noqa: E402

tf1 = tf.compat.v1
# The TF1 cells warn that they are deprecated: they are exactly what these tests need.
pytestmark = pytest.mark.filterwarnings("ignore:`tf.nn.rnn_cell.*is deprecated:UserWarning")
RTOL, ATOL = 1e-5, 1e-6


# -- MNIST 784-500-10 with EMA ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist_ckpt(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    d = tmp_path_factory.mktemp("tf1_mnist")
    rng = np.random.default_rng(0)
    test_x = rng.normal(size=(4, 784)).astype("float32")
    graph = tf.Graph()
    with graph.as_default():
        tf1.set_random_seed(0)
        x = tf1.placeholder(tf.float32, [None, 784], name="x-input")
        labels = tf1.placeholder(tf.int64, [None], name="y-input")

        def inference(avg=None):
            with tf1.variable_scope("layer1", reuse=tf1.AUTO_REUSE):
                w = tf1.get_variable("weights", [784, 500], initializer=tf1.truncated_normal_initializer(stddev=0.1))
                b = tf1.get_variable("biases", [500], initializer=tf1.constant_initializer(0.1))
                h = tf.nn.relu(tf.matmul(x, avg(w) if avg else w) + (avg(b) if avg else b))
            with tf1.variable_scope("layer2", reuse=tf1.AUTO_REUSE):
                w = tf1.get_variable("weights", [500, 10], initializer=tf1.truncated_normal_initializer(stddev=0.1))
                b = tf1.get_variable("biases", [10], initializer=tf1.constant_initializer(0.1))
                return tf.matmul(h, avg(w) if avg else w) + (avg(b) if avg else b)

        y = inference()
        global_step = tf1.Variable(0, trainable=False, name="global_step")
        ema = tf1.train.ExponentialMovingAverage(0.99, global_step)
        ema_op = ema.apply(tf1.trainable_variables())
        y_ema = inference(ema.average)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=y))
        step = tf1.train.MomentumOptimizer(0.5, 0.9).minimize(loss, global_step=global_step)
        train_op = tf.group(step, ema_op)
        saver = tf1.train.Saver()
        with tf1.Session(graph=graph) as sess:
            sess.run(tf1.global_variables_initializer())
            for _ in range(5):
                sess.run(train_op, {x: rng.normal(size=(16, 784)).astype("float32"), labels: rng.integers(0, 10, 16)})
            raw, averaged = sess.run([y, y_ema], {x: test_x})
            prefix = saver.save(sess, str(d / "model.ckpt"), global_step=global_step)
    assert not np.allclose(raw, averaged, rtol=1e-3)  # EMA must differ for the test to mean anything
    return {"prefix": prefix, "x": test_x, "raw": raw, "ema": averaged}


class Mnist(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer1 = torch.nn.Linear(784, 500)
        self.layer2 = torch.nn.Linear(500, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer2(torch.relu(self.layer1(x)))


def _mnist_out(path: Path, x: np.ndarray) -> np.ndarray:
    net = Mnist()
    net.load_state_dict(weightvault.load(path, framework="torch"), strict=True)
    with torch.no_grad():
        return net(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("ema", [False, True])
def test_mnist_saver_example(cli_run, mnist_ckpt, tmp_path: Path, ema: bool) -> None:
    dst = tmp_path / "mnist.safetensors"
    args = ["convert", mnist_ckpt["prefix"], dst, "--rules", "tf1-to-torch", "--json"] + (["--ema"] if ema else [])
    code, out, _ = cli_run(*args)
    assert code == 0, out
    doc = json.loads(out)
    assert doc["dropped"]["global_step"]
    assert any(name.endswith("/Momentum") for name in doc["dropped"])  # optimizer slots
    sources = {r["target"]: r["sources"][0] for r in doc["tensors"]}
    assert sources["layer1.weight"] == ("layer1/weights/ExponentialMovingAverage" if ema else "layer1/weights")
    expected = mnist_ckpt["ema"] if ema else mnist_ckpt["raw"]
    np.testing.assert_allclose(_mnist_out(dst, mnist_ckpt["x"]), expected, rtol=RTOL, atol=ATOL)


def test_mnist_plan_replays_from_manifest(mnist_ckpt, tmp_path: Path) -> None:
    """The plan stored in a native output's manifest rebuilds with Plan.from_dict and replays exactly."""
    from weightvault.transforms import Plan

    dst = tmp_path / "native_out"
    weightvault.convert(mnist_ckpt["prefix"], dst, rules="tf1-to-torch", rule_options={"use_ema": True})
    with weightvault.open(dst) as out:
        plan = Plan.from_dict(out.manifest["transforms"])
        assert plan.rules == "tf1-to-torch"
        with weightvault.open(mnist_ckpt["prefix"]) as src:
            replayed = plan.apply(src)
            assert sorted(replayed) == sorted(out.keys())
            for name in out.keys():
                np.testing.assert_array_equal(replayed[name], out.get(name))


def test_shared_tf1_saver_fixture_dry_run(cli_run, fixtures_dir: Path, tmp_path: Path) -> None:
    """The committed 784-128-10 Saver checkpoint: dry run lists what is dropped and writes nothing."""
    dst = tmp_path / "out.safetensors"
    src = fixtures_dir / "tensorflow" / "tf1_saver" / "model.ckpt-1000"
    code, out, _ = cli_run("convert", src, dst, "--rules", "tf1-to-torch", "--dry-run")
    assert code == 0, out
    assert not dst.exists()
    # one line per reason, a few names each (--json lists them all)
    assert "dropped 1 tensor: optimizer slot or bookkeeping (global_step)" in out
    assert "dropped 4 tensors: EMA shadow variable" in out and "layer1/weights/ExponentialMovingAverage" in out
    assert "layer1.weight" in out and "[784, 128]" in out and "[128, 784]" in out
    assert "would write" in out
    code, out, _ = cli_run("convert", src, dst, "--rules", "tf1-to-torch", "--ema", "--dry-run", "--json")
    doc = json.loads(out)
    rows = {r["target"]: r for r in doc["tensors"]}
    assert rows["layer1.weight"]["sources"] == ["layer1/weights/ExponentialMovingAverage"]
    assert rows["layer1.weight"]["target_shape"] == [128, 784]
    assert rows["misc.f64"]["note"] == "kept as is"  # not a known weight name: copied, flagged
    assert doc["dry_run"] is True and not dst.exists()
    expected = np.load(fixtures_dir / "tensorflow" / "expected" / "tf1_saver.npz")
    weightvault.convert(src, dst, rules="tf1-to-torch", rule_options={"use_ema": True})
    got = weightvault.load(dst)
    np.testing.assert_array_equal(got["layer1.weight"], expected["layer1|weights|ExponentialMovingAverage"].T)


# -- TF1 LSTM cells ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lstm_ckpt(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    cells = pytest.importorskip("tf_keras.src.layers.rnn.legacy_cells")  # TF1 cells live in tf_keras now
    d = tmp_path_factory.mktemp("tf1_lstm")
    rng = np.random.default_rng(1)
    xs = rng.normal(size=(2, 5, 3)).astype("float32")
    graph = tf.Graph()
    with graph.as_default():
        tf1.set_random_seed(1)
        x = tf1.placeholder(tf.float32, [None, 5, 3])
        stack = cells.MultiRNNCell([cells.LSTMCell(4, forget_bias=1.0) for _ in range(2)])
        stacked, _ = tf1.nn.dynamic_rnn(stack, x, dtype=tf.float32)  # scope rnn/multi_rnn_cell/cell_N
        with tf1.variable_scope("enc"):
            basic, _ = tf1.nn.dynamic_rnn(cells.BasicLSTMCell(4, forget_bias=1.0), x, dtype=tf.float32)
        with tf1.variable_scope("bi"):
            (fw, bw), _ = tf1.nn.bidirectional_dynamic_rnn(cells.LSTMCell(3), cells.LSTMCell(3), x, dtype=tf.float32)
        with tf1.Session(graph=graph) as sess:
            sess.run(tf1.global_variables_initializer())
            for v in tf1.trainable_variables():  # biases start at 0: make them count
                v.load(rng.normal(0, 0.5, v.shape.as_list()).astype("float32"), sess)
            outs = sess.run({"stacked": stacked, "basic": basic, "fw": fw, "bw": bw}, {x: xs})
            prefix = tf1.train.Saver().save(sess, str(d / "rnn.ckpt"))
    return {"prefix": prefix, "x": xs, **outs}


class Rnns(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = torch.nn.LSTM(3, 4, num_layers=2, batch_first=True)
        self.enc = torch.nn.Module()
        self.enc.rnn = torch.nn.LSTM(3, 4, batch_first=True)
        self.bi = torch.nn.Module()
        self.bi.bidirectional_rnn = torch.nn.LSTM(3, 3, batch_first=True, bidirectional=True)


def test_tf1_lstm_cells_match_torch_lstm(cli_run, lstm_ckpt, tmp_path: Path) -> None:
    dst = tmp_path / "rnn.safetensors"
    code, out, _ = cli_run("convert", lstm_ckpt["prefix"], dst, "--rules", "tf1-to-torch")
    assert code == 0, out
    assert "forget_bias=1.0" in out
    net = Rnns()
    net.load_state_dict(weightvault.load(dst, framework="torch"), strict=True)
    x = torch.from_numpy(lstm_ckpt["x"])
    with torch.no_grad():
        stacked, _ = net.rnn(x)
        basic, _ = net.enc.rnn(x)
        both, _ = net.bi.bidirectional_rnn(x)
    np.testing.assert_allclose(stacked.numpy(), lstm_ckpt["stacked"], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(basic.numpy(), lstm_ckpt["basic"], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(both[..., :3].numpy(), lstm_ckpt["fw"], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(both[..., 3:].numpy(), lstm_ckpt["bw"], rtol=RTOL, atol=ATOL)


def test_forget_bias_hint_changes_the_folded_constant(lstm_ckpt, tmp_path: Path) -> None:
    one = weightvault.convert(lstm_ckpt["prefix"], tmp_path / "a", rules="tf1-to-torch", dry_run=True)
    assert any("forget_bias=1.0" in n for n in one.plan.notes)
    hinted = weightvault.convert(
        lstm_ckpt["prefix"], tmp_path / "b.safetensors", rules="tf1-to-torch", hints={"enc/rnn/basic_lstm_cell": "forget_bias:0"}
    )
    assert any("enc/rnn/basic_lstm_cell" in n and "forget_bias=0.0" in n for n in hinted.plan.notes)
    default = tmp_path / "c.safetensors"
    weightvault.convert(lstm_ckpt["prefix"], default, rules="tf1-to-torch")
    a, b = weightvault.load(default)["enc.rnn.bias_ih_l0"], weightvault.load(tmp_path / "b.safetensors")["enc.rnn.bias_ih_l0"]
    np.testing.assert_allclose(a[4:8] - b[4:8], 1.0, rtol=1e-6)  # only the forget block (i,f,g,o) moves
    np.testing.assert_array_equal(np.delete(a, np.s_[4:8]), np.delete(b, np.s_[4:8]))


def test_tf1_gru_cell_is_refused(tmp_path: Path) -> None:
    cells = pytest.importorskip("tf_keras.src.layers.rnn.legacy_cells")
    from weightvault.errors import UnsupportedOperationError

    graph = tf.Graph()
    with graph.as_default():
        x = tf1.placeholder(tf.float32, [None, 4, 3])
        tf1.nn.dynamic_rnn(cells.GRUCell(2), x, dtype=tf.float32)
        with tf1.Session(graph=graph) as sess:
            sess.run(tf1.global_variables_initializer())
            prefix = tf1.train.Saver().save(sess, str(tmp_path / "gru.ckpt"))
    with pytest.raises(UnsupportedOperationError, match="GRUCell"):
        weightvault.convert(prefix, tmp_path / "g.safetensors", rules="tf1-to-torch")
    assert not (tmp_path / "g.safetensors").exists()


# -- RNN cells under custom names, TF 1.0 variable names, hints --------------------------------------


@pytest.fixture(scope="module")
def custom_cells(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """LSTMCells named by the user: one in dynamic_rnn's default ``rnn`` scope (found by shape),
    one under ``scope="encoder"`` (no RNN marker: needs a hint), a stack of two, and a Dense that
    looks like an LSTM cell under an RNN-ish scope."""
    cells = pytest.importorskip("tf_keras.src.layers.rnn.legacy_cells")
    d = tmp_path_factory.mktemp("tf1_custom")
    rng = np.random.default_rng(2)
    xs = rng.normal(size=(2, 6, 3)).astype("float32")
    graph = tf.Graph()
    with graph.as_default():
        x = tf1.placeholder(tf.float32, [None, 6, 3])
        plain, _ = tf1.nn.dynamic_rnn(cells.LSTMCell(4, name="my_cell"), x, dtype=tf.float32)
        encoder, _ = tf1.nn.dynamic_rnn(cells.LSTMCell(5, name="enc_cell"), x, dtype=tf.float32, scope="encoder")
        stack = cells.MultiRNNCell([cells.LSTMCell(4, name="first"), cells.LSTMCell(4, name="second")])
        stacked, _ = tf1.nn.dynamic_rnn(stack, x, dtype=tf.float32, scope="stack_rnn")
        with tf1.variable_scope("head_rnn/proj"):  # what tf.layers.dense(plain, 8) creates
            kernel = tf1.get_variable("kernel", [4, 8])  # [4, 8]: LSTM-shaped
            proj = tf.einsum("btc,co->bto", plain, kernel) + tf1.get_variable("bias", [8])
        with tf1.Session(graph=graph) as sess:
            sess.run(tf1.global_variables_initializer())
            for v in tf1.trainable_variables():
                v.load(rng.normal(0, 0.5, v.shape.as_list()).astype("float32"), sess)
            outs = sess.run({"plain": plain, "encoder": encoder, "stacked": stacked, "proj": proj}, {x: xs})
            prefix = tf1.train.Saver().save(sess, str(d / "cells.ckpt"))
    return {"prefix": prefix, "x": xs, "dir": d, **outs}


HINTS = {"encoder/enc_cell": "lstm", "head_rnn/proj": "dense"}


class CustomRnns(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = torch.nn.LSTM(3, 4, batch_first=True)
        self.encoder = torch.nn.LSTM(3, 5, batch_first=True)
        self.stack_rnn = torch.nn.LSTM(3, 4, num_layers=2, batch_first=True)
        self.head_rnn = torch.nn.Module()
        self.head_rnn.proj = torch.nn.Linear(4, 8)


def _check_custom(path: Path, expected: dict[str, object]) -> None:
    net = CustomRnns()
    net.load_state_dict(weightvault.load(path, framework="torch"), strict=True)
    x = torch.from_numpy(expected["x"])
    with torch.no_grad():
        plain, _ = net.rnn(x)
        encoder, _ = net.encoder(x)
        stacked, _ = net.stack_rnn(x)
        proj = net.head_rnn.proj(plain)
    np.testing.assert_allclose(plain.numpy(), expected["plain"], rtol=RTOL, atol=1e-5)
    np.testing.assert_allclose(encoder.numpy(), expected["encoder"], rtol=RTOL, atol=1e-5)
    np.testing.assert_allclose(stacked.numpy(), expected["stacked"], rtol=RTOL, atol=1e-5)
    np.testing.assert_allclose(proj.numpy(), expected["proj"], rtol=RTOL, atol=1e-5)


def test_custom_named_lstm_cells_match_torch(cli_run, custom_cells, tmp_path: Path) -> None:
    dst = tmp_path / "cells.safetensors"
    hints = [a for pattern, kind in HINTS.items() for a in ("--hint", f"{pattern}={kind}")]
    code, out, _ = cli_run("convert", custom_cells["prefix"], dst, "--rules", "tf1-to-torch", *hints)
    assert code == 0, out
    _check_custom(dst, custom_cells)


def test_without_hints_the_rnn_scope_decides(custom_cells, tmp_path: Path) -> None:
    result = weightvault.convert(custom_cells["prefix"], tmp_path / "x", rules="tf1-to-torch", dry_run=True)
    targets = {s.target for s in result.plan.steps}
    assert {"rnn.weight_ih_l0", "stack_rnn.weight_hh_l1"} <= targets  # found by shape under rnn scopes
    assert "encoder.enc_cell.weight" in targets  # no RNN marker, no hint: a Dense, as the file says
    assert "head_rnn.weight_ih_l0" in targets  # the look-alike ...
    assert any("--hint head_rnn/proj=dense" in n for n in result.plan.notes)  # ... and how to fix it


def test_tf_1_0_variable_names(custom_cells, tmp_path: Path) -> None:
    """TF 1.0-1.2 called the cell variables weights/biases and saved V1 files: rename them in a
    TF-written V1 checkpoint and convert to the same PyTorch weights."""
    reader = tf.train.load_checkpoint(custom_cells["prefix"])
    graph = tf.Graph()
    with graph.as_default():
        old = {}
        for name in reader.get_variable_to_shape_map():
            new = name.rsplit("/", 1)[0] + {"kernel": "/weights", "bias": "/biases"}.get(name.rsplit("/", 1)[1], "")
            if new.endswith("/"):
                continue
            old[new] = tf1.Variable(reader.get_tensor(name), name=new)
        saver = tf1.train.Saver(old, write_version=tf1.train.SaverDef.V1)
        with tf1.Session(graph=graph) as sess:
            sess.run(tf1.global_variables_initializer())
            path = saver.save(sess, str(tmp_path / "old.ckpt"))
    with weightvault.open(path) as r:
        assert r.format == "tf_v1" and "rnn/my_cell/weights" in r.keys() and "rnn/my_cell/kernel" not in r.keys()
    dst = tmp_path / "old.safetensors"
    weightvault.convert(path, dst, rules="tf1-to-torch", hints=HINTS)
    _check_custom(dst, custom_cells)


def test_hint_matching_nothing_is_an_error(custom_cells, tmp_path: Path) -> None:
    from weightvault.errors import WeightVaultError

    with pytest.raises(WeightVaultError, match=r"hint decoder/\*=lstm matches no variable scope"):
        weightvault.convert(custom_cells["prefix"], tmp_path / "y.safetensors", rules="tf1-to-torch",
                            hints={"decoder/*": "lstm", "rnn/my_cell": "lstm"})
    assert not (tmp_path / "y.safetensors").exists()


def test_lstm_hint_on_a_non_lstm_scope_is_refused(mnist_ckpt, tmp_path: Path) -> None:
    from weightvault.rules import AmbiguousLayoutError

    with pytest.raises(AmbiguousLayoutError, match=r"hint layer2=lstm: .* are not an LSTM cell's"):
        weightvault.convert(mnist_ckpt["prefix"], tmp_path / "z", rules="tf1-to-torch", dry_run=True,
                            hints={"layer2": "lstm"})  # kernel [500, 10]: 10 is not 4H
    with pytest.raises(AmbiguousLayoutError, match="unknown kind") as info:
        weightvault.convert(mnist_ckpt["prefix"], tmp_path / "z", rules="tf1-to-torch", dry_run=True,
                            hints={"layer*": "conv"})
    assert "lstm, gru, dense" in (info.value.hint or "")


def test_custom_named_gru_cell_is_refused_not_dense(tmp_path: Path) -> None:
    """A GRUCell under any name is recognised by its gates/candidate shapes. PyTorch's GRU applies
    the reset gate after the recurrent matmul, TF1's before, so no torch.nn.GRU matches it: refused."""
    cells = pytest.importorskip("tf_keras.src.layers.rnn.legacy_cells")
    from weightvault.errors import UnsupportedOperationError

    graph = tf.Graph()
    with graph.as_default():
        x = tf1.placeholder(tf.float32, [None, 4, 3])
        tf1.nn.dynamic_rnn(cells.GRUCell(2, name="my_gru"), x, dtype=tf.float32, scope="decoder")
        with tf1.Session(graph=graph) as sess:
            sess.run(tf1.global_variables_initializer())
            prefix = tf1.train.Saver().save(sess, str(tmp_path / "gru.ckpt"))
    with weightvault.open(prefix) as r:
        assert "decoder/my_gru/gates/kernel" in r.keys() and r.info("decoder/my_gru/candidate/kernel").shape == (5, 2)
    with pytest.raises(UnsupportedOperationError, match="'decoder/my_gru' is a TF1 GRUCell"):
        weightvault.convert(prefix, tmp_path / "g.safetensors", rules="tf1-to-torch")


def _one_cell_ckpt(tmp_path: Path, make_cell, xs: np.ndarray) -> tuple[str, np.ndarray]:
    graph = tf.Graph()
    with graph.as_default():
        x = tf1.placeholder(tf.float32, [None, *xs.shape[1:]])
        out, _ = tf1.nn.dynamic_rnn(make_cell(), x, dtype=tf.float32)
        with tf1.Session(graph=graph) as sess:
            sess.run(tf1.global_variables_initializer())
            rng = np.random.default_rng(3)
            for v in tf1.trainable_variables():
                v.load(rng.normal(0, 0.5, v.shape.as_list()).astype("float32"), sess)
            expected = sess.run(out, {x: xs})
            prefix = tf1.train.Saver().save(sess, str(tmp_path / "cell.ckpt"))
    return prefix, expected


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN:UserWarning")
def test_lstm_projection_becomes_proj_size(tmp_path: Path) -> None:
    cells = pytest.importorskip("tf_keras.src.layers.rnn.legacy_cells")
    xs = np.random.default_rng(4).normal(size=(2, 5, 3)).astype("float32")
    prefix, expected = _one_cell_ckpt(tmp_path, lambda: cells.LSTMCell(6, num_proj=2, name="projected"), xs)
    dst = tmp_path / "p.safetensors"
    result = weightvault.convert(prefix, dst, rules="tf1-to-torch")
    assert any("proj_size=2" in n for n in result.plan.notes)
    net = torch.nn.LSTM(3, 6, proj_size=2, batch_first=True)
    net.load_state_dict({k.removeprefix("rnn."): v for k, v in weightvault.load(dst, framework="torch").items()})
    with torch.no_grad():
        got, _ = net(torch.from_numpy(xs))
    np.testing.assert_allclose(got.numpy(), expected, rtol=RTOL, atol=1e-5)


def test_peephole_lstm_is_refused(tmp_path: Path) -> None:
    cells = pytest.importorskip("tf_keras.src.layers.rnn.legacy_cells")
    from weightvault.errors import UnsupportedOperationError

    xs = np.zeros((1, 2, 3), np.float32)
    prefix, _ = _one_cell_ckpt(tmp_path, lambda: cells.LSTMCell(4, use_peepholes=True, name="peep"), xs)
    with pytest.raises(UnsupportedOperationError, match="peepholes"):
        weightvault.convert(prefix, tmp_path / "x.safetensors", rules="tf1-to-torch")


# -- restore across frameworks: weightvault.restore(model, tf1_ckpt, rules="tf1-to-torch") -------------


@pytest.fixture(scope="module")
def adam_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    from _tf1_adam import make_tf1_adam_run

    return make_tf1_adam_run(tmp_path_factory.mktemp("tf1_adam"))


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = torch.nn.Linear(4, 8), torch.nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


@pytest.mark.parametrize("use_ema", [False, True])
def test_restore_with_rules_matches_tf(adam_run, use_ema: bool) -> None:
    from weightvault.checkpoint.restore import restore

    model = _Net()
    report = restore(model, adam_run["ckpt"], rules="tf1-to-torch", use_ema=use_ema)  # strict
    assert sorted(report.loaded_names) == ["fc1.bias", "fc1.weight", "fc2.bias", "fc2.weight"]
    assert not report.unexpected and not report.missing
    optimizer = {r["name"] for r in report.skipped if "optimizer" in r["reason"]}
    assert optimizer == {"beta1_power", "beta2_power", "global_step"} | {
        f"{v}/{s}" for v in ("fc1/kernel", "fc1/bias", "fc2/kernel", "fc2/bias") for s in ("Adam", "Adam_1")
    }
    with torch.no_grad():
        out = model(torch.from_numpy(adam_run["x"])).numpy()
    np.testing.assert_allclose(out, adam_run["ema" if use_ema else "raw"], rtol=RTOL, atol=ATOL)


def test_report_without_rules_separates_optimizer_slots(adam_run) -> None:
    from weightvault.checkpoint.restore import compare

    spec = {"fc1/kernel": [4, 8], "fc1/bias": [8], "fc2/kernel": [8, 2], "fc2/bias": [2]}
    report = compare(adam_run["ckpt"], spec)
    assert report.ok and len(report.loaded) == 4
    reasons = {r["name"]: r["reason"] for r in report.skipped}
    assert reasons["fc1/kernel/Adam_1"].startswith("optimizer slot")
    assert reasons["global_step"].startswith("optimizer bookkeeping")
    assert "optimizer state 11" in report.summary()


def test_restore_report_cli_rules(adam_run, cli_run, tmp_path: Path) -> None:
    target = tmp_path / "net.pt"
    torch.save(_Net().state_dict(), target)
    code, out, err = cli_run("restore-report", adam_run["ckpt"], "-t", target, "--strict")
    assert code == 1  # TF names against torch names: nothing matches without the rule set
    code, out, err = cli_run("restore-report", adam_run["ckpt"], "-t", target, "--rules", "tf1-to-torch", "--strict", "--json")
    assert code == 0, err
    doc = json.loads(out)["report"]
    assert doc["counts"]["loaded"] == 4 and doc["counts"]["unexpected"] == 0
