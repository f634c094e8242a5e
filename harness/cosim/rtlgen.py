"""Open RTL for a partition: da4ml traces the op list into a pipelined datapath; we wrap it in the shell.

da4ml (the field's generator for fixed-point datapaths) emits Verilog for a traced computation. We trace
exactly the arithmetic of `bitexact.py` with da4ml's symbolic fixed-point variables: every product by a
constant weight assigned to the accumulator type, sums, bias, result casts, ReLU, max, and for softmax
lookup tables filled as hls4ml fills them. Where da4ml falls short we say so (UserError): it has only the
TRN/RND rounding and WRAP/SAT/SAT_SYM overflow modes, and it unrolls everything (no reuse of multipliers
over pixels, unlike hls4ml's io_stream line buffer), so very large partitions make very large Verilog.

What is ours: the AXI-stream shell (axis_shell.v etc.), the generated top that maps the contract's element
containers onto da4ml's bit-packed ports (`part_<name>`), and the convolution sequencer. da4ml unrolls a
whole frame: the reference CNN's conv2 (8x8 pixels x 32 filters x 144 products) became about 1.5 M lines of
Verilog that Verilator cannot build here in reasonable time. hls4ml's io_stream convolution instead runs one
kernel (kh x kw x cin -> cout products) pixel after pixel; we do the same: da4ml generates the per-pixel
kernel (pipelined, a new window every cycle) and our generated sequencer walks the pixels, gathers each
window from the latched input frame (zero outside: the padding) and stores each output pixel. A partition is
a chain of segments: "conv" (pad + conv2d + element-wise activation) and "flat" (everything else, unrolled).
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

from splitting.contract import FixedType, Packing
from splitting.errors import UserError
from splitting.op_kinds import Handlers

from .fixed import cast
from .ops import Op
from .bitexact import softmax_tables

GENERATOR_VERSION = "3"
HERE = Path(__file__).parent
STATIC_RTL = ["axis_deser.v", "axis_ser.v", "axis_shell.v", "axis_fifo.v", "axis_throttle.v"]


class DA4MLShortfall(UserError):
    """Something in a partition that da4ml cannot express."""


def _kif(t: FixedType) -> Tuple[int, int, int]:
    return int(t.signed), t.integer - int(t.signed), t.fractional


def _modes(t: FixedType) -> Tuple[str, str]:
    rnd = {"AP_TRN": "TRN", "AP_RND": "RND"}.get(t.rounding)
    sat = {"AP_WRAP": "WRAP", "AP_SAT": "SAT", "AP_SAT_SYM": "SAT_SYM"}.get(t.saturation)
    if rnd is None or sat is None:
        raise DA4MLShortfall(
            f"type {t}: da4ml quantises only with TRN/RND rounding and WRAP/SAT/SAT_SYM overflow; "
            "use one of those in the partition's hls4ml precision"
        )
    return sat, rnd


def _q(v, t: FixedType):
    k, i, f = _kif(t)
    sat, rnd = _modes(t)
    return v.quantize(k, i, f, sat, rnd)


def _tree(terms: list):
    """Balanced adder tree (what HLS builds for an unrolled accumulation)."""
    while len(terms) > 1:
        nxt = [terms[i] + terms[i + 1] for i in range(0, len(terms) - 1, 2)]
        if len(terms) % 2:
            nxt.append(terms[-1])
        terms = nxt
    return terms[0]


class _Tracer:
    def __init__(self, hw):
        from da4ml.trace import FixedVariable

        self.FV = FixedVariable
        self.hw = hw

    def const(self, value: float):
        return self.FV.from_const(float(value), hwconf=self.hw) if value else self.FV(0, 0, 1, hwconf=self.hw, opr="const")

    def dense(self, x: np.ndarray, op: Op, in_t: FixedType) -> np.ndarray:
        """x: object array (..., n_in) -> (..., n_out)."""
        acc_t = op.accum
        w = op.weight.reshape(-1, op.weight.shape[-1])
        bias = cast(op.bias, op.btype.fractional, acc_t) * acc_t.step
        lead = x.shape[:-1]
        flat = x.reshape(-1, x.shape[-1])
        out = np.empty((flat.shape[0], w.shape[1]), dtype=object)
        wstep = op.wtype.step
        for p in range(flat.shape[0]):
            for j in range(w.shape[1]):
                terms = [_q(flat[p, i] * float(w[i, j] * wstep), acc_t) for i in range(w.shape[0]) if w[i, j]]
                if acc_t.saturation == "AP_WRAP":
                    acc = _q(_tree(terms + [self.const(bias[j])]), acc_t) if terms else self.const(bias[j])
                else:  # saturating accumulator: in order, clipped after every addition, as the C++ does
                    acc = self.const(bias[j])
                    for t in terms:
                        acc = _q(acc + t, acc_t)
                out[p, j] = _q(acc, op.out)
        return out.reshape(lead + (w.shape[1],))

    def windows(self, x: np.ndarray, kh, kw, sh, sw) -> np.ndarray:
        h, w_, c = x.shape
        oh, ow = (h - kh) // sh + 1, (w_ - kw) // sw + 1
        out = np.empty((oh, ow, kh, kw, c), dtype=object)
        for i in range(oh):
            for j in range(ow):
                out[i, j] = x[i * sh:i * sh + kh, j * sw:j * sw + kw, :]
        return out

    def pad(self, x: np.ndarray, p: Dict[str, int]) -> np.ndarray:
        h, w, c = x.shape
        out = np.empty((h + p["pad_top"] + p["pad_bottom"], w + p["pad_left"] + p["pad_right"], c), dtype=object)
        zero = self.const(0)
        out[...] = zero
        out[p["pad_top"]:p["pad_top"] + h, p["pad_left"]:p["pad_left"] + w] = x
        return out

    def softmax(self, x: np.ndarray, op: Op, in_t: FixedType) -> np.ndarray:
        from da4ml.trace import FixedVariableArray

        ty, norm = op.params["types"], op.params["inp_norm"]
        exp_raw, inv_raw = softmax_tables(op)
        xs = list(x.reshape(-1))
        xmax = xs[0]
        for v in xs[1:]:
            xmax = xmax.max_of(v)

        def top_bits(v, t: FixedType, size: int):
            n = int(np.ceil(np.log2(size)))
            k, i, f = _kif(t)
            return v.quantize(k, i, f - (t.width - n), "WRAP", "TRN"), n, f - (t.width - n)

        def lookup(vs, t: FixedType, size: int, table_raw, table_t: FixedType):
            idx = [top_bits(v, t, size) for v in vs]
            n, f = idx[0][1], idx[0][2]

            def fn(values, n=n, f=f):
                words = np.rint(np.asarray(values) * 2.0 ** f).astype(np.int64) & ((1 << n) - 1)
                return table_raw[words] * table_t.step

            arr = FixedVariableArray(np.array([i[0] for i in idx], dtype=object), hwconf=self.hw)
            k, i, f_ = _kif(table_t)
            return list(arr.apply(fn).quantize(k, i, f_)._vars)

        d = [_q(xmax - v, norm) for v in xs]
        e = [_q(v, op.accum) for v in lookup(d, norm, op.params["exp_table_size"], exp_raw, ty["exp_table_t"])]
        s = _q(_q(_tree(list(e)), op.accum), ty["inv_inp_t"])
        inv = lookup([s], ty["inv_inp_t"], op.params["inv_table_size"], inv_raw, ty["inv_table_t"])[0]
        return np.array([_q(v * inv, op.out) for v in e], dtype=object).reshape(x.shape)

    def run(self, ops: Sequence[Op]):
        from da4ml.trace import FixedVariableArray

        t = ops[0].out
        k, i, f = _kif(t)
        shape = ops[0].out_shape
        inp = FixedVariableArray.from_kif(np.full(shape, k, np.int8), np.full(shape, i, np.int8),
                                          np.full(shape, f, np.int8), self.hw)
        x = inp._vars
        for op in ops[1:]:
            x = TRACE.handler(op.kind, op.name)(self, x, op, t)
            t = op.out
        return inp, FixedVariableArray(np.asarray(x, dtype=object).reshape(-1), hwconf=self.hw)


# the da4ml trace of each op kind: (tracer, x: object array of da4ml variables, op, input type) -> x
TRACE = Handlers("the RTL generator (da4ml trace)", DA4MLShortfall)
TRACE.refuse("sigmoid", "hls4ml's table activations have no RTL here (the fast model computes them)")
TRACE.refuse("tanh", TRACE.refused["sigmoid"])


def _each(x: np.ndarray, fn) -> np.ndarray:
    return np.vectorize(fn, otypes=[object])(x)


@TRACE.handles("pad")
def _trace_pad(tr: _Tracer, x: np.ndarray, op: Op, t: FixedType) -> np.ndarray:
    return _each(tr.pad(x, op.params), lambda v: _q(v, op.out))


@TRACE.handles("dense")
def _trace_dense(tr: _Tracer, x: np.ndarray, op: Op, t: FixedType) -> np.ndarray:
    return tr.dense(x, op, t)


@TRACE.handles("conv2d")
def _trace_conv2d(tr: _Tracer, x: np.ndarray, op: Op, t: FixedType) -> np.ndarray:
    p = op.params
    if any(p[k_] for k_ in ("pad_top", "pad_bottom", "pad_left", "pad_right")):
        x = tr.pad(x, p)
    win = tr.windows(x, p["filt_height"], p["filt_width"], p["stride_height"], p["stride_width"])
    return tr.dense(win.reshape(win.shape[0], win.shape[1], -1), op, t)


@TRACE.handles("relu")
def _trace_relu(tr: _Tracer, x: np.ndarray, op: Op, t: FixedType) -> np.ndarray:
    return _each(x, lambda v: _q(v.relu(), op.out))


@TRACE.handles("linear", "reshape")
def _trace_cast(tr: _Tracer, x: np.ndarray, op: Op, t: FixedType) -> np.ndarray:
    return _each(x.reshape(op.out_shape), lambda v: _q(v, op.out))


@TRACE.handles("maxpool")
def _trace_maxpool(tr: _Tracer, x: np.ndarray, op: Op, t: FixedType) -> np.ndarray:
    p = op.params
    acc = op.accum or t
    x = _each(x, lambda v: _q(v, acc))
    win = tr.windows(x, p["pool_height"], p["pool_width"], p["stride_height"], p["stride_width"])
    out = np.empty(win.shape[:2] + win.shape[-1:], dtype=object)
    for idx in np.ndindex(out.shape):
        vals = list(win[idx[0], idx[1], :, :, idx[2]].reshape(-1))
        m = vals[0]
        for v in vals[1:]:
            m = m.max_of(v)
        out[idx] = _q(m, op.out)
    return out


@TRACE.handles("softmax")
def _trace_softmax(tr: _Tracer, x: np.ndarray, op: Op, t: FixedType) -> np.ndarray:
    return tr.softmax(x, op, t)


@dataclass
class CoreRTL:
    """One partition's generated RTL: da4ml cores + our segments and top, ready to simulate."""

    name: str
    module: str           # top module: part_<name>
    folder: str
    sources: List[str]    # Verilog files of this partition (static shell files not included)
    latency: int          # clock cycles from core start to core done, at most (the shell's handshake adds 1-2)
    stages: int           # da4ml pipeline stages, summed over segments
    in_packing: Dict
    out_packing: Dict
    in_type: str
    out_type: str
    cost: float           # da4ml's cost estimate (about LUTs), summed over segments
    segments: List[str] = None


