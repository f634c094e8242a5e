"""Bit-exact Python model of a partition's fixed-point arithmetic, on raw integers.

It computes what hls4ml's C++ computes (nnet_dense_latency, the io_stream line-buffer convolution, pooling,
ReLU): every product is assigned to the accumulator type (rounding and overflow of that type), the sum
starts from the bias assigned to the accumulator type and is kept in it, and the result is assigned to
the layer's result type. It does not import da4ml: it is the independent check of the generated RTL, and it
is itself checked against the hls4ml emulation (`compare_with_emulation`).
"""
from __future__ import annotations

import ctypes
import math
import ctypes.util
from dataclasses import dataclass
from typing import Dict, List

import numpy as np

from splitting.contract import FixedType
from splitting.op_kinds import Handlers

from .fixed import cast, from_float, to_float
from .ops import Op

# the reference's step of each op kind: (x raw, op, input type) -> raw output
STEPS = Handlers("the bit-exact reference", NotImplementedError)
STEPS.refuse("sigmoid", "hls4ml's table activations are checked by the fast model against the emulation "
                        "library (sim_tests/agent/test_fast_model.py), not modelled here")
STEPS.refuse("tanh", STEPS.refused["sigmoid"])


@STEPS.handles("pad")
def _pad_step(x: np.ndarray, op: Op, in_t: FixedType) -> np.ndarray:
    return cast(_pad(x, op.params), in_t.fractional, op.out)


@STEPS.handles("relu")
def _relu(x: np.ndarray, op: Op, in_t: FixedType) -> np.ndarray:
    return cast(np.where(x > 0, x, 0), in_t.fractional, op.out)


@STEPS.handles("linear")
def _linear(x: np.ndarray, op: Op, in_t: FixedType) -> np.ndarray:
    return cast(x, in_t.fractional, op.out)


@STEPS.handles("reshape")
def _reshape(x: np.ndarray, op: Op, in_t: FixedType) -> np.ndarray:
    return cast(x.reshape(op.out_shape), in_t.fractional, op.out)


@STEPS.handles("dense")
def _dense(x: np.ndarray, op: Op, in_t: FixedType) -> np.ndarray:
    """x: raw (..., n_in); weights raw (n_in, n_out)."""
    acc_t = op.accum
    pfrac = in_t.fractional + op.wtype.fractional
    prods = x[..., :, None] * op.weight  # exact products, (..., n_in, n_out)
    prods = cast(prods, pfrac, acc_t)  # hls4ml: mult[i] = (accum_t) (x * w)
    acc = cast(op.bias, op.btype.fractional, acc_t) + prods.sum(axis=-2)
    acc = cast(acc, acc_t.fractional, acc_t)  # the sum is kept in accum_t: wrapping is modular, so once is enough
    if acc_t.saturation != "AP_WRAP" and op.params.get("resource_reuse", 1) > 1:
        raise NotImplementedError(f"{op.name}: saturating accumulator {acc_t} under the Resource strategy with reuse "
                                  f"factor {op.params['resource_reuse']} (hls4ml adds in reuse order, this in input order)")
    if acc_t.saturation != "AP_WRAP":  # a saturating accumulator clips after every addition: replay in order
        acc = cast(op.bias, op.btype.fractional, acc_t) + np.zeros_like(prods[..., 0, :])
        for i in range(prods.shape[-2]):
            acc = cast(acc + prods[..., i, :], acc_t.fractional, acc_t)
    return cast(acc, acc_t.fractional, op.out)


def _windows(x: np.ndarray, kh: int, kw: int, sh: int, sw: int) -> np.ndarray:
    """x: (H, W, C) -> (OH, OW, kh, kw, C) sliding windows (valid padding)."""
    h, w, c = x.shape
    oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
    out = np.empty((oh, ow, kh, kw, c), dtype=x.dtype)
    for i in range(oh):
        for j in range(ow):
            out[i, j] = x[i * sh:i * sh + kh, j * sw:j * sw + kw, :]
    return out


def _pad(x: np.ndarray, p: Dict[str, int]) -> np.ndarray:
    return np.pad(x, ((p["pad_top"], p["pad_bottom"]), (p["pad_left"], p["pad_right"]), (0, 0)))


