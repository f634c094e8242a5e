"""hls4ml's reuse factor, layer by layer: which reuse factors hls4ml accepts for a layer, the one it takes
for a requested value, and the per-layer choice an hls4ml user makes for a partition (`layer_reuse`).

In io_stream (splitrack's partitions) a layer's initiation interval is its input pixels times its reuse factor
(one kernel evaluation per pixel; a Dense after Flatten reads its input once per frame: one pixel). The
pipeline runs at the pace of its slowest layer, so a user raises the reuse factor of every faster layer until
it just keeps pace: fewer multipliers, the same interval. `layer_reuse` does exactly that for a segment and a
model-level reuse factor R: target interval T = the largest of (pixels x hls4ml's reuse for R) over the
compute layers and the pixels of every streamed tensor, then per compute layer the largest valid reuse r with
pixels x r <= T.
"""
from __future__ import annotations

import bisect
import math
from functools import lru_cache
from typing import List, Sequence, Tuple

from .layerspec import COMPUTE, HlsConfig, LayerSpec


def _divisors(n: int) -> List[int]:
    small, large = [], []
    i = 1
    while i * i <= n:
        if n % i == 0:
            small.append(i)
            if i * i != n:
                large.append(n // i)
        i += 1
    return small + large[::-1]


@lru_cache(maxsize=4096)
def valid_reuse_factors(n_in: int, n_out: int) -> Tuple[int, ...]:
    """The reuse factors hls4ml accepts for an n_in x n_out product (rule4ml's `_validate_reuse_factor`),
    found among the divisors of n_in * n_out (its third condition) instead of all 1..n_in*n_out."""
    total = n_in * n_out
    ok = []
    for rf in _divisors(total):
        mult = -(-total // min(n_in, rf))
        if ((mult % n_out == 0) or rf >= n_in) and ((rf % n_in == 0) or rf < n_in):
            ok.append(rf)
    return tuple(ok)


def closest_reuse_factor(n_in: int, n_out: int, chosen: int) -> int:
    """rule4ml's `get_closest_reuse_factor` (ties to the smaller), fast enough for 10^6-weight layers."""
    valid = valid_reuse_factors(int(n_in), int(n_out))
    pos = bisect.bisect_left(valid, chosen)
    if pos == 0:
        return valid[0]
    if pos == len(valid):
        return valid[-1]
    before, after = valid[pos - 1], valid[pos]
    return after if after - chosen < chosen - before else before


def effective_reuse(layer: LayerSpec, rf: int) -> int:
    """The reuse factor hls4ml would apply to `layer` given `rf`: `closest_reuse_factor(fan_in, units, rf)` for
    Dense/Conv1D/Conv2D, `rf` unchanged for other layers."""
    if layer.kind in COMPUTE:
        return closest_reuse_factor(layer.fan_in, layer.units, rf)
    return rf


def pixels(layer: LayerSpec) -> int:
    """Words of the layer's input stream per frame in io_stream: input positions (H x W, or W) for Conv and
    pooling layers and activations on feature maps, 1 for a Dense or any layer on a flat vector."""
    if layer.kind == "Dense" or len(layer.input_shape) < 2:
        return 1
    return math.prod(layer.input_shape[:-1])


def target_interval(layers: Sequence[LayerSpec], cfg: HlsConfig) -> int:
    """The pipeline interval in cycles a segment runs at under `cfg`: the largest of pixels x hls4ml's reuse
    for cfg.reuse_factor over compute layers and the pixels of every streamed layer (at least 1)."""
    t = 1
    for l in layers:
        t = max(t, pixels(l) * (effective_reuse(l, cfg.reuse_factor) if l.kind in COMPUTE else 1))
    return t


def layer_reuse(layers: Sequence[LayerSpec], cfg: HlsConfig) -> List[int]:
    """Reuse factor per layer (1 for layers without multipliers): the largest valid reuse that keeps pace
    with `target_interval`, never below hls4ml's reuse for cfg.reuse_factor (with cfg.balance off: hls4ml's
    reuse for cfg.reuse_factor, as hls4ml itself applies a model-level value)."""
    if not cfg.balance:
        return [effective_reuse(l, cfg.reuse_factor) if l.kind in COMPUTE else 1 for l in layers]
    t = target_interval(layers, cfg)
    out = []
    for l in layers:
        if l.kind not in COMPUTE:
            out.append(1)
            continue
        base = effective_reuse(l, cfg.reuse_factor)
        valid = valid_reuse_factors(l.fan_in, l.units)
        limit = t // pixels(l)
        pos = bisect.bisect_right(valid, limit)
        out.append(max(base, valid[pos - 1] if pos else base))
    return out