def ops_key(ops: Sequence[Op], extra: dict) -> str:
    """Content hash (sha256 hex) of a partition's ops (kinds, shapes, types, parameters, raw weights and biases)
    and `extra` generator settings: the cache key of its generated RTL."""
    h = hashlib.sha256()
    for op in ops:
        h.update(json.dumps([op.kind, op.name, op.out_shape, str(op.out), str(op.accum), str(op.wtype), str(op.btype),
                             {k: (str(v) if not isinstance(v, (int, float)) else v) for k, v in op.params.items()}],
                            sort_keys=True, default=str).encode())
        for arr in (op.weight, op.bias):
            if arr is not None:
                h.update(np.ascontiguousarray(arr, dtype=np.int64).tobytes())
    h.update(json.dumps(extra, sort_keys=True).encode())
    return h.hexdigest()[:16]


def safe(name: str) -> str:
    """`name` with every character that Verilog identifiers do not allow replaced by '_'."""
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


@dataclass
class Segment:
    """A run of ops that becomes one RTL block: 'conv' (a pixel sequencer: [pad] conv2d [activation]), 'dense'
    (a large dense layer as MAC lanes, [activation]) or 'flat' (unrolled by da4ml), with its input shape and
    fixed-point type."""

    kind: str                 # "conv" or "flat"
    ops: List[Op]             # for conv: [pad?] conv2d [relu/linear]*
    in_shape: Tuple[int, ...]
    in_t: FixedType

    @property
    def out_shape(self):
        """Shape of the segment's output (its last op's)."""
        return tuple(self.ops[-1].out_shape)

    @property
    def out_t(self) -> FixedType:
        """Fixed-point type of the segment's output (its last op's)."""
        return self.ops[-1].out


