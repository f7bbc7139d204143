"""Number formats for hardware export: IEEE bit patterns, fixed point and affine integers.

Every format turns a float tensor into integer *codes* and back:

* ``float32`` / ``float16`` / ``bfloat16``: the code is the IEEE bit pattern (unsigned); numpy
  rounds to nearest-even when narrowing, values beyond the range become infinity (counted as
  saturated).
* fixed point (``Q1.15``, ``UQ8.8``, ``ap_fixed<16,1>``, ``ap_ufixed<8,8>``): the code is the
  integer ``q`` with value ``q * 2**-F``; stored as ``W`` bits, two's complement when signed.
* affine integers (``int8``, ``int4``, ``uint8``...): ``value = (q - zero_point) * scale`` with a
  scale (and zero point) per tensor or per channel, computed from the data.

Exactness. Rounding is decided with exact comparisons, never by trusting ``x / s`` to land on the
right side of a tie: for a candidate ``c`` we compare ``x`` against ``c*s`` and ``2x`` against
``(2c+1)*s``. Both products are exact in float64 because ``s`` is a power of two (fixed point) or
a float32 scale times an integer of at most 17 bits (affine), and comparisons of floats are exact.
So ``0.5 ulp`` ties round exactly as the chosen mode says, whatever the input dtype.

Negative numbers are stored as the masked two's complement pattern ``q & (2**W - 1)``;
:func:`to_stored` and :func:`from_stored` convert between codes and stored bits.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

import ml_dtypes
import numpy as np

from weightvault.errors import UnsupportedOperationError

__all__ = [
    "OVERFLOW_MODES",
    "ROUNDING_MODES",
    "NumberFormat",
    "Quantized",
    "dequantize",
    "from_stored",
    "parse_number_format",
    "quantize",
    "round_divide",
    "to_stored",
]

Rounding = Literal["half-even", "half-away", "half-up", "truncate", "floor"]
Overflow = Literal["saturate", "wrap"]

#: half-even: ties to even (numpy, PyTorch, AP_RND_CONV); half-away: ties away from zero (TFLite,
#: C ``round``); half-up: ties toward +inf (AP_RND); truncate: toward zero (C cast, AP_TRN_ZERO);
#: floor: toward -inf (AP_TRN, the ap_fixed default).
ROUNDING_MODES: tuple[str, ...] = ("half-even", "half-away", "half-up", "truncate", "floor")
OVERFLOW_MODES: tuple[str, ...] = ("saturate", "wrap")

_FLOATS = {
    "float32": (32, np.float32),
    "float16": (16, np.float16),
    "bfloat16": (16, ml_dtypes.bfloat16),
}
_FLOAT_ALIASES = {
    "f32": "float32",
    "fp32": "float32",
    "f16": "float16",
    "fp16": "float16",
    "half": "float16",
    "bf16": "bfloat16",
}

MAX_FIXED_BITS = 32
MAX_AFFINE_BITS = 16


@dataclass(frozen=True)
class NumberFormat:
    """How one value is encoded.

    Attributes:
        kind: ``"float"``, ``"fixed"`` or ``"affine"``.
        bits: width of one stored value.
        frac_bits: fraction bits F of fixed point (value = code * 2**-F; may be negative or > bits).
        signed: two's complement (fixed/affine); float bit patterns count as unsigned codes.
        name: the canonical spelling, e.g. ``"Q1.15"``, ``"float16"``, ``"int8"``.
    """

    kind: Literal["float", "fixed", "affine"]
    bits: int
    frac_bits: int = 0
    signed: bool = True
    name: str = ""

    # -- ranges -----------------------------------------------------------------------------------
    @property
    def code_min(self) -> int:
        if self.kind == "float" or not self.signed:
            return 0
        return -(1 << (self.bits - 1))

    @property
    def code_max(self) -> int:
        if self.kind == "float" or not self.signed:
            return (1 << self.bits) - 1
        return (1 << (self.bits - 1)) - 1

    @property
    def int_bits(self) -> int:
        """Integer bits including the sign bit (the I of ``ap_fixed<W,I>``)."""
        return self.bits - self.frac_bits

    @property
    def ap_type(self) -> str | None:
        """The Vivado/Vitis HLS type with the same bits, or None for non-fixed formats."""
        if self.kind != "fixed":
            return None
        return f"ap_{'' if self.signed else 'u'}fixed<{self.bits},{self.int_bits}>"

    @property
    def q_name(self) -> str | None:
        """ARM-style Q notation (integer part counts the sign bit): Q1.15, UQ8.8."""
        if self.kind != "fixed":
            return None
        return f"{'' if self.signed else 'U'}Q{self.int_bits}.{self.frac_bits}"

    @property
    def float_dtype(self) -> np.dtype:
        return np.dtype(_FLOATS[self.name][1])

    def container(self) -> np.dtype:
        """Smallest numpy integer dtype that holds one code (signed codes stay signed)."""
        for size in (8, 16, 32, 64):
            if self.bits <= size:
                kind = "int" if (self.signed and self.kind != "float") else "uint"
                return np.dtype(f"{kind}{size}")
        raise UnsupportedOperationError(f"{self.bits}-bit values have no integer container")

    def describe(self) -> dict[str, Any]:
        """JSON-able description for the sidecar and headers."""
        out: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "bits": self.bits,
            "signed": self.signed,
        }
        if self.kind == "fixed":
            out.update(
                frac_bits=self.frac_bits,
                int_bits=self.int_bits,
                q=self.q_name,
                ap_type=self.ap_type,
                lsb=2.0**-self.frac_bits,
                min=self.code_min * 2.0**-self.frac_bits,
                max=self.code_max * 2.0**-self.frac_bits,
            )
        return out

    def comment(self) -> str:
        """One line for a file header saying exactly how to read a code."""
        if self.kind == "float":
            return f"{self.name} IEEE bit patterns ({self.bits} bits per value)"
        if self.kind == "fixed":
            sign = "signed two's complement" if self.signed else "unsigned"
            return (
                f"{self.q_name} = {self.ap_type}: {self.bits} bits {sign}, "
                f"{self.frac_bits} fraction bits, value = code * 2^-{self.frac_bits}"
            )
        sign = "signed two's complement" if self.signed else "unsigned"
        return f"{self.name} affine: {self.bits} bits {sign}, value = (code - zero_point) * scale"


_Q_RE = re.compile(r"^(u?)q(-?\d+)?\.(-?\d+)$")
_QSHORT_RE = re.compile(r"^(u?)q(\d+)$")
_AP_RE = re.compile(r"^(?:ap_)?(u?)fixed<\s*(\d+)\s*,\s*(-?\d+)\s*>$")
_INT_RE = re.compile(r"^(u?)int(\d+)$")


def parse_number_format(text: str | NumberFormat) -> NumberFormat:
    """Parse ``float32|float16|bfloat16``, ``Qm.n``/``UQm.n`` (ARM: m counts the sign bit),
    ``Qn`` (= Q1.n), ``ap_fixed<W,I>``/``ap_ufixed<W,I>`` (also hls4ml ``fixed<W,I>``), and
    ``int8``/``int4``/``uintN`` affine integers."""
    if isinstance(text, NumberFormat):
        return text
    spec = text.strip().lower().replace(" ", "")
    spec = _FLOAT_ALIASES.get(spec, spec)
    if spec in _FLOATS:
        return NumberFormat("float", _FLOATS[spec][0], 0, False, spec)
    if m := _Q_RE.match(spec):
        signed = not m.group(1)
        frac = int(m.group(3))
        ints = int(m.group(2)) if m.group(2) is not None else (1 if signed else 0)
        return _fixed(ints + frac, frac, signed, text)
    if m := _QSHORT_RE.match(spec):
        signed = not m.group(1)
        frac = int(m.group(2))
        return _fixed(frac + (1 if signed else 0), frac, signed, text)
    if m := _AP_RE.match(spec):
        width, ints = int(m.group(2)), int(m.group(3))
        return _fixed(width, width - ints, not m.group(1), text)
    if m := _INT_RE.match(spec):
        bits = int(m.group(2))
        if not 2 <= bits <= MAX_AFFINE_BITS:
            raise UnsupportedOperationError(
                f"affine integers must have 2..{MAX_AFFINE_BITS} bits, not {bits} ({text!r})"
            )
        return NumberFormat("affine", bits, 0, not m.group(1), spec)
    raise UnsupportedOperationError(
        f"unknown number format {text!r}; use float32, float16, bfloat16, Q1.15, UQ8.8, "
        "ap_fixed<16,1>, ap_ufixed<8,4>, int8, int4 or uint8"
    )


def _fixed(width: int, frac: int, signed: bool, text: str) -> NumberFormat:
    if not 1 + signed <= width <= MAX_FIXED_BITS:
        raise UnsupportedOperationError(
            f"fixed point needs {1 + signed}..{MAX_FIXED_BITS} total bits, not {width} ({text!r})"
        )
    ints = width - frac
    name = f"{'' if signed else 'U'}Q{ints}.{frac}"
    return NumberFormat("fixed", width, frac, signed, name)


# -- stored bits ----------------------------------------------------------------------------------
def to_stored(codes: np.ndarray, bits: int) -> np.ndarray:
    """Masked two's complement: the ``bits`` low bits of each code, as uint64."""
    return np.asarray(codes).astype(np.int64).view(np.uint64) & np.uint64((1 << bits) - 1)


