"""Conversion benchmark: a PyTorch checkpoint to native and back, against torch and a raw copy.

Not a test. One run measures, on the same file and the same warm page cache:

* ``raw copy``: ``shutil.copyfile`` (an in-kernel copy) and a userspace read+write loop through
  a 4 MiB buffer, the floor;
* ``wv convert pt->native`` and ``wv convert native->pt``: ``weightvault.convert`` (our restricted
  unpickler; tensor bytes streamed file to file from their spans in the source, checksummed on
  the way);
* ``torch.load + wv.save`` and ``wv.load(torch) + torch.save``: the same trips through torch.

Each row runs twice: durable (every writer fsyncs, weightvault's default) and page-cache only
(``fsync=False`` where the writer has it; torch.save never fsyncs). ``os.sync()`` runs before each
measurement so no op pays for the previous one's dirty pages. The ops run round-robin, ``--repeat``
rounds, so a slow spell of a shared machine hits every op alike; the table shows each op's best
and median. Ratio = raw copy seconds / op seconds, best against best, at the same durability
(>= 0.8 is the target).

    python bench/convert.py --size 1024 [--repeat 5] [--dir /some/disk]
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

MB = 1024 * 1024


def make_checkpoint(path: Path, size_mb: int) -> int:
    """A transformer-like float32 state dict of about ``size_mb`` MB, written by torch.save."""
    import torch

    g = torch.Generator().manual_seed(0)
    d = 1024 if size_mb >= 256 else 256  # small --size runs still get many layers
    state: dict[str, torch.Tensor] = {}
    total = 0
    budget = size_mb * MB

    def add(name: str, *shape: int) -> None:
        nonlocal total
        state[name] = torch.rand(*shape, generator=g)
        total += state[name].numel() * 4

    add("embed.weight", max(1, min(8192, budget // (4 * d * 4))), d)
    layer = 0
    while total < budget - 12 * d * d * 4:
        p = f"layers.{layer}."
        for proj in ("q", "k", "v", "o"):
            add(p + f"attn.{proj}.weight", d, d)
        add(p + "mlp.up.weight", 4 * d, d)
        add(p + "mlp.down.weight", d, 4 * d)
        add(p + "norm1.weight", d)
        add(p + "norm2.weight", d)
        layer += 1
    add("norm.weight", d)
    torch.save(state, path)
    return path.stat().st_size


def copy_file(src: Path, dst: Path, fsync: bool) -> None:
    shutil.copyfile(src, dst)
    if fsync:
        fd = os.open(dst, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def read_write(src: Path, dst: Path, fsync: bool, chunk: int = 4 * MB) -> None:
    buf = bytearray(chunk)
    view = memoryview(buf)
    with open(src, "rb", buffering=0) as fi, open(dst, "wb", buffering=0) as fo:
        while n := fi.readinto(buf):
            fo.write(view[:n])
        if fsync:
            os.fsync(fo.fileno())


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def run_once(fn: Callable[[], None], cleanup: Path) -> float:
    remove(cleanup)
    gc.collect()
    os.sync()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def round_robin(ops: list[tuple[str, Callable[[], None], Path]], repeat: int) -> dict[str, list[float]]:
    """Seconds of every run of every op; each round runs each op once, in order."""
    times: dict[str, list[float]] = {name: [] for name, _, _ in ops}
    for _ in range(repeat):
        for name, fn, cleanup in ops:
            times[name].append(run_once(fn, cleanup))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1024, help="checkpoint size in MB (default 1024)")
    parser.add_argument("--repeat", type=int, default=5, help="rounds of every op; best and median are reported")
    parser.add_argument("--dir", type=Path, default=None, help="work directory (default: a temp dir)")
    args = parser.parse_args()

    import torch

    import weightvault

    workdir = Path(tempfile.mkdtemp(prefix="wv-convert-bench-", dir=args.dir))
    try:
        src = workdir / "src.pt"
        nbytes = make_checkpoint(src, args.size)
        with open(src, "rb") as f:  # warm the page cache like every op below will find it
            while f.read(64 * MB):
                pass
        native = workdir / "native"
        native_for_back = workdir / "native_src"
        weightvault.convert(src, native_for_back)

        def wv_to_native(fsync: bool) -> Callable[[], None]:
            return lambda: weightvault.convert(src, native, write_options={"fsync": fsync})

        def wv_to_pt(fsync: bool) -> Callable[[], None]:
            return lambda: weightvault.convert(native_for_back, workdir / "back.pt", write_options={"fsync": fsync})

        def torch_to_native(fsync: bool) -> Callable[[], None]:
            return lambda: weightvault.save(torch.load(src, weights_only=True, mmap=False), native, fsync=fsync)

        def native_to_torch(fsync: bool) -> Callable[[], None]:
            def run() -> None:
                obj = weightvault.load(native_for_back, framework="torch")
                torch.save(obj, workdir / "back_torch.pt")
                if fsync:
                    fd = os.open(workdir / "back_torch.pt", os.O_RDONLY)
                    os.fsync(fd)
                    os.close(fd)

            return run

        rows = []
        for fsync in (True, False):
            label = "fsync" if fsync else "page cache"
            ops = [
                ("raw copy (shutil.copyfile)", lambda: copy_file(src, workdir / "copy.pt", fsync), workdir / "copy.pt"),
                ("raw read+write loop", lambda: read_write(src, workdir / "copy2.pt", fsync), workdir / "copy2.pt"),
                ("wv convert pt -> native", wv_to_native(fsync), native),
                ("wv convert native -> pt", wv_to_pt(fsync), workdir / "back.pt"),
                ("torch.load + wv.save (-> native)", torch_to_native(fsync), native),
                ("wv.load(torch) + torch.save (-> pt)", native_to_torch(fsync), workdir / "back_torch.pt"),
            ]
            times = round_robin(ops, args.repeat)
            raw_copy, raw_rw = min(times[ops[0][0]]), min(times[ops[1][0]])
            for name, _, _ in ops:
                best, median = min(times[name]), statistics.median(times[name])
                rows.append((label, name, best, median, nbytes / best / 1e9, raw_copy / best, raw_rw / best))

        # correctness of what was timed: the round trip gives torch the same tensors
        a = torch.load(src, weights_only=True, mmap=True)
        b = torch.load(workdir / "back.pt", weights_only=True, mmap=True)
        assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a), "round trip changed tensors"

        print(f"\nconvert benchmark: {nbytes / MB:.0f} MiB torch.save checkpoint, {len(a)} tensors, "
              f"torch {torch.__version__}, {os.cpu_count()} CPUs, {args.repeat} rounds\n")
        print("| durability | operation | best s | median s | GB/s (best) | vs copyfile | vs read+write |")
        print("|---|---|---:|---:|---:|---:|---:|")
        for label, name, best, median, gbs, r1, r2 in rows:
            print(f"| {label} | {name} | {best:.3f} | {median:.3f} | {gbs:.2f} | {r1:.2f}x | {r2:.2f}x |")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