DENSE_SEQ_MIN = 8192  # products: larger Dense layers go through the MAC sequencer instead of da4ml's unrolling


def _dense_seq_ok(op: Op, in_t: FixedType, after: Sequence[Op]) -> bool:
    """The MAC sequencer does TRN/WRAP casts on signed types only (hls4ml's defaults); others stay unrolled."""
    types = [in_t, op.wtype, op.btype, op.accum, op.out] + [o.out for o in after]
    return all(t.signed and t.rounding == "AP_TRN" and t.saturation == "AP_WRAP" for t in types)


def segments(ops: Sequence[Op], conv_sequencer: bool = True) -> List[Segment]:
    """Group a partition's ops (from ops.partition_ops; ops[0] is the input) into Segments: conv2d runs and
    large dense layers (more than DENSE_SEQ_MIN weights, flat input) become sequencers when conv_sequencer is
    True, the rest flat da4ml blocks."""
    segs: List[Segment] = []
    shape, t = tuple(ops[0].out_shape), ops[0].out
    i, body = 1, list(ops)
    while i < len(body):
        op = body[i]
        nxt = body[i + 1] if i + 1 < len(body) else None
        if conv_sequencer and op.kind == "dense" and op.weight.size > DENSE_SEQ_MIN and len(shape) == 1:
            j = i + 1
            while j < len(body) and body[j].kind in ("relu", "linear"):
                j += 1
            if _dense_seq_ok(op, t, body[i + 1:j]):
                segs.append(Segment("dense", body[i:j], shape, t))
                i = j
                shape, t = tuple(body[i - 1].out_shape), body[i - 1].out
                continue
        if conv_sequencer and (op.kind == "conv2d" or (op.kind == "pad" and nxt is not None and nxt.kind == "conv2d"
                                                        and op.out == t)):
            group = [op] if op.kind == "conv2d" else [op, nxt]
            i += len(group)
            while i < len(body) and body[i].kind in ("relu", "linear"):
                group.append(body[i])
                i += 1
            segs.append(Segment("conv", group, shape, t))
        else:
            if segs and segs[-1].kind == "flat":
                segs[-1].ops.append(op)
            else:
                segs.append(Segment("flat", [op], shape, t))
            i += 1
        shape, t = tuple(body[i - 1].out_shape), body[i - 1].out
    return segs


