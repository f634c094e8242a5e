"""The one list of Keras layers splitrack handles: `split` cuts models made of them, `verify` checks them,
and `plan` prices them (each through the estimators' kind, LayerSpec.kind: `layerspec.model_specs`). A
layer outside it is refused by all three with the same one line, before any work.

What hls4ml then does with a layer's settings is checked per model by converting it (`hls_support`).
"""
from __future__ import annotations

from typing import Dict

from .errors import UserError

# Keras class -> how the planner prices it: a kind the estimators know ("Dense", "Conv2D", pooling,
# "Activation", "BatchNormalization", "Add"), "move" (data movement only: no arithmetic, priced as a
# Flatten, which rule4ml knows and the analytic model counts as free) or UNPRICED (split and verify take it
# where hls4ml converts it, `hls_support` checks that; no estimator models it, so `plan` refuses it by name).
SUPPORTED: Dict[str, str] = {
    "Dense": "Dense", "Conv1D": "Conv1D", "Conv2D": "Conv2D",
    "DepthwiseConv1D": "depthwise", "DepthwiseConv2D": "depthwise",
    "MaxPooling1D": "pool", "MaxPooling2D": "pool", "AveragePooling1D": "pool", "AveragePooling2D": "pool",
    "GlobalAveragePooling1D": "global_pool", "GlobalAveragePooling2D": "global_pool",
    "GlobalMaxPooling1D": "global_pool", "GlobalMaxPooling2D": "global_pool",
    "Activation": "Activation", "ReLU": "Activation", "Softmax": "Activation", "LeakyReLU": "Activation",
    "ELU": "Activation", "PReLU": "Activation",
    "BatchNormalization": "BatchNormalization",
    "Add": "merge", "Subtract": "merge", "Multiply": "merge", "Average": "merge", "Maximum": "merge",
    "Minimum": "merge", "Concatenate": "move",
    "Flatten": "move", "Reshape": "move", "ZeroPadding1D": "move", "ZeroPadding2D": "move",
    "UpSampling1D": "move", "UpSampling2D": "move", "Dropout": "Dropout",
    "Permute": "move", "Cropping1D": "move", "Cropping2D": "move", "RepeatVector": "move", "Identity": "move",
    "Embedding": "unpriced", "LSTM": "unpriced", "GRU": "unpriced", "SimpleRNN": "unpriced",
    "SeparableConv1D": "unpriced", "SeparableConv2D": "unpriced",
}
UNPRICED = "unpriced"


def base_class(cls: str) -> str:
    """The Keras class an HGQ2 quantised layer class stands for (QDense -> Dense); `cls` itself otherwise."""
    return cls[1:] if cls.startswith("Q") and cls[1:] in SUPPORTED else cls


def check_supported(cls: str, name: str) -> str:
    """The planner's kind of Keras class `cls`; UserError naming layer `name` when splitrack does not handle
    it. HGQ2's quantised layers (QDense, QConv2D, ...) count as the Keras layer they quantise."""
    base = base_class(cls)
    if base not in SUPPORTED:
        raise UserError(f"layer {name!r} ({cls}) is not one splitrack handles (split, plan and verify take "
                        f"{', '.join(sorted(SUPPORTED))}): rebuild the model with those layers")
    return SUPPORTED[base]


def check_model(model) -> None:
    """UserError naming the first layer of the Keras `model` outside SUPPORTED (split's and plan's check)."""
    for layer in model.layers:
        if type(layer).__name__ != "InputLayer":
            check_supported(type(layer).__name__, layer.name)


def check_priced(cls: str, name: str) -> str:
    """check_supported, and UserError naming the layer when no estimator models it (plan's check)."""
    how = check_supported(cls, name)
    if how == UNPRICED:
        raise UserError(f"layer {name!r} ({cls}): the planner has no estimate of it (split and verify take it where "
                        "hls4ml converts it): choose the cuts yourself with `splitrack split --at`")
    return how