def from_stored(stored: np.ndarray, bits: int, signed: bool) -> np.ndarray:
    """Inverse of :func:`to_stored`: sign-extend ``bits``-bit patterns to int64 codes."""
    raw = np.asarray(stored, dtype=np.uint64) & np.uint64((1 << bits) - 1)
    codes = raw.astype(np.int64)
    if signed and bits < 64:
        codes = np.where(codes >= (1 << (bits - 1)), codes - (1 << bits), codes)
    return codes


# -- rounding -------------------------------------------------------------------------------------
def round_divide(x: np.ndarray, s: np.ndarray | float, mode: str) -> np.ndarray:
    """``round(x / s)`` under ``mode``, decided exactly (see module docstring). float64 result.

    ``x`` must be finite; ``s > 0``. Products ``k*s`` must be exact in float64 for the integers
    ``k`` of interest (true for powers of two and for float32 scales with |k| < 2**29).
    """
    if mode not in ROUNDING_MODES:
        raise UnsupportedOperationError(
            f"unknown rounding mode {mode!r}; choose one of {', '.join(ROUNDING_MODES)}"
        )
    x = np.asarray(x, dtype=np.float64)
    s = np.asarray(s, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        c = np.floor(x / s)
        # The division may be off by an ulp: move c until c*s <= x < (c+1)*s holds exactly.
        c = np.where(c * s > x, c - 1, c)
        c = np.where((c + 1) * s <= x, c + 1, c)
        if mode == "floor":
            return c
        exact = c * s == x
        if mode == "truncate":
            return np.where((x < 0) & ~exact, c + 1, c)
        twice = 2 * x
        half = (2 * c + 1) * s
        above = twice > half
        tie = twice == half
        if mode == "half-even":
            up = above | (tie & (np.mod(c, 2) != 0))
        elif mode == "half-away":
            up = above | (tie & (x > 0))
        else:  # half-up
            up = above | tie
        return np.where(up, c + 1, c)


# -- quantization ---------------------------------------------------------------------------------
@dataclass
class Quantized:
    """Codes of one tensor plus what is needed to read them and how much was lost."""

    codes: np.ndarray  # int64, same shape as the input
    fmt: NumberFormat
    rounding: str
    overflow: str
    scale: np.ndarray | None = None  # float64, shape () or (channels,)
    zero_point: np.ndarray | None = None  # int64, same shape as scale
    axis: int | None = None
    symmetric: bool | None = None
    saturated: int = 0
    nonfinite: int = 0
    max_abs_error: float = 0.0
    rms_error: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def dequantized(self) -> np.ndarray:
        return dequantize(
            self.codes, self.fmt, scale=self.scale, zero_point=self.zero_point, axis=self.axis
        )

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            **self.fmt.describe(),
            "rounding": self.rounding,
            "overflow": self.overflow,
        }
        if self.fmt.kind == "float":
            out["rounding"] = "nearest-even (IEEE)"
            out["overflow"] = "infinity (IEEE)"
        if self.fmt.kind == "affine":
            out.update(
                symmetric=self.symmetric,
                axis=self.axis,
                scale=_jsonable(self.scale),
                zero_point=_jsonable(self.zero_point),
            )
        return out

    def error(self) -> dict[str, Any]:
        return {
            "max_abs": self.max_abs_error,
            "rms": self.rms_error,
            "saturated": self.saturated,
            "nonfinite": self.nonfinite,
            "count": int(self.codes.size),
        }