def _conv_geometry(seg: Segment) -> dict:
    conv = next(o for o in seg.ops if o.kind == "conv2d")
    p = dict(conv.params)
    pad = next((o for o in seg.ops if o.kind == "pad"), None)
    for k in ("pad_top", "pad_bottom", "pad_left", "pad_right"):
        p[k] += pad.params[k] if pad else 0
    h, w, c = seg.in_shape
    kh, kw = p["filt_height"], p["filt_width"]
    oh = (h + p["pad_top"] + p["pad_bottom"] - kh) // p["stride_height"] + 1
    ow = (w + p["pad_left"] + p["pad_right"] - kw) // p["stride_width"] + 1
    return dict(p, H=h, W=w, C=c, OH=oh, OW=ow, CO=conv.weight.shape[-1], conv=conv)


def _kernel_ops(seg: Segment) -> List[Op]:
    """The per-pixel computation of a conv segment: window (kh*kw*cin) -> cout, as a dense layer + activations."""
    g = _conv_geometry(seg)
    conv = g["conv"]
    k = conv.weight.shape[0] * conv.weight.shape[1] * conv.weight.shape[2]
    dense = Op("dense", conv.name, (g["CO"],), conv.out, weight=conv.weight.reshape(k, -1), bias=conv.bias,
               wtype=conv.wtype, btype=conv.btype, accum=conv.accum)
    after = [Op(o.kind, o.name, (g["CO"],), o.out) for o in seg.ops[seg.ops.index(conv) + 1:]]
    return [Op("input", "window", (k,), seg.in_t), dense] + after


def _trace_core(ops: Sequence[Op], core: str, folder: Path, latency_cutoff: float):
    from da4ml.codegen import RTLModel
    from da4ml.trace import HWConfig, comb_trace
    from da4ml.types import minimal_kif

    inp, out = _Tracer(HWConfig(1, -1, -1)).run(ops)
    comb = comb_trace(inp, out)
    model = RTLModel(comb, core, folder, flavor="verilog", latency_cutoff=latency_cutoff, print_latency=False)
    model.write()
    _absolute_memfiles(folder / "src")
    return (len(model._pipe.solutions), float(comb.cost), [minimal_kif(q) for q in comb.inp_qint],
            [minimal_kif(q) for q in comb.out_qint])


def generate(name: str, ops: Sequence[Op], cache: Path, data_width: int = 32, latency_cutoff: float = 8.0,
             log=print, conv_sequencer: bool = True) -> CoreRTL:
    """Generate (or load from the cache) the RTL of one partition."""
    from filelock import FileLock

    in_t, out_t = ops[0].out, ops[-1].out
    n_in, n_out = int(np.prod(ops[0].out_shape)), int(np.prod(ops[-1].out_shape))
    key = ops_key(ops, {"dw": data_width, "cut": latency_cutoff, "da4ml": version("da4ml"), "gen": GENERATOR_VERSION,
                        "shell": _static_hash(), "seq": conv_sequencer, "dseq": DENSE_SEQ_MIN})
    folder = (Path(cache) / "rtl" / f"{safe(name)}-{key}").resolve()
    meta_file = folder / "core.json"
    if meta_file.is_file():
        return CoreRTL(**json.loads(meta_file.read_text()))
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if meta_file.is_file():
            return CoreRTL(**json.loads(meta_file.read_text()))
        if folder.exists():
            shutil.rmtree(folder)
        import time

        t0 = time.time()
        segs = segments(ops, conv_sequencer)
        folder.mkdir(parents=True)
        log(f"  da4ml: {name}: {len(ops) - 1} layers, {n_in} -> {n_out} values, segments: "
            + ", ".join(f"{s.kind}({'+'.join(o.kind for o in s.ops)})" for s in segs))
        m = safe(name)
        sources, modules, cost, stages, latency = [], [], 0.0, 0, 0
        for k, seg in enumerate(segs):
            mod = f"seg_{m}_{k}"
            if seg.kind == "dense":
                text, cyc = _dense_segment(mod, seg, folder / f"{mod}_weights.mem")
                latency += cyc
                (folder / f"{mod}.v").write_text(text)
                sources.append(str(folder / f"{mod}.v"))
                modules.append(mod)
                continue
            core = f"core_{m}_{k}"
            kops = _kernel_ops(seg) if seg.kind == "conv" else [Op("input", "in", seg.in_shape, seg.in_t)] + seg.ops
            st, c, ikif, okif = _trace_core(kops, core, folder / f"da4ml{k}", latency_cutoff)
            cost += c
            stages += st
            sources += sorted(str(p) for p in (folder / f"da4ml{k}" / "src").glob(f"{core}*.v"))
            if seg.kind == "conv":
                g = _conv_geometry(seg)
                text = _conv_segment(mod, core, seg, g, st, ikif, okif)
                latency += g["OH"] * g["OW"] + st + 3
            else:
                text = _flat_segment(mod, core, seg, st, ikif, okif)
                latency += st + 3
            (folder / f"{mod}.v").write_text(text)
            sources.append(str(folder / f"{mod}.v"))
            modules.append(mod)
        in_pack = Packing.for_elements(n_in, str(in_t), data_width)
        out_pack = Packing.for_elements(n_out, str(out_t), data_width)
        (folder / f"part_{m}.v").write_text(_top_verilog(name, segs, modules, in_t, out_t, in_pack, out_pack))
        sources.append(str(folder / f"part_{m}.v"))
        rtl = CoreRTL(name=name, module=f"part_{m}", folder=str(folder), sources=sources, latency=latency,
                      stages=stages, in_packing=asdict(in_pack), out_packing=asdict(out_pack), in_type=str(in_t),
                      out_type=str(out_t), cost=cost, segments=[f"{s.kind}:{'+'.join(o.name for o in s.ops)}" for s in segs])
        meta_file.write_text(json.dumps(asdict(rtl), indent=1))
        log(f"  da4ml: {name}: {stages} pipeline stages, cost {cost:.0f}, {time.time() - t0:.1f} s")
        return rtl


