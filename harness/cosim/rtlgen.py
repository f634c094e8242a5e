"""Open RTL for a partition: da4ml traces the op list into a pipelined datapath; we wrap it in the shell.

da4ml (the field's generator for fixed-point datapaths) emits Verilog for a traced computation. We trace
exactly the arithmetic of `reference.py` with da4ml's symbolic fixed-point variables: every product by a
constant weight assigned to the accumulator type, sums, bias, result casts, ReLU, max, and for softmax
lookup tables filled as hls4ml fills them. Where da4ml falls short we say so (UserError): it has only the
TRN/RND rounding and WRAP/SAT/SAT_SYM overflow modes, and it unrolls everything (no reuse of multipliers
over pixels, unlike hls4ml's io_stream line buffer), so very large partitions make very large Verilog.

What is ours: the AXI-stream shell (axis_shell.v etc.) and the generated top that maps the contract's
element containers onto da4ml's bit-packed ports (`part_<name>`).
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

from .fixed import cast
from .ops import Op
from .reference import softmax_tables

GENERATOR_VERSION = "1"
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
            if op.kind == "pad":
                x = self.pad(x, op.params)
                x = np.vectorize(lambda v: _q(v, op.out), otypes=[object])(x)
            elif op.kind == "dense":
                x = self.dense(x, op, t)
            elif op.kind == "conv2d":
                p = op.params
                if any(p[k_] for k_ in ("pad_top", "pad_bottom", "pad_left", "pad_right")):
                    x = self.pad(x, p)
                win = self.windows(x, p["filt_height"], p["filt_width"], p["stride_height"], p["stride_width"])
                x = self.dense(win.reshape(win.shape[0], win.shape[1], -1), op, t)
            elif op.kind == "relu":
                x = np.vectorize(lambda v: _q(v.relu(), op.out), otypes=[object])(x)
            elif op.kind in ("linear", "reshape"):
                x = np.vectorize(lambda v: _q(v, op.out), otypes=[object])(x.reshape(op.out_shape))
            elif op.kind == "maxpool":
                p = op.params
                acc = op.accum or t
                x = np.vectorize(lambda v: _q(v, acc), otypes=[object])(x)
                win = self.windows(x, p["pool_height"], p["pool_width"], p["stride_height"], p["stride_width"])
                out = np.empty(win.shape[:2] + win.shape[-1:], dtype=object)
                for idx in np.ndindex(out.shape):
                    vals = list(win[idx[0], idx[1], :, :, idx[2]].reshape(-1))
                    m = vals[0]
                    for v in vals[1:]:
                        m = m.max_of(v)
                    out[idx] = _q(m, op.out)
                x = out
            elif op.kind == "softmax":
                x = self.softmax(x, op, t)
            else:
                raise DA4MLShortfall(f"{op.name}: no da4ml trace for {op.kind}")
            t = op.out
        return inp, FixedVariableArray(np.asarray(x, dtype=object).reshape(-1), hwconf=self.hw)


@dataclass
class CoreRTL:
    """One partition's generated RTL: da4ml core + our top, ready to simulate."""

    name: str
    module: str           # top module: part_<name>
    folder: str
    sources: List[str]    # Verilog files of this partition (static shell files not included)
    latency: int          # clock cycles from core input to core output
    stages: int
    in_packing: Dict
    out_packing: Dict
    in_type: str
    out_type: str
    cost: float           # da4ml's cost estimate (about LUTs)


def ops_key(ops: Sequence[Op], extra: dict) -> str:
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
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def generate(name: str, ops: Sequence[Op], cache: Path, data_width: int = 32, latency_cutoff: float = 8.0,
             log=print) -> CoreRTL:
    """Generate (or load from the cache) the RTL of one partition."""
    from filelock import FileLock

    in_t, out_t = ops[0].out, ops[-1].out
    n_in, n_out = int(np.prod(ops[0].out_shape)), int(np.prod(ops[-1].out_shape))
    key = ops_key(ops, {"dw": data_width, "cut": latency_cutoff, "da4ml": version("da4ml"), "gen": GENERATOR_VERSION,
                        "shell": _static_hash()})
    folder = Path(cache) / "rtl" / f"{safe(name)}-{key}"
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

        from da4ml.codegen import RTLModel
        from da4ml.trace import HWConfig, comb_trace
        from da4ml.types import minimal_kif

        t0 = time.time()
        log(f"  da4ml: tracing {name} ({len(ops) - 1} layers, {n_in} -> {n_out} values) ...")
        inp, out = _Tracer(HWConfig(1, -1, -1)).run(ops)
        comb = comb_trace(inp, out)
        core = f"core_{safe(name)}"
        model = RTLModel(comb, core, folder / "da4ml", flavor="verilog", latency_cutoff=latency_cutoff,
                         print_latency=False)
        model.write()
        stages = len(model._pipe.solutions)
        src = folder / "da4ml" / "src"
        _absolute_memfiles(src)
        in_pack = Packing.for_elements(n_in, str(in_t), data_width)
        out_pack = Packing.for_elements(n_out, str(out_t), data_width)
        top = _top_verilog(name, core, in_t, out_t, in_pack, out_pack, stages + 1,
                           [minimal_kif(q) for q in comb.inp_qint], [minimal_kif(q) for q in comb.out_qint])
        (folder / f"part_{safe(name)}.v").write_text(top)
        sources = sorted(str(p) for p in src.glob(f"{core}*.v")) + [str(folder / f"part_{safe(name)}.v")]
        rtl = CoreRTL(name=name, module=f"part_{safe(name)}", folder=str(folder), sources=sources,
                      latency=stages + 1, stages=stages, in_packing=_pdict(in_pack), out_packing=_pdict(out_pack),
                      in_type=str(in_t), out_type=str(out_t), cost=float(comb.cost))
        meta_file.write_text(json.dumps(asdict(rtl), indent=1))
        log(f"  da4ml: {name}: {stages} pipeline stages, cost {comb.cost:.0f}, {time.time() - t0:.1f} s")
        return rtl