def _jsonable(a: np.ndarray | None) -> Any:
    if a is None:
        return None
    return a.tolist() if a.ndim else a.item()


def quantize(
    x: np.ndarray,
    fmt: NumberFormat | str,
    *,
    rounding: str = "half-even",
    overflow: str = "saturate",
    axis: int | None = None,
    symmetric: bool = True,
) -> Quantized:
    """Encode ``x`` as integer codes in ``fmt``; see the module docstring for the conventions.

    Args:
        rounding: one of :data:`ROUNDING_MODES` (fixed point and affine).
        overflow: ``"saturate"`` (clamp to the code range) or ``"wrap"`` (keep the low bits,
            fixed point only; affine always saturates).
        axis: per-channel axis for affine formats (None = one scale for the whole tensor).
        symmetric: affine with zero point 0 and range ±(2**(b-1)-1); False computes a zero point.
    """
    fmt = parse_number_format(fmt)
    if overflow not in OVERFLOW_MODES:
        raise UnsupportedOperationError(
            f"unknown overflow mode {overflow!r}; choose one of {', '.join(OVERFLOW_MODES)}"
        )
    if rounding not in ROUNDING_MODES:
        raise UnsupportedOperationError(
            f"unknown rounding mode {rounding!r}; choose one of {', '.join(ROUNDING_MODES)}"
        )
    x = np.asarray(x)
    if x.dtype.kind == "c":
        raise UnsupportedOperationError("complex tensors cannot be exported to hardware formats")
    if fmt.kind == "float":
        q = _quantize_float(x, fmt)
    elif fmt.kind == "fixed":
        q = _quantize_fixed(x, fmt, rounding, overflow)
    else:
        q = _quantize_affine(x, fmt, rounding, axis, symmetric)
    _measure(q, x)
    return q