def da4ml_static_sources(rtl: CoreRTL) -> List[str]:
    """The static Verilog files da4ml ships with a generated core (under the core's folder)."""
    return sorted(str(p) for p in Path(rtl.folder).glob("da4ml*/src/static/*.v"))


def shell_sources() -> List[str]:
    """The AXI-stream shell's Verilog files (deserialiser, serialiser, FIFO, throttle, shell)."""
    return [str(HERE / f) for f in STATIC_RTL]


def _static_hash() -> str:
    return hashlib.sha256(b"".join((HERE / f).read_bytes() for f in STATIC_RTL)).hexdigest()[:12]


def _absolute_memfiles(src: Path) -> None:
    """da4ml names lookup-table files relative to the simulator's working directory: make them absolute."""
    mem = src / "memfiles"
    for f in src.glob("*.v"):
        text = f.read_text()
        new = re.sub(r'(lookup_table #\(\s*\d+\s*,\s*\d+\s*,\s*")([^"/]+)"',
                     lambda mm: mm.group(1) + str((mem / mm.group(2)).resolve()) + '"', text)
        if new != text:
            f.write_text(new)


def _to_da4ml(kifs, t: FixedType, src: str, ew: int, dst: str, what: str) -> Tuple[List[str], int]:
    """Assigns from a vector of raw elements (ew bits each, type t) to da4ml's packed input fields."""
    lines, pos = [], 0
    for e, (k, i, f) in enumerate(kifs):
        w = int(k) + int(i) + int(f)
        if w <= 0:
            continue
        lo = t.fractional - int(f)  # bit of the raw word that is da4ml's bit 0
        if lo < 0:
            raise DA4MLShortfall(f"{what}: da4ml wants more fractional input bits than {t} has")
        base = e * ew
        if lo + w <= ew:
            lines.append(f"    assign {dst}[{pos + w - 1}:{pos}] = {src}[{base + lo + w - 1}:{base + lo}];")
        else:  # da4ml keeps more integer bits than the word: sign-extend
            lines.append(f"    assign {dst}[{pos + w - 1}:{pos}] = {{{{{lo + w - ew}{{{src}[{base + ew - 1}]}}}}, "
                         f"{src}[{base + ew - 1}:{base + lo}]}};")
        pos += w
    return lines, max(pos, 1)


def _from_da4ml(kifs, t: FixedType, src: str, ew: int, dst: str, what: str) -> Tuple[List[str], int]:
    """Assigns from da4ml's packed output fields to a vector of raw elements (ew bits each, type t)."""
    lines, pos = [], 0
    for e, (k, i, f) in enumerate(kifs):
        w = int(k) + int(i) + int(f)
        base = e * ew
        if w <= 0:
            lines.append(f"    assign {dst}[{base + ew - 1}:{base}] = {ew}'d0;")
            continue
        sh = t.fractional - int(f)  # da4ml's bit 0 sits at raw bit `sh`
        top = ew - sh - w
        if sh < 0 or top < 0:
            raise DA4MLShortfall(f"{what}: da4ml output {e} (k,i,f={k},{i},{f}) does not fit {t}")
        ext = f"{{{top}{{{src}[{pos + w - 1}]}}}}" if int(k) else f"{top}'d0"
        parts = ([ext] if top else []) + [f"{src}[{pos + w - 1}:{pos}]"] + ([f"{sh}'d0"] if sh else [])
        lines.append(f"    assign {dst}[{base + ew - 1}:{base}] = {{{', '.join(parts)}}};")
        pos += w
    return lines, max(pos, 1)


def _flat_segment(mod, core, seg: Segment, stages: int, ikif, okif) -> str:
    """Latch the input at `start`, wait the core's pipeline, pulse `done`; the output stays until next start."""
    n_in, n_out = int(np.prod(seg.in_shape)), int(np.prod(seg.out_shape))
    wi, wo = seg.in_t.width, seg.out_t.width
    ia, w_in = _to_da4ml(ikif, seg.in_t, "in_q", wi, "model_inp", mod)
    oa, w_out = _from_da4ml(okif, seg.out_t, "model_out", wo, "out_frame", mod)
    lat = stages + 1  # registers from model_inp to model_out: one per stage plus the output register
    return f"""// Generated by splitrack (harness/cosim/rtlgen.py): {'+'.join(o.name for o in seg.ops)}, unrolled by da4ml.
`timescale 1ns/1ps
module {mod} (
    input wire clk, input wire rstn, input wire start,
    input wire [{n_in * wi - 1}:0] in_frame,
    output wire [{n_out * wo - 1}:0] out_frame,
    output reg done
);
    reg [{n_in * wi - 1}:0] in_q;
    wire [{w_in - 1}:0] model_inp;
    wire [{w_out - 1}:0] model_out;
    reg [7:0] cnt;
    reg busy;
{chr(10).join(ia) if ia else "    assign model_inp = 0;"}
{chr(10).join(oa)}
    {core} u_core (.clk(clk), .model_inp(model_inp), .model_out(model_out));
    always @(posedge clk) begin
        if (!rstn) begin
            busy <= 1'b0;
            done <= 1'b0;
        end else begin
            done <= 1'b0;
            if (start) begin
                in_q <= in_frame;
                cnt <= 8'd{lat};
                busy <= 1'b1;
            end else if (busy) begin
                if (cnt == 0) begin
                    busy <= 1'b0;
                    done <= 1'b1;
                end else cnt <= cnt - 1'b1;
            end
        end
    end
endmodule
"""


