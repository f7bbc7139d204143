"""Shared by the digits pipeline scripts: data, model and evaluation.

Data: scikit-learn's bundled 8x8 digits (1797 images, no download) by default; MNIST when
``--data DIR`` holds the four IDX files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, optionally ``.gz``).
"""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

HIDDEN = 128


@dataclass
class Split:
    x: torch.Tensor
    y: torch.Tensor


@dataclass
class Data:
    train: Split
    val: Split
    test: Split
    source: str

    @property
    def features(self) -> int:
        return int(self.train.x.shape[1])


def _split(x: np.ndarray, y: np.ndarray) -> Split:
    return Split(
        torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
        torch.from_numpy(y.astype(np.int64)),
    )


def _read_idx(path: Path) -> np.ndarray:
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    count = int(np.prod(dims))
    body = np.frombuffer(raw, dtype=np.uint8, count=count, offset=4 + 4 * ndim)
    return body.reshape(dims)


def _find(directory: Path, stem: str) -> Path:
    for name in (
        stem,
        stem + ".gz",
        stem.replace("-idx", ".idx"),
        stem.replace("-idx", ".idx") + ".gz",
    ):
        if (directory / name).is_file():
            return directory / name
    raise FileNotFoundError(f"{directory}: no {stem}[.gz] (MNIST IDX files expected)")


def load_data(directory: str | None = None) -> Data:
    if directory:
        d = Path(directory)
        xtr = _read_idx(_find(d, "train-images-idx3-ubyte")).reshape(-1, 28 * 28) / 255.0
        ytr = _read_idx(_find(d, "train-labels-idx1-ubyte"))
        xte = _read_idx(_find(d, "t10k-images-idx3-ubyte")).reshape(-1, 28 * 28) / 255.0
        yte = _read_idx(_find(d, "t10k-labels-idx1-ubyte"))
        n_val = min(5000, len(xtr) // 10)
        return Data(
            _split(xtr[:-n_val], ytr[:-n_val]),
            _split(xtr[-n_val:], ytr[-n_val:]),
            _split(xte, yte),
            f"MNIST ({d})",
        )
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = digits.data / 16.0
    y = digits.target
    order = np.random.default_rng(0).permutation(len(x))  # a fixed split, the same in every process
    x, y = x[order], y[order]
    return Data(
        _split(x[:1297], y[:1297]),
        _split(x[1297:1547], y[1297:1547]),
        _split(x[1547:], y[1547:]),
        "scikit-learn digits",
    )


class MLP(torch.nn.Module):
    """``body`` (features) + ``head`` (classifier): fine-tuning replaces the head only."""

    def __init__(
        self, features: int, classes: int = 10, hidden: int = HIDDEN, dropout: float = 0.2
    ) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Linear(features, hidden),
            torch.nn.ReLU(),
            torch.nn.Dropout(dropout),
            torch.nn.Linear(hidden, hidden),
            torch.nn.ReLU(),
        )
        self.head = torch.nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@torch.no_grad()
def accuracy(model: torch.nn.Module, split: Split, labels: torch.Tensor | None = None) -> float:
    was_training = model.training
    model.eval()
    pred = model(split.x).argmax(dim=1)
    model.train(was_training)
    target = split.y if labels is None else labels
    return float((pred == target).float().mean())
