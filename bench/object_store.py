"""Checkpoints on an S3 API server: weightvault against s3fs's own transfers of the same bytes.

Not a test. Starts a local moto server (``moto_server``) unless ``--endpoint`` names one (MinIO,
a real bucket...), then, in one run, with numpy float32 state of ``--size`` MB in 32 MB tensors:

* **save**: ``weightvault.save(state, "s3://.../ckpt")`` (sharded directory: shards streamed in
  parts, manifest, COMMITTED) against ``fs.put_file`` of the same checkpoint's bytes from a local
  file (s3fs's own multipart upload); ratio = weightvault throughput / s3fs throughput;
* **load**: ``weightvault.load(url)`` (parallel ranged reads into preallocated arrays) against
  ``fs.cat_file`` of the same objects;
* **one tensor**: ``weightvault.open(url).get(name)``: bytes read (header probe + manifest +
  that tensor) and seconds;
* **async save**: ``CheckpointManager(url, async_save=True)``: seconds ``save()`` blocks the
  caller (the snapshot) against a sync save of the same state.

Targets (issue #17): save and load >= 0.9x s3fs; one tensor = header + that tensor + at most one
part; async stall << sync save.

    python bench/object_store.py --size 1024
    python bench/object_store.py --size 256 --repeat 3 --part-size 16
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any

import numpy as np

MB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    proc = subprocess.Popen(
        [sys.executable, "-c", "from moto.server import main; main()", "-H", "127.0.0.1", "-p", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("moto_server did not start")


def make_state(size_mb: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    per = 32 * MB // 4
    return {f"layers.{i}.weight": rng.random(per, dtype=np.float32) for i in range(max(1, size_mb // 32))}


def timed(fn: Any) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=1024, help="state size in MB (default 1024)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per measurement (median)")
    ap.add_argument("--endpoint", help="an S3 endpoint to use instead of a local moto server")
    ap.add_argument("--bucket", default=f"wv-bench-{uuid.uuid4().hex[:8]}")
    ap.add_argument("--part-size", type=int, default=16, help="part size in MB (default 16)")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--shard-size", type=int, default=512, help="shard size in MB (default 512)")
    args = ap.parse_args()

    import s3fs

    import weightvault
    from weightvault import storage
    from weightvault.checkpoint import CheckpointManager

    proc = None
    endpoint = args.endpoint
    if endpoint is None:
        proc, endpoint = start_moto()
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    try:
        opts = {
            "endpoint_url": endpoint,
            "client_kwargs": {"region_name": "us-east-1"},
            "part_size": args.part_size * MB,
            "concurrency": args.concurrency,
        }
        fs = s3fs.S3FileSystem(endpoint_url=endpoint, client_kwargs={"region_name": "us-east-1"})
        fs.call_s3("create_bucket", Bucket=args.bucket)
        base = f"s3://{args.bucket}"
        state = make_state(args.size)
        nbytes = sum(v.nbytes for v in state.values())
        rows: dict[str, list[float]] = {k: [] for k in ("wv_save", "s3fs_put", "wv_load", "s3fs_cat")}
        with tempfile.TemporaryDirectory() as tmp:
            local = os.path.join(tmp, "ckpt")
            weightvault.save(state, local, shard_size=args.shard_size * MB, fsync=False)
            files = sorted(os.listdir(local))
            total_files = sum(os.path.getsize(os.path.join(local, f)) for f in files)
            for r in range(args.repeat):
                url = f"{base}/wv-{r}"
                rows["wv_save"].append(timed(lambda url=url: weightvault.save(
                    state, url, storage_options=opts, shard_size=args.shard_size * MB)))
                ref = f"{args.bucket}/ref-{r}"
                rows["s3fs_put"].append(timed(lambda ref=ref: [
                    fs.put_file(os.path.join(local, f), f"{ref}/{f}") for f in files]))
                rows["wv_load"].append(timed(lambda url=url: weightvault.load(url, storage_options=opts)))
                rows["s3fs_cat"].append(timed(lambda ref=ref: [fs.cat_file(f"{ref}/{f}") for f in files]))
            # one tensor out of the checkpoint
            name = "layers.%d.weight" % (len(state) // 2)
            storage.stats.reset()
            t = time.perf_counter()
            with weightvault.open(f"{base}/wv-0", storage_options=opts) as reader:
                opened = storage.stats.bytes_read
                reader.get(name)
            one_s = time.perf_counter() - t
            one_bytes = storage.stats.bytes_read
            one_requests = storage.stats.read_requests
            # async stall against sync
            stalls: dict[str, float] = {}
            for mode in ("sync", "async"):
                with CheckpointManager(f"{base}/run-{mode}", async_save=mode == "async", storage_options=opts,
                                       shard_size=args.shard_size * MB) as mgr:
                    mgr.save(1, state)  # first save: buffers allocated
                    mgr.wait_until_finished()
                    stalls[mode] = timed(lambda mgr=mgr: mgr.save(2, state))
                    stalls[mode + "_total"] = stalls[mode] + timed(mgr.wait_until_finished)
        med = {k: statistics.median(v) for k, v in rows.items()}
        print(f"machine: {platform.node()} ({os.cpu_count()} cores), python {platform.python_version()}")
        print(f"server: {'local moto_server' if proc else endpoint}; state {nbytes / MB:.0f} MiB in "
              f"{len(state)} tensors, {len(files)} objects ({total_files / MB:.0f} MiB); part {args.part_size} MiB, "
              f"concurrency {args.concurrency}; median of {args.repeat}")
        print("| measurement | weightvault | s3fs | ratio (weightvault / s3fs throughput) |")
        print("|---|---:|---:|---:|")
        for label, mine, theirs in (("save", "wv_save", "s3fs_put"), ("load", "wv_load", "s3fs_cat")):
            a, b = med[mine], med[theirs]
            print(f"| {label} | {a:.2f} s ({total_files / MB / a:.0f} MiB/s) | {b:.2f} s ({total_files / MB / b:.0f} MiB/s) "
                  f"| **{b / a:.2f}x** |")  # same objects, same bytes
        tensor_bytes = state[name].nbytes
        print(f"\none tensor ({tensor_bytes / MB:.0f} MiB) of the {nbytes / MB:.0f} MiB checkpoint: {one_s:.3f} s, "
              f"{one_bytes} bytes read in {one_requests} requests (open: {opened} bytes; tensor {tensor_bytes}; "
              f"excess over the tensor {one_bytes - tensor_bytes} bytes, one part = {args.part_size * MB})")
        print(f"\nasync save stall {stalls['async']:.3f} s (write finished after {stalls['async_total']:.2f} s) "
              f"vs sync save {stalls['sync']:.2f} s: stall/sync = {stalls['async'] / stalls['sync']:.1%}")
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    main()
