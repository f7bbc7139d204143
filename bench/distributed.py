"""Distributed checkpoints: weightvault against torch.distributed.checkpoint, same state, same run.

Not a test. For each world size, one process per rank (gloo on CPU) builds a state of ``--tensors``
float32 DTensors, ``--size`` MB in all, sharded ``Shard(0)`` over a 1-D mesh, then, round-robin for
``--repeat`` rounds (so a slow spell of the shared machine hits every op alike):

* **save** (every rank, fsynced where the writer can): ``weightvault.save`` (each rank its chunks,
  rank 0 the manifest), DCP's ``FileSystemWriter`` (``sync_files=True``, its default) and torch's
  ``HuggingFaceStorageWriter(save_distributed=True)`` (no fsync option: page cache only);
* **reshard load** into ``Shard(1)`` DTensors (every rank needs a slice of every saved chunk):
  ``load_distributed`` against ``dcp.load`` with ``FileSystemReader``;

each timed from a barrier to a barrier (so the slowest rank counts); throughput = state bytes /
seconds. Then, in rank 0 alone, **consolidation** into one file: ``weightvault convert`` (to
``.safetensors``) against ``dcp_to_torch_save`` (to ``.pt``) and torch's
``consolidate_safetensors_files`` (the HF output to one safetensors file). weightvault's convert
fsyncs its output by default; neither torch function does, so it also runs with ``fsync=False``
and the torch functions also run followed by an fsync of what they wrote: "vs DCP" compares
durable rows with ``dcp_to_torch_save`` + fsync and page-cache rows with ``dcp_to_torch_save``.

**Peak extra memory** per rank and op: the peak RSS (``VmHWM``, reset before each op through
``/proc/self/clear_refs``) minus the RSS before the op, the largest over ranks and rounds. RSS
counts file pages mapped into the process too (a reader's mmap of the files it reads from) and
not memory the process already had from earlier ops (freed heap it reuses).

    python bench/distributed.py --worlds 2 4 --size 256 --repeat 3 --out bench/RESULTS-distributed.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _measured(op: Any) -> tuple[float, int]:
    """Seconds between barriers, and this rank's peak extra memory (bytes) during ``op``."""
    import torch.distributed as dist

    with open("/proc/self/clear_refs", "w") as f:  # resets VmHWM to the current RSS
        f.write("5")
    before = _rss_kb("VmRSS")
    dist.barrier()
    t0 = time.perf_counter()
    op()
    dist.barrier()
    seconds = time.perf_counter() - t0
    return seconds, max(0, _rss_kb("VmHWM") - before) * 1024


