"""Does each layer of hls4ml's emulation compute what Keras computes, up to its fixed-point types?

hls4ml computes every layer in the types it gives it (read from its conversion, `hls.layer_records`): a
Dense or Conv multiplies its input by weights quantised to weight_t, truncates each product to accum_t,
adds the bias (bias_t) and casts the sum to result_t; an activation casts its result to its result_t, and
sigmoid, tanh and softmax read lookup tables. Given the very input hls4ml gave a layer (its traced output
of the layer before, `hls.layers_of(traced=True)`), Keras computing the same layer in float32 may differ
from hls4ml by at most one step of each cast, per element and per frame: that is the layer's quantisation
bound (`RULES`, one rule per Keras layer kind, from the layer's types and weights). A layer beyond it is
computed otherwise by hls4ml: `check_model` names the first such layer. A layer whose values leave the
range of its types overflows (wraps or saturates: not quantisation, reported apart); a layer without a rule
is left unchecked (and named).

Sources: hls4ml 1.3's nnet_dense_latency.h, nnet_conv_stream.h, nnet_activation(_stream).h (the tables),
nnet_helpers.h (TraceOutput), and Xilinx's ap_fixed.h (one step per cast).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .contract import FixedType

SLACK = 1e-5  # relative to the values compared: Keras computes in float32


@dataclass
class HlsLayer:
    """What a bound needs of one layer of hls4ml's conversion: its name, hls4ml class, the Keras layer it
    was made from (`owner`, "" for layers hls4ml inserted), its types and its scalar attributes."""

    name: str
    cls: str
    owner: str
    types: Dict[str, FixedType]
    attrs: Dict[str, object] = field(default_factory=dict)
    traced: bool = False

    @classmethod
    def from_record(cls, d: dict) -> "HlsLayer":
        """From an artifact.json record (hls.layer_records)."""
        types = {}
        for k, v in (d.get("types") or {}).items():
            try:
                types[k] = FixedType.parse(v)
            except ValueError:
                pass  # a type splitrack cannot read: rules that need it say so
        return cls(d["name"], d["class"], d.get("owner") or "", types, dict(d.get("attrs") or {}), bool(d.get("traced")))

    def step(self, key: str = "result_t") -> float:
        """One step of type `key` (0.0 when hls4ml gave the layer none: nothing is cast)."""
        t = self.types.get(key)
        return t.step if t is not None else 0.0


class Unbounded(Exception):
    """No bound for this layer; the message says why (no rule for its kind, a type splitrack cannot read)."""


class Overflow(Unbounded):
    """The layer's values leave the range of one of its types: hls4ml wraps or saturates them."""


@dataclass
class Step:
    """What one hls4ml layer of a Keras layer must give: Keras's value on hls4ml's input (`v`, batch first)
    and the bound on |hls4ml - Keras| (`e`, broadcastable to v)."""

    hls: str
    v: np.ndarray
    e: np.ndarray


@dataclass
class _Ctx:
    layer: object
    inputs: List[np.ndarray]         # hls4ml's values of the layer's inputs (batch first)
    hls: List[HlsLayer]              # the hls4ml layers made from it, in hls4ml's order
    traced: Callable[[str], Optional[np.ndarray]]  # hls4ml's traced output of one of them (Keras's shape)

    @property
    def x(self) -> np.ndarray:
        return self.inputs[0]

    def last(self) -> HlsLayer:
        if not self.hls:
            raise Unbounded("hls4ml's conversion has no layer for it")
        return self.hls[-1]


def _call(layer, values) -> np.ndarray:
    if isinstance(values, list):
        values = [np.asarray(v, dtype=np.float32) for v in values]
    else:
        values = np.asarray(values, dtype=np.float32)
    return np.asarray(layer(values, training=False), dtype=np.float64)


def _check_range(what: str, t: Optional[FixedType], v: np.ndarray, e) -> None:
    """Overflow when Keras's values, widened by the bound, leave the range of type `t`."""
    if t is None or not v.size:
        return
    lo, hi = t.raw_min * t.step, t.raw_max * t.step
    reach = np.abs(v) + e
    if float(np.max(v + e)) > hi or float(np.min(v - e)) < lo:
        how = "wraps" if t.saturation == "AP_WRAP" else "saturates"
        raise Overflow(f"its {what} reaches {float(np.max(reach)):.4g}, beyond {t} (range [{lo:g}, {hi:g}]): "
                       f"hls4ml {how} it; give more integer bits")


