"""Rebuilding a layer inside a part of a split: from its own get_config() and weights, never from its name.

A neuron split computes a slice [lo, hi) of a layer's last axis (units or filters) in each part. An
activation layer can go into the parts only when it acts on each channel independently; its weights (a
PReLU's alphas) are then sliced with the channels. Otherwise it must run after the parts are joined, where
it is rebuilt whole. Every setting (ReLU's max_value/threshold/negative_slope, LeakyReLU's slope, ELU's
alpha, Softmax's axis, PReLU's shared_axes, any Activation name) comes from the layer's own config, so a
rebuilt layer computes exactly what the original did.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np

from .errors import UserError

# Every stand-alone activation layer Keras 3 has (keras/src/layers/activations/).
ACTIVATION_LAYERS = ("Activation", "ReLU", "Softmax", "LeakyReLU", "ELU", "PReLU")
# Activation functions (by name) that act on each element alone: they may run on any slice of a tensor.
ELEMENTWISE = ("linear", "relu", "sigmoid", "tanh", "hard_sigmoid", "elu", "selu", "softplus", "softsign",
               "leaky_relu", "relu6", "swish", "silu", "gelu", "exponential", "hard_silu", "hard_swish", "mish",
               "hard_tanh", "log_sigmoid", "sparse_plus", "soft_shrink", "hard_shrink", "tanh_shrink",
               "squareplus", "celu")


class RebuildError(UserError):
    """A layer that cannot go with a split; the message names it and says what to do."""


def function_name(act) -> str:
    """Name of a serialised activation ('linear' for none). Keras 3 writes its own functions by name; a
    function of another package is named module.function (so it never passes for a Keras one), and a layer
    object given as `activation=` by its class (e.g. 'LeakyReLU')."""
    if act is None:
        return "linear"
    if isinstance(act, dict):
        if act.get("class_name") == "function":
            module = str(act.get("module", ""))
            fn = str(act.get("config", ""))
            return fn if module.startswith("keras") else f"{module}.{fn}"
        return str(act.get("class_name", "linear"))
    return str(act)


def _last_axis(axis, rank: int) -> bool:
    """Whether `axis` (int or list, possibly negative, counting the batch axis) includes the last axis of a
    tensor of `rank` dimensions (batch included)."""
    axes = axis if isinstance(axis, (list, tuple)) else [axis]
    return any((a if a >= 0 else rank + a) == rank - 1 for a in axes)


def channel_wise(layer, rank: int) -> bool:
    """True when `layer` applied to a slice of the last axis equals the same slice of its output, so it may
    run inside each part of a neuron split. `rank` counts the batch axis."""
    cls = type(layer).__name__
    cfg = layer.get_config()
    if cls in ("ReLU", "LeakyReLU", "ELU", "PReLU"):
        return True  # per element; a PReLU's alphas are sliced with the channels (see rebuild)
    if cls == "Softmax":
        return not _last_axis(cfg.get("axis", -1), rank)
    if cls == "Activation":
        return function_name(cfg.get("activation")) in ELEMENTWISE
    return False


def rebuild(layer, name: str, channels: Optional[Tuple[int, int]] = None):
    """(new layer, weights to set once it is built): a clone of `layer` from its config, named `name`.
    With `channels` = (lo, hi) the weights are those of that slice of the last axis (a PReLU's alphas);
    weights shared across the last axis (shape 1 there, PReLU shared_axes) are kept whole."""
    cfg = layer.get_config()
    cfg["name"] = name
    new = type(layer).from_config(cfg)
    weights = layer.get_weights()
    if channels is not None:
        lo, hi = channels
        weights = [w[..., lo:hi] if w.ndim and w.shape[-1] > 1 else w for w in weights]
    return new, weights


def apply(x, layer, weights: List[np.ndarray]):
    """Call a fresh layer on `x`, then give it its weights (a layer has no weights before it is built)."""
    out = layer(x)
    if weights:
        layer.set_weights(weights)
    return out


def activation_argument(layer):
    """The `activation=` argument of a Dense/Conv layer as a stand-alone layer, or None when it is a plain
    function name (which Keras serialises by name only: its parameters are always Keras's defaults, in the
    original model as in every rebuilt one). A layer object given as `activation=` (e.g. LeakyReLU(0.1))
    keeps its settings this way."""
    act = layer.get_config().get("activation")
    if not isinstance(act, dict):
        return None
    import keras

    try:
        obj = keras.layers.deserialize(act)
    except Exception:  # a function from some other package: keep it by config; it cannot be judged here
        return None
    if not isinstance(obj, keras.layers.Layer):
        return None
    if obj.weights or type(obj).__name__ == "PReLU":
        raise RebuildError(
            f"layer {layer.name!r} has a {type(obj).__name__} object with weights as its activation argument: "
            f"splitrack cannot slice it there; make it a separate layer after {layer.name!r}"
        )
    return obj
