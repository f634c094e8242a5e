"""BatchNormalization folded into the Dense, Conv1D, Conv2D or DepthwiseConv2D before it (the standard
inference-time fold).

At inference a BatchNormalization computes y = gamma (x - mean) / sqrt(var + eps) + beta per channel of the
last axis. After a linear layer x = W u + b this is the same linear layer with
    W' = W * s,   b' = (b - mean) * s + beta,   s = gamma / sqrt(var + eps)
(s scales the output channels, the last axis of every Keras kernel; a DepthwiseConv2D's output channel
c * depth_multiplier + m is its kernel's [..., c, m]). Computed in float64 and stored as float32, the folded
model equals the original up to float rounding. hls4ml then sees one layer instead of two, so the split
partitions and the whole-model emulation quantise the same arithmetic.

A BatchNormalization with nothing to fold into (it reads the model input, follows a pooling or an Add, or
follows a layer whose output goes elsewhere too or that applies an activation first) stays a layer of its
own: hls4ml converts it as one (scale and shift in the layer's type), and its fuse pass merges a
BatchNormalization only into a Dense/Conv1D/Conv2D whose output goes nowhere else (bn_fuse.py), which is
exactly what is folded here; so the whole model and its partitions still compute the same.
"""
from __future__ import annotations

from typing import Dict, Tuple

import numpy as np

from .errors import UserError

FOLDABLE_INTO = ("Dense", "Conv1D", "Conv2D", "DepthwiseConv2D")


class FoldError(UserError):
    """A BatchNormalization that cannot be folded; the message names it and says what to do."""


def _foldable(graph, bn_name: str):
    """The name of the layer `bn_name` folds into, None when it stays a layer of its own, or FoldError."""
    bn = graph.layer(bn_name)
    cfg = bn.get_config()
    rank = len(bn.input.shape)
    axis = cfg.get("axis", -1)
    axes = axis if isinstance(axis, (list, tuple)) else [axis]
    if [a if a >= 0 else rank + a for a in axes] != [rank - 1]:
        raise FoldError(f"layer {bn_name!r} (BatchNormalization over axis {axis}) normalises another axis than the "
                        "channels: splitrack folds BatchNormalization over the last axis only; remove it or retrain without it")
    parents = graph.inbound[bn_name]
    host = graph.layer(parents[0]) if len(parents) == 1 and parents[0] in graph.order else None
    why = None
    if host is None:
        why = "it reads the model input"
    elif type(host).__name__ not in FOLDABLE_INTO:
        why = f"it follows {host.name!r} ({type(host).__name__})"
    elif host.get_config().get("activation", "linear") not in ("linear", None):
        why = f"{host.name!r} applies its activation {host.get_config()['activation']!r} before it"
    elif graph.consumers(host.name) != [bn_name]:
        why = f"the output of {host.name!r} also goes elsewhere"
    return None if why else host.name


def folded_weights(host, bn):
    """(kernel, bias) of `host` with `bn` folded in, float32."""
    w = host.get_weights()
    kernel = w[0].astype(np.float64)
    depthwise = type(host).__name__ == "DepthwiseConv2D"
    channels = kernel.shape[-2] * kernel.shape[-1] if depthwise else kernel.shape[-1]
    bias = w[1].astype(np.float64) if len(w) > 1 else np.zeros(channels)
    cfg = bn.get_config()
    vals = list(bn.get_weights())
    gamma = vals.pop(0).astype(np.float64) if cfg.get("scale", True) else 1.0
    beta = vals.pop(0).astype(np.float64) if cfg.get("center", True) else 0.0
    mean, var = vals[0].astype(np.float64), vals[1].astype(np.float64)
    s = gamma / np.sqrt(var + float(cfg.get("epsilon", 1e-3)))
    scale = np.reshape(s, kernel.shape[-2:]) if depthwise else s
    return (kernel * scale).astype(np.float32), ((bias - mean) * s + beta).astype(np.float32)


def fold_batchnorm(model) -> Tuple[object, Dict[str, str]]:
    """(model with every BatchNormalization folded away, {batchnorm name: layer it was folded into}).
    The model is returned unchanged (same object) when it has none. FoldError for one that cannot be folded."""
    import keras

    from .graph import LayerGraph

    graph = LayerGraph.of(model)
    bns = [n for n in graph.order if type(graph.layer(n)).__name__ == "BatchNormalization"]
    if not bns:
        return model, {}
    folded = {bn: h for bn, h in ((bn, _foldable(graph, bn)) for bn in bns) if h is not None}
    if not folded:
        return model, {}
    hosts = {h: bn for bn, h in folded.items()}
    inp = keras.Input(tuple(model.inputs[0].shape[1:]), name=graph.input_name)
    tensors = {graph.input_name: inp}
    for n in graph.order:
        src = graph.layer(n)
        args = [tensors[p] if p in tensors else inp for p in graph.inbound[n]]  # not a layer: the input
        if n in folded:
            tensors[n] = args[0]  # the host already computes it
            continue
        cfg = src.get_config()
        if n in hosts:
            cfg["use_bias"] = True
        new = type(src).from_config(cfg)
        tensors[n] = new(args[0] if len(args) == 1 else args)
        new.set_weights(list(folded_weights(src, graph.layer(hosts[n]))) if n in hosts else src.get_weights())
    return keras.Model(inp, tensors[graph.order[-1]], name=model.name), folded

