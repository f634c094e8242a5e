"""The hls4ml types splitrack sets per layer where a configuration by model would overflow.

splitrack configures hls4ml by model (one default precision, `split.hls_config`): every type of every layer
is that precision unless a layer is named. For most layers that is what an hls4ml user gets too; for average
pooling it is not. hls4ml 1.3 infers the accumulator of an average pooling from its input
(`model/optimizer/passes/infer_precision.py`, `_infer_pooling_precision`: width + 2 e, integer + e bits,
e = ceil(log2(pool size))) - but only for the `auto` types of a configuration by name, and only for
Pooling1D/2D: a GlobalAveragePooling (nnet_pooling_stream.h, `compute_global_pool`) sums every pixel of a
channel in its accum_t, which is then the default precision. Averaging the 8x8 map of ResNet-8's last stack
in ap_fixed<16,6> wraps as soon as the 64 values of a channel sum past 32, and hls4ml's emulation of the whole
model departs from Keras (verify names hls4ml). `accumulators` applies hls4ml's own rule to every average
pooling, global ones included, with the pool size their window (the whole map for a global one), as an hls4ml
user sets it (`LayerName: {pool: {Precision: {accum: ...}}}`).

RULES_VERSION enters the compiled-project cache key (`hls.cache_key`): a build made before a rule changed is
never reused.
"""
from __future__ import annotations

import math
import re
from typing import Optional

RULES_VERSION = 1

_AVERAGE = {"AveragePooling1D", "AveragePooling2D", "GlobalAveragePooling1D", "GlobalAveragePooling2D"}
_FIXED = re.compile(r"^\s*(ap_u?fixed)\s*<\s*(\d+)\s*,\s*(-?\d+)\s*(,[^>]*)?>\s*$")


def _pool_size(layer) -> int:
    """Values an average pooling sums per output: its window (Keras pool_size), or the whole map (global)."""
    if layer.__class__.__name__.startswith("Global"):
        shape = layer.input.shape  # (batch, steps[, cols], channels)
        return math.prod(int(d) for d in shape[1:-1])
    return math.prod(int(d) for d in layer.pool_size)


def widened(precision: str, pool_size: int) -> Optional[str]:
    """hls4ml's accumulator of an average over `pool_size` values of `precision` ('ap_fixed<W,I>' or
    'ap_ufixed<W,I>', rounding/saturation modes dropped as hls4ml's inference does): W + 2e, I + e bits,
    e = ceil(log2(pool_size)); None for another type (left to hls4ml)."""
    m = _FIXED.match(precision)
    if not m:
        return None
    kind, width, integer = m.group(1), int(m.group(2)), int(m.group(3))
    extra = int(math.ceil(math.log2(max(pool_size, 1))))
    return f"{kind}<{width + 2 * extra},{integer + extra}>"


def _layer_precision(cfg: dict, name: str, what: str) -> Optional[str]:
    """The precision `what` of layer `name` in `cfg` (its LayerName entry), None where it names none."""
    prec = ((cfg.get("LayerName") or {}).get(name) or {}).get("Precision")
    if isinstance(prec, dict):
        return prec.get(what)
    return prec if isinstance(prec, str) else None


def accumulators(model, cfg: dict) -> dict:
    """`cfg` (an hls4ml configuration by model, changed in place and returned) with the accumulator of every
    average pooling of the Keras `model` set by hls4ml's rule (module docstring) from the type of its input:
    the layer's own result type where named, else the model's default. A layer whose accum is already named
    keeps it."""
    default = ((cfg.get("Model") or {}).get("Precision") or {})
    default = default.get("default") if isinstance(default, dict) else default
    for layer in model.layers:
        if layer.__class__.__name__ not in _AVERAGE or _layer_precision(cfg, layer.name, "accum"):
            continue
        # the input of the pooling is the type of the layer before; splitrack names no layer's result but a
        # partition's input layer, so it is that one's or the default
        src = layer.input._keras_history[0].name if hasattr(layer.input, "_keras_history") else None
        given = _layer_precision(cfg, src, "result") if src else None
        wide = widened(given or default or "", _pool_size(layer))
        if wide:
            entry = cfg.setdefault("LayerName", {}).setdefault(layer.name, {})
            prec = entry.get("Precision")
            entry["Precision"] = dict(prec) if isinstance(prec, dict) else ({"result": prec} if prec else {})
            entry["Precision"]["accum"] = wide
    return cfg
