"""Fast, bit-exact integer model of a partition: what a virtual board computes instead of the C simulation.

The arithmetic is the cosimulation's bit-exact reference (harness/cosim/bitexact.py: every product assigned to
the accumulator type, the sum kept in it, the result assigned to the layer's result type), made fast: a batch
of frames at once, convolutions as one im2col matrix built with stride tricks, products in int32 where they
fit, softmax lookups as array indexing. No Python loop runs per element or per output position. Each op kind's
step is registered in STEPS (splitting.op_kinds.Handlers), as the reference's and the RTL generator's are.

This is the board's half (the agent's backend kind "fast": Python 3.8, standard library and numpy only): the
model file `.npz` (plain arrays plus a JSON string; loaded with allow_pickle=False) is written on the host by
harness/rack/fast_build.py from the partition's ops. At start `FastBackend` runs the fast model and the
partition's emulation library on a few frames and keeps the fast model only if every output word is equal;
otherwise (or when the model file is missing or unreadable) it logs why and runs the emulation library, so a
board never computes something the emulation would not.

Raw words are int64 two's-complement integers of their FixedType (value = raw * 2^-fractional).
"""
from __future__ import annotations

import json
import logging
import os

import numpy as np

from harness.agent.fast_kernel import Kernel
from splitting.contract import FixedType
from splitting.op_kinds import Handlers

FORMAT = 1  # bump when the .npz layout changes
MAX_WIDTH = 48  # int64 holds every intermediate of types up to this width (as in harness/cosim/fixed.py)
TABLE_RANGE = {"sigmoid": 16, "tanh": 8}  # the table spans [-R/2, R/2): nnet_activation_stream.h's index divisor


class NotModelled(Exception):
    """The partition has a layer or a type the fast model does not compute; use the emulation."""


# the fast model's step of each op kind, built once per op: (model, op dict, input type, output type,
# input shape (no batch axis), arrays) -> a function of a batch of raws (B, ...) -> raws
STEPS = Handlers("the fast model", NotModelled)


# --- ap_fixed assignment on raw integers (FixedType.shift_right/overflow of the contract module) ---------
def cast(raw, frac, t, src=None):
    """Raw integers with `frac` fractional bits assigned to type t (ap_fixed assignment), int64.
    `src`: the type raw already holds, if known; a value of type t is then returned unchanged."""
    raw = np.asarray(raw, dtype=np.int64)
    if src is not None and _fits(src, t):
        return raw
    s = frac - t.fractional
    if s > 0:
        raw = t.shift_right(raw, s)
    elif s < 0:
        raw = raw << (-s)
    return t.overflow(raw).astype(np.int64, copy=False)


def _fits(src, t):
    """Every value of type src is a value of type t: assigning it changes nothing."""
    if src.fractional > t.fractional:
        return False
    lo, hi = src.raw_min << (t.fractional - src.fractional), src.raw_max << (t.fractional - src.fractional)
    return t.raw_min <= lo and hi <= t.raw_max


def _caster(frac, t, src):
    """cast(raw, frac, t, src) as a function of raw, decided once per layer (not once per frame)."""
    if _fits(src, t):
        return _same
    return lambda raw: cast(raw, frac, t)


def _same(raw):
    return raw


# --- layers, batch first ---------------------------------------------------------------------------------
def _pad(x, p):
    """x (B, H, W, C) with zero rows and columns around (top, bottom, left, right)."""
    b, h, w, c = x.shape
    out = np.zeros((b, h + p[0] + p[1], w + p[2] + p[3], c), dtype=x.dtype)
    out[:, p[0]:p[0] + h, p[2]:p[2] + w, :] = x
    return out


def _windows(x, kh, kw, sh, sw):
    """x (B, H, W, C) -> a strided view (B, OH, OW, kh, kw, C) of every window (valid padding), no copy."""
    b, h, w, c = x.shape
    oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
    s0, s1, s2, s3 = x.strides
    return np.lib.stride_tricks.as_strided(x, (b, oh, ow, kh, kw, c), (s0, s1 * sh, s2 * sw, s1, s2, s3),
                                           writeable=False)


