"""The one list of Keras layers splitrack handles: `split` cuts models made of them, `verify` checks them,
and `plan` prices them (each through the estimators' kind, LayerSpec.kind). A layer outside it is refused
by all three with the same one line, before any work.

What hls4ml then does with a layer's settings is checked per model by converting it (`hls_support`).
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Tuple

from .errors import UserError

# Keras class -> how the planner prices it: a kind the estimators know ("Dense", "Conv2D", pooling,
# "Activation", "BatchNormalization", "Add") or "move" (data movement only: no arithmetic, priced as a
# Flatten, which rule4ml knows and the analytic model counts as free).
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
}


def check_supported(cls: str, name: str) -> str:
    """The planner's kind of Keras class `cls`; UserError naming layer `name` when splitrack does not handle
    it. HGQ2's quantised layers (QDense, QConv2D, ...) count as the Keras layer they quantise."""
    base = cls[1:] if cls.startswith("Q") and cls[1:] in SUPPORTED else cls
    if base not in SUPPORTED:
        raise UserError(f"layer {name!r} ({cls}) is not one splitrack handles (split, plan and verify take "
                        f"{', '.join(sorted(SUPPORTED))}): rebuild the model with those layers")
    return SUPPORTED[base]


def _tuple(v, n) -> Tuple[int, ...]:
    return tuple(int(x) for x in v) if isinstance(v, (list, tuple)) else (int(v),) * n


def layer_spec(layer, in_shape: Tuple[int, ...], out_shape: Tuple[int, ...], n_inputs: int = 1):
    """The estimators' LayerSpec of a Keras layer (already built) with its input and output shapes (no batch
    axis). Depthwise convolutions are priced as the Conv2D with one input channel per filter that has their
    multipliers (kernel x channels x depth multiplier); global pooling as one adder per channel over the stream."""
    from .estimate import LayerSpec, _spec

    cls = type(layer).__name__
    how = check_supported(cls, layer.name)
    c = layer.get_config()
    if how == "depthwise":
        nd = len(in_shape) - 1
        k, s = _tuple(c["kernel_size"], nd), _tuple(c.get("strides", 1), nd)
        units = int(out_shape[-1])
        p = math.prod(k) * units + (units if c.get("use_bias", True) else 0)
        from .estimate import priced_as
        from .rebuild import function_name

        return LayerSpec("Conv2D" if nd == 2 else "Conv1D", layer.name, tuple(in_shape[:-1]) + (1,), tuple(out_shape),
                         p, p, units, priced_as(function_name(c.get("activation", "linear"))),
                         bool(c.get("use_bias", True)), k, s, c.get("padding", "valid"))
    if how == "global_pool":
        # hls4ml's io_stream global pooling keeps one accumulator per channel and adds each pixel as it
        # arrives: priced as a pooling whose window adds two values per channel, over the whole stream
        kind = ("Max" if "Max" in cls else "Average") + f"Pooling{len(in_shape) - 1}D"
        window = (2,) + (1,) * (len(in_shape) - 2)
        return LayerSpec(kind, layer.name, tuple(in_shape), tuple(out_shape), kernel=window, strides=window)
    if how == "merge":
        return LayerSpec("Add", layer.name, tuple(out_shape), tuple(out_shape), inputs=max(2, n_inputs))
    if how == "move":
        return LayerSpec("Flatten", layer.name, tuple(in_shape), tuple(out_shape))
    return _spec(cls if how not in ("pool",) else cls, c, tuple(in_shape))


def model_specs(model):
    """(model name, LayerSpecs in the topological order split_model cuts, reads, unsplittable): the planner's view of a
    Keras model of any graph shape, after the BatchNormalization folds split_model makes.
    reads[i] lists what layer i reads: (position of the producing layer, or -1 for the model input;
    elements of that tensor); unsplittable: positions priced as a Conv that split_model cannot split
    (depthwise). Raises UserError for a layer outside SUPPORTED or a model split cannot cut."""
    from .fold import fold_batchnorm
    from .graph import LayerGraph

    for layer in model.layers:  # refuse before any rebuilding, naming the layer of the user's model
        if type(layer).__name__ != "InputLayer":
            check_supported(type(layer).__name__, layer.name)
    name = model.name
    model, _ = fold_batchnorm(model)
    g = LayerGraph.of(model)
    pos = {n: i for i, n in enumerate(g.order)}
    specs, reads, unsplittable = [], [], []
    for n in g.order:
        if SUPPORTED.get(type(g.layer(n)).__name__) == "depthwise":
            unsplittable.append(len(specs))
        parents = list(dict.fromkeys(g.inbound[n]))
        specs.append(layer_spec(g.layer(n), g.tensor_shape(parents[0]), g.tensor_shape(n), len(g.inbound[n])))
        reads.append([(pos.get(p, -1), math.prod(g.tensor_shape(p))) for p in parents])
    return name, specs, reads, unsplittable