def _conv_segment(mod, core, seg: Segment, g: dict, stages: int, ikif, okif) -> str:
    """One window per cycle through the da4ml kernel, pixel by pixel (hls4ml io_stream's order)."""
    H, W, C, OH, OW, CO = g["H"], g["W"], g["C"], g["OH"], g["OW"], g["CO"]
    KH, KW, SH, SW, PT, PL = g["filt_height"], g["filt_width"], g["stride_height"], g["stride_width"], g["pad_top"], g["pad_left"]
    wi, wo = seg.in_t.width, seg.out_t.width
    K = KH * KW * C
    ia, w_in = _to_da4ml(ikif, seg.in_t, "window", wi, "model_inp", mod)
    oa, w_out = _from_da4ml(okif, seg.out_t, "model_out", wo, "kvec", mod)
    S = stages
    gather = []
    for ky in range(KH):
        for kx in range(KW):
            j = ky * KW + kx
            gather.append(f"""    wire signed [31:0] iy{j} = $signed({{16'd0, oy}}) * {SH} + {ky - PT};
    wire signed [31:0] ix{j} = $signed({{16'd0, ox}}) * {SW} + {kx - PL};
    wire in{j} = iy{j} >= 0 && iy{j} < {H} && ix{j} >= 0 && ix{j} < {W};
    wire [31:0] at{j} = in{j} ? ((iy{j} * {W} + ix{j}) * {C * wi}) : 0;
    assign window[{(j + 1) * C * wi - 1}:{j * C * wi}] = in{j} ? in_q[at{j} +: {C * wi}] : {C * wi}'d0;""")
    return f"""// Generated by splitrack (harness/cosim/rtlgen.py): {'+'.join(o.name for o in seg.ops)} as a pixel sequencer
// around a da4ml kernel ({K} -> {CO}, {S} stages). Input {H}x{W}x{C}, output {OH}x{OW}x{CO}, padding {PT}/{PL}.
`timescale 1ns/1ps
module {mod} (
    input wire clk, input wire rstn, input wire start,
    input wire [{H * W * C * wi - 1}:0] in_frame,
    output reg [{OH * OW * CO * wo - 1}:0] out_frame,
    output reg done
);
    reg [{H * W * C * wi - 1}:0] in_q;
    reg [15:0] oy, ox;
    reg issuing;
    reg [15:0] written;
    reg [{S}:0] vld;
    reg [15:0] pix [0:{S}];
    wire [{K * wi - 1}:0] window;
    wire [{w_in - 1}:0] model_inp;
    wire [{w_out - 1}:0] model_out;
    wire [{CO * wo - 1}:0] kvec;
{chr(10).join(gather)}
{chr(10).join(ia) if ia else "    assign model_inp = 0;"}
{chr(10).join(oa)}
    {core} u_core (.clk(clk), .model_inp(model_inp), .model_out(model_out));
    integer i;
    always @(posedge clk) begin
        if (!rstn) begin
            issuing <= 1'b0;
            done <= 1'b0;
            vld <= 0;
        end else begin
            done <= 1'b0;
            // the window of pixel (oy, ox) is on the kernel's input in this cycle; its result comes {S + 1} edges later
            vld <= {{vld[{S - 1 if S > 0 else 0}:0], issuing}};
            pix[0] <= oy * {OW} + ox;
            for (i = 1; i <= {S}; i = i + 1) pix[i] <= pix[i - 1];
            if (start) begin
                in_q <= in_frame;
                oy <= 0;
                ox <= 0;
                issuing <= 1'b1;
                written <= 0;
            end else if (issuing) begin
                if (ox == {OW - 1}) begin
                    ox <= 0;
                    if (oy == {OH - 1}) issuing <= 1'b0;
                    else oy <= oy + 1'b1;
                end else ox <= ox + 1'b1;
            end
            if (vld[{S}]) begin
                out_frame[pix[{S}] * {CO * wo} +: {CO * wo}] <= kvec;
                written <= written + 1'b1;
                if (written == {OH * OW - 1}) done <= 1'b1;
            end
        end
    end
endmodule
"""


