"""Number formats: parsing, exact rounding at ties, saturation/wrap bounds, two's complement,
affine int8/int4 against PyTorch's own quantizer, float bit patterns against torch."""

from __future__ import annotations

from fractions import Fraction

import ml_dtypes
import numpy as np
import pytest

from weightvault.errors import UnsupportedOperationError
from weightvault.export.numbers import (
    ROUNDING_MODES,
    dequantize,
    from_stored,
    parse_number_format,
    quantize,
    to_stored,
)


@pytest.mark.parametrize(
    ("text", "bits", "frac", "signed"),
    [
        ("Q1.15", 16, 15, True),
        ("q1.15", 16, 15, True),
        ("Q15", 16, 15, True),
        ("UQ8.8", 16, 8, False),
        ("Q1.7", 8, 7, True),
        ("ap_fixed<16,1>", 16, 15, True),
        ("ap_fixed<16, 6>", 16, 10, True),
        ("fixed<8,3>", 8, 5, True),
        ("ap_ufixed<8,4>", 8, 4, False),
        ("ap_fixed<8,-2>", 8, 10, True),
        ("ap_fixed<8,10>", 8, -2, True),
    ],
)
def test_parse_fixed(text: str, bits: int, frac: int, signed: bool) -> None:
    f = parse_number_format(text)
    assert (f.kind, f.bits, f.frac_bits, f.signed) == ("fixed", bits, frac, signed)


def test_q_and_ap_fixed_spell_the_same_format() -> None:
    a, b = parse_number_format("Q1.15"), parse_number_format("ap_fixed<16,1>")
    assert a == b
    assert a.ap_type == "ap_fixed<16,1>" and a.q_name == "Q1.15"
    assert parse_number_format("UQ8.8").ap_type == "ap_ufixed<16,8>"


def test_parse_floats_and_affine() -> None:
    assert parse_number_format("bfloat16").kind == "float"
    assert parse_number_format("float16").bits == 16
    i4 = parse_number_format("int4")
    assert (i4.kind, i4.bits, i4.signed, i4.code_min, i4.code_max) == ("affine", 4, True, -8, 7)
    assert parse_number_format("uint8").code_max == 255


@pytest.mark.parametrize("bad", ["Q1.40", "int1", "int64", "fixed<0,0>", "float8", "decimal"])
def test_parse_rejects(bad: str) -> None:
    with pytest.raises(UnsupportedOperationError):
        parse_number_format(bad)


# -- rounding -------------------------------------------------------------------------------------
# Worked ties from the research notes (Q1.7, x = k/128): 2.5 LSB, -2.5 LSB, -1.5 LSB, 126.72 LSB
TIES = np.array([2.5, -2.5, -1.5, 126.72, 0.5, -0.5]) / 128
EXPECTED = {
    "half-even": [2, -2, -2, 127, 0, 0],
    "half-away": [3, -3, -2, 127, 1, -1],
    "half-up": [3, -2, -1, 127, 1, 0],
    "floor": [2, -3, -2, 126, 0, -1],
    "truncate": [2, -2, -1, 126, 0, 0],
}


@pytest.mark.parametrize("mode", ROUNDING_MODES)
def test_rounding_ties(mode: str) -> None:
    assert quantize(TIES, "Q1.7", rounding=mode).codes.tolist() == EXPECTED[mode]


def _reference(x: float, frac: int, mode: str) -> int:
    """Exact rounding with Python fractions: the oracle for the vectorised version."""
    v = Fraction(x) * (2**frac)
    fl = v.numerator // v.denominator
    rem = v - fl
    if mode == "floor":
        return fl
    if mode == "truncate":
        return fl if v >= 0 or rem == 0 else fl + 1
    if rem < Fraction(1, 2):
        return fl
    if rem > Fraction(1, 2):
        return fl + 1
    return {"half-even": fl + (fl % 2), "half-away": fl + 1 if v > 0 else fl, "half-up": fl + 1}[
        mode
    ]