def _as_f64(x: np.ndarray) -> np.ndarray:
    # Every float32/16/bfloat16 and every integer below 2**53 converts exactly.
    return np.asarray(x).astype(np.float64)


def _quantize_float(x: np.ndarray, fmt: NumberFormat) -> Quantized:
    src = _as_f64(x)
    with np.errstate(over="ignore"):
        narrowed = src.astype(fmt.float_dtype)
    bits_dtype = np.uint32 if fmt.bits == 32 else np.uint16
    codes = narrowed.view(bits_dtype).astype(np.int64)
    wide = narrowed.astype(np.float64)
    saturated = int(np.count_nonzero(np.isfinite(src) & ~np.isfinite(wide)))
    return Quantized(
        codes,
        fmt,
        "half-even",
        "saturate",
        saturated=saturated,
        nonfinite=int(np.count_nonzero(~np.isfinite(src))),
    )


def _clip_or_wrap(c: np.ndarray, lo: int, hi: int, overflow: str) -> tuple[np.ndarray, int]:
    outside = (c < lo) | (c > hi)
    count = int(np.count_nonzero(outside))
    if overflow == "wrap":
        span = float(hi - lo + 1)
        finite = np.isfinite(c)
        # fmod of integers held in float64 is exact, so wrapping never rounds.
        wrapped = np.mod(np.where(finite, c, 0.0) - lo, span) + lo
        c = np.where(finite, wrapped, np.clip(c, lo, hi))
    else:
        c = np.clip(c, lo, hi)
    return c, count


def _quantize_fixed(x: np.ndarray, fmt: NumberFormat, rounding: str, overflow: str) -> Quantized:
    src = _as_f64(x)
    finite = np.isfinite(src)
    step = np.ldexp(1.0, -fmt.frac_bits)
    c = round_divide(np.where(finite, src, 0.0), step, rounding)
    # +-inf saturate whatever the overflow mode (there is no bit pattern to wrap); NaN -> 0.
    c = np.where(np.isposinf(src), np.inf, np.where(np.isneginf(src), -np.inf, c))
    c, saturated = _clip_or_wrap(c, fmt.code_min, fmt.code_max, overflow)
    return Quantized(
        c.astype(np.int64),
        fmt,
        rounding,
        overflow,
        saturated=saturated,
        nonfinite=int(np.count_nonzero(~finite)),
    )