def _variant(layer, kernel: Callable[[np.ndarray], np.ndarray], in_shape):
    """The layer with every kernel replaced by kernel(kernel), no bias, linear activation: a function of
    batches."""
    cfg = dict(layer.get_config())
    cfg["name"] = f"{layer.name}_bound"
    if "activation" in cfg:
        cfg["activation"] = "linear"
    if "use_bias" in cfg:
        cfg["use_bias"] = False
    clone = type(layer).from_config(cfg)
    clone.build((None,) + tuple(in_shape))
    src = {w.path.split("/")[-1]: np.asarray(w) for w in layer.weights}
    clone.set_weights([kernel(src[w.path.split("/")[-1]]) for w in clone.weights])
    return lambda a: _call(clone, a)


def _activation_name(layer) -> Optional[str]:
    a = getattr(layer, "activation", None)
    return None if a is None else getattr(a, "__name__", str(a))


# --- rules: one per Keras layer kind -------------------------------------------------------------------------
def _weighted(c: _Ctx) -> List[Step]:
    """Dense, Conv, DepthwiseConv: |x| * step(weight_t) per product, one step of accum_t per product and
    for the bias, step(bias_t), one step of result_t; then its activation, as an activation layer reading
    hls4ml's pre-activation result."""
    layer, x = c.layer, c.x
    h = next((h for h in c.hls if h.name == layer.name), None)
    if h is None:
        raise Unbounded("hls4ml's conversion has no layer of that name")
    for key in ("weight_t", "accum_t", "result_t"):
        if key not in h.types:
            raise Unbounded(f"hls4ml gave it no readable {key}")
    shape = x.shape[1:]
    weight_error = _variant(layer, lambda k: np.full_like(k, h.step("weight_t")), shape)(np.abs(x))
    terms = _variant(layer, np.ones_like, shape)(np.ones((1,) + shape))
    e = weight_error + (terms + 1) * h.step("accum_t") + h.step("bias_t") + h.step("result_t")
    cfg = dict(layer.get_config(), name=f"{layer.name}_pre")
    if "activation" in cfg:
        cfg["activation"] = "linear"
    pre_layer = type(layer).from_config(cfg)
    pre_layer.build((None,) + shape)
    pre_layer.set_weights(layer.get_weights())
    v = _call(pre_layer, x)
    _check_range("sum", h.types.get("accum_t"), v, e)
    _check_range("result", h.types.get("result_t"), v, e)
    steps = [Step(h.name, v, e)]
    act = _activation_name(layer)
    if act not in (None, "linear"):
        hact = next((hl for hl in c.hls if hl.name != layer.name), None)
        if hact is None:
            raise Unbounded(f"hls4ml's conversion has no layer for its activation {act!r}")
        a = c.traced(h.name)
        steps.append(_activate(act, {}, hact, v if a is None else a))
    return steps


# hls4ml's element-wise activations: tables of `table_size` entries over [-r, r), holding f at each bin's
# lower edge; f's slope is at most `slope`, and outside the range f differs from f(+-r) by at most `tail`
_TABLES = {
    "sigmoid": (0.25, 8.0, 1.0 / (1.0 + math.exp(8.0))),
    "tanh": (1.0, 4.0, 1.0 - math.tanh(4.0)),
}


def _keras_activation(name: str, a: np.ndarray, params: dict) -> np.ndarray:
    import keras

    if name in ("leaky_relu", "leakyrelu"):
        return np.where(a >= 0, a, params.get("alpha", 0.3) * a)
    return np.asarray(keras.activations.get(name)(np.asarray(a, dtype=np.float32)), dtype=np.float64)


def _activate(name: str, params: dict, h: HlsLayer, a: np.ndarray, v: np.ndarray = None) -> Step:
    """The activation `name` computed by the hls4ml layer `h` on its input `a` (Keras's value `v` of it,
    computed here when not given)."""
    v = _keras_activation(name, a, params) if v is None else v
    res = h.step("result_t")
    if name in ("relu", "linear", "relu6"):
        e = res
    elif name in ("leaky_relu", "leakyrelu"):
        e = np.abs(a) * h.step("param_t") + res
    elif name in _TABLES:
        slope, r, tail = _TABLES[name]
        size = int(h.attrs.get("table_size", 1024))
        e = slope * 2 * r / size + h.step("table_t") + res + tail
    elif name == "softmax":
        e = _softmax(h, a, v)
    else:
        raise Unbounded(f"no rule for hls4ml's {name!r} activation")
    _check_range("result", h.types.get("result_t"), v, e)
    return Step(h.name, v, e)


