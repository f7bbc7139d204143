""""N parameters" counts the model only: optimizer slots, EMA copies, running statistics and counters
are reported apart (``ls``, ``ls --json``, the viewer's tree totals), on files the frameworks wrote.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import numpy as np
import pytest

import weightvault
from weightvault.inspect import count_by_role, parameter_summary, tensor_role


def ls_json(cli_run, path: Path) -> dict:
    code, out, err = cli_run("ls", path, "--json")
    assert code == 0, err
    return json.loads(out)


def ls_footer(cli_run, path: Path) -> str:
    code, out, err = cli_run("ls", path)
    assert code == 0, err
    return next(line for line in out.splitlines() if " tensors, " in line)


# -- Keras ------------------------------------------------------------------------------------------


def _fit_and_save(model, optimizer, path: Path) -> Path:
    model.compile(optimizer=optimizer, loss="mse")
    rng = np.random.default_rng(0)
    model.fit(rng.normal(size=(8, 8)), rng.normal(size=(8, 3)), epochs=1, verbose=0)
    model.save(path)
    return path


def test_keras_with_adam_state_counts_model_params(tmp_path: Path, cli_run) -> None:
    keras = pytest.importorskip("keras")
    model = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(64, activation="relu"), keras.layers.Dense(32), keras.layers.Dense(3)]
    )
    path = _fit_and_save(model, keras.optimizers.Adam(), tmp_path / "adam.keras")
    doc = ls_json(cli_run, path)
    assert doc["total_parameters"] == model.count_params() == 2755
    optimizer_vars = sum(int(np.prod(v.shape)) for v in model.optimizer.variables)
    assert doc["parameters"]["optimizer"] + doc["parameters"]["other"] == optimizer_vars
    assert doc["parameters"]["optimizer"] == 2 * model.count_params() + 1  # m, v per weight; the rate
    assert doc["total_elements"] == model.count_params() + optimizer_vars
    assert {t["role"] for t in doc["tensors"] if t["name"].startswith("dense")} == {"model"}
    assert ls_footer(cli_run, path).startswith(f"{len(doc['tensors'])} tensors, 2,755 model parameters (+5,511 optimizer")


def test_keras_batchnorm_statistics_are_buffers(tmp_path: Path, cli_run) -> None:
    keras = pytest.importorskip("keras")
    model = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(16), keras.layers.BatchNormalization(), keras.layers.Dense(3)]
    )
    path = _fit_and_save(model, keras.optimizers.SGD(momentum=0.9), tmp_path / "bn.keras")
    doc = ls_json(cli_run, path)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert doc["total_parameters"] == trainable
    # Keras's count_params() also counts the non-trainable moving mean and variance
    assert doc["total_parameters"] + doc["parameters"]["buffer"] == model.count_params()
    assert doc["parameters"]["optimizer"] == trainable + 1  # momentum per weight + learning rate


# -- PyTorch ----------------------------------------------------------------------------------------


def _torch_training_state():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(10, 32), torch.nn.BatchNorm1d(32), torch.nn.ReLU(), torch.nn.Linear(32, 4)
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss = model(torch.randn(6, 10)).pow(2).mean()
    loss.backward()
    opt.step()
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
    state = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "ema": ema,
        "epoch": 3,
        "rng": torch.get_rng_state(),
    }
    return torch, model, state


def _check_torch_counts(doc: dict, torch, model, state: dict) -> None:
    n_params = sum(p.numel() for p in model.parameters())
    assert doc["total_parameters"] == n_params == 10 * 32 + 32 + 32 * 2 + 32 * 4 + 4
    running = sum(b.numel() for n, b in model.named_buffers() if "running" in n)
    assert doc["parameters"]["buffer"] == running
    assert doc["parameters"]["optimizer"] == 2 * n_params  # exp_avg and exp_avg_sq
    assert doc["parameters"]["ema"] == sum(v.numel() for v in state["ema"].values())
    rng = state["rng"].numel()
    steps = len(state["optimizer"]["state"])  # one scalar step per parameter
    assert doc["parameters"]["other"] == rng + steps + 1  # + num_batches_tracked


def test_torch_training_checkpoint_counts_model_params(tmp_path: Path, cli_run) -> None:
    torch, model, state = _torch_training_state()
    path = tmp_path / "train.pt"
    torch.save(state, path)
    doc = ls_json(cli_run, path)
    _check_torch_counts(doc, torch, model, state)
    footer = ls_footer(cli_run, path)
    assert "548 model parameters (+64 buffers, 1,096 optimizer, 613 EMA, " in footer


def test_torch_state_saved_by_weightvault_counts_the_same(tmp_path: Path, cli_run) -> None:
    torch, model, state = _torch_training_state()
    path = weightvault.save(state, tmp_path / "train_native")
    _check_torch_counts(ls_json(cli_run, path), torch, model, state)


# -- TensorFlow 1 Saver -----------------------------------------------------------------------------


def test_tf1_saver_with_adam_slots_and_global_step(tmp_path: Path, cli_run) -> None:
    tf = pytest.importorskip("tensorflow")
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 5])
        w = tf.compat.v1.get_variable("dense/kernel", [5, 7])
        b = tf.compat.v1.get_variable("dense/bias", [7], initializer=tf.compat.v1.zeros_initializer())
        w2 = tf.compat.v1.get_variable("out/kernel", [7, 2])
        loss = tf.reduce_sum(tf.matmul(tf.nn.relu(tf.matmul(x, w) + b), w2))
        step = tf.compat.v1.train.get_or_create_global_step()
        train = tf.compat.v1.train.AdamOptimizer(1e-3).minimize(loss, global_step=step)
        ema = tf.compat.v1.train.ExponentialMovingAverage(0.99)
        with tf.control_dependencies([train]):
            train_ema = ema.apply([w, b, w2])
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            sess.run(train_ema, {x: np.ones((3, 5), np.float32)})
            prefix = saver.save(sess, str(tmp_path / "model.ckpt"), global_step=step)
        trainable = sum(int(np.prod(v.shape)) for v in tf.compat.v1.trainable_variables())
    doc = ls_json(cli_run, Path(prefix))
    roles = {t["name"]: t["role"] for t in doc["tensors"]}
    assert doc["total_parameters"] == trainable == 5 * 7 + 7 + 7 * 2
    assert doc["parameters"]["optimizer"] == 2 * trainable  # .../Adam and .../Adam_1
    assert doc["parameters"]["ema"] == trainable
    assert roles["global_step"] == roles["beta1_power"] == roles["beta2_power"] == "other"
    assert roles["dense/kernel/Adam_1"] == "optimizer" and roles["dense/kernel"] == "model"


# -- the classifier itself, and the viewer ----------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "dtype", "shape", "role"),
    [
        ("encoder.attn.v", "float32", (4, 4), "model"),  # a layer named v is not an Adam slot
        ("head.steps", "int64", (10,), "model"),  # an int tensor of 10 elements is data
        ("dense/kernel/m", "float32", (4, 4), "optimizer"),
        ("model/dense/kernel/.OPTIMIZER_SLOT/optimizer/v/.ATTRIBUTES/VARIABLE_VALUE", "float32", (4,), "optimizer"),
        ("optimizer/_trainable_variables/0/.ATTRIBUTES/VARIABLE_VALUE", "float32", (4,), "model"),
        ("save_counter/.ATTRIBUTES/VARIABLE_VALUE", "int64", (), "other"),
        ("seed_generator_state", "uint32", (2,), "other"),
        ("layer/kernel/ExponentialMovingAverage", "float32", (3,), "ema"),
        ("bn.running_var", "float32", (3,), "buffer"),
        ("flag", "bool", (1,), "other"),
    ],
)
def test_tensor_role(name: str, dtype: str, shape: tuple[int, ...], role: str) -> None:
    assert tensor_role(name, dtype, shape) == role


def test_parameter_summary_names_only_what_is_there() -> None:
    assert parameter_summary({"model": 9, "buffer": 0, "optimizer": 0, "ema": 0, "other": 0}) == "9 model parameters"
    counts = count_by_role([])
    counts.update(model=3571, optimizer=7112)
    assert parameter_summary(counts) == "3,571 model parameters (+7,112 optimizer)"


def test_viewer_tree_totals_count_model_params(tmp_path: Path) -> None:
    from weightvault.viewer import ViewerServer

    torch, model, state = _torch_training_state()
    path = tmp_path / "train.pt"
    torch.save(state, path)
    with ViewerServer([path]).start() as srv, urllib.request.urlopen(srv.url + "api/tree?file=0", timeout=30) as resp:
        body = json.loads(resp.read())
    totals = body["totals"]
    assert totals["params"] == sum(p.numel() for p in model.parameters())
    assert totals["by_role"]["optimizer"] == 2 * totals["params"]
    assert sum(totals["by_role"].values()) == sum(t["numel"] for t in body["tensors"])
    assert {t["role"] for t in body["tensors"]} == {"model", "buffer", "optimizer", "ema", "other"}