def _channel_view(a: np.ndarray, axis: int, ndim: int) -> np.ndarray:
    shape = [1] * ndim
    shape[axis] = -1
    return a.reshape(shape)


def _quantize_affine(
    x: np.ndarray, fmt: NumberFormat, rounding: str, axis: int | None, symmetric: bool
) -> Quantized:
    src = _as_f64(x)
    finite = np.isfinite(src)
    clean = np.where(finite, src, 0.0)
    if axis is not None:
        if clean.ndim == 0 or not -clean.ndim <= axis < clean.ndim:
            axis = None  # scalars and tensors with fewer dims fall back to one scale
        else:
            axis %= clean.ndim
    reduce = tuple(i for i in range(clean.ndim) if i != axis) if axis is not None else None
    lo_v = np.min(clean, axis=reduce) if clean.size else np.zeros(() if axis is None else 0)
    hi_v = np.max(clean, axis=reduce) if clean.size else np.zeros(() if axis is None else 0)
    lo_v, hi_v = np.asarray(lo_v, np.float64), np.asarray(hi_v, np.float64)
    if symmetric:
        if not fmt.signed:
            raise UnsupportedOperationError(
                f"{fmt.name} is unsigned: symmetric quantization needs a signed type "
                "(use --zero-point for unsigned)"
            )
        qmax = (1 << (fmt.bits - 1)) - 1
        qmin = -qmax  # narrow range, like TFLite weights: -128 is never used
        amax = np.maximum(np.abs(lo_v), np.abs(hi_v))
        scale = (amax / qmax).astype(np.float32).astype(np.float64)
        scale = np.where(scale > 0, scale, 1.0)
        zp = np.zeros(scale.shape, np.int64)
    else:
        qmin, qmax = fmt.code_min, fmt.code_max
        lo_v, hi_v = np.minimum(lo_v, 0.0), np.maximum(hi_v, 0.0)
        scale = ((hi_v - lo_v) / (qmax - qmin)).astype(np.float32).astype(np.float64)
        scale = np.where(scale > 0, scale, 1.0)
        zp = qmin - round_divide(lo_v, scale, "half-even")
        zp = np.clip(zp, qmin, qmax).astype(np.int64)
    s_b = _channel_view(scale, axis, clean.ndim) if axis is not None else scale
    z_b = _channel_view(zp, axis, clean.ndim) if axis is not None else zp
    c = round_divide(clean, s_b, rounding) + z_b
    c = np.where(np.isposinf(src), np.inf, np.where(np.isneginf(src), -np.inf, c))
    c, saturated = _clip_or_wrap(c, qmin, qmax, "saturate")
    return Quantized(
        c.astype(np.int64),
        fmt,
        rounding,
        "saturate",
        scale=scale,
        zero_point=zp,
        axis=axis,
        symmetric=symmetric,
        saturated=saturated,
        nonfinite=int(np.count_nonzero(~finite)),
    )


def dequantize(
    codes: np.ndarray,
    fmt: NumberFormat | str,
    *,
    scale: np.ndarray | float | None = None,
    zero_point: np.ndarray | int | None = None,
    axis: int | None = None,
) -> np.ndarray:
    """Values (float64) that ``codes`` stand for."""
    fmt = parse_number_format(fmt)
    codes = np.asarray(codes, dtype=np.int64)
    if fmt.kind == "float":
        bits_dtype = np.uint32 if fmt.bits == 32 else np.uint16
        return codes.astype(bits_dtype).view(fmt.float_dtype).astype(np.float64)
    if fmt.kind == "fixed":
        return np.ldexp(codes.astype(np.float64), -fmt.frac_bits)
    s = np.asarray(1.0 if scale is None else scale, dtype=np.float64)
    z = np.asarray(0 if zero_point is None else zero_point, dtype=np.int64)
    if axis is not None and s.ndim:
        s, z = _channel_view(s, axis, codes.ndim), _channel_view(z, axis, codes.ndim)
    return (codes - z).astype(np.float64) * s


def _measure(q: Quantized, x: np.ndarray) -> None:
    src = _as_f64(x)
    back = q.dequantized()
    ok = np.isfinite(src) & np.isfinite(back)
    if not np.any(ok):
        return
    err = np.abs(back[ok] - src[ok])
    q.max_abs_error = float(err.max())
    q.rms_error = float(np.sqrt(np.mean(err * err)))
