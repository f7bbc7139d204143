"""Quick start: train a small MLP on scikit-learn's bundled digits, save, restore, compare.

Run with `make demo` (or `python examples/quickstart.py`). No download: the digits data ships with
scikit-learn.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

import weightvault


def make_model() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int) -> torch.optim.Optimizer:
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(epochs):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    return opt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=None, help="where to write the checkpoint (default: a temp dir)")
    parser.add_argument("--epochs", type=int, default=60)
    args = parser.parse_args()

    torch.manual_seed(0)
    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target)
    split = int(0.8 * len(x))

    model = make_model()
    opt = train(model, x[:split], y[:split], args.epochs)
    with torch.no_grad():
        acc = (model(x[split:]).argmax(1) == y[split:]).float().mean().item()

    out = Path(args.out or tempfile.mkdtemp()) / "digits-mlp"
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": args.epochs}
    weightvault.save(state, out, metadata={"val_accuracy": acc, "data": "sklearn digits"})
    result = weightvault.verify(out)

    fresh = make_model()
    loaded = weightvault.load(out, framework="torch")
    fresh.load_state_dict(loaded["model"])
    with torch.no_grad():
        same = torch.equal(fresh(x[split:]), model(x[split:]))
    print(f"trained a 64-64-10 MLP on {split} digits for {args.epochs} epochs: val accuracy {acc:.3f}")
    print(f"saved model + Adam state + epoch to {out} ({len(list(out.iterdir()))} files)")
    print(f"verified {result.checked} tensor checksums")
    print(f"restored into a fresh model: predictions identical = {same}")
    print(f"optimizer state restored with int keys: {sorted(loaded['optimizer']['state'])[:4]} ...")
    if not same:
        raise SystemExit("restored model differs from the trained one")


if __name__ == "__main__":
    main()