def _dense_segment(mod: str, seg: Segment, rom_file: Path) -> Tuple[str, int]:
    """A Dense layer (+ element-wise activations) as P multiply-accumulate lanes over a weight ROM: the output
    units in groups of P, one input per cycle, as hls4ml's Resource strategy reuses multipliers. Ours, not
    da4ml's: unrolled, the reference CNN's fc1 (512 x 130) is about 330 k lines that Verilator could not build
    here in 15 minutes and 10 GB. Same arithmetic as reference._dense: every product assigned to accum_t (TRN:
    arithmetic shift right; WRAP: keep the low bits), the sum kept in accum_t from the bias, then the casts."""
    dense, after = seg.ops[0], seg.ops[1:]
    n, m = dense.weight.shape
    lanes = min(m, 128)
    groups = -(-m // lanes)
    wi, ww, wa = seg.in_t.width, dense.wtype.width, dense.accum.width
    shift = seg.in_t.fractional + dense.wtype.fractional - dense.accum.fractional
    w = np.zeros((groups * lanes, n), dtype=np.int64)
    w[:m] = dense.weight.T
    lines = []
    for g in range(groups):
        for i in range(n):
            word = 0
            for p in range(lanes):
                word |= (int(w[g * lanes + p, i]) & ((1 << ww) - 1)) << (p * ww)
            lines.append(f"{word:x}")
    rom_file.write_text("\n".join(lines) + "\n")
    bias = cast(dense.bias, dense.btype.fractional, dense.accum)
    bias_words = [int(bias[j]) & ((1 << wa) - 1) if j < m else 0 for j in range(groups * lanes)]
    bias_lit = ", ".join(f"{wa}'h{b:x}" for b in reversed(bias_words))
    # post-processing of one accumulator: cast to the Dense result type, then each activation and its cast
    post = []
    t, frac = dense.out, dense.accum.fractional
    src = "acc_next[p]"

    def cast_expr(expr, from_frac, from_w, to: FixedType):
        d = from_frac - to.fractional
        shifted = f"($signed({expr}) >>> {d})" if d > 0 else (f"($signed({expr}) <<< {-d})" if d < 0 else f"$signed({expr})")
        return f"{shifted}"

    post.append(f"            wire signed [{max(wa, t.width) + 64}:0] v0 = {cast_expr(src, frac, wa, t)};")
    post.append(f"            wire [{t.width - 1}:0] r0 = v0[{t.width - 1}:0];")
    k, frac = 0, t.fractional
    for op in after:
        prev = f"r{k}"
        x = f"({prev}[{t.width - 1}] ? {t.width}'d0 : {prev})" if op.kind == "relu" else prev
        post.append(f"            wire [{t.width - 1}:0] a{k + 1} = {x};")
        post.append(f"            wire signed [{max(t.width, op.out.width) + 64}:0] v{k + 1} = "
                    f"{cast_expr(f'a{k + 1}', frac, t.width, op.out)};")
        post.append(f"            wire [{op.out.width - 1}:0] r{k + 1} = v{k + 1}[{op.out.width - 1}:0];")
        k, t, frac = k + 1, op.out, op.out.fractional
    wo = t.width
    prod_w = wi + ww
    q = (f"($signed(prod[p]) >>> {shift})" if shift > 0 else
         (f"($signed(prod[p]) <<< {-shift})" if shift < 0 else "$signed(prod[p])"))
    cycles = groups * n + 3
    text = f"""// Generated by splitrack (harness/cosim/rtlgen.py): {'+'.join(o.name for o in seg.ops)} as {lanes} MAC lanes
// x {groups} groups x {n} inputs ({groups * n} cycles). accum {dense.accum}, result {t}.
`timescale 1ns/1ps
module {mod} (
    input wire clk, input wire rstn, input wire start,
    input wire [{n * wi - 1}:0] in_frame,
    output reg [{m * wo - 1}:0] out_frame,
    output reg done
);
    localparam N = {n}, M = {m}, P = {lanes}, G = {groups};
    localparam [{groups * lanes * wa - 1}:0] BIAS = {{{bias_lit}}};
    reg [{lanes * ww - 1}:0] rom [0:{groups * n - 1}];
    initial $readmemh("{rom_file.resolve()}", rom);
    reg [{n * wi - 1}:0] in_q;
    reg [15:0] i, g;
    reg busy;
    reg [{wa - 1}:0] acc [0:P-1];
    wire [{lanes * ww - 1}:0] wrow = rom[g * N + i];
    wire signed [{wi - 1}:0] x = in_q[i * {wi} +: {wi}];
    wire [{wa - 1}:0] acc_next [0:P-1];
    wire [{wo - 1}:0] res [0:P-1];
    genvar p;
    generate
        for (p = 0; p < P; p = p + 1) begin : g_lane
            wire signed [{prod_w - 1}:0] prod = x * $signed(wrow[p * {ww} +: {ww}]);
            wire signed [{prod_w + 64}:0] qd = {q.replace('prod[p]', 'prod')};
            wire [{wa - 1}:0] base = (i == 0) ? BIAS[(g * P + p) * {wa} +: {wa}] : acc[p];
            assign acc_next[p] = base + qd[{wa - 1}:0];
{chr(10).join(post)}
            assign res[p] = r{k};
        end
    endgenerate
    integer j;
    always @(posedge clk) begin
        if (!rstn) begin
            busy <= 1'b0;
            done <= 1'b0;
        end else begin
            done <= 1'b0;
            if (start) begin
                in_q <= in_frame;
                i <= 0;
                g <= 0;
                busy <= 1'b1;
            end else if (busy) begin
                for (j = 0; j < P; j = j + 1) acc[j] <= acc_next[j];
                if (i == N - 1) begin
                    for (j = 0; j < P; j = j + 1)
                        if (g * P + j < M) out_frame[(g * P + j) * {wo} +: {wo}] <= res[j];
                    i <= 0;
                    if (g == G - 1) begin
                        busy <= 1'b0;
                        done <= 1'b1;
                    end else g <= g + 1'b1;
                end else i <= i + 1'b1;
            end
        end
    end
endmodule
"""
    return text, cycles


def _top_verilog(name, segs: List[Segment], modules: List[str], in_t: FixedType, out_t: FixedType, inp: Packing,
                 outp: Packing) -> str:
    """The partition's top: shell, element containers <-> raw words, the segments in a chain."""
    m = safe(name)
    n_in, n_out = int(np.prod(segs[0].in_shape)), int(np.prod(segs[-1].out_shape))
    ib, ob = inp.element_bits, outp.element_bits
    wi, wo = in_t.width, out_t.width
    lines = [f"    assign raw_in[{(e + 1) * wi - 1}:{e * wi}] = core_in[{e * ib + wi - 1}:{e * ib}];" for e in range(n_in)]
    for e in range(n_out):  # containers carry the raw word sign-extended (zero-extended if unsigned)
        ext = f"{{{ob - wo}{{raw_out[{(e + 1) * wo - 1}]}}}}, " if (ob > wo and out_t.signed) else (
            f"{ob - wo}'d0, " if ob > wo else "")
        lines.append(f"    assign core_out[{(e + 1) * ob - 1}:{e * ob}] = {{{ext}raw_out[{(e + 1) * wo - 1}:{e * wo}]}};")
    chain = []
    prev_out, prev_done = "raw_in", "core_start"
    for k, (seg, mod) in enumerate(zip(segs, modules)):
        width = int(np.prod(seg.out_shape)) * seg.out_t.width
        chain.append(f"    wire [{width - 1}:0] seg{k}_out;\n    wire seg{k}_done;\n"
                     f"    {mod} u_seg{k} (.clk(aclk), .rstn(aresetn), .start({prev_done}), .in_frame({prev_out}), "
                     f".out_frame(seg{k}_out), .done(seg{k}_done));")
        prev_out, prev_done = f"seg{k}_out", f"seg{k}_done"
    return f"""// Generated by splitrack (harness/cosim/rtlgen.py) for partition {name}: AXI-stream shell + segments
// {", ".join(modules)}. Input {in_t} x {n_in} ({inp.beats} beats), output {out_t} x {n_out} ({outp.beats} beats).
`timescale 1ns/1ps
module part_{m} #(
    parameter MUTANT = 0
) (
    input  wire        aclk,
    input  wire        aresetn,
    input  wire [{inp.data_width - 1}:0] s_axis_tdata,
    input  wire [{inp.data_width // 8 - 1}:0]  s_axis_tkeep,
    input  wire        s_axis_tvalid,
    output wire        s_axis_tready,
    input  wire        s_axis_tlast,
    output wire [{outp.data_width - 1}:0] m_axis_tdata,
    output wire [{outp.data_width // 8 - 1}:0]  m_axis_tkeep,
    output wire        m_axis_tvalid,
    input  wire        m_axis_tready,
    output wire        m_axis_tlast,
    output wire        framing_error
);
    wire [{n_in * ib - 1}:0] core_in;
    wire [{n_out * ob - 1}:0] core_out;
    wire [{n_in * wi - 1}:0] raw_in;
    wire [{n_out * wo - 1}:0] raw_out;
    wire core_start;
    reg core_done;
{chr(10).join(lines)}
{chr(10).join(chain)}
    assign raw_out = {prev_out};
    // the result is ready from the last segment's done pulse until the next start
    always @(posedge aclk) begin
        if (!aresetn || core_start) core_done <= 1'b0;
        else if ({prev_done}) core_done <= 1'b1;
    end

    axis_shell #(
        .DATA_WIDTH({inp.data_width}),
        .IN_ELEM_BITS({ib}), .IN_PER_BEAT({inp.elements_per_beat}), .IN_BEATS({inp.beats}), .IN_ELEMS({n_in}),
        .OUT_ELEM_BITS({ob}), .OUT_PER_BEAT({outp.elements_per_beat}), .OUT_BEATS({outp.beats}),
        .OUT_ELEMS({n_out}), .OUT_LAST_KEEP({outp.last_tkeep}), .MUTANT(MUTANT)
    ) u_shell (
        .aclk(aclk), .aresetn(aresetn),
        .s_axis_tdata(s_axis_tdata), .s_axis_tkeep(s_axis_tkeep), .s_axis_tvalid(s_axis_tvalid),
        .s_axis_tready(s_axis_tready), .s_axis_tlast(s_axis_tlast),
        .m_axis_tdata(m_axis_tdata), .m_axis_tkeep(m_axis_tkeep), .m_axis_tvalid(m_axis_tvalid),
        .m_axis_tready(m_axis_tready), .m_axis_tlast(m_axis_tlast),
        .core_in(core_in), .core_start(core_start), .core_out(core_out), .core_done(core_done),
        .framing_error(framing_error)
    );
endmodule
"""