def _im2col_index(in_shape, pads, kh, kw, sh, sw):
    """For an input (H, W, C) flattened per frame: the (OH*OW, kh*kw*C) indices of every window's elements,
    rows in output order, columns in (kh, kw, cin) order (the weights' order); zero padding
    (top, bottom, left, right) points at index H*W*C, where the caller appends a zero."""
    h, w, c = in_shape
    zero = h * w * c
    grid = np.full((h + pads[0] + pads[1], w + pads[2] + pads[3], c), zero, dtype=np.intp)
    grid[pads[0]:pads[0] + h, pads[2]:pads[2] + w, :] = np.arange(zero).reshape(h, w, c)
    win = _windows(grid[None], kh, kw, sh, sw)[0]  # (OH, OW, kh, kw, C)
    return np.ascontiguousarray(win.reshape(win.shape[0] * win.shape[1], -1))


def _bits(t):
    """Bits of the largest magnitude a raw of type t has: |raw| <= 2^_bits(t)."""
    return t.width - 1 if t.signed else t.width


_BLOCK = 1 << 19  # elements of a per-product temporary (2 MiB of float32)


class _Dense(object):
    """y = cast_out(cast_acc(bias) + sum_k cast_acc(x_k * w_kn)) on a matrix x (M, K) of raws.
    `kernel`: a loaded fast_kernel.Kernel, used where each product is truncated and fits in int32."""

    def __init__(self, w, b, in_t, w_t, b_t, acc_t, out_t, kernel=None):
        self.acc_t, self.out_t = acc_t, out_t
        self.to_out = _caster(acc_t.fractional, out_t, acc_t)
        self._buf = None
        self.s = in_t.fractional + w_t.fractional - acc_t.fractional  # bits each product loses to accum_t
        self.bias = cast(b, b_t.fractional, acc_t)  # hls4ml starts the sum from the bias in accum_t
        self.w64 = np.ascontiguousarray(w, dtype=np.int64)
        prod_bits = _bits(in_t) + _bits(w_t)
        k = w.shape[0]
        wrap = acc_t.saturation == "AP_WRAP"
        int32 = wrap and acc_t.rounding == "AP_TRN" and acc_t.width <= 32 and prod_bits <= 30
        if kernel is not None and int32 and self.s > 0:
            # every product floored to accum_t, in one compiled pass (fast_kernel.SOURCE); the sum wraps
            # modulo 2^32, which is exact modulo 2^acc_width
            self.mode = "kernel"
            self.product = kernel.prepare(self.w64, self.bias, self.s, acc_t)
        elif wrap and self.s <= 0 and prod_bits + k.bit_length() <= 52:
            # no product loses a bit: the sum is one exact float64 matmul (BLAS), shifted afterwards
            self.mode = "matmul"
            self.wf = self.w64.astype(np.float64)
        elif (wrap and acc_t.rounding == "AP_TRN" and 0 < self.s <= 12 and k << self.s <= 1 << 24
              and prod_bits + k.bit_length() <= 52):
            # Each product loses its low s bits (floor). With x = xh*2^s + xl and w = wh*2^s + wl (xl, wl in
            # [0, 2^s)): floor(x*w / 2^s) = xh*w + xl*wh + floor(xl*wl / 2^s). The first two terms are exact
            # float64 matmuls; only the last is per product, on values small enough for exact float32.
            self.mode = "split"
            self.w_stacked = np.concatenate([self.w64, self.w64 >> self.s]).astype(np.float64)  # [w; wh]
            self.ones = np.ones(k, dtype=np.float32)
            # wl / 2^s is exact in float32, and so is xl * (wl / 2^s) (fewer than 24 significant bits)
            self.wl_scaled_t = np.ascontiguousarray(((self.w64 & ((1 << self.s) - 1)).T).astype(np.float32)
                                                    * np.float32(2.0 ** -self.s))
        elif int32:
            # per-product truncation in int32; the sum wraps modulo 2^32, which is exact modulo 2^acc_width
            self.mode = "int32"
            self.w32 = self.w64.astype(np.int32)
        elif wrap:
            self.mode = "int64"
        else:  # a saturating accumulator clips after every addition: the sum runs in order, as in the C++
            self.mode = "ordered"

    def __call__(self, x):
        # per-product temporaries are (rows, n_out, n_in): in blocks of rows that stay in the CPU's cache
        rows = max(1, _BLOCK // max(1, self.w64.size))
        if self.mode in ("matmul", "kernel") or x.shape[0] <= rows:
            return self._rows(x)
        return np.concatenate([self._rows(x[i:i + rows]) for i in range(0, x.shape[0], rows)])

    def _buffer(self, m):
        buf = self._buf
        if buf is None or buf.shape[0] < m:
            buf = self._buf = np.empty((m,) + self.wl_scaled_t.shape, dtype=np.float32)
        return buf[:m]

    def _rows(self, x):
        acc_t, s = self.acc_t, self.s
        if self.mode == "kernel":  # bias, sum and the wrap to accum_t in one call
            return self.to_out(self.product(x))
        if self.mode == "matmul":
            acc = np.rint(x.astype(np.float64) @ self.wf).astype(np.int64)
            if s < 0:
                acc = acc << (-s)
            acc = acc + self.bias
        elif self.mode == "split":
            xl = x & ((1 << s) - 1)
            base = np.concatenate([x >> s, xl], axis=1).astype(np.float64) @ self.w_stacked  # xh@w + xl@wh
            r = self._buffer(x.shape[0])  # (M, N, K), K contiguous; reused: fresh pages cost page faults
            np.multiply(xl.astype(np.float32)[:, None, :], self.wl_scaled_t[None, :, :], out=r)
            np.floor(r, out=r)
            # the sum over K as a BLAS matrix-vector product: integers below 2^24, exact in any order
            low = (r.reshape(-1, r.shape[2]) @ self.ones).reshape(r.shape[:2])
            acc = (base + low).astype(np.int64) + self.bias  # every term an exact integer
        elif self.mode == "int32":
            prods = x.astype(np.int32)[:, :, None] * self.w32[None, :, :]
            if s > 0:
                prods >>= s
            elif s < 0:
                prods <<= -s  # wraps modulo 2^32 like the final result
            acc = prods.sum(axis=1, dtype=np.int32).astype(np.int64) + self.bias
        elif self.mode == "int64":
            prods = cast(x[:, :, None] * self.w64[None, :, :], acc_t.fractional + s, acc_t)
            acc = prods.sum(axis=1) + self.bias
        else:
            prods = cast(x[:, :, None] * self.w64[None, :, :], acc_t.fractional + s, acc_t)
            acc = np.broadcast_to(self.bias, prods[:, 0, :].shape)
            for i in range(prods.shape[1]):
                acc = cast(acc + prods[:, i, :], acc_t.fractional, acc_t)
        return self.to_out(cast(acc, acc_t.fractional, acc_t))


class FastModel(object):
    """The partition's ops, ready to run on a batch of raw frames.

    `ops` is a list of dicts (kind, name, out_shape, out: ap_fixed text, params) and `arrays` the weights,
    biases and lookup tables (raw int64) by name "<op name>/<key>"; both as `save` writes them. `kernel`: a
    loaded fast_kernel.Kernel for the layers whose products are truncated (None: numpy only).
    """

    def __init__(self, ops, arrays, kernel=None):
        if not ops or ops[0]["kind"] != "input":
            raise NotModelled("the op list does not start with an input")
        self.ops = ops
        self._arrays = dict(arrays)  # kept for save()
        self.kernel = kernel
        self._modes = {}
        self.in_type = FixedType.parse(ops[0]["out"])
        self.out_type = FixedType.parse(ops[-1]["out"])
        self.in_shape = tuple(ops[0]["out_shape"])
        self.out_shape = tuple(ops[-1]["out_shape"])
        self._steps = []
        t, in_shape = self.in_type, self.in_shape
        for op in ops[1:]:
            build = STEPS.handler(op["kind"], op["name"])
            self._steps.append(build(self, op, t, self._type(op["out"]), in_shape, arrays))
            t, in_shape = FixedType.parse(op["out"]), tuple(op["out_shape"])

    # -- building --
    @staticmethod
    def _type(text):
        t = FixedType.parse(text)
        if t.width > MAX_WIDTH:
            raise NotModelled("%s is wider than %d bits" % (t, MAX_WIDTH))
        return t

    @property
    def modes(self):
        """How each Dense/Conv2D layer computes (name -> "kernel", "matmul", "split", "int32", "int64" or
        "ordered"; see _Dense)."""
        return dict(self._modes)

    def save(self, path):
        """Write the model to one .npz (its weights and tables as plain arrays, the op list as JSON)."""
        arrays = self._arrays
        np.savez(path, __meta__=np.array(json.dumps({"format": FORMAT, "ops": self.ops})), **arrays)

    @classmethod
    def load(cls, path, kernel=None):
        """Raises NotModelled when the file is not a fast model this code reads."""
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["__meta__"]))
                arrays = {k: z[k] for k in z.files if k != "__meta__"}
        except (OSError, ValueError, KeyError) as e:
            raise NotModelled("cannot read fast model %s: %s" % (path, e))
        if meta.get("format") != FORMAT:
            raise NotModelled("fast model %s has format %r, this agent reads %d" % (path, meta.get("format"), FORMAT))
        return cls(meta["ops"], arrays, kernel)

    # -- running --
    def run_raw(self, raw):
        """raw: (B,) + input shape (or B x n_in) raw integers -> (B,) + output shape raw integers (int64)."""
        x = np.asarray(raw, dtype=np.int64)
        x = x.reshape((x.shape[0],) + self.in_shape)
        for step in self._steps:
            x = step(x)
        return x

    def run(self, frames):
        """Float frames (B, ...) -> float64 outputs (B, n_out): input quantised as the emulation's input is."""
        frames = np.asarray(frames, dtype=np.float64)
        raw = self.in_type.to_raw(frames.reshape(frames.shape[0], -1))
        return self.run_raw(raw).reshape(frames.shape[0], -1) * self.out_type.step


