"""The analytic estimate: what hls4ml generates for a segment, counted from its structure, with the few
coefficients structure cannot give (LUTs per product, ...) fitted on the calibration set.

Per layer, b = precision bits, r = the layer's reuse factor, P = fan-in x units products, m = ceil(P / r)
multipliers, px = pixels of its input stream (`reuse.pixels`), C = channels (last axis):
  Dense/Conv, Latency strategy  DSP = m (x dsp_r1 at r = 1: HLS moves some constant products into LUTs);
                                LUT = lut_latency P b/16 and FF = ff_latency P b/16: they do not fall with
                                the reuse factor (the jet-tagging scan of the set: 88k-131k LUT from reuse 1 to
                                256); below 10 bits the products go to LUTs (0.5 b^2 each), no DSP
  Dense/Conv, Resource strategy DSP = m; weights in a ROM r deep and m b wide: BRAM18 = ceil(m b / 36)
                                ceil(r / 512) once r >= 32 (shallower ROMs in LUTs, m b r / 64); LUT =
                                m (b ceil(log2 r) / 2 + 1.5 b) + 2 b units (an r:1 input multiplexer of b
                                bits per multiplier, a LUT6 per 4:1 bit, and its accumulator);
                                FF = 2 b m + b units. No published figure: extrapolated
  Conv in io_stream             plus the line buffer, (k_h - 1) rows x W x C x b bits in shift registers
                                (LUT, 32 bits each) and the k_h k_w C b bit window in FF
  cycles                        io_stream Conv: px r + lat_conv, II px r; Dense: words + r + lat_dense_stream
                                (II the same: the set's io_stream Dense layers are not pipelined across
                                frames); io_parallel Dense: r + lat_dense_parallel, II r
  ReLU-like                     LUT relu_lut[io] x lanes x b/16 (lanes: C in io_stream, every element in
                                io_parallel), FF relu_ff x lanes, cycles px + 2 on feature maps, II px
  sigmoid/tanh/softmax          tables: softmax LUT, FF per element, DSP one per element, its BRAM and
                                cycles from the set; sigmoid/tanh as a ReLU plus one BRAM18 table per two
                                lanes (extrapolated)
  MaxPooling (io_stream)        LUT pool_lut C b/16, FF pool_ff C, cycles px + pool_fill, II px
  FIFOs (io_stream)             `streams`: a stream per tensor between layers (Flatten in place), between a
                                layer and its activation, after the ZeroPadding2D hls4ml inserts before a
                                'same' Conv2D, into and out of the Clone it inserts where a tensor is read
                                twice, and the VivadoAccelerator wrapper's input and output streams (hls4ml
                                1.3.0: conv_same_pad.py, clone.py, vivado_accelerator_writer.py). Vivado
                                HLS makes one FIFO per channel (element of the nnet::array word): LUT
                                fifo_lut b/16 and FF fifo_ff each, and per channel ceil(depth / floor(18432 / w))
                                BRAM18 once FIFO_BRAM_DEPTH deep (shift registers below), w the narrowest
                                BRAM18 port width (1, 2, 4, 9, 18, 36) holding b bits (UG473). Depths per
                                HlsConfig.fifo_depth (splitting.fifo_depths, with its sources): hls4ml's
                                'default' (pixels of the stream) or 'optimized' (2 per chain FIFO, the
                                branch skew into a merge: what plans assume and write)
  a segment                     resources add up; in io_stream the layers overlap (dataflow), so the
                                latency is the slowest feature-map layer's plus the flat layers', the
                                interval the largest; in io_parallel latencies add up
Each coefficient is the median, over the set's rows that isolate it (`fit`), of published figure over
structural count; PRIORS stand in where no row does (then the estimate says extrapolated).
"""
from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from . import fifo_depths as fd
from .calibration import CalibrationRow, kind_of, load_rows
from .layerspec import COMPUTE, POOLING, HlsConfig, LayerSpec
from .reuse import effective_reuse, layer_reuse, pixels

FIFO_BRAM_DEPTH = fd.FIFO_BRAM_DEPTH
FIGS = ("lut", "ff", "dsp", "bram", "cycles", "interval")


