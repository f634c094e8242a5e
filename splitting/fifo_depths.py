"""hls4ml's io_stream FIFOs: how deep each one is, and the BRAM18 blocks it takes.

In io_stream every tensor between two layers is an `hls::stream` of `nnet::array` words (one word per pixel,
one element per channel); Vivado HLS splits the word into one FIFO per element (per channel). Two depth
settings, named as hls4ml names them (`FIFO_DEPTHS`):

  default    hls4ml's own depth: the pixels of the tensor (fpga_types.StreamVariableConverter: prod(shape[:-1]))
  optimized  the depths hls4ml's FIFO depth optimisation is there to find (`vivado:fifo_depth_optimization`
             flow: RTL cosimulation with huge FIFOs records each one's largest occupancy, `set_fifo_depth` sets
             it + 1). No Vivado runs here, so they are sized from the graph:
             - a FIFO between two layers of a chain: SHALLOW = 2. The published ResNet of hls4ml's MLPerf Tiny
               submission (mlcommons/tiny_results_v0.7 open/hls4ml-finn/code/ic/RN07/inference/
               max_depth_rf16384.json) has occupancy 1 on every layer-to-layer FIFO. Where a producer bursts
               (the ZeroPadding2D hls4ml inserts before a 'same' convolution emits its border rows at once:
               23, 34, 71 there; a partition's first layer reads a whole frame the DMA delivered), the
               cosimulation records the burst, but a chain cannot deadlock: a shallower FIFO only holds the
               producer back while the slower convolution sets the pace, so 2 is written and counted;
             - the FIFO into a merge (Add, Concatenate) from the branch that arrives first must hold what the
               other branch delays, or the Clone that feeds both stalls and the dataflow deadlocks:
               `skew_depth`, the lag between the branches in pixels of the merge's input, each line-buffer
               layer (Conv, pooling) lagging by its window fill `window_fill` on its padded frame, a layer that
               reads its whole input first (global pooling, Dense) by one frame.
             - the VivadoAccelerator wrapper's input and output streams (`in_local`, `out_local`, as deep as
               the model's input and output variables): hls4ml's pass leaves them at the default, but the
               wrapper's AXI-stream loops run in DATAFLOW with the model, so they are chains too: SHALLOW
               (splitrack sets the model's input and output variables so; the DMA waits on TREADY).
             Vivado's cosimulation (hls4ml's fifo_depth_optimization) is what confirms these depths; the C
             emulation does not depend on them (hls::stream is unbounded in C simulation).

BRAM: a FIFO shallower than FIFO_BRAM_DEPTH is a shift register (SRL, LUTs); a deeper one takes, per channel,
ceil(depth / floor(18432 / w)) BRAM18 blocks, w the narrowest BRAM18 port width (1, 2, 4, 9, 18, 36 bits) that
holds the element (7-series memory resources, UG473 Table 1-6). The threshold is the calibration set's:
one BRAM18 per channel at 36 deep and more, none at 16 and less (hls4ml-tutorial pruned_cnn report, 16 bits).

`hls4ml_depths` applies the optimized rule to a converted hls4ml ModelGraph (its own layers, with the Clone
and ZeroPadding2D layers it inserted), and `set_hls4ml_depths` sets them as hls4ml's `set_fifo_depth` does:
the stream pragma of every variable, the model's input and output included (the wrapper's streams).
"""
from __future__ import annotations

import math
from typing import Dict, Sequence

FIFO_DEPTHS = ("optimized", "default")
SHALLOW = 2
FIFO_BRAM_DEPTH = 32  # the set: one BRAM18 per channel FIFO at 36 deep and more, none at 16 and less
BRAM18_BITS = 18432
PORT_WIDTHS = (1, 2, 4, 9, 18, 36)


