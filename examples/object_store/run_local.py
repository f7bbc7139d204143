"""Checkpoints on S3 without an AWS account: a local moto server, a training run, an evaluator.

    pip install 'weightvault[s3]' 'moto[server]'
    python examples/object_store/run_local.py

What it does, step by step (each printed as it happens):

1. starts ``moto_server`` on a free local port (or uses ``--endpoint http://...``, e.g. MinIO)
   and creates a bucket;
2. a "training loop" saves 6 steps into ``s3://<bucket>/runs/demo`` with a CheckpointManager
   (async saves, newest 3 kept); each step is committed by its ``COMMITTED`` object, written last;
3. an evaluator reads them with ``weightvault.watch`` on the URL;
4. ``weightvault.open`` on the latest step reads the header only, and ``get`` one tensor with one
   ranged read (the bytes read are printed);
5. converts the latest step to a local ``.npz`` and back up to S3, and verifies every checksum;
6. runs the CLI on the URL: ``weightvault --storage-option endpoint_url=... runs s3://...``.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid

import numpy as np

import weightvault
from weightvault import storage
from weightvault.checkpoint import CheckpointManager


def start_moto() -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-c", "from moto.server import main; main()", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    for _ in range(300):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("moto_server did not start (pip install 'moto[server]')")


def training_state(step: int) -> dict:
    rng = np.random.default_rng(step)
    return {
        "model": {"encoder.weight": rng.standard_normal((512, 256), dtype=np.float32),
                  "head.weight": rng.standard_normal((10, 512), dtype=np.float32)},
        "optimizer": {"lr": 1e-3, "step": step},
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endpoint", help="an S3 endpoint to use instead of starting moto_server")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--train-seconds", type=float, default=1.0, help="pretend training time per step")
    args = parser.parse_args()

    # moto accepts any credentials; a real endpoint takes yours from the usual AWS_* variables
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    proc, endpoint = (None, args.endpoint) if args.endpoint else start_moto()
    try:
        opts = {"endpoint_url": endpoint, "client_kwargs": {"region_name": "us-east-1"}}
        bucket = f"weightvault-demo-{uuid.uuid4().hex[:8]}"
        import s3fs

        s3fs.S3FileSystem(**opts).call_s3("create_bucket", Bucket=bucket)
        run = f"s3://{bucket}/runs/demo"
        print(f"1. S3 endpoint {endpoint}, run {run}")

        with CheckpointManager(run, max_to_keep=3, async_save=True, storage_options=opts) as mgr:
            for step in range(1, args.steps + 1):
                state = training_state(step)
                time.sleep(args.train_seconds)  # "training": the previous save uploads meanwhile
                mgr.save(step, state, metrics={"loss": 1.0 / step})  # blocks for the snapshot only
            mgr.wait_until_finished()
            print(f"2. saved {args.steps} steps; kept {mgr.steps()} (newest 3)")

        seen = [c.step for c in weightvault.watch(run, timeout=0.5, poll=0.1, storage_options=opts)]
        print(f"3. the evaluator saw steps {seen}")

        latest = f"{run}/step-{seen[-1]:08d}"
        storage.stats.reset()
        with weightvault.open(latest, storage_options=opts) as reader:
            header = storage.stats.bytes_read
            head = reader.get("model/head.weight")
        print(f"4. open() read {header} bytes (manifest), get() {storage.stats.bytes_read - header} "
              f"bytes for a {head.nbytes}-byte tensor")

        with tempfile.TemporaryDirectory() as tmp:
            local = os.path.join(tmp, "latest.npz")
            weightvault.convert(latest, local, storage_options=opts)
            weightvault.convert(local, f"s3://{bucket}/exported.safetensors", storage_options=opts)
        result = weightvault.verify(f"s3://{bucket}/exported.safetensors", storage_options=opts)
        print(f"5. S3 -> {os.path.basename(local)} -> S3: {result.checked} checksums verified")

        out = subprocess.run(
            [sys.executable, "-m", "weightvault", "--storage-option", f"endpoint_url={endpoint}", "runs", run],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        print("6. weightvault runs on the URL:\n" + out.stdout)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    main()
