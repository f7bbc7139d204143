"""Layout transforms: small, named, serialisable array-to-array steps.

A conversion between frameworks is a :class:`~weightvault.transforms.plan.Plan`: for every target
tensor, the source tensors it comes from, how they are combined (concat, stack, sum, or none), and
a list of transforms applied in order (transpose, reorder_gates, split, reshape, cast,
add_constant). Each transform is a frozen dataclass with ``to_dict``/``from_dict``, ``apply`` and,
where one exists, ``inverse``; the plan is written into the output's manifest, so any conversion
can be inspected, replayed and (where every step is invertible) undone.
"""

from weightvault.transforms.base import (
    AddConstant,
    Cast,
    Combine,
    Concat,
    Full,
    Reshape,
    ReorderGates,
    Split,
    Stack,
    Sum,
    Take,
    Transform,
    Transpose,
    transform_from_dict,
)
from weightvault.transforms.plan import Plan, Step

__all__ = [
    "AddConstant",
    "Cast",
    "Combine",
    "Concat",
    "Full",
    "Plan",
    "ReorderGates",
    "Reshape",
    "Split",
    "Stack",
    "Step",
    "Sum",
    "Take",
    "Transform",
    "Transpose",
        "transform_from_dict",
]
