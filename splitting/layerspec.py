"""The layers of a model as the planner and its estimators see them (no weights, no Keras needed).

`LayerSpec` is one layer (type, shapes, the settings that change hardware); `HlsConfig` one hls4ml
configuration of a segment (precision, model-level reuse factor, strategy). `load_layers` reads a `.keras`
file's config.json (or a Keras model) into a chain of LayerSpecs, folding BatchNormalization into the layer
before it as `split_model` does; `model_specs` reads a Keras model of any graph shape `split` takes (every
layer of `splitting.layers`' one list) in the topological order split_model cuts, with what each layer reads. `neuron_part`, `input_part` and `join_layers` describe what one board of a
neuron or input split computes. Plain data, no TensorFlow unless a Keras model object is given.
"""
from __future__ import annotations

import json
import math
import zipfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from .contract import FixedType
from .errors import UserError
from .layers import SUPPORTED, base_class, check_model, check_priced

POOLING = {"MaxPooling1D", "MaxPooling2D", "AveragePooling1D", "AveragePooling2D"}
COMPUTE = ("Dense", "Conv1D", "Conv2D")


# ---------------------------------------------------------------------------------------------------------
# Layers and configurations
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerSpec:
    """One layer as the estimators see it: type, shapes (no batch axis) and the few settings that matter."""

    kind: str  # Keras class name; "Add" stands for the join of input-split partial sums
    name: str
    input_shape: Tuple[int, ...]
    output_shape: Tuple[int, ...]
    params: int = 0
    trainable: int = 0
    units: int = 0  # Dense units / Conv filters
    activation: str = "linear"
    use_bias: bool = False
    kernel: Tuple[int, ...] = ()
    strides: Tuple[int, ...] = ()
    padding: str = "valid"
    inputs: int = 1  # number of operands of an Add (join)
    # what the layer reads in a graph: for each operand, how many places back in the topological order its
    # producer is (1: the layer just before; () is a chain: (1,)); relative, so equal blocks share estimates
    reads: Tuple[int, ...] = ()
    depthwise: bool = False  # a DepthwiseConv priced as the Conv with one input channel per filter

    @property
    def is_compute(self) -> bool:
        """True for the layers with weights and multipliers: Dense, Conv1D, Conv2D."""
        return self.kind in ("Dense", "Conv1D", "Conv2D")

    @property
    def fan_in(self) -> int:
        """Inputs per output unit: last input dimension for Dense, input channels x prod(kernel) for
        Conv1D/Conv2D; 0 for any other layer."""
        if self.kind == "Dense":
            return int(self.input_shape[-1])
        if self.kind in ("Conv1D", "Conv2D"):
            return int(self.input_shape[-1]) * math.prod(self.kernel)
        return 0

    def signature(self) -> Dict[str, Any]:
        """The fields as a dict without `name`: the part of the cache key that identifies the layer."""
        d = asdict(self)
        d.pop("name")  # names do not change an estimate; identical layers of other models share the cache
        return d


@dataclass(frozen=True)
class HlsConfig:
    """One hls4ml configuration of a segment: precision (an ap_fixed type), model-level reuse factor (each
    layer's own follows from it: `reuse.layer_reuse`, balanced unless `balance` is off), strategy, io type
    (splitrack's partitions: io_stream), io_stream FIFO depths (`fifo_depth`: splitting.fifo_depths).

    Raises ContractError on an unreadable precision, UserError on a strategy other than Latency/Resource,
    an io type other than io_stream/io_parallel, a FIFO depth other than optimized/default, or a reuse
    factor below 1."""

    precision: str = "ap_fixed<16,6>"
    reuse_factor: int = 1
    strategy: str = "Latency"
    io_type: str = "io_stream"
    balance: bool = True  # raise faster layers' reuse to the slowest one's pace (False: hls4ml's rule only)
    # io_stream FIFO depths (splitting.fifo_depths): 'optimized' as hls4ml's FIFO depth optimisation leaves
    # them (what splitrack's plans assume and write), 'default' hls4ml's own (pixels of each stream)
    fifo_depth: str = "optimized"

    def __post_init__(self):
        from .fifo_depths import FIFO_DEPTHS

        FixedType.parse(self.precision)  # raises a readable error
        if self.fifo_depth not in FIFO_DEPTHS:
            raise UserError(f"FIFO depth {self.fifo_depth!r}: use {' or '.join(FIFO_DEPTHS)}")
        if self.strategy not in ("Latency", "Resource"):
            raise UserError(f"strategy {self.strategy!r}: use Latency or Resource")
        if self.io_type not in ("io_stream", "io_parallel"):
            raise UserError(f"io type {self.io_type!r}: use io_stream or io_parallel")
        if self.reuse_factor < 1:
            raise UserError(f"reuse factor {self.reuse_factor}: must be >= 1")

    @property
    def bits(self) -> int:
        """Total width of `precision` in bits (W of ap_fixed<W,I>)."""
        return FixedType.parse(self.precision).width



