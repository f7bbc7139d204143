"""Every transform states its output's dtype and shape without data (``resolve_info``).

Property: for any input, ``resolve_info(info of x)`` equals the info of ``apply(x)``, and it
refuses exactly the inputs ``apply`` refuses. One strategy per registered transform; a transform
added to the registry without one fails ``test_every_registered_transform_is_covered``.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weightvault.abc.format import TensorInfo
from weightvault.core.dtypes import dtype_name
from weightvault.core.memory import MemoryReader
from weightvault.transforms import base as T
from weightvault.transforms.plan import Plan, Step

DTYPES = ["float32", "float16", "bfloat16", "float64", "int8", "int32", "int64", "uint8", "bool"]
FLOATS = ["float32", "float16", "bfloat16", "float64"]


def _np_dtype(name: str) -> np.dtype:
    return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


def _array(shape: tuple[int, ...], dtype: str) -> np.ndarray:
    size = int(np.prod(shape)) if shape else 1
    return (np.arange(size) % 7).astype(_np_dtype(dtype)).reshape(shape)


def _info(x: np.ndarray, name: str = "t") -> TensorInfo:
    return TensorInfo(name, dtype_name(x.dtype), tuple(x.shape))


shapes = st.lists(st.integers(0, 5), min_size=0, max_size=4).map(tuple)
nonempty_shapes = st.lists(st.integers(1, 6), min_size=1, max_size=4).map(tuple)
dtypes = st.sampled_from(DTYPES)


@st.composite
def transpose_case(draw):
    shape = draw(shapes)
    perm = list(draw(st.permutations(range(len(shape)))))
    if perm and draw(st.booleans()):
        perm = [p - len(shape) if draw(st.booleans()) else p for p in perm]  # negative axes
    if draw(st.integers(0, 5)) == 0:
        perm = draw(st.lists(st.integers(-4, 4), max_size=4))  # often not a permutation
    return T.Transpose(tuple(perm)), [_array(shape, draw(dtypes))]


@st.composite
def reorder_case(draw):
    shape = draw(nonempty_shapes)
    gates = draw(st.sampled_from(["zrh", "ifco", "ab"]))
    src = "".join(draw(st.permutations(gates)))
    dst = "".join(draw(st.permutations(gates)))
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    if draw(st.booleans()):  # make the axis divisible most of the time
        shape = tuple(n * len(gates) if i == axis % len(shape) else n for i, n in enumerate(shape))
    return T.ReorderGates(src, dst, axis), [_array(shape, draw(dtypes))]


@st.composite
def split_case(draw):
    shape = draw(nonempty_shapes)
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    length = shape[axis]
    if draw(st.booleans()):
        n = draw(st.integers(1, 4))
        sections: int | tuple[int, ...] = n
        if draw(st.booleans()):
            shape = tuple(k * n if i == axis % len(shape) else k for i, k in enumerate(shape))
    else:
        cut = sorted(draw(st.lists(st.integers(0, length), max_size=3)))
        bounds = [0, *cut, length + draw(st.sampled_from([0, 0, 0, 1]))]
        sections = tuple(b - a for a, b in zip(bounds, bounds[1:], strict=False))
        n = len(sections)
    index = draw(st.integers(-n - 1, n))
    return T.Split(axis, sections, index), [_array(shape, draw(dtypes))]


@st.composite
def take_case(draw):
    shape = draw(nonempty_shapes)
    axis = draw(st.integers(-len(shape) - 1, len(shape)))
    bound = shape[axis] if -len(shape) <= axis < len(shape) else 3
    index = draw(st.integers(-bound - 1, bound))
    return T.Take(axis, index), [_array(shape, draw(dtypes))]


@st.composite
def reshape_case(draw):
    shape = draw(shapes)
    size = int(np.prod(shape)) if shape else 1
    kind = draw(st.integers(0, 2))
    if kind == 0:  # the same elements, regrouped
        new = list(draw(st.permutations(shape)))
        if new and draw(st.booleans()):
            new[draw(st.integers(0, len(new) - 1))] = -1
    elif kind == 1:
        new = [size]
    else:  # anything: usually wrong
        new = draw(st.lists(st.integers(-2, 6), max_size=3))
    return T.Reshape(tuple(new)), [_array(shape, draw(dtypes))]


@st.composite
def cast_case(draw):
    return T.Cast(draw(dtypes)), [_array(draw(shapes), draw(dtypes))]


@st.composite
def add_constant_case(draw):
    shape = draw(shapes)
    start = draw(st.none() | st.integers(-3, 6))
    stop = draw(st.none() | st.integers(-3, 6))
    transform = T.AddConstant(draw(st.sampled_from([1.0, -0.5, 2.0])), start, stop)
    return transform, [_array(shape, draw(st.sampled_from(FLOATS)))]


@st.composite
def concat_case(draw):
    shape = draw(nonempty_shapes)
    axis = draw(st.integers(-len(shape) - 1, len(shape)))
    arrays = []
    for _ in range(draw(st.integers(1, 3))):
        s = list(shape)
        if -len(shape) <= axis < len(shape):
            s[axis] = draw(st.integers(0, 4))
        if draw(st.integers(0, 6)) == 0:
            s = list(draw(nonempty_shapes))  # a mismatch, usually
        arrays.append(_array(tuple(s), draw(dtypes)))
    return T.Concat(axis), arrays


@st.composite
def stack_case(draw):
    shape = draw(shapes)
    arrays = [
        _array(shape if draw(st.integers(0, 6)) else draw(shapes), draw(dtypes))
        for _ in range(draw(st.integers(1, 3)))
    ]
    return T.Stack(draw(st.integers(-len(shape) - 2, len(shape) + 1))), arrays


@st.composite
def sum_case(draw):
    shape = draw(shapes)
    arrays = []
    for _ in range(draw(st.integers(1, 3))):
        s = shape
        if draw(st.integers(0, 4)) == 0:
            s = draw(shapes)  # broadcastable sometimes, often not
        arrays.append(_array(s, draw(st.sampled_from(FLOATS + ["int32", "int64"]))))
    return T.Sum(), arrays


@st.composite
def full_case(draw):
    return T.Full(draw(shapes), draw(st.sampled_from([0.0, 1.0])), draw(dtypes)), []


CASES = {
    "transpose": transpose_case(),
    "reorder_gates": reorder_case(),
    "split": split_case(),
    "take": take_case(),
    "reshape": reshape_case(),
    "cast": cast_case(),
    "add_constant": add_constant_case(),
    "concat": concat_case(),
    "stack": stack_case(),
    "sum": sum_case(),
    "full": full_case(),
}


def test_every_registered_transform_is_covered() -> None:
    assert set(CASES) == set(T._TRANSFORMS)


def _run(transform, arrays):
    if isinstance(transform, T.Combine):
        return transform.combine(arrays)
    return transform.apply(arrays[0])


def _resolve(transform, infos):
    if isinstance(transform, T.Combine):
        return transform.resolve_info(infos)
    return transform.resolve_info(infos[0])


@pytest.mark.parametrize("name", sorted(CASES))
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_resolved_info_is_the_info_of_the_output(name: str, data: st.DataObject) -> None:
    transform, arrays = data.draw(CASES[name])
    infos = [_info(x, f"in{i}") for i, x in enumerate(arrays)]
    try:
        out = _run(transform, arrays)
    except (ValueError, IndexError, TypeError):
        # What apply refuses, resolve_info refuses too: a plan's dry run fails where the run would.
        with pytest.raises((ValueError, IndexError, TypeError)):
            _resolve(transform, infos)
        return
    resolved = _resolve(transform, infos)
    assert (resolved.dtype, tuple(resolved.shape)) == (dtype_name(out.dtype), out.shape)


def test_a_step_resolves_through_combine_and_transforms() -> None:
    a, b = _array((2, 3), "float32"), _array((2, 3), "float32")
    step = Step(
        "out",
        ("a", "b"),
        (T.Transpose((1, 0)), T.Reshape((-1,)), T.Cast("bfloat16")),
        T.Concat(0),
    )
    out = step.run({"a": a, "b": b}.__getitem__)
    info = step.resolve_info([_info(a, "a"), _info(b, "b")])
    assert info == TensorInfo("out", "bfloat16", (12,))
    assert (info.dtype, info.shape) == (dtype_name(out.dtype), out.shape)


def test_planned_info_reads_no_data() -> None:
    reads: list[str] = []

    class Counting(MemoryReader):
        def get(self, name: str) -> np.ndarray:
            reads.append(name)
            return super().get(name)

    plan = Plan("test", [Step("w.t", ("w",), (T.Transpose((1, 0)), T.Split(0, 2, 1)))])
    tensors = plan.apply(Counting({"w": _array((4, 6), "float16")}))
    assert tensors.info("w.t") == TensorInfo("w.t", "float16", (3, 4))
    assert reads == []
    assert tensors["w.t"].shape == (3, 4)
    assert reads == ["w"]
