"""Benchmark: TensorFlow checkpoint bundle read/write, weightvault vs TensorFlow itself.

    .venv/bin/python bench/tf_bundle.py --size 1024          # MB of float32 weights

Writes the same tensors with ``tf.raw_ops.SaveV2`` and with ``TFBundleFormat.write`` (which also
fsyncs, as every weightvault writer does), then reads every tensor into memory with
``tf.train.load_checkpoint(...).get_tensor`` and with ``weightvault`` (copying out of the mmap so
both sides end with in-memory arrays), plus our reader with the CRC-32C of every tensor checked.
Prints a Markdown table (seconds, GB/s, ratio TF time / our time: > 1 means we are faster).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np


def _timed(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=1024, help="checkpoint size in MB")
    parser.add_argument("--tensors", type=int, default=32, help="number of tensors")
    parser.add_argument("--repeat", type=int, default=2, help="runs per measurement (best is kept)")
    parser.add_argument("--dir", default=None, help="scratch directory (default: a temp dir)")
    args = parser.parse_args()

    import tensorflow as tf

    from weightvault.formats.tf_bundle import TFBundleFormat

    per = args.size * (1 << 20) // args.tensors // 4
    rng = np.random.default_rng(0)
    arrays = {f"layer_{i:03d}/kernel": rng.standard_normal(per, dtype=np.float32).reshape(-1, 256)
              for i in range(args.tensors)}
    nbytes = sum(a.nbytes for a in arrays.values())
    tf_tensors = [tf.constant(a) for a in arrays.values()]
    names = list(arrays)
    root = tempfile.mkdtemp(dir=args.dir)
    try:
        tf_prefix, our_prefix = os.path.join(root, "tf", "ckpt"), os.path.join(root, "ours", "ckpt")
        os.makedirs(os.path.dirname(tf_prefix))
        os.makedirs(os.path.dirname(our_prefix))

        def tf_write() -> None:
            tf.raw_ops.SaveV2(prefix=tf_prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                              tensors=tf_tensors)

        def our_write(fsync: bool = True) -> None:
            TFBundleFormat.write(our_prefix, arrays, fsync=fsync)

        def tf_read() -> None:
            reader = tf.train.load_checkpoint(tf_prefix)
            for n in names:
                reader.get_tensor(n)

        def our_read(check_crc: bool = False) -> None:
            with TFBundleFormat.open(our_prefix, check_crc=check_crc) as r:
                for n in names:
                    np.array(r.get(n))

        rows = [
            ("write (wv fsyncs, TF does not)", _timed(tf_write, args.repeat), _timed(our_write, args.repeat)),
            ("write (fsync=False, like TF)", _timed(tf_write, args.repeat),
             _timed(lambda: our_write(False), args.repeat)),
            ("read (get every tensor)", _timed(tf_read, args.repeat), _timed(our_read, args.repeat)),
            ("read + CRC-32C check", _timed(tf_read, args.repeat), _timed(lambda: our_read(True), args.repeat)),
        ]
        gb = nbytes / 1e9
        print(f"TF bundle, {args.tensors} float32 tensors, {nbytes / (1 << 20):.0f} MiB, TensorFlow {tf.__version__}, "
              f"best of {args.repeat}\n")
        print("| operation | TensorFlow s | TF GB/s | weightvault s | wv GB/s | ratio (TF/wv) |")
        print("|---|---:|---:|---:|---:|---:|")
        for op, t_tf, t_wv in rows:
            print(f"| {op} | {t_tf:.3f} | {gb / t_tf:.2f} | {t_wv:.3f} | {gb / t_wv:.2f} | {t_tf / t_wv:.2f} |")
        # TF's reader also checks CRCs on every get_tensor, so row 3 is the like-for-like read.
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
