"""A TF1 graph trained a few steps with Adam and an ExponentialMovingAverage, saved by ``tf.train.Saver``
with a frozen template of its initial values: shared by the freeze and the restore tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

tf1 = tf.compat.v1


def _net(x):  # noqa: ANN001, ANN202
    def dense(h, n, name, act=None):  # noqa: ANN001, ANN202
        with tf1.variable_scope(name):
            w = tf1.get_variable("kernel", [h.shape[-1], n])
            b = tf1.get_variable("bias", [n], initializer=tf1.random_normal_initializer(seed=1))
        y = tf.matmul(h, w) + b
        return act(y) if act else y

    return tf.identity(dense(dense(x, 8, "fc1", tf.nn.relu), 2, "fc2"), name="out")


def make_tf1_adam_run(d: Path) -> dict[str, object]:
    """``{"dir", "ckpt" (prefix), "x", "raw", "ema"}``: TF's outputs for ``x`` with the raw weights
    and with the weights restored through ``ema.variables_to_restore()``."""
    rng = np.random.default_rng(0)
    test_x = rng.normal(size=(3, 4)).astype("float32")
    graph = tf.Graph()
    with graph.as_default():
        tf1.set_random_seed(0)
        x = tf1.placeholder(tf.float32, [None, 4], name="x")
        y = tf1.placeholder(tf.float32, [None, 2], name="y")
        out = _net(x)
        step = tf1.train.get_or_create_global_step()
        train = tf1.train.AdamOptimizer(0.05).minimize(tf.reduce_mean((out - y) ** 2), global_step=step)
        ema = tf1.train.ExponentialMovingAverage(0.5)
        with tf.control_dependencies([train]):
            train = ema.apply(tf1.trainable_variables())
        with tf1.Session() as sess:
            sess.run(tf1.global_variables_initializer())
            # The template holds the *initial* values: only a working freeze gives the trained outputs.
            frozen = tf1.graph_util.convert_variables_to_constants(sess, graph.as_graph_def(), ["out"])
            (d / "graph.pb").write_bytes(frozen.SerializeToString())
            for _ in range(5):
                sess.run(train, {x: rng.normal(size=(8, 4)), y: rng.normal(size=(8, 2))})
            prefix = tf1.train.Saver().save(sess, str(d / "model.ckpt"), global_step=1000)
            raw = sess.run(out, {x: test_x})
    for resource in (False, True):  # the inference graphs a TF1 program writes, still with variables
        inference = tf.Graph()
        with inference.as_default():
            tf1.placeholder(tf.float32, [None, 4], name="x")
            with tf1.variable_scope("", use_resource=resource):
                _net(inference.get_tensor_by_name("x:0"))
            tf1.train.Saver()  # its save/restore ops, as in a real program's graph
            tf1.global_variables_initializer()
        name = "inference_resource.pb" if resource else "inference.pb"
        tf.io.write_graph(inference.as_graph_def(), str(d), name, as_text=False)
    graph = tf.Graph()
    with graph.as_default():
        x = tf1.placeholder(tf.float32, [None, 4], name="x")
        out = _net(x)
        saver = tf1.train.Saver(tf1.train.ExponentialMovingAverage(0.5).variables_to_restore())
        with tf1.Session() as sess:
            saver.restore(sess, prefix)
            averaged = sess.run(out, {x: test_x})
    assert not np.allclose(raw, averaged)  # the EMA test could not tell the two apart otherwise
    return {"dir": d, "ckpt": prefix, "x": test_x, "raw": raw, "ema": averaged}