@pytest.mark.parametrize("mode", ROUNDING_MODES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_rounding_half_ulp_neighbours_match_exact_reference(mode: str, dtype: type) -> None:
    # Exact ties k+0.5 LSB and the nearest representable numbers on both sides of each tie.
    frac = 15
    k = np.arange(-40, 40, dtype=np.float64) + 0.5
    ties = (k / 2**frac).astype(dtype)
    below = np.nextafter(ties, dtype(-np.inf))
    above = np.nextafter(ties, dtype(np.inf))
    rng = np.random.default_rng(0)
    randoms = rng.uniform(-1, 1, 200).astype(dtype)
    x = np.concatenate([ties, below, above, randoms])
    got = quantize(x, "Q1.15", rounding=mode).codes
    want = [_reference(float(v), frac, mode) for v in x]
    assert got.tolist() == want
    # a neighbour one float ulp away from a tie never rounds like a tie in the wrong direction
    assert (
        quantize(below, "Q1.15", rounding="half-away").codes
        <= quantize(above, "Q1.15", rounding="half-away").codes
    ).all()


def test_affine_rounding_uses_exact_comparisons() -> None:
    # x = 2.5 * s exactly (s a float32 scale): x/s may not come out as 2.5 in float64 division,
    # the tie must still be detected.
    s = np.float64(np.float32(0.1))
    x = np.array([2.5 * s, -2.5 * s, 127 * s])
    from weightvault.export.numbers import round_divide

    assert round_divide(x, s, "half-even").tolist() == [2, -2, 127]
    assert round_divide(x, s, "half-away").tolist() == [3, -3, 127]


# -- overflow -------------------------------------------------------------------------------------
def test_saturation_bounds_q1_15() -> None:
    x = np.array([1.0, -1.0, 32767 / 32768, (32767.5) / 32768, -1.0 - 2**-16, 5.0, -7.0])
    q = quantize(x, "Q1.15")
    assert q.codes.tolist() == [32767, -32768, 32767, 32767, -32768, 32767, -32768]
    # 1.0, the tie above max (rounds to 32768), 5.0 and -7.0 are out of range; -1-2^-17... rounds
    # to -32768 under half-even exactly at the tie, so it is not counted
    assert q.saturated == 4


def test_wrap_keeps_low_bits() -> None:
    q = quantize(np.array([1.5, 1.0, -1.25, 2.0]), "Q1.7", overflow="wrap")
    # AP_WRAP: 1.5 -> -0.5 (0xC0), 1.0 -> -1.0 (0x80), -1.25 -> 0.75, 2.0 -> 0
    assert q.codes.tolist() == [-64, -128, 96, 0]
    assert to_stored(q.codes, 8).tolist() == [0xC0, 0x80, 0x60, 0x00]
    assert q.saturated == 4


def test_unsigned_fixed_saturates_negatives_to_zero() -> None:
    q = quantize(np.array([-0.5, 0.0, 255.99609375, 256.0]), "UQ8.8")
    assert q.codes.tolist() == [0, 0, 65535, 65535]
    assert q.saturated == 2


def test_nonfinite_values() -> None:
    q = quantize(np.array([np.nan, np.inf, -np.inf, 0.25]), "Q1.15", overflow="wrap")
    assert q.codes.tolist() == [0, 32767, -32768, 8192]
    assert q.nonfinite == 3 and q.saturated == 2
    assert q.max_abs_error == 0.0  # only finite inputs count


def test_error_stats() -> None:
    x = np.array([0.1, -0.2, 0.3], dtype=np.float32)
    q = quantize(x, "Q1.7")
    err = np.abs(q.codes / 128 - x.astype(np.float64))
    assert q.max_abs_error == pytest.approx(err.max(), abs=0)
    assert q.rms_error == pytest.approx(np.sqrt(np.mean(err**2)))
    assert q.max_abs_error <= 0.5 / 128


# -- two's complement -----------------------------------------------------------------------------
def test_twos_complement_masking() -> None:
    assert to_stored(np.array([-10]), 12).tolist() == [0xFF6]
    assert to_stored(np.array([-1, -32768, 32767]), 16).tolist() == [0xFFFF, 0x8000, 0x7FFF]
    codes = np.arange(-8, 8)
    stored = to_stored(codes, 4)
    assert stored.max() == 15 and stored.min() == 0
    assert from_stored(stored, 4, True).tolist() == codes.tolist()
    assert from_stored(np.array([0xF]), 4, False).tolist() == [15]


# -- affine ---------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning")
def test_symmetric_per_channel_matches_research_example_and_torch() -> None:
    torch = pytest.importorskip("torch")
    w = np.array([[0.12, -0.5, 0.25], [1.0, -0.003, 0.9]], dtype=np.float32)
    q = quantize(w, "int8", axis=0)
    assert q.codes.tolist() == [[30, -127, 64], [127, 0, 114]]
    np.testing.assert_allclose(q.scale, [0.5 / 127, 1.0 / 127], rtol=1e-7)
    assert q.zero_point.tolist() == [0, 0]
    tq = torch.quantize_per_channel(
        torch.from_numpy(w), torch.tensor(q.scale), torch.tensor(q.zero_point), 0, torch.qint8
    )
    assert tq.int_repr().numpy().tolist() == q.codes.tolist()


@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning")
def test_zero_point_per_tensor_matches_torch() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    w = rng.normal(0.3, 0.5, (16, 9)).astype(np.float32)
    q = quantize(w, "int8", symmetric=False)
    assert q.codes.min() >= -128 and q.codes.max() <= 127
    assert q.codes.min() == -128 and q.codes.max() == 127  # range fully used
    tq = torch.quantize_per_tensor(
        torch.from_numpy(w), float(q.scale), int(q.zero_point), torch.qint8
    )
    assert np.array_equal(tq.int_repr().numpy(), q.codes)
    np.testing.assert_allclose(q.dequantized(), tq.dequantize().numpy(), rtol=0, atol=1e-6)


def test_int4_and_uint8() -> None:
    w = np.linspace(-1, 1, 9)
    q4 = quantize(w, "int4")
    assert q4.codes.min() == -7 and q4.codes.max() == 7  # narrow symmetric range
    qu = quantize(np.linspace(0, 2, 5), "uint8", symmetric=False)
    assert qu.codes[0] == 0
    assert int(qu.zero_point) == 0 and qu.codes.max() == 255
    with pytest.raises(UnsupportedOperationError):
        quantize(w, "uint8", symmetric=True)


def test_per_channel_axis_falls_back_for_vectors() -> None:
    q = quantize(np.array([0.5, -1.0]), "int8", axis=1)
    assert q.axis is None and q.scale.shape == ()


def test_dequantize_affine_per_channel() -> None:
    codes = np.array([[1, 2], [3, 4]])
    out = dequantize(codes, "int8", scale=np.array([0.5, 2.0]), zero_point=np.array([1, 0]), axis=1)
    assert out.tolist() == [[0.0, 4.0], [1.0, 8.0]]


# -- IEEE bit patterns ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["float32", "float16", "bfloat16"])
def test_float_bit_patterns_match_torch(name: str) -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.normal(0, 3, 50), [0.0, -0.0, 1e-8, 65504.0]]).astype(np.float32)
    q = quantize(x, name)
    tdtype = {
        "float32": (torch.float32, torch.int32),
        "float16": (torch.float16, torch.int16),
        "bfloat16": (torch.bfloat16, torch.int16),
    }[name]
    t = torch.from_numpy(x).to(tdtype[0]).view(tdtype[1]).numpy().astype(np.int64)
    bits = 32 if name == "float32" else 16
    assert np.array_equal(q.codes, t & ((1 << bits) - 1))
    assert q.saturated == 0


def test_float16_overflow_counts_as_saturated() -> None:
    q = quantize(np.array([70000.0, -1e6, 1.0]), "float16")
    assert q.saturated == 2
    assert q.codes.tolist() == [0x7C00, 0xFC00, 0x3C00]
    back = dequantize(q.codes, "bfloat16")
    assert back.dtype == np.float64
    assert quantize(np.array([1.0]), "bfloat16").codes.tolist() == [
        int(np.array([1.0], ml_dtypes.bfloat16).view(np.uint16)[0])
    ]
