"""The fast model's one compiled kernel: a matrix product whose every product is truncated before the sum.

hls4ml assigns each product of a Dense or Conv2D layer to `accum_t` before adding it (`product::mult` in
nnet_mult.h, then `acc += mult`): with `ap_fixed<16,6>` inputs, weights and accumulator every product loses
its low `s = 10` bits (AP_TRN: floor). No BLAS call computes a sum of floored products, and numpy needs three
passes over a temporary of M x K x N products for it; this kernel does it in one pass, in C:

    acc[m, n] = sum_k floor(x[m, k] * w[k, n] / 2^s)   (modulo 2^32)

for int32 x (M, K) and w (K, N), C order, when every true product fits in int32 (|x*w| < 2^31: the caller,
`fast_model._Dense`, checks the types' widths) and the accumulator wraps (AP_WRAP) at most 32 bits wide, so
that the sum modulo 2^32 is exact modulo 2^width. Rows of x that are zero (ReLU outputs) are skipped.

This is the board's half, the loader (`Kernel`: Python 3.8, ctypes and numpy). The agent's fast backend loads
the library when its config names it; the model built on it is checked bit for bit against the emulation
library at start like any other. The C source and its build (once per source hash, into the user cache, with
the host's C compiler) are the host's: harness/rack/fast_build.py.
"""
from __future__ import annotations

import ctypes
import os

import numpy as np

FILE = "libfastkernel.so"  # its name on a board, beside the model


class Kernel(object):
    """The compiled kernel, loaded from `path` with ctypes. Raises OSError when it cannot be loaded."""

    def __init__(self, path):
        self.path = os.path.abspath(str(path))  # a bare name would be looked up in the system's library path
        lib = ctypes.CDLL(self.path)
        f = lib.trunc_dense_i32
        p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32
        f.argtypes = [p, p, p, p, i64, i64, i64, i32, i32, i32]
        f.restype = None
        self._f = f

    def prepare(self, w, bias, s, acc_t):
        """A layer's sum: weights w (K, N) and bias (N,) as raw integers of the accumulator type acc_t (an
        AP_WRAP FixedType, signed up to 32 bits wide or unsigned up to 31), products shifted right by s >= 0
        bits. Returns a function x (M, K) raw integers -> (M, N) int64 raws of acc_t:
        wrap_acc_t(bias + sum_k floor(x*w / 2^s)). Holds its own int32 copies of w and bias and an output
        buffer, so it is for one thread (as the agent's compute thread is). Raises ValueError for an
        accumulator type it does not compute."""
        if acc_t.saturation != "AP_WRAP" or acc_t.width > (32 if acc_t.signed else 31) or s < 0:
            raise ValueError("the kernel does not compute %s with shift %d" % (acc_t, s))
        w32 = np.ascontiguousarray(w, dtype=np.int32)
        b32 = np.ascontiguousarray(bias, dtype=np.int32)
        k, n = w32.shape
        f, wp, bp = self._f, w32.ctypes.data, b32.ctypes.data
        width, signed = acc_t.width, int(acc_t.signed)
        buf = [np.empty((0, n), dtype=np.int32)]

        def product(x):
            x = np.ascontiguousarray(x, dtype=np.int32)
            m = x.shape[0]
            if x.shape[1] != k:
                raise ValueError("%d inputs for a product with %d" % (x.shape[1], k))
            acc = buf[0]
            if acc.shape[0] < m:
                acc = buf[0] = np.empty((m, n), dtype=np.int32)
            acc = acc[:m]
            f(x.ctypes.data, wp, bp, acc.ctypes.data, m, k, n, s, width, signed)
            return acc.astype(np.int64)
        product.arrays = (w32, b32)  # keeps the arrays the pointers point into alive with the function
        return product