@STEPS.handles("conv2d")
def _conv2d(x: np.ndarray, op: Op, in_t: FixedType) -> np.ndarray:
    p = op.params
    if any(p[k] for k in ("pad_top", "pad_bottom", "pad_left", "pad_right")):
        x = _pad(x, p)
    win = _windows(x, p["filt_height"], p["filt_width"], p["stride_height"], p["stride_width"])
    oh, ow = win.shape[:2]
    flat = win.reshape(oh, ow, -1)
    dense = Op("dense", op.name, op.out_shape, op.out, weight=op.weight.reshape(-1, op.weight.shape[-1]),
               bias=op.bias, wtype=op.wtype, btype=op.btype, accum=op.accum,
               params={k: v for k, v in op.params.items() if k == "resource_reuse"})
    return _dense(flat, dense, in_t)


@STEPS.handles("maxpool")
def _maxpool(x: np.ndarray, op: Op, in_t: FixedType) -> np.ndarray:
    p = op.params
    if any(p[k] for k in ("pad_top", "pad_bottom", "pad_left", "pad_right")):
        raise NotImplementedError(f"{op.name}: padded pooling")
    x = cast(x, in_t.fractional, op.accum or in_t)  # hls4ml reduces in accum_t
    win = _windows(x, p["pool_height"], p["pool_width"], p["stride_height"], p["stride_width"])
    m = win.max(axis=(2, 3))
    return cast(m, (op.accum or in_t).fractional, op.out)


# --- softmax ("stable" implementation): lookup tables initialised exactly as the C++ does -----------------
_libm = None


def _expf(x: float) -> float:
    """The C library's expf, which hls4ml's table initialisation calls (std::exp on a float)."""
    global _libm
    if _libm is None:
        _libm = ctypes.CDLL(ctypes.util.find_library("m"))
        _libm.expf.restype = ctypes.c_float
        _libm.expf.argtypes = [ctypes.c_float]
    return _libm.expf(x)


def _table_index(raw: np.ndarray, t: FixedType, size: int) -> np.ndarray:
    """softmax_idx_from_real_val: the top log2(size) bits of the raw word."""
    n = int(np.ceil(np.log2(size)))
    word = raw & ((1 << t.width) - 1)
    return (word >> (t.width - n)) & ((1 << n) - 1)


def _table_value(i: int, t: FixedType, size: int) -> float:
    """softmax_real_val_from_idx: index as the top bits, as a float."""
    n = int(np.ceil(np.log2(size)))
    word = i << (t.width - n)
    if t.signed and word >> (t.width - 1):
        word -= 1 << t.width
    return float(np.float32(word * t.step))


def activation_table(op: Op) -> np.ndarray:
    """The lookup table of an hls4ml sigmoid or tanh op (raw integers of its table_t), as nnet_activation.h
    initialises it: entry i is f(x_i) at x_i = (float)(2 * R * (i - N/2.0) / N), R = 8 (sigmoid) or 4 (tanh),
    N = table_size; sigmoid_fcn_float computes 1.0 / (1 + expf(-x)) and returns a float; tanh is the C library's
    tanh(double) on the float x (the call binds, at the template's definition, to ::tanh). The value is then
    assigned to table_t (its rounding and overflow modes)."""
    n = int(op.params["table_size"])
    table_t = op.params["types"]["table_t"]
    vals = []
    for i in range(n):
        if op.kind == "sigmoid":
            x = np.float32(2 * 8.0 * (i - n / 2.0) / n)
            vals.append(float(np.float32(1.0 / float(np.float32(1) + np.float32(_expf(float(-x)))))))
        elif op.kind == "tanh":
            x = np.float32(2 * 4.0 * (i - n / 2.0) / n)
            vals.append(math.tanh(float(x)))
        else:
            raise ValueError("no lookup table for %s" % op.kind)
    return table_t.to_raw(np.array(vals, np.float64))


def softmax_tables(op: Op):
    """The exp and inverse lookup tables of an hls4ml softmax op (sizes, input normalisation and scale
    from its params), computed in float32 as hls4ml's nnet_activation.h initialises them."""
    ty = op.params["types"]
    size_e, size_i = op.params["exp_table_size"], op.params["inv_table_size"]
    norm = op.params["inp_norm"]
    exp_vals = []
    for i in range(size_e):
        x = np.float32(np.float32(_table_value(i, norm, size_e)) * np.float32(op.params["exp_scale"]))
        exp_vals.append(_expf(float(-x)))
    inv_vals = []
    for i in range(size_i):
        x = np.float32(_table_value(i, ty["inv_inp_t"], size_i))
        inv_vals.append(float(np.float32(1) / x) if x != 0 else float("inf"))
    exp_t, inv_t = ty["exp_table_t"], ty["inv_table_t"]
    with np.errstate(invalid="ignore"):
        exp_raw = exp_t.to_raw(np.array(exp_vals, np.float64))
        inv_raw = inv_t.to_raw(np.nan_to_num(np.array(inv_vals, np.float64), posinf=1e30))
    return exp_raw, inv_raw