@dataclass(frozen=True)
class Coefficients:
    """The fitted constants of the analytic model (see the module docstring)."""

    dsp_r1: float
    lut_latency: float
    ff_latency: float
    lat_dense_stream: float
    lat_dense_parallel: float
    lat_conv: float
    relu_lut_stream: float
    relu_lut_parallel: float
    relu_ff: float
    pool_lut: float
    pool_ff: float
    pool_fill: float
    softmax_lut: float
    softmax_ff: float
    softmax_bram: float
    softmax_cycles: float
    fifo_lut: float
    fifo_ff: float


# Stand-ins where no row of the set isolates a coefficient (structure only: one DSP per product, an adder of
# b bits per product, b FF per product, ...). Used by leave-one-out folds that remove the only such rows.
PRIORS = Coefficients(dsp_r1=1.0, lut_latency=16.0, ff_latency=8.0, lat_dense_stream=2.0, lat_dense_parallel=1.0, lat_conv=3.0,
                      relu_lut_stream=16.0, relu_lut_parallel=16.0, relu_ff=0.0, pool_lut=48.0, pool_ff=48.0,
                      pool_fill=3.0, softmax_lut=100.0, softmax_ff=50.0, softmax_bram=2.0, softmax_cycles=8.0,
                      fifo_lut=16.0, fifo_ff=16.0)


def _only(row: CalibrationRow, kinds) -> bool:
    return set(row.kinds) <= set(kinds)


def _products(layers: Sequence[LayerSpec]) -> int:
    return sum(l.fan_in * l.units for l in layers if l.kind in COMPUTE)


# The coefficients each layer kind's figures rest on (a row whose leave-one-out fit had to take one of them
# from PRIORS is not a test of the model: intervals.loo_ratios leaves it out).
DEPENDS = {
    "dense": ("dsp_r1", "lut_latency", "ff_latency", "lat_dense_stream", "lat_dense_parallel"),
    "conv": ("lat_conv",),
    "relu": ("relu_lut_stream", "relu_lut_parallel", "relu_ff"),
    "pooling": ("pool_lut", "pool_ff", "pool_fill"),
    "softmax": ("softmax_lut", "softmax_ff", "softmax_bram", "softmax_cycles"),
    "fifo": ("fifo_lut", "fifo_ff"),
}


def fit(rows: Sequence[CalibrationRow]) -> Coefficients:
    """Coefficients from calibration rows (C-synthesis level only): each the median of published figure /
    structural count over the rows that isolate it; PRIORS where none does."""
    return fit_sources(rows)[0]


def fit_sources(rows: Sequence[CalibrationRow]) -> Tuple[Coefficients, frozenset]:
    """(`fit(rows)`, the names of the coefficients no row informed: taken from PRIORS)."""
    obs: Dict[str, List[float]] = {k: [] for k in asdict(PRIORS)}
    for row in rows:
        if row.level != "csynth":
            continue
        layers = [l for chain in row.chains for l in chain]
        b16 = row.config.bits / 16
        fig = row.figure
        dense = all(l.kind in COMPUTE for l in layers)
        if dense and row.sparsity == 0:
            p = _products(layers)
            if fig("dsp") is not None and row.reuse == 1:
                obs["dsp_r1"].append(fig("dsp") / p)
            if row.strategy == "Latency" and fig("lut") is not None:
                obs["lut_latency"].append(fig("lut") / (p * b16))
            if row.strategy == "Latency" and fig("ff") is not None:
                obs["ff_latency"].append(fig("ff") / (p * b16))
        compute = [l for l in layers if l.kind in COMPUTE]
        if len(compute) == 1 and len(row.chains) == 1 and fig("latency") is not None and _only(row, ("dense", "conv", "flatten")):
            l = compute[0]
            r = effective_reuse(l, row.reuse)
            if l.kind != "Dense":
                obs["lat_conv"].append(fig("latency") - pixels(l) * r)
            elif row.io_type == "io_stream":
                obs["lat_dense_stream"].append(fig("latency") - input_words(layers)[layers.index(l)] - r)
            else:
                obs["lat_dense_parallel"].append(fig("latency") - r)
        if _only(row, ("relu",)):
            lanes = sum(_lanes(l, row.io_type) for l in layers)
            if fig("lut") is not None:
                obs["relu_lut_stream" if row.io_type == "io_stream" else "relu_lut_parallel"].append(fig("lut") / (lanes * b16))
            if fig("ff") is not None:
                obs["relu_ff"].append(fig("ff") / lanes)
        if _only(row, ("pooling",)) and row.io_type == "io_stream":
            ch = sum(l.input_shape[-1] for l in layers)
            if fig("lut") is not None:
                obs["pool_lut"].append(fig("lut") / (ch * b16))
            if fig("ff") is not None:
                obs["pool_ff"].append(fig("ff") / ch)
            if fig("latency") is not None and len(layers) == 1:
                obs["pool_fill"].append(fig("latency") - pixels(layers[0]))
        if _only(row, ("softmax",)):
            n = sum(l.output_shape[-1] for l in layers)
            for key, f, per in (("softmax_lut", "lut", n * b16), ("softmax_ff", "ff", n), ("softmax_bram", "bram", 1),
                                ("softmax_cycles", "latency", 1)):
                if fig(f) is not None:
                    obs[key].append(fig(f) / per)
        if _only(row, ("fifo",)):
            lanes = sum(l.input_shape[1] for l in layers)
            if fig("lut") is not None:
                obs["fifo_lut"].append(fig("lut") / (lanes * b16))
            if fig("ff") is not None:
                obs["fifo_ff"].append(fig("ff") / lanes)
    base = asdict(PRIORS)
    coef = Coefficients(**{k: (statistics.median(v) if v else base[k]) for k, v in obs.items()})
    return coef, frozenset(k for k, v in obs.items() if not v)


