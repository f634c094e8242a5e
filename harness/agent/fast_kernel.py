"""The fast model's one compiled kernel: a matrix product whose every product is truncated before the sum.

hls4ml assigns each product of a Dense or Conv2D layer to `accum_t` before adding it (`product::mult` in
nnet_mult.h, then `acc += mult`): with `ap_fixed<16,6>` inputs, weights and accumulator every product loses
its low `s = 10` bits (AP_TRN: floor). No BLAS call computes a sum of floored products, and numpy needs three
passes over a temporary of M x K x N products for it; this kernel does it in one pass, in C:

    acc[m, n] = sum_k floor(x[m, k] * w[k, n] / 2^s)   (modulo 2^32)

for int32 x (M, K) and w (K, N), C order, when every true product fits in int32 (|x*w| < 2^31: the caller,
`fast_model._Dense`, checks the types' widths) and the accumulator wraps (AP_WRAP) at most 32 bits wide, so
that the sum modulo 2^32 is exact modulo 2^width. Rows of x that are zero (ReLU outputs) are skipped.

Two halves, like fast_model:

* host side (`build`): compiles `SOURCE` with the host's C compiler into the user cache, keyed by the sha256 of
  the source and the compiler command, once; `deploy` ships the library to virtual boards beside the model.
  Returns None (and says why) when no compiler works: the model then runs its numpy modes.
* board side (`Kernel`): Python 3.8, ctypes and numpy. The agent's fast backend loads it when its config names
  it; the model built on it is checked bit for bit against the emulation library at start like any other.
"""
from __future__ import annotations

import ctypes
import hashlib
import os

import numpy as np

FILE = "libfastkernel.so"  # its name on a board, beside the model
SOURCE = r"""
#include <stdint.h>

/* out[m*N + n] = wrap(bias[n] + sum_k (x[m*K + k] * w[k*N + n]) >> s), for every m < M, n < N, where wrap
   keeps the low `width` bits (two's complement when is_signed): ap_fixed's AP_WRAP assignment to accum_t.
   The caller guarantees that every product fits in int32; >> of a negative int32 is an arithmetic shift
   (floor) on every compiler this targets (GCC and Clang document it); the sum is kept in uint32, which wraps
   modulo 2^32 without undefined behaviour, and is exact modulo 2^width. The loop over n is what the compiler
   vectorises: on x86-64 an AVX2 clone is chosen at load time where the CPU has it (1.5-1.7x faster here
   than SSE2). Rows of x that are zero (ReLU outputs) are skipped. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("avx2", "default")))
#endif
void trunc_dense_i32(const int32_t *x, const int32_t *w, const int32_t *bias, int32_t *out,
                     int64_t M, int64_t K, int64_t N, int32_t s, int32_t width, int32_t is_signed)
{
    const int up = 32 - width;
    const uint32_t mask = width >= 32 ? 0xffffffffu : ((1u << width) - 1u);
    for (int64_t m = 0; m < M; m++) {
        uint32_t *a = (uint32_t *)(out + m * N);
        const int32_t *xr = x + m * K;
        for (int64_t n = 0; n < N; n++)
            a[n] = (uint32_t)bias[n];
        for (int64_t k = 0; k < K; k++) {
            const int32_t xv = xr[k];
            if (xv == 0)
                continue;
            const int32_t *wr = w + k * N;
            for (int64_t n = 0; n < N; n++)
                a[n] += (uint32_t)((xv * wr[n]) >> s);
        }
        if (is_signed) {
            if (up > 0)
                for (int64_t n = 0; n < N; n++)
                    out[m * N + n] = (int32_t)(a[n] << up) >> up;
        } else {
            for (int64_t n = 0; n < N; n++)
                a[n] &= mask;
        }
    }
}
"""
COMMAND = ("cc", "-O3", "-shared", "-fPIC")  # portable code: the library may be cached for other CPUs too


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


def build(log=None):
    """Compile SOURCE once into the user cache (host side) -> path of the library, or None when no C compiler
    works here (the reason goes to `log`). Keyed by the sha256 of the source and the command."""
    import logging
    import subprocess
    import tempfile

    from splitting.user_cache import cache_root

    log = log or logging.getLogger("splitrack.deploy")
    key = hashlib.sha256(("\0".join(COMMAND) + "\0" + SOURCE).encode()).hexdigest()[:16]
    folder = cache_root() / "fast_kernel" / key
    path = folder / FILE
    if path.is_file():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=str(folder)) as tmp:
        src = os.path.join(tmp, "fast_kernel.c")
        out = os.path.join(tmp, FILE)
        with open(src, "w") as f:
            f.write(SOURCE)
        try:
            r = subprocess.run(list(COMMAND) + ["-o", out, src], capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.SubprocessError) as e:
            log.info("fast model kernel not built (%s): virtual boards run the numpy model", e)
            return None
        if r.returncode != 0:
            log.info("fast model kernel not built (%s exit %d: %s): virtual boards run the numpy model",
                     COMMAND[0], r.returncode, (r.stderr.strip().splitlines() or [""])[-1])
            return None
        os.replace(out, str(path))  # parallel builds: the last complete file wins
    return path
