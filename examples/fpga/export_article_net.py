"""Export the network of the weight-extraction article to Xilinx COE files in Q1.15.

The article copies weights out of a PyTorch checkpoint into block-RAM initialisation files by hand:
print with a chosen precision, reshape, split the GRU's fused ``weight_ih`` into ``W_ir|W_iz|W_in``,
paste into a text file. Here that is one call. The network: Linear 96x96, 64x64 and 12x64, a
depthwise 1x1x1x3 and a pointwise 12x1x1x1 convolution, and a 2-layer GRU (input 12, hidden 8).

Run: ``python examples/fpga/export_article_net.py --out demo-out/fpga`` (part of ``make demo``).
Writes, under --out:

* ``checkpoint/net_state_dict.pt``   the PyTorch checkpoint (``torch.save`` of a state dict);
* ``bram/weights.coe`` + ``memory_map.{json,h,vh}``  every tensor in one 16-bit memory;
* ``per-tensor/*.coe``                one COE file per tensor (GRU gates split into r, z, n);
* ``export.json`` in each folder      the sidecar that makes the folder readable again.

Then it reads the COE files back and checks they hold exactly the quantized codes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

import weightvault
from weightvault.cli.common import print_table
from weightvault.export.numbers import quantize

FIXTURE = (
    Path(__file__).resolve().parents[2]
    / ".."
    / "shared"
    / "fixtures"
    / "pytorch"
    / "net_state_dict.pt"
)
ARTICLE_TENSORS = ["fc*", "depth_conv.*", "point_conv.*", "gru.*"]
GRU_SPLIT = ["gru.weight_*:0:gru", "gru.bias_*:0:gru"]  # PyTorch gate order r, z, n


def build_checkpoint(out: Path) -> Path:
    """Save the article's network with torch; fall back to the shared fixture without torch."""
    try:
        import torch
        from torch import nn
    except ImportError:
        if not FIXTURE.exists():
            sys.exit("needs torch, or the shared fixture " + str(FIXTURE))
        return FIXTURE

    class ArticleNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(96, 96)
            self.fc2 = nn.Linear(64, 64)
            self.fc3 = nn.Linear(64, 12)
            self.depth_conv = nn.Conv2d(1, 1, kernel_size=(1, 3), bias=False)
            self.point_conv = nn.Conv2d(1, 12, kernel_size=1)
            self.gru = nn.GRU(12, 8, num_layers=2)

    torch.manual_seed(0)
    path = out / "checkpoint" / "net_state_dict.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ArticleNet().state_dict(), path)
    return path


def check_roundtrip(checkpoint: Path, export_dir: Path) -> int:
    """Read the exported files back: every code must equal an independent quantization."""
    checked = 0
    with weightvault.open(checkpoint) as src, weightvault.open(export_dir, values="codes") as out:
        for name in out:
            entry = out.entry(name)
            x = src.get(entry["source"])
            if entry["split"]:
                parts = entry["split"]["parts"]
                x = np.split(x, len(parts), axis=0)[parts.index(entry["split"]["part"])]
            want = quantize(x, "Q1.15").codes
            if not np.array_equal(out.get(name).astype(np.int64), want):
                sys.exit(f"MISMATCH {export_dir}: {name}")
            checked += 1
    return checked


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo-out/fpga"))
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="an existing PyTorch checkpoint (default: build one with torch)",
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    checkpoint = args.checkpoint or build_checkpoint(args.out)
    print(f"checkpoint: {checkpoint}")

    common: dict[str, Any] = {
        "file_format": "coe",
        "number": "Q1.15",
        "rounding": "half-even",
        "overflow": "saturate",
        "include": ARTICLE_TENSORS,
        "split": GRU_SPLIT,
        "radix": 16,
    }
    # One 16-bit memory for everything, with a memory map; 16384 words = 8 RAMB36 at 16 bits.
    bram = weightvault.export_hw(
        checkpoint, args.out / "bram", one_memory="weights", bram_depth=16384, **common
    )
    per_tensor = weightvault.export_hw(checkpoint, args.out / "per-tensor", **common)

    print_table(
        bram.COLUMNS,
        bram.rows(),
        title="Q1.15 quantization error (one memory 'weights', 16-bit words)",
        justify=dict.fromkeys(("max_abs_err", "rms_err", "saturated", "base", "words"), "right"),
    )
    for line in bram.warnings:
        print(f"WARNING {line}", file=sys.stderr)
    mem = bram.memories[0]
    print(
        f"\nmemory {mem['name']}: {mem['used_words']} of {mem['depth']} words used; "
        f"map in {args.out / 'bram' / 'memory_map.json'} (and .h / .vh)"
    )
    print(f"per-tensor COE files: {len(per_tensor.tensors)} in {args.out / 'per-tensor'}")
    n = check_roundtrip(checkpoint, args.out / "bram") + check_roundtrip(
        checkpoint, args.out / "per-tensor"
    )
    print(f"round trip: {n} tensors read back from the COE files, codes identical")


if __name__ == "__main__":
    main()
