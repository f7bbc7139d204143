"""Load a checkpoint straight onto a CUDA device: weightvault (pinned staging, parallel preads)
against torch.load(map_location="cuda") and safetensors' load_file(device="cuda"), one run.

Not a test; needs a GPU.

    python bench/cuda_load.py --size 1024
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

import weightvault


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    del out
    torch.cuda.empty_cache()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=1024, help="state size in MB")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    n = args.size * 1024 * 1024 // 4 // 16
    state = {f"layer{i}.weight": torch.randn(n) for i in range(16)}
    d = Path(tempfile.mkdtemp())
    weightvault.save(state, d / "wv.safetensors")
    torch.save(state, d / "t.pt")
    ops = {
        "weightvault.load(device=cuda)": lambda: weightvault.load(d / "wv.safetensors", framework="torch", device="cuda"),
        "torch.load(map_location=cuda)": lambda: torch.load(d / "t.pt", map_location="cuda", weights_only=True),
    }
    try:
        from safetensors.torch import load_file

        ops["safetensors load_file(device=cuda)"] = lambda: load_file(str(d / "wv.safetensors"), device="cuda")
    except ImportError:
        pass
    gb = args.size / 1024
    base = None
    print(f"{args.size} MB float32 to {torch.cuda.get_device_name()}, best of {args.repeat}, files in page cache")
    print("| operation | seconds | GB/s | vs torch.load |")
    print("|---|---:|---:|---:|")
    rows = {name: min(timed(fn) for _ in range(args.repeat)) for name, fn in ops.items()}
    base = rows["torch.load(map_location=cuda)"]
    for name, sec in rows.items():
        print(f"| {name} | {sec:.3f} | {gb / sec:.2f} | {base / sec:.2f}x |")


if __name__ == "__main__":
    main()