def check_frames(in_type, n_in, n=4, seed=0):
    """n frames (n, n_in) of values on in_type's grid, spread over its whole range: the smallest and the largest
    value, then Fibonacci hashing of the element's index (the top `width` bits of index x 0x9E3779B97F4A7C15
    modulo 2^64, Knuth TAOCP 6.4), which visits every part of the range. Deterministic for a seed; no
    numpy.random (its import is 7 ms of every agent's start). Types up to 62 bits wide."""
    width = min(in_type.width, 62)
    i = np.arange(1, n * n_in + 1, dtype=np.uint64) + np.uint64(seed * n * n_in)
    with np.errstate(over="ignore"):
        top = (i * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(64 - width)
    raw = top.astype(np.int64) + in_type.raw_min
    raw[:2] = in_type.raw_min, in_type.raw_max
    return raw.reshape(n, n_in) * in_type.step


def compare(model, emulation, frames):
    """Number of output values where the fast model and the emulation library differ on these frames."""
    ours = model.run(frames)
    theirs = np.stack([emulation.run(f) for f in np.asarray(frames)])
    return int(np.count_nonzero(ours.reshape(theirs.shape) != theirs))


class FastBackend(object):
    """The agent's backend kind "fast" (virtual boards).

    Config: {"kind": "fast", "model": "partition.fast.npz", "kernel": "libfastkernel.so" (optional),
             "check_frames": 4, "library": "partition.so", "project": ..., "n_in": ..., "n_out": ...}
    The emulation library is loaded always: it is the check, and the fallback. A kernel that does not load
    leaves the model on numpy (checked all the same).
    """

    forward_bytes = False

    def __init__(self, cfg, base, emulation_backend, log=None):
        log = log or logging.getLogger("splitrack.agent")
        self.emulation = emulation_backend(cfg, base)  # raises AgentConfigError when the .so is missing
        self.model = None
        self.kind = "emulation"
        self.note = ""
        path = cfg.get("model", "")
        path = path if os.path.isabs(path) else os.path.join(base, path)
        kernel, kernel_note = None, ""
        if cfg.get("kernel"):
            kpath = cfg["kernel"] if os.path.isabs(cfg["kernel"]) else os.path.join(base, cfg["kernel"])
            try:
                kernel = Kernel(kpath)
            except (OSError, AttributeError) as e:  # not loadable here, or an older library: numpy only
                kernel_note = "; kernel %s not loaded (%s): numpy only" % (cfg["kernel"], e)
        try:
            model = FastModel.load(path, kernel)
            frames = check_frames(model.in_type, int(cfg["n_in"]), int(cfg.get("check_frames", 4)))
            bad = compare(model, self.emulation.lib, frames)
            if bad:
                raise NotModelled("%d output values differ from the emulation library on %d check frames"
                                  % (bad, len(frames)))
        except NotModelled as e:
            self.note = "fast model not used: %s" % e
        except Exception as e:  # a model that cannot even run is not trusted either
            self.note = ("fast model could not compute the %s check frames (%s), a fault of its model file or of "
                         "fast_model.py" % (cfg.get("check_frames", 4), e))
        else:
            self.model, self.kind = model, "fast"
            compiled = sorted(n for n, m in model.modes.items() if m == "kernel")
            self.note = "fast model == emulation library on %d check frames (%s)%s" % (
                len(frames), "compiled kernel: " + ", ".join(compiled) if compiled else "numpy", kernel_note)
        if self.model is None:
            self.note += "; this board runs hls4ml's emulation library instead (bit-exact, slower)"
        (log.info if self.model else log.warning)("backend %s: %s", self.kind, self.note)

    def run(self, x):
        """One frame (n_in values) -> its n_out raw outputs: the fast model when it passed its check, else
        the emulation library."""
        if self.model is None:
            return self.emulation.run(x)
        return self.model.run(np.asarray(x).reshape(1, -1))[0]


# --- the steps, by op kind ----------------------------------------------------------------------------
def _pads(p):
    return (p["pad_top"], p["pad_bottom"], p["pad_left"], p["pad_right"])


@STEPS.handles("pad")
def _pad_step(model, op, t, out, in_shape, arrays):
    pads = _pads(op["params"])
    to_out = _caster(t.fractional, out, t)
    return lambda x: to_out(_pad(x, pads))


@STEPS.handles("dense", "conv2d")
def _dense_step(model, op, t, out, in_shape, arrays):
    name, p, shape = op["name"], op.get("params", {}), tuple(op["out_shape"])
    w, b = arrays[name + "/weight"], arrays[name + "/bias"]
    acc_t = model._type(p["accum"])
    if acc_t.saturation != "AP_WRAP" and int(p.get("resource_reuse", 1)) > 1:
        # a saturating sum depends on its order, and dense_resource's follows the reuse factor; "ordered"
        # adds in input order (dense_latency's)
        raise NotModelled("%s: saturating accumulator %s under the Resource strategy with reuse factor %d (hls4ml "
                          "adds the products in reuse order, the fast model in input order)"
                          % (name, acc_t, int(p["resource_reuse"])))
    n_in = int(np.prod(in_shape)) if op["kind"] == "dense" else None
    if n_in is not None and w.size != n_in * shape[-1] or w.shape[-1] != shape[-1]:
        raise NotModelled("%s: weights of shape %s for %s inputs and %d outputs" % (name, w.shape, n_in or in_shape,
                                                                                    shape[-1]))
    dense = _Dense(w.reshape(-1, w.shape[-1]), b, t, model._type(p["wtype"]), model._type(p["btype"]),
                   acc_t, out, model.kernel)
    model._modes[name] = dense.mode
    if op["kind"] == "dense":
        return lambda x: dense(x.reshape(x.shape[0], -1)).reshape((x.shape[0],) + shape)
    pads = _pads(p)
    idx = _im2col_index(in_shape, pads, p["filt_height"], p["filt_width"], p["stride_height"], p["stride_width"])
    if w.shape[:-1] != (p["filt_height"], p["filt_width"], in_shape[-1]):
        raise NotModelled("%s: weights of shape %s for a %dx%d window on %d channels"
                          % (name, w.shape, p["filt_height"], p["filt_width"], in_shape[-1]))
    padded = bool(any(pads))

    def conv(x):
        bsz = x.shape[0]
        flat = x.reshape(bsz, -1)
        if padded:  # the index's padding entries point at one zero appended to each frame
            flat = np.concatenate([flat, np.zeros((bsz, 1), dtype=flat.dtype)], axis=1)
        cols = flat[:, idx].reshape(bsz * idx.shape[0], idx.shape[1])  # im2col: one gather
        return dense(cols).reshape((bsz,) + shape)
    return conv


@STEPS.handles("relu")
def _relu_step(model, op, t, out, in_shape, arrays):
    to_out = _caster(t.fractional, out, t)
    return lambda x: to_out(np.maximum(x, 0))


@STEPS.handles("linear")
def _linear_step(model, op, t, out, in_shape, arrays):
    return _caster(t.fractional, out, t)


@STEPS.handles("reshape")
def _reshape_step(model, op, t, out, in_shape, arrays):
    to_out = _caster(t.fractional, out, t)
    shape = tuple(op["out_shape"])
    return lambda x: to_out(x.reshape((x.shape[0],) + shape))


@STEPS.handles("maxpool")
def _maxpool_step(model, op, t, out, in_shape, arrays):
    p = op.get("params", {})
    if any(_pads(p)):
        raise NotModelled("%s: padded pooling" % op["name"])
    red = model._type(p["accum"]) if p.get("accum") else t  # hls4ml reduces in accum_t
    ph, pw, sh, sw = p["pool_height"], p["pool_width"], p["stride_height"], p["stride_width"]

    def pool(x):
        x = np.ascontiguousarray(cast(x, t.fractional, red, t))
        return cast(_windows(x, ph, pw, sh, sw).max(axis=(3, 4)), red.fractional, out, red)
    return pool


@STEPS.handles("sigmoid", "tanh")
def _table_step(model, op, t, out, in_shape, arrays):
    """sigmoid / tanh of nnet_activation_stream.h: index = (int)(x * N / R) + R/2 * N / R, clipped to the
    table; (int) of an ap_fixed truncates toward zero (x * N / R is exact: N is a power of two >= R)."""
    n = int(op["params"]["table_size"])
    table_t = model._type(op["params"]["table_t"])
    r = TABLE_RANGE[op["kind"]]
    table = cast(arrays[op["name"] + "/table"], table_t.fractional, out, table_t)  # res = (res_T) table[i]
    half = (r // 2) * n // r
    f = t.fractional
    den = r << f if f >= 0 else r

    def lookup(x):
        num = x * n if f >= 0 else (x * n) << (-f)
        q = np.where(num >= 0, num // den, -((-num) // den))
        return table[np.clip(q + half, 0, n - 1)]
    return lookup


@STEPS.handles("softmax")
def _softmax_step(model, op, t, out, in_shape, arrays):
    p = op["params"]
    exp_raw, inv_raw = arrays[op["name"] + "/exp_table"], arrays[op["name"] + "/inv_table"]
    norm, acc = model._type(p["inp_norm"]), model._type(p["accum"])
    exp_t, inv_t, inv_inp_t = (model._type(p[k]) for k in ("exp_table_t", "inv_table_t", "inv_inp_t"))
    n_exp = int(np.ceil(np.log2(p["exp_table_size"])))
    n_inv = int(np.ceil(np.log2(p["inv_table_size"])))

    def index(raw, ty, n):  # softmax_idx_from_real_val: the top n bits of the word
        return ((raw & ((1 << ty.width) - 1)) >> (ty.width - n)) & ((1 << n) - 1)

    def softmax(x):
        d = cast(x.max(axis=-1, keepdims=True) - x, t.fractional, norm)
        e = cast(exp_raw[index(d, norm, n_exp)], exp_t.fractional, acc)
        s = cast(cast(e.sum(axis=-1), acc.fractional, acc), acc.fractional, inv_inp_t)
        inv = inv_raw[index(s, inv_inp_t, n_inv)]
        return cast(e * inv[..., None], acc.fractional + inv_t.fractional, out)
    return softmax
