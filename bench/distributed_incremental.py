"""Incremental distributed saves: bytes written and save time, full vs incremental, same run.

Not a test. One process per rank (gloo on CPU, ``--world`` ranks) holds a frozen-backbone state
of ``--tensors`` float32 DTensors, ``--size`` MB in all, ``Shard(0)`` over a 1-D mesh: the last
``--trained`` share of the tensors changes before every checkpoint (a small in-place update), the
rest never does. Every checkpoint is saved twice, by a full ``CheckpointManager`` and by an
``incremental=True`` one (same shard size), alternating which goes first; both keep 5, fsync on.
"save s" is barrier to barrier (the slowest rank counts); "written" is the step's record
(``written_bytes``: shard bytes really written plus manifest, index, record and marker).

    python bench/distributed_incremental.py --world 2 --size 128 --checkpoints 6
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARD_SIZE = 64 * 1024**2  # the incremental default (checkpoint.manager.INCREMENTAL_SHARD_SIZE)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def worker(rank: int, world: int, port: str, work: Path, args: argparse.Namespace) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK=str(rank), WORLD_SIZE=str(world))
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Shard

    from weightvault.checkpoint import CheckpointManager

    dist.init_process_group("gloo", rank=rank, world_size=world)
    mesh = init_device_mesh("cpu", (world,))
    rows = args.size * 1024**2 // 4 // 1024 // args.tensors // world  # local rows of 1024 floats
    gen = torch.Generator().manual_seed(rank)
    state: dict[str, Any] = {}
    trained = max(1, round(args.tensors * args.trained))
    for i in range(args.tensors):
        local = torch.randn(rows, 1024, generator=gen)
        state[f"layer{i:02d}.weight"] = DTensor.from_local(local, mesh, [Shard(0)], run_check=False)
    moving = [state[f"layer{i:02d}.weight"] for i in range(args.tensors - trained, args.tensors)]
    managers = {
        kind: CheckpointManager(
            work / kind, max_to_keep=5, incremental=kind == "incremental", shard_size=SHARD_SIZE
        )
        for kind in ("full", "incremental")
    }
    times: dict[str, list[float]] = {kind: [] for kind in managers}
    written: dict[str, list[int]] = {kind: [] for kind in managers}
    for ckpt in range(args.checkpoints):
        with torch.no_grad():
            for t in moving:
                t.to_local().add_(1e-3)
        order = list(managers) if ckpt % 2 == 0 else list(reversed(managers))
        for kind in order:
            dist.barrier()
            t0 = time.perf_counter()
            managers[kind].save(ckpt, {"model": state, "step": ckpt})
            dist.barrier()
            times[kind].append(time.perf_counter() - t0)
            if rank == 0:  # before retention of later saves deletes it
                written[kind].append(managers[kind].info(ckpt).written_bytes)
    for mgr in managers.values():
        mgr.close()
    if rank == 0:
        sizes = [c.size_bytes for c in CheckpointManager(work / "full", read_only=True).checkpoints()]
        disk = {kind: _disk(work / kind) for kind in managers}
        (work / "result.json").write_text(
            json.dumps({"times": times, "written": written, "size": sizes[-1], "disk": disk, "trained": trained})
        )
    dist.destroy_process_group()


def _disk(run: Path) -> int:
    """Bytes of the run's files, each inode once (hard links shared)."""
    seen, total = set(), 0
    for p in run.rglob("*"):
        st = p.stat()
        if p.is_file() and st.st_ino not in seen:
            seen.add(st.st_ino)
            total += st.st_size
    return total


def _mb(n: float) -> str:
    return f"{n / 1e6:.2f} MB"


def table(r: dict[str, Any], args: argparse.Namespace) -> str:
    full_t, inc_t = r["times"]["full"], r["times"]["incremental"]
    full_w, inc_w = r["written"]["full"], r["written"]["incremental"]
    later = slice(2, None)  # after the first (nothing to compare) and the regrouping second
    med = statistics.median
    lines = [
        f"world {args.world}, {args.tensors} tensors, {args.size} MB, {r['trained']} trained "
        f"({r['trained'] / args.tensors:.0%}), {args.checkpoints} checkpoints, keep 5, fsync on; "
        f"{platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}",
        "",
        f"MB written per checkpoint, incremental: {[round(w / 1e6, 2) for w in inc_w]}; "
        f"full: {round(full_w[-1] / 1e6, 2)}",
        "",
        "| | written / checkpoint (median, from #2) | share of full | save s: best / median (from #2) "
        "| save time share (median) | keep-5 run on disk |",
        "|---|---:|---:|---:|---:|---:|",
        f"| full | {_mb(med(full_w[later]))} | 100% | {min(full_t[later]):.3f} / {med(full_t[later]):.3f} "
        f"| 100% | {_mb(r['disk']['full'])} |",
        f"| incremental | {_mb(med(inc_w[later]))} | **{med(inc_w[later]) / med(full_w[later]):.1%}** "
        f"| {min(inc_t[later]):.3f} / {med(inc_t[later]):.3f} "
        f"| **{med(inc_t[later]) / med(full_t[later]):.0%}** | {_mb(r['disk']['incremental'])} |",
        "",
        f"Checkpoint #0 and #1 (incremental): {_mb(inc_w[0])}, {_mb(inc_w[1])} written "
        f"(nothing to compare with; then the regrouping step).",
    ]
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        rank, world, port, work = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], Path(sys.argv[5])
        worker(rank, world, port, work, argparse.Namespace(**json.loads(sys.argv[6])))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--size", type=int, default=128, help="state size in MB (all ranks together)")
    ap.add_argument("--tensors", type=int, default=10)
    ap.add_argument("--trained", type=float, default=0.1, help="share of the tensors that change")
    ap.add_argument("--checkpoints", type=int, default=6)
    ap.add_argument("--dir", default=None, help="scratch directory (default: a temporary one)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as scratch:
        work = Path(scratch)
        port = str(_free_port())
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
        procs = [
            subprocess.Popen(
                [sys.executable, __file__, "--worker", str(r), str(args.world), port, str(work),
                 json.dumps(vars(args))],
                env=env,
            )  # fmt: skip
            for r in range(args.world)
        ]
        if any(p.wait() for p in procs):
            raise SystemExit("a rank failed")
        print(table(json.loads((work / "result.json").read_text()), args))


if __name__ == "__main__":
    main()
