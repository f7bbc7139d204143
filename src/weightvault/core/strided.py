"""Strided views of a flat record (torch's storage model), shared by the readers that meet them.

A torch tensor is ``shape`` + ``stride`` + ``offset`` (all in elements) over a storage; the
pickle of a ``.pt`` file and the weights config of a ``.pt2`` archive describe tensors that way.
:class:`StridedView` is the arithmetic both need before touching any byte: how many elements,
whether the view is plain C order, and how far into the record it reaches (checked against the
record's real size before reading).
"""

from __future__ import annotations

import math

__all__ = ["StridedView"]


class StridedView:
    """Mixin for a record describing a view: needs ``shape``, ``stride`` and ``offset``."""

    shape: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def is_contiguous(self) -> bool:
        """C order without gaps (dimensions of size 1 may have any stride, as in torch)."""
        expected = 1
        for size, stride in zip(reversed(self.shape), reversed(self.stride), strict=True):
            if size != 1 and stride != expected:
                return False
            expected *= size
        return True

    def extent(self) -> int:
        """Elements of the record this view reaches (its last element's offset + 1; 0 if empty)."""
        if self.numel == 0:
            return 0
        return self.offset + sum((s - 1) * st for s, st in zip(self.shape, self.stride, strict=True)) + 1