@STEPS.handles("softmax")
def _softmax(x: np.ndarray, op: Op, in_t: FixedType) -> np.ndarray:
    ty = op.params["types"]
    norm = op.params["inp_norm"]
    exp_raw, inv_raw = softmax_tables(op)
    xmax = x.max(axis=-1, keepdims=True)
    d = cast(xmax - x, in_t.fractional, norm)
    e = exp_raw[_table_index(d, norm, op.params["exp_table_size"])]
    e = cast(e, ty["exp_table_t"].fractional, op.accum)
    s = e[..., 0]
    for j in range(1, e.shape[-1]):  # reduce() with Op_add in accum_t: a balanced tree, same result for WRAP
        s = s + e[..., j]
    s = cast(s, op.accum.fractional, op.accum)
    s = cast(s, op.accum.fractional, ty["inv_inp_t"])
    inv = inv_raw[_table_index(s, ty["inv_inp_t"], op.params["inv_table_size"])]
    prod = e * inv[..., None]
    return cast(prod, op.accum.fractional + ty["inv_table_t"].fractional, op.out)


@dataclass
class Reference:
    """The bit-exact model of one partition: raw integers in, raw integers out."""

    ops: List[Op]

    @property
    def in_type(self) -> FixedType:
        """Fixed-point type of the partition's input (its first op's result type)."""
        return self.ops[0].out

    @property
    def out_type(self) -> FixedType:
        """Fixed-point type of the partition's output (its last op's result type)."""
        return self.ops[-1].out

    def run_raw(self, raw: np.ndarray, trace: bool = False):
        """raw: one frame (input shape) of raw integers of the input type; returns the output frame's raws."""
        x = np.asarray(raw, dtype=np.int64).reshape(self.ops[0].out_shape)
        t = self.ops[0].out
        steps = []
        for op in self.ops[1:]:
            x = STEPS.handler(op.kind, op.name)(x, op, t)
            t = op.out
            if trace:
                steps.append((op.name, x.copy()))
        return (x, steps) if trace else x

    def run(self, frames: np.ndarray) -> np.ndarray:
        """Float frames (batch, ...) -> output values (batch, ...), via the input type's quantisation."""
        frames = np.asarray(frames)
        out = [self.run_raw(from_float(f, self.in_type)) for f in frames]
        return to_float(np.stack(out), self.out_type)


@dataclass
class Agreement:
    """How the reference and the hls4ml emulation of one partition agree on a batch."""

    partition: str
    frames: int
    elements: int
    mismatches: int
    max_lsb: int
    note: str = ""

    @property
    def exact(self) -> bool:
        """True when every value equals the hls4ml emulation's."""
        return self.mismatches == 0

    def line(self) -> str:
        """One line for people: equal, or how many values differ and by up to how many LSB."""
        if self.exact:
            return f"{self.partition}: reference == hls4ml emulation on {self.frames} frames ({self.elements} values)"
        return (f"{self.partition}: {self.mismatches}/{self.elements} values differ from the hls4ml emulation, "
                f"by up to {self.max_lsb} LSB{(': ' + self.note) if self.note else ''}")


def compare_with_emulation(name: str, ref: Reference, emulation, frames: np.ndarray) -> Agreement:
    """Run both on the same frames; count values that differ, in LSBs of the output type."""
    ours = ref.run(frames).reshape(len(frames), -1)
    theirs = emulation.predict(np.asarray(frames)).reshape(len(frames), -1)
    diff = np.rint(np.abs(ours - theirs) / ref.out_type.step).astype(np.int64)
    bad = int(np.count_nonzero(diff))
    note = ""
    if bad:
        kinds = [op.kind for op in ref.ops]
        wraps = int(np.count_nonzero(diff >= (1 << (ref.out_type.width - 1))))
        note = (f"{wraps} of them by half the range or more (an overflow wrapped differently)" if wraps else
                "small differences: a rounding step differs" + (" (softmax lookup tables)" if "softmax" in kinds else ""))
    return Agreement(name, len(frames), int(diff.size), bad, int(diff.max()) if diff.size else 0, note)