def bram18(depth: int, lanes: int, bits: int) -> int:
    """BRAM18 blocks of `lanes` FIFOs of `depth` words of `bits` bits: 0 below FIFO_BRAM_DEPTH (SRL), else per
    lane ceil(depth / floor(18432 / w)) x ceil(bits / 36) blocks, w the narrowest port width >= bits."""
    if depth < FIFO_BRAM_DEPTH or lanes <= 0:
        return 0
    wide = math.ceil(bits / 36)
    w = next((p for p in PORT_WIDTHS if p >= min(bits, 36)), 36)
    return lanes * wide * math.ceil(depth / (BRAM18_BITS // w))


def window_fill(kh: int, kw: int, width: int) -> int:
    """Pixels a line buffer reads before its first window is complete: (kh - 1) rows of `width` (the padded
    width) plus kw; kw for a 1-D window (kh = 1)."""
    return (kh - 1) * width + kw


def lag_fraction(kh: int, kw: int, height: int, width: int) -> float:
    """The window fill of a line-buffer layer as a fraction of its (padded) input frame."""
    return window_fill(kh, kw, width) / max(1, height * width)


def same_padding(size: int, k: int, s: int):
    """(before, after) zero padding Keras/hls4ml put on one axis for 'same' padding."""
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def skew_depth(lag_merge: float, lag_branch: float, pixels: int) -> int:
    """Depth of the FIFO into a merge from a branch with lag `lag_branch` (fraction of a frame) when the merge
    waits for its slowest input (`lag_merge`): the pixels the branch runs ahead, + SHALLOW."""
    return math.ceil(max(0.0, lag_merge - lag_branch) * pixels - 1e-9) + SHALLOW


# ---------------------------------------------------------------------------------------------------------
# hls4ml's own graph
# ---------------------------------------------------------------------------------------------------------
def _prod(shape) -> int:
    return int(math.prod(int(d) for d in shape))


def _hls_lag(layer) -> float:
    a = layer.get_attr
    cls = layer.class_name
    if "GlobalPooling" in cls or cls == "Dense":
        return 1.0
    kh = a("filt_height", a("pool_height", None))
    kw = a("filt_width", a("pool_width", None))
    if kw is None:
        return 0.0
    h = a("in_height", 1) if kh is not None else 1
    return lag_fraction(kh or 1, kw, h, a("in_width", 1))


def hls4ml_depths(hm) -> Dict[str, int]:
    """{variable name: depth} of a converted hls4ml ModelGraph (io_stream) under the optimized rule, for
    every output variable and the model's inputs."""
    inputs = {v.name for v in hm.get_input_variables()}
    lag: Dict[str, float] = {n: 0.0 for n in inputs}
    layers = list(hm.get_layers())
    for layer in layers:
        ins = [lag.get(i, 0.0) for i in layer.inputs]
        here = max(ins, default=0.0) + _hls_lag(layer)
        for o in layer.outputs:
            lag[o] = here
    depth: Dict[str, int] = {}
    for layer in layers:
        if layer.class_name in ("Input",):
            continue
        if isinstance_merge(layer):
            merge_lag = max(lag.get(i, 0.0) for i in layer.inputs)
            px = _prod(layer.get_input_variable(layer.inputs[0]).shape[:-1])
            for i in layer.inputs:
                depth[i] = max(depth.get(i, 0), skew_depth(merge_lag, lag.get(i, 0.0), px))
        for o in layer.outputs:
            depth.setdefault(o, SHALLOW)
    for n in inputs:
        depth.setdefault(n, SHALLOW)
    return depth


def isinstance_merge(layer) -> bool:
    """True for hls4ml's merge layers (Add, Subtract, Multiply, Average, Maximum, Minimum, Concatenate, Dot)."""
    from hls4ml.model.layers import Merge

    return isinstance(layer, Merge)


def set_hls4ml_depths(hm) -> Dict[str, int]:
    """Set the stream pragma depth of every variable of `hm` (output variables and the model's inputs) to
    `hls4ml_depths`, as hls4ml's `set_fifo_depth` sets cosimulated depths; the depths set."""
    depths = hls4ml_depths(hm)
    variables = dict(hm.output_vars)
    variables.update({v.name: v for v in hm.get_input_variables()})
    for name, v in variables.items():
        if name in depths and isinstance(getattr(v, "pragma", None), tuple):
            v.pragma = (v.pragma[0], depths[name])
    return depths