_DEFAULT: Optional[Coefficients] = None


def coefficients() -> Coefficients:
    """The coefficients fitted on the whole calibration set (computed once per process: milliseconds)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = fit(load_rows())
    return _DEFAULT


def _lanes(l: LayerSpec, io: str) -> int:
    return int(l.output_shape[-1]) if io == "io_stream" else math.prod(l.output_shape)


def _zero() -> Dict[str, float]:
    return {f: 0.0 for f in FIGS}


def input_words(layers: Sequence[LayerSpec]) -> List[int]:
    """Words each layer reads per frame in io_stream: its input pixels, and for a Dense right after a
    Flatten the pixels before the Flatten (the stream keeps its words; Flatten is in place)."""
    out = []
    for i, l in enumerate(layers):
        if l.kind == "Dense" and i > 0 and layers[i - 1].kind == "Flatten":
            src = layers[i - 1].input_shape
            out.append(math.prod(src[:-1]) if len(src) > 1 else 1)
        else:
            out.append(pixels(l))
    return out


def layer(l: LayerSpec, cfg: HlsConfig, r: int, c: Coefficients, words: int = 1) -> Dict[str, float]:
    """Point figures of one layer (its own activation included) at reuse factor `r`, reading `words`
    stream words per frame (a Dense after a Flatten): {lut, ff, dsp, bram, cycles, interval}."""
    b = cfg.bits
    b16 = b / 16
    io = cfg.io_type
    out = _zero()
    px = pixels(l) if io == "io_stream" else 1
    if l.kind in COMPUTE:
        p = l.fan_in * l.units
        m = math.ceil(p / r)
        if b >= 10:
            out["dsp"] = m * (c.dsp_r1 if r == 1 else 1.0)
        else:
            out["lut"] += 0.5 * b * b * m
        if cfg.strategy == "Latency":
            out["lut"] += c.lut_latency * p * b16
            out["ff"] += c.ff_latency * p * b16
        else:
            out["lut"] += m * (b * math.ceil(math.log2(max(r, 2))) / 2 + 1.5 * b) + 2 * b * l.units
            out["ff"] += 2 * b * m + b * l.units
            if r >= 32:
                out["bram"] += math.ceil(m * b / 36) * math.ceil(r / 512)
            else:
                out["lut"] += m * b * r / 64
        if l.kind != "Dense" and io == "io_stream" and len(l.input_shape) > 2:
            kh = l.kernel[0]
            row = math.prod(l.input_shape[1:-1])
            ch = l.units if l.depthwise else l.input_shape[-1]  # a depthwise conv buffers every channel
            out["lut"] += (kh - 1) * row * ch * b / 32
            out["ff"] += math.prod(l.kernel) * ch * b
        if l.kind != "Dense":
            out["cycles"] = px * r + c.lat_conv
            out["interval"] = px * r
        elif io == "io_stream":  # reads its words, then computes; not pipelined across frames (the set)
            out["cycles"] = out["interval"] = words + r + c.lat_dense_stream
        else:
            out["cycles"], out["interval"] = r + c.lat_dense_parallel, r
        if l.activation != "linear":
            act = layer(LayerSpec("Activation", l.name, l.output_shape, l.output_shape, activation=l.activation), cfg, 1, c)
            for f in ("lut", "ff", "dsp", "bram"):
                out[f] += act[f]
            out["cycles"] += act["cycles"] if px == 1 else 0
            out["interval"] = max(out["interval"], act["interval"])
        return out
    if l.kind == "Activation":
        lanes = _lanes(l, io)
        n = int(l.output_shape[-1])
        apx = px if len(l.input_shape) > 1 else 1
        if l.activation == "softmax":
            out.update(lut=c.softmax_lut * n * b16, ff=c.softmax_ff * n, dsp=n if b >= 10 else 0,
                       bram=c.softmax_bram, cycles=c.softmax_cycles + (apx if apx > 1 else 0))
            out["interval"] = out["cycles"] if io == "io_stream" else 1  # the set: II = latency in io_stream
            return out
        out.update(lut=c.relu_lut_stream * lanes * b16 if io == "io_stream" else c.relu_lut_parallel * lanes * b16,
                   ff=c.relu_ff * lanes, cycles=apx + 2 if apx > 1 else 0, interval=apx)
        if l.activation in ("sigmoid", "tanh"):
            out["bram"] = math.ceil(lanes / 2)
        return out
    if l.kind in POOLING:
        ch = int(l.input_shape[-1])
        if io == "io_stream":
            out.update(lut=c.pool_lut * ch * b16, ff=c.pool_ff * ch, cycles=px + c.pool_fill, interval=px)
        else:
            n_out = math.prod(l.output_shape)
            out.update(lut=n_out * (math.prod(l.kernel) - 1) * b, cycles=2, interval=1)
        return out
    if l.kind == "FIFO":
        depth, lanes = l.input_shape
        # LUT per channel x b/16, as for the other stream layers: a shift-register FIFO is a LUT per bit
        out.update(lut=c.fifo_lut * lanes * b16, ff=c.fifo_ff * lanes, bram=fd.bram18(depth, lanes, b))
        return out
    if l.kind == "Add":
        n = int(l.output_shape[-1]) if io == "io_stream" else math.prod(l.output_shape)
        out.update(lut=(l.inputs - 1) * n * b, ff=n * b, cycles=math.ceil(math.log2(max(l.inputs, 2))) + 1, interval=px)
        return out
    if l.kind == "BatchNormalization":
        n = _lanes(l, io)
        out.update(dsp=n if b >= 10 else 0, lut=n * b, cycles=3, interval=px)
        return out
    return out  # Flatten, Dropout: no hardware (in place, or removed by hls4ml)


def _producers(layers: Sequence[LayerSpec]) -> List[List[int]]:
    """Per layer, the segment positions of what it reads (negative: produced before the segment, a partition
    input), with Flatten and Dropout seen through (in place, or removed by hls4ml: no stream of their own)."""
    out: List[List[int]] = []
    for k, l in enumerate(layers):
        ps = []
        for back in (l.reads or (1,)):
            p = k - back
            while p >= 0 and layers[p].kind in ("Flatten", "Dropout"):
                p = p - (layers[p].reads or (1,))[0]
            ps.append(p)
        out.append(ps)
    return out


def _lag(l: LayerSpec) -> float:
    """How far (fraction of a frame) the layer's output runs behind its input in io_stream: a line buffer's
    window fill (Conv, pooling; 'same' padding on the padded frame), a whole frame for a layer that reads its
    input before it writes (global pooling, Dense), nothing for element-wise layers."""
    if l.kind == "Dense" or (l.kind in POOLING and len(l.output_shape) == 1):
        return 1.0
    if (l.kind in COMPUTE or l.kind in POOLING) and len(l.input_shape) > 1 and l.kernel:
        dims = list(l.input_shape[:-1])
        if l.padding == "same":
            dims = [d + sum(fd.same_padding(d, k, s)) for d, k, s in zip(dims, l.kernel, l.strides or l.kernel)]
        if len(dims) == 1:
            return fd.lag_fraction(1, l.kernel[0], 1, dims[0])
        return fd.lag_fraction(l.kernel[0], l.kernel[1], dims[0], dims[1])
    return 0.0


def _padding(l: LayerSpec) -> Optional[Tuple[Tuple[int, ...], Tuple[int, int, int, int]]]:
    """(padded input shape, (top, bottom, left, right)) of the ZeroPadding2D hls4ml inserts before a 'same'
    Conv2D in io_stream (conv_same_pad.py; None when it pads nothing or is not a Conv2D)."""
    if l.kind != "Conv2D" or l.padding != "same" or len(l.input_shape) != 3:
        return None
    (t, b), (le, r) = (fd.same_padding(d, k, s) for d, k, s in zip(l.input_shape[:2], l.kernel, l.strides or (1, 1)))
    if t + b + le + r == 0:
        return None
    ch = l.units if l.depthwise else l.input_shape[-1]
    return (l.input_shape[0] + t + b, l.input_shape[1] + le + r, ch), (t, b, le, r)


def streams(layers: Sequence[LayerSpec], wrapper: bool, fifo_depth: str = "default") -> List[LayerSpec]:
    """The io_stream FIFOs of a segment as FIFO LayerSpecs (input shape (depth, channels)), as hls4ml 1.3.0
    makes them: one per tensor between two layers (Flatten in place: the stream keeps its words), one between
    a layer and its own activation, one after the ZeroPadding2D it inserts before a 'same' Conv2D, and where a
    tensor is read by several layers a Clone layer (one stream into it, one per reader); with `wrapper`, the
    VivadoAccelerator wrapper's input and output streams too. Depths per `fifo_depth` (splitting.fifo_depths):
    'default' the pixels of each stream, 'optimized' SHALLOW but for the branch skew into a merge."""
    opt = fifo_depth == "optimized"
    prods = _producers(layers)
    lag: Dict[int, float] = {}
    readers: Dict[int, List[int]] = {}
    for k, l in enumerate(layers):
        if l.kind in ("Flatten", "Dropout"):
            continue
        lag[k] = max((lag.get(p, 0.0) if p >= 0 else 0.0) for p in prods[k]) + _lag(l)
        for p in prods[k]:
            readers.setdefault(p, []).append(k)
    out: List[LayerSpec] = []

    def fifo(shape: Tuple[int, ...], depth: int = fd.SHALLOW):
        px = math.prod(shape[:-1]) if len(shape) > 1 else 1
        d = depth if opt else px
        out.append(LayerSpec("FIFO", "fifo", (int(d), int(shape[-1])), (int(d), int(shape[-1]))))

    def into(j: int, p: int) -> int:  # optimized depth of the stream from tensor p into layer j
        if layers[j].kind != "Add":
            return fd.SHALLOW
        merge_lag = max((lag.get(q, 0.0) if q >= 0 else 0.0) for q in prods[j])
        return fd.skew_depth(merge_lag, lag.get(p, 0.0) if p >= 0 else 0.0, pixels(layers[j]))

    last = max(lag) if lag else -1
    entry: Dict[int, Tuple[int, ...]] = {}  # partition input -> its shape, as the first layer reading it gets it
    for k, l in enumerate(layers):  # (a Flatten in place: the stream keeps the map's words, hls4ml's
        for back in (l.reads or (1,)):  # inplace_stream_flatten)
            if k - back < 0 and k - back not in entry:
                entry[k - back] = tuple(l.input_shape[:-1]) + ((l.units,) if l.depthwise else (l.input_shape[-1],))
    for p in sorted(readers):  # partition inputs: the wrapper's input stream, a Clone when read twice
        if p >= 0:
            continue
        shape = entry[p]
        if wrapper:
            fifo(shape)
        if len(readers[p]) > 1:
            for j in readers[p]:
                fifo(shape, into(j, p))
    for k in sorted(lag):
        l = layers[k]
        pad = _padding(l)
        if pad is not None:
            fifo(pad[0], fd.SHALLOW)
        shape = tuple(l.output_shape)
        if l.kind in COMPUTE and l.activation != "linear":
            fifo(shape, fd.SHALLOW)
        rd = readers.get(k, [])
        if k == last or not rd:  # the segment's output (the wrapper's output stream, or a port)
            if wrapper:
                fifo(shape)
            rd = rd if k != last else []
        if len(rd) == 1:
            fifo(shape, into(rd[0], k))
        elif len(rd) > 1:
            fifo(shape, fd.SHALLOW)  # into the Clone
            for j in rd:
                fifo(shape, into(j, k))
    return out


def segment(layers: Sequence[LayerSpec], cfg: HlsConfig, reuses: Optional[Sequence[int]] = None,
            wrapper: bool = True, c: Optional[Coefficients] = None) -> Tuple[List[Dict[str, float]], Dict[str, float]]:
    """(per-layer figures, FIFO figures) of a segment under `cfg`. `reuses`: the reuse factor per layer
    (default `reuse.layer_reuse`, what the planner configures); `wrapper`: count the VivadoAccelerator
    wrapper's streams (partitions: yes; a published model's own report: no)."""
    c = c or coefficients()
    if reuses is None:
        reuses = layer_reuse(layers, cfg)
    per = [layer(l, cfg, r, c, w) for l, r, w in zip(layers, reuses, input_words(layers))]
    fifo = _zero()
    if cfg.io_type == "io_stream":
        for s in streams(layers, wrapper, cfg.fifo_depth):
            f = layer(s, cfg, 1, c)
            for k in ("lut", "ff", "bram"):
                fifo[k] += f[k]
    return per, fifo


def combine(per: Sequence[Dict[str, float]], layers: Sequence[LayerSpec], io: str) -> Tuple[float, float]:
    """(cycles, interval) of a segment from its layers' figures: in io_stream the feature-map layers
    overlap (the slowest one's latency) and flat layers add up; in io_parallel everything adds up."""
    itv = max([p["interval"] for p in per] + [1.0])
    if io != "io_stream":
        return sum(p["cycles"] for p in per), itv
    maps = [p["cycles"] for p, l in zip(per, layers) if len(l.input_shape) > 1 and l.kind != "Flatten"]
    flat = [p["cycles"] for p, l in zip(per, layers) if not (len(l.input_shape) > 1 and l.kind != "Flatten")]
    return (max(maps) if maps else 0.0) + sum(flat), itv


def row_reuses(layers: Sequence[LayerSpec], reuse: int) -> List[int]:
    """Per-layer reuse of a published design: hls4ml's closest valid value to the model-level one."""
    return [effective_reuse(l, reuse) for l in layers]


def kinds(layers: Sequence[LayerSpec]) -> List[str]:
    """`calibration.kind_of` of each layer."""
    return [kind_of(l) for l in layers]


def predict_row(row: CalibrationRow, c: Optional[Coefficients] = None) -> Dict[str, float]:
    """The analytic figures of a published design (its own reuse rule, no wrapper streams), named as the
    row's: {lut, ff, dsp, bram, latency, ii}."""
    c = c or coefficients()
    total = {"lut": 0.0, "ff": 0.0, "dsp": 0.0, "bram": 0.0, "latency": 0.0, "ii": 1.0}
    cfg = row.config
    for chain in row.chains:
        layers = [l for l in chain if l.kind != "FIFO"]
        fifos = [l for l in chain if l.kind == "FIFO"]
        per = [layer(l, cfg, r, c, w) for l, r, w in zip(layers, row_reuses(layers, row.reuse), input_words(layers))]
        if cfg.io_type == "io_stream" and layers and not fifos and len(layers) > 1:
            per.append(segment(layers, cfg, row_reuses(layers, row.reuse), wrapper=False, c=c)[1])
        per += [layer(f, cfg, 1, c) for f in fifos]
        for f in ("lut", "ff", "dsp", "bram"):
            total[f] += sum(p[f] for p in per)
        cyc, itv = combine(per[: len(layers)], layers, cfg.io_type) if layers else (0.0, 1.0)
        total["latency"] += cyc
        total["ii"] = max(total["ii"], itv)
    return total
