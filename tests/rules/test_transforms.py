"""Transforms and plans: apply, inverse, serialisation, and the layouts they encode."""

from __future__ import annotations

import json

import numpy as np
import pytest

from weightvault.transforms import (
    AddConstant,
    Cast,
    Concat,
    Full,
    Plan,
    ReorderGates,
    Reshape,
    Split,
    Stack,
    Step,
    Sum,
    Take,
    Transpose,
    transform_from_dict,
)
from weightvault.transforms.base import NotInvertibleError

rng = np.random.default_rng(0)
X4 = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)

INVERTIBLE = [
    (Transpose((3, 2, 0, 1)), X4),
    (Transpose((1, 0)), X4[0, 0]),
    (ReorderGates("iofc", "ifco", 0), rng.normal(size=(8, 3))),
    (ReorderGates("zrh", "rzh", 1), rng.normal(size=(2, 9))),
    (Reshape((6, 20), (2, 3, 4, 5)), X4),
    (Cast("float64", "float32"), X4),
    (Cast("bfloat16", "float32"), X4.round(2)),
    (AddConstant(1.0, 4, 8), rng.normal(size=16).astype(np.float32)),
    (AddConstant(-0.5), rng.normal(size=(3, 2))),
]


@pytest.mark.parametrize(("t", "x"), INVERTIBLE, ids=lambda v: getattr(v, "name", ""))
def test_inverse_undoes_apply(t, x) -> None:
    y = t.apply(x)
    back = t.inverse().apply(y)
    assert back.shape == x.shape
    if isinstance(t, Cast) and t.dtype == "bfloat16":
        np.testing.assert_allclose(back, x, rtol=1e-2)  # bfloat16 keeps 8 bits of mantissa
    else:
        np.testing.assert_allclose(back.astype(x.dtype), x, rtol=1e-6)


ALL = [t for t, _ in INVERTIBLE] + [
    Split(0, (3, 5), 1),
    Split(1, 2, 0),
    Take(0, 1),
    Reshape((4, 5)),
    Cast("int8"),
    Concat(1),
    Stack(0),
    Sum(),
    Full((2, 3), 1.0, "float16"),
]


@pytest.mark.parametrize("t", ALL, ids=lambda v: v.name)
def test_to_dict_from_dict_round_trip_through_json(t) -> None:
    d = json.loads(json.dumps(t.to_dict()))
    assert d["name"] == t.name
    assert transform_from_dict(d) == t


def test_unknown_transform_name_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown transform 'flip'"):
        transform_from_dict({"name": "flip", "configuration": {}})


@pytest.mark.parametrize("t", [Split(0, 2, 0), Take(0, 0), Reshape((4,)), Cast("float32")], ids=lambda v: v.name)
def test_lossy_transforms_have_no_inverse(t) -> None:
    with pytest.raises(NotInvertibleError):
        t.inverse()


def test_reorder_gates_moves_real_gate_blocks() -> None:
    # ONNX LSTM stacks gates i,o,f,c; PyTorch wants i,f,g(c),o. Label each block by its gate.
    hidden = 3
    blocks = {g: np.full((hidden, 2), v, np.float32) for v, g in enumerate("iofc")}
    onnx_w = np.concatenate([blocks[g] for g in "iofc"])
    torch_w = ReorderGates("iofc", "ifco", 0).apply(onnx_w)
    assert [int(torch_w[k * hidden, 0]) for k in range(4)] == [0, 2, 3, 1]  # i, f, c, o
    # Keras GRU z,r,h on the column axis of a [in, 3H] kernel to PyTorch r,z,n
    keras = np.concatenate([np.full((2, hidden), v) for v in (10, 20, 30)], axis=1)
    out = ReorderGates("zrh", "rzh", 1).apply(keras)
    assert out[0, ::hidden].tolist() == [20, 10, 30]


def test_reorder_gates_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="permutations"):
        ReorderGates("ifco", "ifgo")
    with pytest.raises(ValueError, match="equal gate blocks"):
        ReorderGates("zrh", "rzh").apply(np.zeros(10))


