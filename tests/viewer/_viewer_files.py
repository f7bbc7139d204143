"""Weight files for the viewer tests, written by weightvault itself, plus one broken file.

A plain module (not conftest) so that test modules can import its names."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

import weightvault


@dataclass
class ViewerFiles:
    a: Path  # native checkpoint with training metadata
    b: Path  # a's tensors with one changed, one removed and one added
    broken: Path  # safetensors header that claims more bytes than the file has
    converted: Path  # native, converted from an npz with a rename: has source + transforms
    run: Path  # CheckpointManager run directory with three steps
    tensors_a: dict[str, np.ndarray]
    tensors_b: dict[str, np.ndarray]


CHANGED = "encoder.layer0.bias"
REMOVED = "head.steps"
ADDED = "extra.new_scale"


def make_viewer_files(root: Path) -> ViewerFiles:
    rng = np.random.default_rng(7)
    tensors_a = {
        "encoder.layer0.weight": rng.normal(size=(300, 200)).astype(np.float32),
        CHANGED: rng.normal(size=48).astype(np.float32),
        "encoder/attn/qkv.weight": rng.normal(size=(12, 4, 3, 3)).astype(np.float16),
        REMOVED: np.arange(10, dtype=np.int64),
        "mask": np.array([True, False, True, True]),
    }
    tensors_b = dict(tensors_a)
    tensors_b[CHANGED] = tensors_a[CHANGED] + np.float32(0.25)
    del tensors_b[REMOVED]
    tensors_b[ADDED] = np.ones(3, np.float32)
    a = weightvault.save(tensors_a, root / "a.safetensors", metadata={"epoch": 3, "step": 300, "metrics": {"loss": 0.125}}, fsync=False)
    b = weightvault.save(tensors_b, root / "b.safetensors", fsync=False)
    broken = root / "broken.safetensors"
    broken.write_bytes(b"\x00\x10\x00\x00\x00\x00\x00\x00" + b'{"w": ')
    npz = root / "plain.npz"
    np.savez(npz, **{"dense.kernel": np.eye(3, dtype=np.float32)})
    converted = root / "converted"
    weightvault.convert(npz, converted, rename=[(r"^dense\.", "fc.")])
    from weightvault.checkpoint.manager import CheckpointManager

    run = root / "run"
    with CheckpointManager(run, max_to_keep=None, fsync=False) as mgr:
        for step, loss in ((100, 1.0), (200, 0.5), (300, 0.25)):
            mgr.save(step, {"w": np.full(4, step, np.float32)}, metrics={"loss": loss, "acc": 1 - loss / 2})
    return ViewerFiles(Path(a), Path(b), broken, converted, run, tensors_a, tensors_b)