def worker(rank: int, world: int, port: str, work: Path, size_mb: int, count: int, repeat: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK=str(rank), WORLD_SIZE=str(world))
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import (
        FileSystemReader,
        FileSystemWriter,
        HuggingFaceStorageWriter,
    )
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Shard

    import weightvault
    from weightvault.frameworks.torch_distributed import load_distributed

    dist.init_process_group("gloo", rank=rank, world_size=world)
    mesh = init_device_mesh("cpu", (world,))
    cols = 1024
    rows = max(world, (size_mb << 20) // (4 * cols * count) // world * world)
    g = torch.Generator().manual_seed(rank)
    state = {
        f"layer{i}.weight": DTensor.from_local(
            torch.randn(rows // world, cols, generator=g), mesh, [Shard(0)], run_check=False
        )
        for i in range(count)
    }
    total = rows * cols * 4 * count
    largest_local = rows // world * cols * 4

    def target() -> dict[str, Any]:  # another placement: every rank needs part of every chunk
        return {
            k: DTensor.from_local(torch.zeros(rows, cols // world), mesh, [Shard(1)], run_check=False)
            for k in state
        }

    def fresh(name: str) -> Path:
        path = work / name
        if rank == 0 and path.exists():
            shutil.rmtree(path)
        dist.barrier()
        return path

    ops = {
        "save weightvault": lambda: weightvault.save(state, fresh("wv")),
        "save DCP FileSystemWriter": lambda: dcp.save(
            state, storage_writer=FileSystemWriter(fresh("dcp"))
        ),
        "save HuggingFaceStorageWriter": lambda: dcp.save(
            state, storage_writer=HuggingFaceStorageWriter(str(fresh("hf")), save_distributed=True)
        ),
    }
    loads = {
        "reshard-load weightvault": lambda t: load_distributed(work / "wv", t),
        "reshard-load DCP FileSystemReader": lambda t: dcp.load(
            t, storage_reader=FileSystemReader(work / "dcp")
        ),
    }
    results: dict[str, dict[str, list[float]]] = {}
    for _ in range(repeat):
        for name, op in ops.items():
            seconds, peak = _measured(op)
            results.setdefault(name, {"s": [], "peak": []})
            results[name]["s"].append(seconds)
            results[name]["peak"].append(peak)
        for name, load in loads.items():
            t = target()
            seconds, peak = _measured(lambda load=load, t=t: load(t))
            results.setdefault(name, {"s": [], "peak": []})
            results[name]["s"].append(seconds)
            results[name]["peak"].append(peak)
            full = {k: v.full_tensor() for k, v in t.items()}  # same values from both
            mine = {k: v.full_tensor() for k, v in state.items()}
            assert all(torch.equal(full[k], mine[k]) for k in state), name
    peaks = [None] * world
    dist.all_gather_object(peaks, {k: max(v["peak"]) for k, v in results.items()})
    if rank == 0:
        consolidate = _consolidate(work, list(state), repeat)
        out = {
            "world": world, "total": total, "largest_local": largest_local,
            "ops": {k: {"s": v["s"], "peak": max(p[k] for p in peaks)} for k, v in results.items()},
            "consolidate": consolidate,
        }  # fmt: skip
        (work / "result.json").write_text(json.dumps(out))
    dist.barrier()
    dist.destroy_process_group()


def _fsynced(_result: Any, path: Path) -> None:
    """fsync what a torch consolidation wrote (a file, or every file of a directory, and the
    directory), so its row is as durable as weightvault's default convert."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for f in [*files, path if path.is_dir() else path.parent]:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _consolidate(work: Path, names: list[str], repeat: int) -> dict[str, Any]:
    from torch.distributed.checkpoint._consolidate_hf_safetensors import (
        consolidate_safetensors_files,
    )
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    import weightvault

    def peak_of(op: Any) -> tuple[float, int]:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _rss_kb("VmRSS")
        t0 = time.perf_counter()
        op()
        return time.perf_counter() - t0, max(0, _rss_kb("VmHWM") - before) * 1024

    def out(name: str) -> Path:
        p = work / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
        return p

    ops = {
        "weightvault convert -> .safetensors": lambda: weightvault.convert(
            work / "wv", out("wv.safetensors")
        ),
        "weightvault convert -> .safetensors, fsync=False": lambda: weightvault.convert(
            work / "wv", out("wv.safetensors"), write_options={"fsync": False}
        ),
        "dcp_to_torch_save -> .pt": lambda: dcp_to_torch_save(work / "dcp", out("dcp.pt")),
        "dcp_to_torch_save -> .pt, then fsync": lambda: _fsynced(
            dcp_to_torch_save(work / "dcp", out("dcp.pt")), work / "dcp.pt"
        ),
        "consolidate_safetensors_files (HF) -> .safetensors": lambda: consolidate_safetensors_files(
            str(work / "hf"), str(_made(out("hf-out"))), {n: 1 for n in names}
        ),
        "consolidate_safetensors_files (HF) -> .safetensors, then fsync": lambda: _fsynced(
            consolidate_safetensors_files(
                str(work / "hf"), str(_made(out("hf-out"))), {n: 1 for n in names}
            ),
            work / "hf-out",
        ),
    }
    res: dict[str, Any] = {}
    for _ in range(repeat):
        for name, op in ops.items():
            s, p = peak_of(op)
            res.setdefault(name, {"s": [], "peak": 0})
            res[name]["s"].append(s)
            res[name]["peak"] = max(res[name]["peak"], p)
    return res


def _made(path: Path) -> Path:
    path.mkdir()
    return path


def run_world(world: int, size: int, count: int, repeat: int, work: Path) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    port = str(_free_port())
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--worker", str(r), str(world), port, str(work), str(size),
             str(count), str(repeat)],
            env=env,
        )  # fmt: skip
        for r in range(world)
    ]
    if any(p.wait() != 0 for p in procs):
        raise SystemExit(f"a rank failed at world size {world}")
    return json.loads((work / "result.json").read_text())


def _mb(n: float) -> str:
    return f"{n / 2**20:.1f}"


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| world | op | best s | median s | MB/s (best) | vs DCP (best) | peak extra MB/rank | "
        "largest local chunk + 64 MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        limit = _mb(r["largest_local"] + (64 << 20))
        ref = {
            "save": min(r["ops"]["save DCP FileSystemWriter"]["s"]),
            "reshard-load": min(r["ops"]["reshard-load DCP FileSystemReader"]["s"]),
        }
        for name, v in r["ops"].items():
            best, med = min(v["s"]), statistics.median(v["s"])
            vs = ref[name.split()[0]] / best
            lines.append(
                f"| {r['world']} | {name} | {best:.3f} | {med:.3f} | {r['total'] / best / 2**20:.0f} | "
                f"{vs:.2f}x | {_mb(v['peak'])} | {limit} |"
            )
        # like for like: durable (fsynced) rows against dcp_to_torch_save + fsync, the others
        # against dcp_to_torch_save as torch runs it (page cache only)
        cons = r["consolidate"]
        dcp_cached = min(cons["dcp_to_torch_save -> .pt"]["s"])
        dcp_durable = min(cons["dcp_to_torch_save -> .pt, then fsync"]["s"])
        for name, v in cons.items():
            best, med = min(v["s"]), statistics.median(v["s"])
            durable = name.endswith("then fsync") or (name.startswith("weightvault") and "fsync=False" not in name)
            ref = dcp_durable if durable else dcp_cached
            lines.append(
                f"| {r['world']} | consolidate: {name} | {best:.3f} | {med:.3f} | "
                f"{r['total'] / best / 2**20:.0f} | {ref / best:.2f}x | {_mb(v['peak'])} | "
                f"(largest tensor + 64 MB) {_mb(r['largest_local'] * r['world'] + (64 << 20))} |"
            )
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        rank, world, port, work, size, count, repeat = sys.argv[2:9]
        worker(int(rank), int(world), port, Path(work), int(size), int(count), int(repeat))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worlds", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--size", type=int, default=256, help="state size in MB (all ranks together)")
    ap.add_argument("--tensors", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default=None, help="scratch directory (default: a temporary one)")
    ap.add_argument("--out", default=None, help="also write the table here")
    args = ap.parse_args()
    base = Path(args.dir or tempfile.mkdtemp(prefix="wv-dist-bench-"))
    results = [run_world(w, args.size, args.tensors, args.repeat, base / f"w{w}") for w in args.worlds]
    text = (
        f"{platform.platform()}, {os.cpu_count()} CPUs; state {args.size} MB in {args.tensors} "
        f"tensors, Shard(0) -> Shard(1); {args.repeat} rounds\n\n" + table(results) + "\n"
    )
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
