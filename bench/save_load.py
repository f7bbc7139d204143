"""Save/load benchmark: weightvault against torch, safetensors, numpy and raw file I/O.

Not a test. Every measurement runs in a fresh child process, so peak RSS is the child's own
(``ru_maxrss``) and no cache of one library helps another. The state is a synthetic
transformer-like state dict (embeddings, attention and MLP blocks, norms) of ``--size`` MB.
Files are written to ``--dir`` (default: a temp dir on the same disk as the repo) and read back
from the page cache, the same for every contender.

Writes come in two situations, each its own row: *fresh* (the op's previous output is deleted
before the child starts, untimed) and *over* (``_over`` rows: the output of the fresh row just
before exists and is replaced; the raw baseline and torch.save truncate it, weightvault replaces
it atomically). The ops run round-robin, ``--repeat`` rounds, so a slow spell of a shared machine
hits every op alike; the table shows each op's best and median and the ratios of both against
the raw op of the same kind and situation.

    python bench/save_load.py --size 1024 --repeat 5

Targets (issue #2): save >= 0.9x raw write and no slower than torch.save or safetensors; save
peak RSS <= state + largest tensor + 100 MB; full load >= 0.9x raw read; open + read one tensor
from a 1 GB checkpoint < 50 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MB = 1024 * 1024


def make_state(size_mb: int) -> dict[str, np.ndarray]:
    """A transformer-like state dict of about ``size_mb`` MB of float32."""
    d = 1024
    vocab = 8192
    rng = np.random.default_rng(0)
    state: dict[str, np.ndarray] = {}
    total = 0
    budget = size_mb * MB

    def add(name: str, shape: tuple[int, ...]) -> None:
        nonlocal total
        state[name] = rng.random(shape, dtype=np.float32)
        total += state[name].nbytes

    add("embed.weight", (vocab, d))
    layer = 0
    while total < budget - 12 * d * d * 4:
        p = f"layers.{layer}."
        for proj in ("q", "k", "v", "o"):
            add(p + f"attn.{proj}.weight", (d, d))
        add(p + "mlp.up.weight", (4 * d, d))
        add(p + "mlp.down.weight", (d, 4 * d))
        add(p + "norm1.weight", (d,))
        add(p + "norm2.weight", (d,))
        layer += 1
    add("norm.weight", (d,))
    return state


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- operations, each run in a child -------------------------------------------------------------


def op_raw_write(state: dict, path: Path, fsync: bool = True) -> None:
    with open(path, "wb") as f:
        for arr in state.values():
            f.write(memoryview(arr.reshape(-1).view(np.uint8)))
        f.flush()
        if fsync:
            os.fsync(f.fileno())


def op_raw_read(path: Path, state_meta: list) -> dict:
    out = {}
    with open(path, "rb", buffering=0) as f:
        for name, shape in state_meta:
            arr = np.empty(shape, np.float32)
            f.readinto(memoryview(arr.reshape(-1).view(np.uint8)))
            out[name] = arr
    return out


def run_op(op: str, size_mb: int, workdir: Path) -> dict:
    """Runs in the child: build what the op needs, time only the op itself."""
    # An "_over" op does what its fresh op does, over the file that op left (the parent ran it
    # just before and did not delete its output).
    op = op.removesuffix("_over")
    need_state = "save" in op or op.startswith("raw_write")
    state = make_state(size_mb) if need_state else None
    meta_path = workdir / "meta.json"
    # Import everything before the clock starts: we time I/O, not interpreter start-up.
    import weightvault  # noqa: F401

    if op.startswith("torch") or op == "wv_load_torch":
        import torch  # noqa: F401
    if op.startswith("st_"):
        import safetensors.numpy  # noqa: F401
    # Flush what earlier ops left dirty, or the kernel throttles this op's writes for their sake.
    os.sync()
    rss_before = peak_rss_mb()
    t0 = time.perf_counter()
    if op == "raw_write":
        op_raw_write(state, workdir / "raw.bin")
    elif op == "raw_write_nofsync":
        op_raw_write(state, workdir / "raw2.bin", fsync=False)
    elif op == "wv_save_nofsync":
        import weightvault

        weightvault.save(state, workdir / "wv2.safetensors", fsync=False)
    elif op == "raw_read":
        meta = json.loads(meta_path.read_text())
        op_raw_read(workdir / "raw.bin", meta)
    elif op == "wv_save":
        import weightvault

        weightvault.save(state, workdir / "wv.safetensors")
    elif op == "wv_save_dir":
        import weightvault

        weightvault.save(state, workdir / "wv_dir")
    elif op == "wv_load_numpy":
        import weightvault

        weightvault.load(workdir / "wv.safetensors")
    elif op == "wv_load_torch":
        import weightvault

        weightvault.load(workdir / "wv.safetensors", framework="torch")
    elif op == "wv_open_one":
        import weightvault

        with weightvault.open(workdir / "wv.safetensors") as r:
            names = r.keys()
            np.array(r.get(names[len(names) // 2]))
    elif op == "torch_save":
        import torch

        torch.save({k: torch.from_numpy(v) for k, v in state.items()}, workdir / "t.pt")
    elif op == "torch_load":
        import torch

        torch.load(workdir / "t.pt", weights_only=True)
    elif op == "torch_load_mmap":
        import torch

        sd = torch.load(workdir / "t.pt", weights_only=True, mmap=True)
        for t in sd.values():
            t.sum()  # touch every page, as a real load must
    elif op == "st_save":
        from safetensors.numpy import save_file

        save_file(state, str(workdir / "st.safetensors"))
    elif op == "st_load":
        from safetensors.numpy import load_file

        load_file(str(workdir / "st.safetensors"))
    elif op == "np_save":
        np.savez(workdir / "np.npz", **state)
    elif op == "np_load":
        with np.load(workdir / "np.npz") as z:
            {k: z[k] for k in z.files}
    else:
        raise SystemExit(f"unknown op {op}")
    seconds = time.perf_counter() - t0
    if op == "raw_write":
        meta_path.write_text(json.dumps([[k, list(v.shape)] for k, v in state.items()]))
    largest = max((v.nbytes for v in state.values()), default=0) / MB if state else 0
    return {"op": op, "seconds": seconds, "peak_rss_mb": peak_rss_mb(), "rss_before_mb": rss_before, "largest_mb": largest}


def child(op: str, size_mb: int, workdir: Path) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--worker", op, "--size", str(size_mb), "--dir", str(workdir)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


# Durable writes (fsync, as weightvault does by default) and page-cache writes (as torch.save,
# safetensors and numpy do) are compared within their own kind, fresh against fresh and
# overwrite against overwrite. A fresh op is always listed before its "_over" op.
ORDER = [
    ("raw_write", "write"),
    ("wv_save", "write"),
    ("wv_save_dir", "write"),
    ("raw_write_over", "write_over"),
    ("wv_save_over", "write_over"),
    ("wv_save_dir_over", "write_over"),
    ("raw_write_nofsync", "write_nofsync"),
    ("wv_save_nofsync", "write_nofsync"),
    ("torch_save", "write_nofsync"),
    ("st_save", "write_nofsync"),
    ("np_save", "write_nofsync"),
    ("raw_write_nofsync_over", "write_nofsync_over"),
    ("wv_save_nofsync_over", "write_nofsync_over"),
    ("torch_save_over", "write_nofsync_over"),
    ("raw_read", "read"),
    ("wv_load_numpy", "read"),
    ("wv_load_torch", "read"),
    ("torch_load", "read"),
    ("torch_load_mmap", "read"),
    ("st_load", "read"),
    ("np_load", "read"),
    ("wv_open_one", "read"),
]
BASELINE = {
    "write": "raw_write",
    "write_over": "raw_write_over",
    "write_nofsync": "raw_write_nofsync",
    "write_nofsync_over": "raw_write_nofsync_over",
    "read": "raw_read",
}
# What each fresh write op leaves behind; it is deleted before each of that op's runs.
OUTPUT = {
    "raw_write": "raw.bin",
    "raw_write_nofsync": "raw2.bin",
    "wv_save": "wv.safetensors",
    "wv_save_nofsync": "wv2.safetensors",
    "wv_save_dir": "wv_dir",
    "torch_save": "t.pt",
    "st_save": "st.safetensors",
    "np_save": "np.npz",
}


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1024, help="state size in MB (default 1024)")
    parser.add_argument("--dir", default=None, help="scratch directory")
    parser.add_argument(
        "--repeat", type=int, default=3, help="rounds of every op; best and median are reported"
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--markdown", default=None, help="also write the table to this file")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_op(args.worker, args.size, Path(args.dir))))
        return

    workdir = Path(args.dir or tempfile.mkdtemp(prefix="wv-bench-", dir=Path(__file__).resolve().parent))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        runs: dict[str, list[dict]] = {op: [] for op, _ in ORDER}
        for _ in range(args.repeat):
            for op, _kind in ORDER:
                if op in OUTPUT:
                    remove(workdir / OUTPUT[op])
                runs[op].append(child(op, args.size, workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results = {op: summarize(rs) for op, rs in runs.items()}
    table = render(results, args.size, args.repeat)
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")


def summarize(runs: list[dict]) -> dict:
    """The fastest run (its RSS too) plus the median seconds of all runs."""
    best = dict(min(runs, key=lambda r: r["seconds"]))
    best["median"] = statistics.median(r["seconds"] for r in runs)
    return best


def render(results: dict, size_mb: int, repeat: int) -> str:
    gb = size_mb / 1024

    def ratio(op: str, base: str, key: str = "seconds") -> float:
        return results[base][key] / results[op][key] if results[op][key] else float("inf")

    lines = [
        f"State: {size_mb} MB of float32 (transformer-like), {repeat} rounds, page-cache reads.",
        "",
        "| operation | best s | median s | GB/s (best) | peak RSS MB "
        "| vs raw, best | vs raw, median |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for op, kind in ORDER:
        r = results[op]
        base = BASELINE[kind]
        rate = gb / r["seconds"] if op != "wv_open_one" else float("nan")
        lines.append(
            f"| {op} | {r['seconds']:.3f} | {r['median']:.3f} | {rate:.2f} "
            f"| {r['peak_rss_mb']:.0f} | {ratio(op, base):.2f}x | {ratio(op, base, 'median'):.2f}x |"
        )
    save = results["wv_save"]
    largest = save["largest_mb"]
    budget = size_mb + largest + 100

    def both(op: str, base: str) -> str:
        return f"{ratio(op, base):.2f}x / {ratio(op, base, 'median'):.2f}x"

    lines += [
        "",
        "Targets (best / median):",
        f"- save vs raw write, both fsynced: fresh {both('wv_save', 'raw_write')}, "
        f"over an existing file {both('wv_save_over', 'raw_write_over')}; both page-cache only: "
        f"fresh {both('wv_save_nofsync', 'raw_write_nofsync')}, "
        f"over {both('wv_save_nofsync_over', 'raw_write_nofsync_over')} (target >= 0.9x)",
        "- save (no fsync, like them) vs torch.save: "
        f"fresh {both('wv_save_nofsync', 'torch_save')}, "
        f"over {both('wv_save_nofsync_over', 'torch_save_over')}; "
        f"vs safetensors: {both('wv_save_nofsync', 'st_save')} (target >= 1.0x)",
        f"- save peak RSS {save['peak_rss_mb']:.0f} MB vs budget state+largest+100 = {budget:.0f} MB",
        f"- load numpy vs raw read: {both('wv_load_numpy', 'raw_read')}, "
        f"torch: {both('wv_load_torch', 'raw_read')} (target >= 0.9x)",
        f"- open + read one tensor: {results['wv_open_one']['seconds'] * 1000:.1f} ms (target < 50 ms)",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