def _softmax(h: HlsLayer, z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """hls4ml's 'stable' softmax over the last axis, in interval arithmetic: d = max - z_i in
    ap_ufixed<W-1,I-1> (the input type without its sign bit), exp(-d) read from a table addressed by d's top
    bits (each entry holds exp at its bin's lower edge, rounded to exp_table_t), the sum cast to inv_inp_t,
    1/sum read from a table addressed the same way, the product cast to result_t."""
    if h.attrs.get("implementation", "stable") != "stable":
        raise Unbounded(f"no rule for hls4ml's {h.attrs.get('implementation')!r} softmax")
    if any(k not in h.types for k in ("input_t", "exp_table_t", "inv_table_t", "result_t")):
        raise Unbounded("hls4ml gave it no readable table types")
    t_in, exp_t, inv_t, res_t = (h.types[k] for k in ("input_t", "exp_table_t", "inv_table_t", "result_t"))
    inv_in = h.types.get("inv_inp_t", exp_t)
    acc_t = h.types.get("accum_t")
    size = int(h.attrs.get("table_size", 1024))
    n_exp = min(int(h.attrs.get("exp_table_size", size)), 2 ** (t_in.width - 1))
    n_inv = int(h.attrs.get("inv_table_size", size))
    d_range = math.ldexp(1.0, t_in.integer - 1)
    bin_e = d_range / n_exp
    bin_inv = (inv_in.raw_max - inv_in.raw_min + 1) * inv_in.step / n_inv
    d = np.max(z, axis=-1, keepdims=True) - z
    # d is cast to ap_ufixed<W-1,I-1>, which wraps: a d past its range reads the table at d mod range. That
    # is harmless (within a step of the table) where exp there is below one step of exp_table_t anyway
    wrapped = d >= d_range
    d = np.where(wrapped, np.mod(d, d_range), d)
    harmful = wrapped & (np.exp(-np.maximum(d - bin_e, 0.0)) > exp_t.step)
    if np.any(harmful):
        raise Overflow(f"max(x) - x reaches {float(np.max(np.max(z, axis=-1, keepdims=True) - z)):.4g}, beyond the range "
                       f"[0, {d_range:g}) of the softmax's table address: hls4ml wraps it to a large exponential")
    e_lo = np.exp(-d) - exp_t.step
    e_hi = np.minimum(np.exp(-np.maximum(d - bin_e, 0.0)), 1.0) + exp_t.step
    if acc_t is not None:
        e_lo, e_hi = e_lo - acc_t.step, e_hi + acc_t.step
    s_lo = np.sum(e_lo, axis=-1, keepdims=True) - inv_in.step
    s_hi = np.sum(e_hi, axis=-1, keepdims=True) + inv_in.step
    if float(np.min(s_lo)) - bin_inv <= 0:
        raise Unbounded("the sum of its exponentials may fall in the inverse table's first bin (1/0)")
    top = inv_t.raw_max * inv_t.step
    i_lo = np.minimum(1.0 / s_hi, top) - inv_t.step
    i_hi = np.minimum(1.0 / (s_lo - bin_inv), top) + inv_t.step
    y_lo = np.maximum(e_lo, 0.0) * np.maximum(i_lo, 0.0) - res_t.step
    y_hi = e_hi * i_hi + res_t.step
    return np.maximum(y_hi - y, y - y_lo)


def _activation_layer(c: _Ctx) -> List[Step]:
    """Activation, ReLU, LeakyReLU, PReLU and Softmax layers (softmax on the last axis)."""
    layer, x = c.layer, c.x
    kind = type(layer).__name__
    v = _call(layer, x)
    if not c.hls and kind == "Activation" and _activation_name(layer) == "linear":
        return [Step("", v, 0.0)]  # hls4ml drops a linear activation: nothing is computed
    h = c.last()
    if kind == "PReLU":
        e = np.abs(x) * h.step("param_t") + h.step("result_t")
        _check_range("result", h.types.get("result_t"), v, e)
        return [Step(h.name, v, e)]
    if kind == "ReLU":
        cfg = layer.get_config()
        e = np.abs(x) * h.step("param_t") * bool(cfg.get("negative_slope")) + h.step("result_t")
        _check_range("result", h.types.get("result_t"), v, e)
        return [Step(h.name, v, e)]
    if kind == "LeakyReLU":
        return [_activate("leaky_relu", {"alpha": layer.get_config().get("negative_slope", 0.3)}, h, x, v)]
    if kind == "Softmax":
        if int(layer.get_config().get("axis", -1)) not in (-1, x.ndim - 1):
            raise Unbounded("no rule for a softmax over another axis than the last")
        return [_activate("softmax", {}, h, x, v)]
    return [_activate(_activation_name(layer) or "", {}, h, x, v)]


def _moves(c: _Ctx) -> List[Step]:
    """Layers that only move, copy or pick values (Flatten, Reshape, padding, cropping, max pooling,
    concatenation): exact, or one step of result_t where hls4ml casts them."""
    v = _call(c.layer, c.inputs if len(c.inputs) > 1 else c.x)
    if not c.hls:
        return [Step("", v, 0.0)]
    h = c.last()
    e = h.step("result_t")
    _check_range("result", h.types.get("result_t"), v, e)
    return [Step(h.name, v, e)]


def _average(c: _Ctx) -> List[Step]:
    """Average pooling and Average: one step of accum_t per term summed, and one of result_t."""
    v = _call(c.layer, c.inputs if len(c.inputs) > 1 else c.x)
    h = c.last()
    cfg = c.layer.get_config()
    terms = int(np.prod(cfg.get("pool_size") or [len(c.inputs)]))
    e = (terms + 1) * h.step("accum_t") + h.step("result_t")
    _check_range("result", h.types.get("result_t"), v, e)
    return [Step(h.name, v, e)]


def _merge(c: _Ctx) -> List[Step]:
    """Add, Subtract, Multiply of values on hls4ml's grids: one cast to result_t."""
    v = _call(c.layer, c.inputs)
    h = c.last()
    e = h.step("result_t")
    _check_range("result", h.types.get("result_t"), v, e)
    return [Step(h.name, v, e)]


def _embedding(c: _Ctx) -> List[Step]:
    """Embedding: the row of each index, quantised to the embeddings' type, cast to result_t."""
    v = _call(c.layer, c.x)
    h = c.last()
    table = max((t.step for k, t in h.types.items() if k not in ("result_t", "index_t", "input_t")), default=0.0)
    e = table + h.step("result_t")
    _check_range("result", h.types.get("result_t"), v, e)
    return [Step(h.name, v, e)]


WEIGHTED = ("Dense", "Conv1D", "Conv2D", "DepthwiseConv1D", "DepthwiseConv2D")
MOVES = ("Flatten", "Reshape", "Permute", "ZeroPadding1D", "ZeroPadding2D", "Cropping1D", "Cropping2D",
         "MaxPooling1D", "MaxPooling2D", "GlobalMaxPooling1D", "GlobalMaxPooling2D", "UpSampling1D",
         "UpSampling2D", "Concatenate", "Dropout", "RepeatVector", "Identity")
RULES: Dict[str, Callable[[_Ctx], List[Step]]] = {
    **{k: _weighted for k in WEIGHTED},
    **{k: _activation_layer for k in ("Activation", "ReLU", "LeakyReLU", "PReLU", "Softmax")},
    **{k: _moves for k in MOVES},
    **{k: _average for k in ("AveragePooling1D", "AveragePooling2D", "GlobalAveragePooling1D",
                             "GlobalAveragePooling2D", "Average")},
    **{k: _merge for k in ("Add", "Subtract", "Multiply")},
    "Embedding": _embedding,
}


# --- walking a model ------------------------------------------------------------------------------------------
def tensor_key(t) -> Tuple[str, int]:
    """A Keras tensor as (the layer that makes it, which of its outputs): the same for the tensor a layer
    reads and the one its producer returns, also in a Sequential model (whose layers keep tensors of their
    own graph)."""
    h = t._keras_history
    return h.operation.name, int(h.tensor_index)


def inputs_of(layer) -> List[Tuple[str, int]]:
    """tensor_key of every input of `layer`; ValueError for a layer called more than once (shared)."""
    t = layer.input
    return [tensor_key(i) for i in (t if isinstance(t, (list, tuple)) else [t])]


@dataclass
class LayerCheck:
    """One hls4ml layer against Keras computing its Keras layer on hls4ml's own input: the largest
    |hls4ml - Keras| (`error`), the largest bound of an element (`bound`), and whether some element is
    beyond its bound (`departs`)."""

    layer: str
    kind: str
    hls_layer: str
    error: float
    bound: float
    departs: bool


@dataclass
class ModelCheck:
    """Every checked layer of a model in order; the first that departs, the first that overflows
    ((layer, why)), and the layers left unchecked ((layer, why))."""

    checks: List[LayerCheck] = field(default_factory=list)
    overflow: Optional[Tuple[str, str]] = None
    unchecked: List[Tuple[str, str]] = field(default_factory=list)
    kinds: Dict[str, str] = field(default_factory=dict)

    @property
    def departure(self) -> Optional[LayerCheck]:
        """The first layer beyond its quantisation bound, None when none is."""
        return next((c for c in self.checks if c.departs), None)

    @property
    def within(self) -> Optional[bool]:
        """False when a layer departs; True when every layer was checked and none departs or overflows;
        None when an overflow or an unchecked layer leaves it open."""
        if self.departure is not None:
            return False
        return None if self.overflow or self.unchecked else True


def check_model(model, x: np.ndarray, hls_layers: Sequence[HlsLayer], trace: Dict[str, np.ndarray]) -> ModelCheck:
    """Check every layer of the Keras `model` against hls4ml's traced outputs (`trace`: hls4ml layer name ->
    (n, size), from the same n frames) on hls4ml's own inputs: `x` is what hls4ml's input layer holds (the
    frames cast to its type; for a model with several inputs, their flat concatenation: `split_inputs`)."""
    out = ModelCheck()
    by_owner: Dict[str, List[HlsLayer]] = {}
    for h in hls_layers:
        if h.owner:
            by_owner.setdefault(h.owner, []).append(h)
    n = len(x)

    def traced(name: str, shape) -> Optional[np.ndarray]:
        t = trace.get(name)
        if t is None or t.shape != (n, int(np.prod(shape))):
            return None
        return t.reshape((n,) + tuple(shape))

    vals: Dict[Tuple[str, int], Optional[np.ndarray]] = dict(zip(map(tensor_key, model.inputs), split_inputs(model, x)))
    for layer in model.layers:
        kind = type(layer).__name__
        if kind == "InputLayer":
            continue
        out.kinds[layer.name] = kind
        shape = tuple(int(d) for d in layer.output.shape[1:])
        hs = by_owner.get(layer.name, [])
        mine = traced(hs[-1].name, shape) if hs else None
        try:
            ins = [vals.get(k) for k in inputs_of(layer)]
        except (AttributeError, ValueError):
            ins = [None]
        if any(i is None for i in ins):
            out.unchecked.append((layer.name, "hls4ml's value of its input is not known (not traced)"))
            vals[(layer.name, 0)] = mine
            continue
        rule = RULES.get(kind)
        try:
            if rule is None:
                raise Unbounded(f"no rule for {kind} layers")
            steps = rule(_Ctx(layer, ins, hs, lambda name: traced(name, shape)))
        except Overflow as o:
            if out.overflow is None:
                out.overflow = (layer.name, str(o))
            vals[(layer.name, 0)] = mine
            continue
        except Unbounded as u:
            out.unchecked.append((layer.name, str(u)))
            vals[(layer.name, 0)] = mine
            continue
        for s in steps:
            got = traced(s.hls, s.v.shape[1:]) if s.hls else None
            if got is None:
                continue
            err = np.abs(got - s.v)
            bound = np.broadcast_to(s.e, s.v.shape)
            departs = bool(np.any(err > bound + SLACK * np.abs(s.v) + 1e-9))
            out.checks.append(LayerCheck(layer.name, kind, s.hls, float(np.max(err)), float(np.max(bound)), departs))
        # what the next layers read: hls4ml's own value; a layer that only moves values: Keras's, the same
        vals[(layer.name, 0)] = mine if mine is not None else (steps[-1].v if rule in (_moves,) else None)
    return out


def split_inputs(model, x: np.ndarray) -> List[np.ndarray]:
    """The batch `x` as the Keras `model`'s inputs: itself for one input; for several (a partition cut out of
    a graph), its flat concatenation (n, total) cut into each input's (n, *shape), in model.inputs order."""
    x = np.asarray(x, np.float64)
    if len(model.inputs) == 1:
        return [x]
    flat, out, edge = x.reshape(len(x), -1), [], 0
    for t in model.inputs:
        shape = tuple(int(d) for d in t.shape[1:])
        size = int(np.prod(shape))
        out.append(flat[:, edge:edge + size].reshape((len(x),) + shape))
        edge += size
    return out


def input_values(t: FixedType, x: np.ndarray) -> np.ndarray:
    """The frames as hls4ml's input layer holds them: cast to its type `t`."""
    return t.from_raw(t.to_raw(np.asarray(x, dtype=np.float64)))