def da4ml_static_sources(rtl: CoreRTL) -> List[str]:
    return sorted(str(p) for p in (Path(rtl.folder) / "da4ml" / "src" / "static").glob("*.v"))


def shell_sources() -> List[str]:
    return [str(HERE / f) for f in STATIC_RTL]


def _static_hash() -> str:
    return hashlib.sha256(b"".join((HERE / f).read_bytes() for f in STATIC_RTL)).hexdigest()[:12]


def _pdict(p: Packing) -> Dict:
    return asdict(p)


def _absolute_memfiles(src: Path) -> None:
    """da4ml names lookup-table files relative to the simulator's working directory: make them absolute."""
    mem = src / "memfiles"
    for f in src.glob("*.v"):
        text = f.read_text()
        new = re.sub(r'(lookup_table #\(\s*\d+\s*,\s*\d+\s*,\s*")([^"/]+)"',
                     lambda m: m.group(1) + str((mem / m.group(2)).resolve()) + '"', text)
        if new != text:
            f.write_text(new)


def _top_verilog(name, core, in_t: FixedType, out_t: FixedType, inp: Packing, outp: Packing, latency: int,
                 in_kifs, out_kifs) -> str:
    """The partition's top: shell + da4ml core, element containers <-> da4ml's packed bit fields."""
    m = safe(name)
    n_in, n_out = len(in_kifs), len(out_kifs)
    ib, ob = inp.element_bits, outp.element_bits
    lines = []
    # inputs: da4ml keeps k+i+f bits of each input with f fractional bits; our raw has in_t.fractional
    pos = 0
    for e, (k, i, f) in enumerate(in_kifs):
        w = int(k) + int(i) + int(f)
        if w <= 0:
            continue
        lo = in_t.fractional - int(f)  # bit of the raw word that is da4ml's bit 0
        if lo < 0:
            raise DA4MLShortfall(f"{name}: da4ml wants more fractional input bits than {in_t} has")
        base = e * ib
        lines.append(f"    assign model_inp[{pos + w - 1}:{pos}] = core_in[{base + lo + w - 1}:{base + lo}];"
                     if lo + w <= ib else
                     f"    assign model_inp[{pos + w - 1}:{pos}] = {{{{{lo + w - ib}{{core_in[{base + ib - 1}]}}}}, "
                     f"core_in[{base + ib - 1}:{base + lo}]}};")
        pos += w
    w_in = max(pos, 1)
    pos = 0
    outs = []
    for e, (k, i, f) in enumerate(out_kifs):
        w = int(k) + int(i) + int(f)
        base = e * ob
        if w <= 0:
            outs.append(f"    assign core_out[{base + ob - 1}:{base}] = {ob}'d0;")
            continue
        sh = out_t.fractional - int(f)  # da4ml's bit 0 sits at raw bit `sh`
        field = f"model_out[{pos + w - 1}:{pos}]"
        top = ob - sh - w  # bits above the field, up to the container width
        if sh < 0 or top < 0:
            raise DA4MLShortfall(f"{name}: da4ml output {e} (k,i,f={k},{i},{f}) does not fit {out_t}")
        ext = f"{{{top}{{model_out[{pos + w - 1}]}}}}" if int(k) else f"{top}'d0"
        parts = ([ext] if top else []) + [field] + ([f"{sh}'d0"] if sh else [])
        outs.append(f"    assign core_out[{base + ob - 1}:{base}] = {{{', '.join(parts)}}};")
        pos += w
    w_out = max(pos, 1)
    return f"""// Generated by splitrack (harness/cosim/rtlgen.py) for partition {name}: AXI-stream shell + da4ml core.
// Input {in_t} x {n_in} ({inp.beats} beats), output {out_t} x {n_out} ({outp.beats} beats), core latency {latency}.
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
    wire [{w_in - 1}:0] model_inp;
    wire [{w_out - 1}:0] model_out;
{chr(10).join(lines) if lines else "    assign model_inp = 0;"}
{chr(10).join(outs)}

    axis_shell #(
        .DATA_WIDTH({inp.data_width}),
        .IN_ELEM_BITS({ib}), .IN_PER_BEAT({inp.elements_per_beat}), .IN_BEATS({inp.beats}), .IN_ELEMS({n_in}),
        .OUT_ELEM_BITS({ob}), .OUT_PER_BEAT({outp.elements_per_beat}), .OUT_BEATS({outp.beats}),
        .OUT_ELEMS({n_out}), .OUT_LAST_KEEP({outp.last_tkeep}), .LATENCY({latency}), .MUTANT(MUTANT)
    ) u_shell (
        .aclk(aclk), .aresetn(aresetn),
        .s_axis_tdata(s_axis_tdata), .s_axis_tkeep(s_axis_tkeep), .s_axis_tvalid(s_axis_tvalid),
        .s_axis_tready(s_axis_tready), .s_axis_tlast(s_axis_tlast),
        .m_axis_tdata(m_axis_tdata), .m_axis_tkeep(m_axis_tkeep), .m_axis_tvalid(m_axis_tvalid),
        .m_axis_tready(m_axis_tready), .m_axis_tlast(m_axis_tlast),
        .core_in(core_in), .core_out(core_out), .framing_error(framing_error)
    );

    {core} u_core (.clk(aclk), .model_inp(model_inp), .model_out(model_out));
endmodule
"""
