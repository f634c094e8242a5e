"""Integer fixed-point arithmetic with ap_fixed semantics: raw two's-complement integers plus a FixedType.

The reference model computes on raw integers only (numpy int64), so that every rounding and overflow is
explicit: a value of type ap_fixed<W,I> is the integer raw * 2^-(W-I). Casts follow Vivado's ap_fixed
quantisation (AP_TRN, AP_RND, ...) and overflow (AP_WRAP, AP_SAT, ...) modes.
"""
from __future__ import annotations

import numpy as np

from splitting.contract import FixedType

# int64 holds every intermediate we form: products of two <=24-bit raws, sums of up to 2^14 of them.
MAX_WIDTH = 48


def fixed_type(precision) -> FixedType:
    """An hls4ml precision object (FixedPrecisionType / IntegerPrecisionType) or an ap_fixed string."""
    if isinstance(precision, FixedType):
        return precision
    if isinstance(precision, str):
        return FixedType.parse(precision)
    width = int(precision.width)
    integer = int(getattr(precision, "integer", width))
    rnd = getattr(precision, "rounding_mode", None)
    sat = getattr(precision, "saturation_mode", None)
    rnd = "AP_" + (rnd.name if hasattr(rnd, "name") else str(rnd or "TRN")).upper()
    sat = "AP_" + (sat.name if hasattr(sat, "name") else str(sat or "WRAP")).upper()
    return FixedType(width, integer, bool(precision.signed), rnd, sat)


def cast(raw: np.ndarray, frac: int, t: FixedType) -> np.ndarray:
    """A raw integer with `frac` fractional bits, assigned to a variable of type t (ap_fixed assignment)."""
    if t.width > MAX_WIDTH:
        raise ValueError(f"{t}: wider than {MAX_WIDTH} bits, beyond the int64 reference")
    raw = np.asarray(raw, dtype=np.int64)
    s = frac - t.fractional
    if s > 0:
        raw = t.shift_right(raw, s)
    elif s < 0:
        raw = raw << (-s)
    return t.overflow(raw).astype(np.int64)


def from_float(values: np.ndarray, t: FixedType) -> np.ndarray:
    """Doubles assigned to type t, as C++ `ap_fixed<> v = double` does (the hls4ml emulation's input)."""
    return t.to_raw(np.asarray(values, dtype=np.float64))


def to_float(raw: np.ndarray, t: FixedType) -> np.ndarray:
    """Raw integers of type `t` (any shape) -> their real values as float64 (raw * t.step)."""
    return np.asarray(raw, dtype=np.float64) * t.step


def raw_of(values: np.ndarray, t: FixedType) -> np.ndarray:
    """Exact values known to lie on t's grid (an emulation's output) -> raw integers; raises if off-grid."""
    scaled = np.asarray(values, dtype=np.float64) / t.step
    raw = np.rint(scaled)
    if not np.array_equal(raw, scaled):
        raise ValueError(f"values are not on the grid of {t}")
    return raw.astype(np.int64)