# ---------------------------------------------------------------------------------------------------------
# Reading a Keras model's architecture without Keras (a .keras file is a zip with config.json)
# ---------------------------------------------------------------------------------------------------------
def load_layers(source) -> Tuple[str, List[LayerSpec]]:
    """(model name, layer chain) of a `.keras` file, a Keras model object, or its serialized config dict."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise UserError(f"{path}: no such model file; give a Keras 3 `.keras` file")
        try:
            with zipfile.ZipFile(path) as z:
                config = json.loads(z.read("config.json"))
        except (zipfile.BadZipFile, KeyError):
            raise UserError(f"{path}: not a Keras 3 `.keras` file (a zip with config.json); re-save it with model.save('m.keras')") from None
    elif isinstance(source, dict):
        config = source
    else:  # a Keras model: serialise it the way model.save() would
        import keras

        config = keras.saving.serialize_keras_object(source)
    return _layers_from_config(config)


def _layers_from_config(config: Dict[str, Any]) -> Tuple[str, List[LayerSpec]]:
    cls = config.get("class_name")
    body = config.get("config", {})
    name = body.get("name", "model")
    layers = body.get("layers", [])
    if cls not in ("Sequential", "Functional", "Model"):
        raise UserError(f"model class {cls!r} is not supported: the planner reads Sequential or chain-shaped Functional models")
    if cls != "Sequential":
        n_inputs = sum(1 for lc in layers if lc.get("class_name") == "InputLayer")
        if n_inputs > 1:
            raise UserError(f"the model has {n_inputs} inputs: splitrack plans models with one input (a chain of layers)")
        _check_chain(layers)
    shape: Optional[Tuple[int, ...]] = None
    specs: List[LayerSpec] = []
    for lc in layers:
        kind, c = lc["class_name"], lc.get("config", {})
        if kind == "InputLayer":
            shape = tuple(int(s) for s in (c.get("batch_shape") or c.get("batch_input_shape"))[1:])
            continue
        if shape is None:
            built = (lc.get("build_config") or {}).get("input_shape")
            if built is None:
                raise UserError(f"layer {c.get('name')}: the model has no input shape; build it (keras.Input) and save again")
            shape = tuple(int(s) for s in built[1:])
        if kind == "BatchNormalization":  # split_model folds it into the layer before it (splitting/fold.py)
            prev = specs[-1] if specs else None
            if prev is None or not prev.is_compute or prev.activation != "linear":
                if prev is None:
                    after = "it reads the model input"
                elif prev.is_compute:
                    after = f"{prev.name!r} applies its activation {prev.activation!r} before it"
                else:
                    after = f"it follows {prev.name!r} ({prev.kind})"
                raise UserError(
                    f"layer {c.get('name')!r} (BatchNormalization) cannot be folded: {after}; splitrack folds "
                    "BatchNormalization into a Dense/Conv1D/Conv2D with no activation right before it: move it there, or remove it")
            extra = 0 if prev.use_bias else prev.units
            specs[-1] = replace(prev, use_bias=True, params=prev.params + extra, trainable=prev.trainable + extra)
            continue
        spec = _spec(kind, c, shape)
        specs.append(spec)
        shape = spec.output_shape
    if not specs:
        raise UserError("the model has no layers to place")
    return name, specs


def _check_chain(layers: List[Dict[str, Any]]) -> None:
    for lc in layers:
        nodes = lc.get("inbound_nodes") or []
        if len(nodes) > 1:
            raise UserError(f"layer {lc['config'].get('name')} is used twice: the planner handles chains of layers only")
        for node in nodes:
            args = node.get("args", []) if isinstance(node, dict) else node
            if len(args) != 1 or isinstance(args[0], list):
                raise UserError(f"layer {lc['config'].get('name')} has several inputs: the planner handles chains of layers only")


def _tuple(v, n) -> Tuple[int, ...]:
    if isinstance(v, (list, tuple)):
        return tuple(int(x) for x in v)
    return (int(v),) * n


def _conv_out(size: int, k: int, s: int, padding: str) -> int:
    return -(-size // s) if padding == "same" else (size - k) // s + 1


PIECEWISE_LINEAR = ("relu", "leaky_relu", "relu6", "prelu", "hard_sigmoid", "hard_silu", "hard_swish", "hard_tanh")


def priced_as(act: str) -> str:
    """The activation rule4ml 0.2.0 prices `act` as: it knows linear, relu, sigmoid, tanh and softmax only.
    Piecewise-linear functions cost like relu, other element-wise ones (tables) like sigmoid; anything not
    known to be element-wise like softmax (so the planner never puts it into the parts of a neuron split)."""
    from .rebuild import ELEMENTWISE

    if act in ("linear", "relu", "sigmoid", "tanh", "softmax"):
        return act
    if act in PIECEWISE_LINEAR:
        return "relu"
    return "sigmoid" if act in ELEMENTWISE else "softmax"


def _spec(kind: str, c: Dict[str, Any], shape: Tuple[int, ...]) -> LayerSpec:
    from .rebuild import function_name

    name = c.get("name", kind.lower())
    act = priced_as(function_name(c.get("activation", "linear")))
    if kind == "Dense":
        units, bias = int(c["units"]), bool(c.get("use_bias", True))
        if len(shape) != 1:
            raise UserError(f"layer {name}: Dense on a {len(shape)}-d input; put a Flatten before it")
        p = shape[0] * units + (units if bias else 0)
        return LayerSpec("Dense", name, shape, (units,), p, p, units, act, bias)
    if kind in ("Conv1D", "Conv2D"):
        nd = 1 if kind == "Conv1D" else 2
        if len(shape) != nd + 1:
            raise UserError(f"layer {name}: {kind} needs a {nd + 1}-d input, got {shape}")
        k, s = _tuple(c["kernel_size"], nd), _tuple(c.get("strides", 1), nd)
        pad, f, bias = c.get("padding", "valid"), int(c["filters"]), bool(c.get("use_bias", True))
        out = tuple(_conv_out(shape[i], k[i], s[i], pad) for i in range(nd)) + (f,)
        p = math.prod(k) * shape[-1] * f + (f if bias else 0)
        return LayerSpec(kind, name, shape, out, p, p, f, act, bias, k, s, pad)
    if kind in POOLING:
        nd = 1 if kind.endswith("1D") else 2
        k = _tuple(c.get("pool_size", 2), nd)
        s = _tuple(c.get("strides") or k, nd)
        pad = c.get("padding", "valid")
        out = tuple(_conv_out(shape[i], k[i], s[i], pad) for i in range(nd)) + (shape[-1],)
        return LayerSpec(kind, name, shape, out, kernel=k, strides=s, padding=pad)
    if kind == "Flatten":
        return LayerSpec(kind, name, shape, (math.prod(shape),))
    if kind in ("Activation", "ReLU", "Softmax", "LeakyReLU", "ELU", "PReLU"):
        # rule4ml 0.2.0 knows relu, sigmoid, tanh and softmax only: the piecewise-linear LeakyReLU and PReLU
        # are priced as relu (a comparator and a multiplier per element), ELU (an exponential table) as sigmoid
        a = {"ReLU": "relu", "Softmax": "softmax", "LeakyReLU": "relu", "ELU": "sigmoid", "PReLU": "relu"}.get(kind, act)
        if kind == "Softmax" and c.get("axis", -1) not in (-1, len(shape)):
            raise UserError(f"layer {name}: Softmax over axis {c.get('axis')}: hls4ml's io_stream softmax works on the last axis only")
        if kind == "ReLU" and (c.get("max_value") is not None or c.get("negative_slope") or c.get("threshold")):
            raise UserError(f"layer {name}: ReLU with max_value/negative_slope/threshold is not supported by the planner")
        return LayerSpec("Activation", name, shape, shape, activation=a)
    if kind == "Dropout":
        return LayerSpec(kind, name, shape, shape)
    if kind == "BatchNormalization":
        ch = shape[-1]
        n = 2 + int(c.get("center", True)) + int(c.get("scale", True))
        return LayerSpec(kind, name, shape, shape, n * ch, (n - 2) * ch)
    check_priced(kind, name)  # the one refusal of split, plan and verify, or the planner's of a layer it cannot price
    raise UserError(
        f"layer {name} ({kind}): this reader of a model's config takes chains of Dense, Conv1D/2D, pooling, "
        "Flatten, Activation, Dropout and BatchNormalization; `splitrack plan` reads every layer split takes "
        "(model_specs)"
    )


# ---------------------------------------------------------------------------------------------------------
# A Keras model of any graph shape (what `splitrack plan` reads): every layer of splitting.layers' one list
# ---------------------------------------------------------------------------------------------------------
def layer_spec(layer, in_shape: Tuple[int, ...], out_shape: Tuple[int, ...], n_inputs: int = 1):
    """The estimators' LayerSpec of a Keras layer (already built) with its input and output shapes (no batch
    axis). Depthwise convolutions are priced as the Conv2D with one input channel per filter that has their
    multipliers (kernel x channels x depth multiplier); global pooling as one adder per channel over the stream."""
    from .rebuild import function_name

    cls = type(layer).__name__
    how = check_priced(cls, layer.name)
    c = layer.get_config()
    if how == "depthwise":
        nd = len(in_shape) - 1
        k, s = _tuple(c["kernel_size"], nd), _tuple(c.get("strides", 1), nd)
        units = int(out_shape[-1])
        p = math.prod(k) * units + (units if c.get("use_bias", True) else 0)
        return LayerSpec("Conv2D" if nd == 2 else "Conv1D", layer.name, tuple(in_shape[:-1]) + (1,), tuple(out_shape),
                         p, p, units, priced_as(function_name(c.get("activation", "linear"))),
                         bool(c.get("use_bias", True)), k, s, c.get("padding", "valid"), depthwise=True)
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
    return _spec(base_class(cls), c, tuple(in_shape))


def model_specs(model):
    """(model name, LayerSpecs in the topological order split_model cuts, reads, unsplittable): the planner's view of a
    Keras model of any graph shape, after the BatchNormalization folds split_model makes.
    reads[i] lists what layer i reads: (position of the producing layer, or -1 for the model input;
    elements of that tensor); unsplittable: positions priced as a Conv that split_model cannot split
    (depthwise). Raises UserError for a layer outside SUPPORTED or a model split cannot cut."""
    from .fold import fold_batchnorm
    from .graph import LayerGraph

    check_model(model)  # refuse before any rebuilding, naming the layer of the user's model
    for layer in model.layers:
        if type(layer).__name__ != "InputLayer":
            check_priced(type(layer).__name__, layer.name)
    name = model.name
    model, _ = fold_batchnorm(model)
    g = LayerGraph.of(model)
    pos = {n: i for i, n in enumerate(g.order)}
    specs, reads, unsplittable = [], [], []
    for n in g.order:
        if SUPPORTED.get(base_class(type(g.layer(n)).__name__)) == "depthwise":
            unsplittable.append(len(specs))
        parents = list(dict.fromkeys(g.inbound[n]))
        spec = layer_spec(g.layer(n), g.tensor_shape(parents[0]), g.tensor_shape(n), len(g.inbound[n]))
        here = len(specs)
        back = tuple(here - pos.get(p, -1) for p in parents)  # the model input counts as place -1
        specs.append(spec if back == (1,) else replace(spec, reads=back))
        reads.append([(pos.get(p, -1), math.prod(g.tensor_shape(p))) for p in parents])
    return name, specs, reads, unsplittable


# ---------------------------------------------------------------------------------------------------------
# Parts of split layers (what one board of a neuron or input split computes)
# ---------------------------------------------------------------------------------------------------------
def neuron_part(layer: LayerSpec, units: int) -> LayerSpec:
    """`units` of the layer's output units (filters), with its bias and activation."""
    p = layer.params // layer.units * units if layer.units else 0
    return replace(layer, name=f"{layer.name}_n", output_shape=layer.output_shape[:-1] + (units,), params=p, trainable=p, units=units)


def input_part(layer: LayerSpec, fan: int, bias: bool = False) -> LayerSpec:
    """A partial sum over `fan` of the inputs (input channels), no activation; split_model folds the bias into
    part 0 (`bias=True`)."""
    shape = layer.input_shape[:-1] + (fan,)
    bias = bias and layer.use_bias
    p = (fan if layer.kind == "Dense" else fan * math.prod(layer.kernel)) * layer.units + (layer.units if bias else 0)
    return replace(layer, name=f"{layer.name}_i", input_shape=shape, params=p, trainable=p, activation="linear", use_bias=bias)


def join_layers(layer: LayerSpec, parts: int) -> List[LayerSpec]:
    """What the join partition of an input split computes: the sum of `parts` partial sums (an Add, to
    rule4ml), plus the split layer's activation when it has one."""
    out = [LayerSpec("Add", f"{layer.name}_join", layer.output_shape, layer.output_shape, inputs=parts)]
    if layer.activation != "linear":
        out.append(LayerSpec("Activation", f"{layer.name}_act", layer.output_shape, layer.output_shape, activation=layer.activation))
    return out