def test_transpose_checks_rank_and_conv_permutation() -> None:
    with pytest.raises(ValueError, match="4-D"):
        Transpose((3, 2, 0, 1)).apply(np.zeros((2, 2)))
    hwio = rng.normal(size=(3, 5, 2, 7))  # kh, kw, in, out
    oihw = Transpose((3, 2, 0, 1)).apply(hwio)
    assert oihw.shape == (7, 2, 3, 5)
    assert oihw[6, 1, 2, 4] == hwio[2, 4, 1, 6]


def test_split_sizes_must_add_up() -> None:
    with pytest.raises(ValueError, match="do not add up"):
        Split(0, (2, 2), 0).apply(np.zeros(5))
    with pytest.raises(ValueError, match="does not split"):
        Split(0, 2, 0).apply(np.zeros(5))


def test_combiners() -> None:
    a, b = np.arange(3.0), np.arange(3.0) * 10
    np.testing.assert_array_equal(Sum().combine([a, b]), a + b)
    assert Stack(0).combine([a, b]).shape == (2, 3)
    assert Concat(0).combine([a, b]).shape == (6,)
    full = Full((), 0, "int64").combine([])
    assert full.dtype == np.int64 and full.shape == ()


def test_flatten_dense_reshape_matches_nchw_flatten() -> None:
    """The flatten hint's steps: Keras Dense after an NHWC Flatten == Linear after an NCHW flatten."""
    h, w, c, out = 2, 3, 4, 5
    kernel = rng.normal(size=(h * w * c, out))
    steps = (Reshape((h, w, c, out), kernel.shape), Transpose((3, 2, 0, 1)), Reshape((out, c * h * w), (out, c, h, w)))
    weight = kernel
    for t in steps:
        weight = t.apply(weight)
    feature_map = rng.normal(size=(h, w, c))  # one NHWC sample
    np.testing.assert_allclose(feature_map.reshape(-1) @ kernel, weight @ feature_map.transpose(2, 0, 1).reshape(-1))
    back = weight
    for t in reversed(steps):
        back = t.inverse().apply(back)
    np.testing.assert_array_equal(back, kernel)


# -- plans ------------------------------------------------------------------------------------------


def _plan() -> Plan:
    return Plan(
        "test",
        [
            Step("fc.weight", ("fc/kernel",), (Transpose((1, 0)),), note="dense"),
            Step("conv.weight", ("conv/kernel",), (Transpose((3, 2, 0, 1)),)),
            Step("lstm.bias", ("b1", "b2"), (), Sum()),
            Step("bn.num_batches_tracked", (), (), Full((), 0, "int64")),
        ],
        dropped={"global_step": "bookkeeping"},
        notes=["eps"],
    )


SOURCE = {
    "fc/kernel": rng.normal(size=(3, 4)),
    "conv/kernel": X4,
    "b1": np.ones(4),
    "b2": np.full(4, 2.0),
}


def test_plan_round_trips_through_json_and_replays() -> None:
    plan = _plan()
    again = Plan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert again.to_dict() == plan.to_dict()
    a, b = plan.apply(SOURCE), again.apply(SOURCE)
    assert list(a) == list(b) == ["fc.weight", "conv.weight", "lstm.bias", "bn.num_batches_tracked"]
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    np.testing.assert_array_equal(a["lstm.bias"], np.full(4, 3.0))
    assert a.info("conv.weight").shape == (5, 4, 2, 3)
    assert a.info("bn.num_batches_tracked").dtype == "int64"


def test_plan_inverse_restores_sources() -> None:
    one_to_one = Plan("t", _plan().steps[:2])
    forward = one_to_one.apply(SOURCE)
    inverse = one_to_one.inverse()
    back = inverse.apply({k: forward[k] for k in forward})
    assert sorted(back) == ["conv/kernel", "fc/kernel"]
    for name in back:
        np.testing.assert_array_equal(back[name], SOURCE[name])


def test_plan_inverse_refuses_combined_steps() -> None:
    with pytest.raises(ValueError, match="lstm.bias"):
        _plan().inverse()


def test_step_with_several_sources_needs_a_combiner() -> None:
    with pytest.raises(ValueError, match="no combiner"):
        Step("x", ("b1", "b2")).run(SOURCE.__getitem__)


def test_duplicate_targets_are_detected() -> None:
    plan = Plan("t", [Step("a", ("b1",)), Step("a", ("b2",))])
    with pytest.raises(ValueError, match="two rules produce 'a'"):
        plan.check_targets_unique()
