"""Chunked tensors: boxes of a global tensor, their overlaps, and the byte runs an overlap needs.

A distributed save stores a tensor as *chunks*: each chunk is the box ``offsets`` (its first
element's global index) x ``sizes`` of the global tensor, written in C order as its own record.
This module is the arithmetic behind that, without any framework:

* :func:`check_tiling` proves a manifest's chunks cover the global shape exactly once (each inside
  the shape, none overlapping another, the volumes adding up), before anything is allocated;
* :func:`intersect` is the box two boxes share (what a rank restoring into another mesh needs
  from one stored chunk);
* :func:`byte_runs` turns "this sub-box of a stored chunk" into the contiguous element runs of
  the chunk's C-order bytes that hold it, so a reader ``pread``s exactly those bytes and nothing
  around them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from weightvault.errors import InvalidHeaderError, InvalidOffsetError, ResourceLimitError

if TYPE_CHECKING:  # numpy is imported where data is touched: header-only commands never need it
    import numpy as np

__all__ = ["MAX_CHUNKS", "Box", "byte_runs", "check_tiling", "intersect"]

#: most chunks one tensor may have (the overlap check is quadratic in it; a 4096-rank job with a
#: 2-D mesh still has one chunk per rank per tensor)
MAX_CHUNKS = 1 << 14


@dataclass(frozen=True)
class Box:
    """``sizes`` elements per dimension starting at global index ``offsets``."""

    offsets: tuple[int, ...]
    sizes: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.sizes)

    def slices(self, origin: Sequence[int] | None = None) -> tuple[slice, ...]:
        """Index of this box in an array whose element 0 is at global ``origin`` (default 0)."""
        base = origin if origin is not None else (0,) * len(self.offsets)
        bounds = zip(self.offsets, base, self.sizes, strict=True)
        return tuple(slice(o - b, o - b + s) for o, b, s in bounds)


def intersect(a: Box, b: Box) -> Box | None:
    """The box ``a`` and ``b`` share, or None when they share no element."""
    lo = tuple(max(x, y) for x, y in zip(a.offsets, b.offsets, strict=True))
    hi = tuple(
        min(x + s, y + t) for x, s, y, t in zip(a.offsets, a.sizes, b.offsets, b.sizes, strict=True)
    )
    if any(h <= lo_ for lo_, h in zip(lo, hi, strict=True)):
        return None
    return Box(lo, tuple(h - lo_ for lo_, h in zip(lo, hi, strict=True)))


def check_tiling(shape: Sequence[int], chunks: Sequence[Box], *, path: str, tensor: str) -> None:
    """Refuse chunks that do not tile ``shape`` exactly once (inside it, disjoint, complete)."""
    import numpy as np

    if len(chunks) > MAX_CHUNKS:
        raise ResourceLimitError(
            f"{len(chunks)} chunks, over the {MAX_CHUNKS} one tensor may have",
            path=path,
            tensor=tensor,
        )
    ndim = len(shape)
    for c in chunks:
        if len(c.offsets) != ndim or len(c.sizes) != ndim:
            raise InvalidHeaderError(
                f"chunk at {list(c.offsets)} has {len(c.sizes)} dimensions, the tensor {ndim}",
                path=path,
                tensor=tensor,
            )
        dims = zip(c.offsets, c.sizes, shape, strict=True)
        if any(o < 0 or s < 0 or o + s > d for o, s, d in dims):
            raise InvalidOffsetError(
                f"chunk at {list(c.offsets)} of size {list(c.sizes)} reaches outside the shape "
                f"{list(shape)}",
                path=path,
                tensor=tensor,
            )
    real = [c for c in chunks if c.numel]
    if sum(c.numel for c in real) != math.prod(shape):
        raise InvalidHeaderError(
            f"the chunks hold {sum(c.numel for c in real)} elements, the shape {list(shape)} "
            f"{math.prod(shape)}: part of the tensor is missing or stored twice",
            path=path,
            tensor=tensor,
        )
    if len(real) < 2:
        return
    lo = np.array([c.offsets for c in real], dtype=np.int64)
    hi = lo + np.array([c.sizes for c in real], dtype=np.int64)
    for i in range(len(real) - 1):  # vectorised over the later chunks
        shared = np.all((np.maximum(lo[i], lo[i + 1 :]) < np.minimum(hi[i], hi[i + 1 :])), axis=1)
        if shared.any():
            j = i + 1 + int(np.argmax(shared))
            raise InvalidHeaderError(
                f"chunks at {list(real[i].offsets)} and {list(real[j].offsets)} overlap",
                path=path,
                tensor=tensor,
            )


def byte_runs(chunk_sizes: Sequence[int], part: Box) -> tuple[np.ndarray, int]:
    """The element runs of a C-order chunk of ``chunk_sizes`` that hold ``part`` (a box in the
    chunk's own coordinates): ``(starts, run_length)``, in elements, in the C order of ``part``,
    so reading them one after the other fills a C-order array of ``part.sizes``."""
    import numpy as np

    ndim = len(chunk_sizes)
    if ndim == 0:
        return np.zeros(1, np.int64), 1
    # the trailing dimensions ``part`` spans completely join into one run with the next one in
    k = ndim - 1
    while k > 0 and part.sizes[k] == chunk_sizes[k] and part.offsets[k] == 0:
        k -= 1
    strides = [math.prod(chunk_sizes[d + 1 :]) for d in range(ndim)]
    run = part.sizes[k] * strides[k]
    base = sum(o * s for o, s in zip(part.offsets, strides, strict=True))
    if k == 0:
        return np.array([base], np.int64), run
    grids = np.meshgrid(*[np.arange(n, dtype=np.int64) for n in part.sizes[:k]], indexing="ij")
    starts = base + sum(g.reshape(-1) * strides[d] for d, g in enumerate(grids))
    return np.asarray(starts, np.int64), run
