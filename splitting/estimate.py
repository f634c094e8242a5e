"""Resource and latency estimates for candidate partitions: rule4ml 0.2.0 by default, an analytic fallback.

What is estimated is a *segment*: a chain of layers described by `LayerSpec`s (no weights needed), under one
hls4ml configuration (`HlsConfig`: precision, reuse factor, strategy) for one board. The answer
(`Estimate`) is in absolute units (LUT, FF, DSP, BRAM18, clock cycles, initiation interval in cycles) at the
level rule4ml was trained on: Vivado HLS C-synthesis reports, without the AXI shell.

rule4ml adapter (`Rule4ml`)
  rule4ml's own `MultiModelWrapper.predict` wants built Keras models, rebuilds its features with slow
  Python loops, and its GNN normalises every graph of a batch together (`GraphNorm` is called without the
  batch vector), so one candidate's prediction changes with whatever else is in the same call. We call its
  feature functions (`get_global_inputs`, `get_layers_data`, `to_dataframe`) on layer dicts we build from
  `LayerSpec`s exactly as its Keras parser would, and run its trained models over all candidates in one
  forward pass with `GraphNorm` given the batch vector: each candidate is normalised alone, so every figure
  equals what `predict` returns for that model and configuration alone (sim_tests/splitting/test_plan_rule4ml.py
  checks this against `predict` itself), independent of batching, hence cacheable.
  rule4ml's parser cannot read layers without weights under Keras 3 (pooling, the ReLU/Softmax layers).
  ReLU and Softmax layers are the same as Activation("relu"/"softmax"), which it reads, so we describe them
  so. Dropout layers (which it cannot read either) are left out: hls4ml removes them at conversion, they
  are no hardware. Pooling layers are estimated analytically and added to the rule4ml figure of the rest of the segment;
  such a figure says `rule4ml+analytic` in its `estimator`, in every report and plan.

Analytic fallback (`Analytic`), per layer, b = precision bits, r = reuse factor after hls4ml's
closest-valid rule, n_in = fan-in, n_out = units or filters, P = output positions (1 for Dense):
  multipliers m = ceil(n_in * n_out / r); on DSPs when b >= 10 (one DSP48 each), else in LUTs (0.55 b^2 each)
  adders a = ceil(n_out * (n_in - 1) / r), b LUTs each; FF = b * (m + a) pipeline registers
  BRAM18 (Resource strategy, r > 1: weights stored in memories r deep) = ceil(n_in n_out b / r / 36) * ceil(r / 1024)
  cycles = P * r + ceil(log2 n_in) + 2; interval = P * r
  activations: ReLU b/2 LUT per element; sigmoid/tanh a 1024-entry table (1 BRAM18) and 2 cycles;
  softmax two tables, log2(n) + 5 cycles; pooling k x k over a stream: C (k^2 - 1) b LUTs of comparators or
  adders, a (k - 1)-row line buffer (FF, BRAM18 beyond 18 Kb), H W cycles; batch normalisation one
  multiply-add per element; the join of an input split (k partial sums) (k - 1) n b LUTs, ceil(log2 k) + 1 cycles.
  These are rough (a factor of two either way); their job is to keep the planner honest where rule4ml is
  blind, and they are labelled `analytic` wherever they appear.

Cache: `<cache>/estimates/` (splitting.user_cache: $SPLITRACK_CACHE or the user cache folder), one small JSON file per
(layer signature, configuration, board, estimator version), so a second plan of the same model, or of another
model sharing layers, reads its figures back without importing TensorFlow or torch.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import zipfile
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .catalog import Board
from .contract import FixedType
from .errors import UserError
from .user_cache import cache_root as user_cache_root

HLS4ML_VERSION = "1.1.0"  # the newest hls4ml rule4ml 0.2.0 was trained on (1.3.0, ours, raises there)
VIVADO_VERSION = "2019.1"
ADAPTER_REVISION = 1  # bump when the way we build rule4ml's inputs changes: it keys the cache

# Layer types rule4ml 0.2.0's Keras parser reads under Keras 3 and its GNN has a category for.
# sim_tests/splitting/test_plan_rule4ml.py checks each against the parser, and checks that pooling still fails.
RULE4ML_LAYERS = {"Dense", "Conv1D", "Conv2D", "Activation", "Flatten", "BatchNormalization", "Add"}
# Layers hls4ml removes at conversion (no hardware); rule4ml's parser cannot read them under Keras 3 either.
REMOVED_BY_HLS4ML = {"Dropout"}
POOLING = {"MaxPooling1D", "MaxPooling2D", "AveragePooling1D", "AveragePooling2D"}


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
    """One hls4ml configuration of a segment: precision (an ap_fixed type), reuse factor, strategy.

    Raises ContractError on an unreadable precision, UserError on a strategy other than
    Latency/Resource, or a reuse factor below 1."""

    precision: str = "ap_fixed<16,6>"
    reuse_factor: int = 1
    strategy: str = "Latency"

    def __post_init__(self):
        FixedType.parse(self.precision)  # raises a readable error
        if self.strategy not in ("Latency", "Resource"):
            raise UserError(f"strategy {self.strategy!r}: use Latency or Resource")
        if self.reuse_factor < 1:
            raise UserError(f"reuse factor {self.reuse_factor}: must be >= 1")

    @property
    def bits(self) -> int:
        """Total width of `precision` in bits (W of ap_fixed<W,I>)."""
        return FixedType.parse(self.precision).width


@dataclass
class Estimate:
    """Resources and latency of one segment: lut, ff, dsp, bram (BRAM18 blocks), cycles (latency in clock
    cycles), interval (initiation interval in cycles); `estimator` names what produced them
    (rule4ml, analytic, or rule4ml+analytic). `+` adds resources and cycles and takes the larger interval."""

    lut: float
    ff: float
    dsp: float
    bram: float
    cycles: float
    interval: float
    estimator: str
    note: str = ""  # set by the planner when a figure was raised to that of a run it contains

    def utilization(self, board: Board) -> Dict[str, float]:
        """Fraction of the board's capacity used, per resource: {'lut', 'ff', 'dsp', 'bram'} -> float
        (1.0 = full)."""
        return {r: float(getattr(self, r)) / board.capacity(r) for r in ("lut", "ff", "dsp", "bram")}

    def peak(self, board: Board) -> float:
        """The largest fraction in `utilization(board)` (1.0 = the most used resource is full)."""
        return max(self.utilization(board).values())

    def at_least(self, other: "Estimate", why: str) -> "Estimate":
        """Each figure raised to `other`'s where that is larger (a design holding `other`'s layers cannot
        need less); `note` says so when anything was raised."""
        figs = ("lut", "ff", "dsp", "bram", "cycles", "interval")
        if all(getattr(self, f) >= getattr(other, f) for f in figs):
            return self
        note = why if not self.note or self.note == why else f"{self.note}; {why}"
        return replace(self, **{f: max(getattr(self, f), getattr(other, f)) for f in figs}, note=note)

    def __add__(self, other: "Estimate") -> "Estimate":
        names = sorted(set(self.estimator.split("+")) | set(other.estimator.split("+")), key=_estimator_order)
        return Estimate(
            self.lut + other.lut, self.ff + other.ff, self.dsp + other.dsp, self.bram + other.bram,
            self.cycles + other.cycles, max(self.interval, other.interval), "+".join(names),
        )


def _estimator_order(name: str) -> int:
    return 0 if name.startswith("rule4ml") else 1


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
    raise UserError(
        f"layer {name} ({kind}) is not supported by the planner: it reads Dense, Conv1D/2D, pooling, Flatten,"
        " Activation/ReLU/Softmax, Dropout and BatchNormalization"
    )


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


# ---------------------------------------------------------------------------------------------------------
# hls4ml's reuse-factor rule (rule4ml applies it to every Dense and Conv layer before predicting)
# ---------------------------------------------------------------------------------------------------------
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
    import bisect

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
    if layer.kind == "Dense":
        return closest_reuse_factor(layer.fan_in, layer.units, rf)
    if layer.kind in ("Conv1D", "Conv2D"):
        return closest_reuse_factor(layer.fan_in, layer.units, rf)
    return rf


# ---------------------------------------------------------------------------------------------------------
# Estimators
# ---------------------------------------------------------------------------------------------------------
Request = Tuple[Tuple[LayerSpec, ...], HlsConfig]


def cache_root() -> Path:
    """The estimate cache folder: `<user cache>/estimates` ($SPLITRACK_CACHE or the user cache folder)."""
    return user_cache_root() / "estimates"


class Estimator:
    """Estimates segments under configurations for one board, through the on-disk cache."""

    name = "estimator"

    def __init__(self, board: Board, cache: Optional[Path] = None, progress=None):
        self.board = board
        self.cache = Path(cache) if cache is not None else cache_root()
        self.progress = progress or (lambda msg: None)
        self.stats = {"requests": 0, "cached": 0, "computed": 0}

    @property
    def version(self) -> str:
        """String naming the estimator and everything that changes its figures; part of the cache key.

        Raises NotImplementedError here; subclasses define it."""
        raise NotImplementedError

    def key(self, layers: Sequence[LayerSpec], cfg: HlsConfig) -> str:
        """Cache key of (layers, cfg) on this board: SHA-256 hex digest (64 characters) of the layer signatures,
        configuration, board name and `version`, as canonical JSON."""
        version = self.__dict__.setdefault("_version", self.version)
        body = json.dumps(
            {"layers": [l.signature() for l in layers], "config": asdict(cfg), "board": self.board.name, "estimator": version},
            sort_keys=True, separators=(",", ":"),
        )
        return hashlib.sha256(body.encode()).hexdigest()

    def estimate_many(self, requests: Sequence[Request]) -> List[Estimate]:
        """One Estimate per (layers, config); cached ones read back, the rest computed in one batch."""
        out: List[Optional[Estimate]] = [None] * len(requests)
        keys = [self.key(l, c) for l, c in requests]
        todo: Dict[str, List[int]] = {}
        for i, k in enumerate(keys):
            f = self.cache / k[:2] / f"{k}.json"
            try:
                out[i] = Estimate(**json.loads(f.read_text()))
            except (OSError, ValueError, TypeError):
                todo.setdefault(k, []).append(i)
        self.stats["requests"] += len(requests)
        self.stats["cached"] += len(requests) - sum(len(v) for v in todo.values())
        if todo:
            firsts = [v[0] for v in todo.values()]
            self.progress(f"estimating {len(firsts)} candidate partitions x configurations with {self.name} ...")
            fresh = self._compute([requests[i] for i in firsts])
            self.stats["computed"] += len(firsts)
            for (k, idx), est in zip(todo.items(), fresh):
                for i in idx:
                    out[i] = est
                self._store(k, est)
        return out  # type: ignore[return-value]

    def estimate(self, layers: Sequence[LayerSpec], cfg: HlsConfig) -> Estimate:
        """The Estimate of one segment (`layers` in order) under `cfg`, through the cache."""
        return self.estimate_many([(tuple(layers), cfg)])[0]

    def _store(self, key: str, est: Estimate) -> None:
        d = self.cache / key[:2]
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / f".{key}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(asdict(est)))
        tmp.replace(d / f"{key}.json")  # atomic: parallel planners never read half a file

    def _compute(self, requests: Sequence[Request]) -> List[Estimate]:
        raise NotImplementedError


class Analytic(Estimator):
    """The documented closed-form estimate (see the module docstring)."""

    name = "analytic"

    @property
    def version(self) -> str:
        """'analytic-1' (bump when the formulas in the module docstring change)."""
        return "analytic-1"

    def _compute(self, requests: Sequence[Request]) -> List[Estimate]:
        return [analytic_segment(layers, cfg) for layers, cfg in requests]


def analytic_layer(l: LayerSpec, cfg: HlsConfig) -> Estimate:
    """Closed-form Estimate of one layer under `cfg` (formulas in the module docstring: our own rough model,
    not taken from a paper; the reuse rule is hls4ml's via `effective_reuse`). Layers with no hardware
    (Flatten, Dropout) give all zeros; a compute layer's non-linear activation is added to it."""
    b = cfg.bits
    lut = ff = dsp = bram = cycles = interval = 0.0
    n = math.prod(l.output_shape)
    if l.is_compute:
        r = effective_reuse(l, cfg.reuse_factor)
        fan, units = l.fan_in, l.units
        positions = math.prod(l.output_shape[:-1]) if l.kind != "Dense" else 1
        m = math.ceil(fan * units / r)
        a = math.ceil(units * max(fan - 1, 0) / r)
        if b >= 10:
            dsp += m
        else:
            lut += 0.55 * b * b * m
        lut += a * b
        ff += b * (m + a)
        if cfg.strategy == "Resource" and r > 1:
            bram += math.ceil(fan * units * b / r / 36) * math.ceil(r / 1024)
        cycles += positions * r + math.ceil(math.log2(max(fan, 2))) + 2
        interval = positions * r
        if l.activation != "linear":
            act = analytic_layer(LayerSpec("Activation", l.name, l.output_shape, l.output_shape, activation=l.activation), cfg)
            return Estimate(lut + act.lut, ff + act.ff, dsp, bram + act.bram, cycles + act.cycles, max(interval, act.interval), "analytic")
    elif l.kind == "Activation":
        if l.activation == "relu":
            lut, cycles = n * b / 2, 1
        elif l.activation in ("sigmoid", "tanh"):
            lut, bram, cycles = n * b / 2, 1, 2
        elif l.activation == "softmax":
            lut, bram, dsp, cycles = n * b * 2, 2, (n if b >= 10 else 0), math.ceil(math.log2(max(n, 2))) + 5
        interval = 1
    elif l.kind in POOLING:
        k = math.prod(l.kernel)
        ch = l.input_shape[-1]
        row = math.prod(l.input_shape[1:-1]) if len(l.input_shape) > 2 else 1
        lut = ch * (k - 1) * b
        buf_bits = row * ch * b * (l.kernel[0] - 1)
        if buf_bits > 18432:
            bram = math.ceil(buf_bits / 18432)
        else:
            ff = buf_bits
        cycles = interval = math.prod(l.input_shape[:-1])
    elif l.kind == "BatchNormalization":
        if b >= 10:
            dsp = n
        else:
            lut = 0.55 * b * b * n
        lut += n * b
        cycles, interval = 3, 1
    elif l.kind == "Add":
        lut = (l.inputs - 1) * n * b
        ff = n * b
        cycles, interval = math.ceil(math.log2(max(l.inputs, 2))) + 1, 1
    return Estimate(lut, ff, dsp, bram, cycles, interval, "analytic")


def analytic_segment(layers: Sequence[LayerSpec], cfg: HlsConfig) -> Estimate:
    """Sum of `analytic_layer` over `layers` (resources and cycles added, interval the largest)."""
    total = Estimate(0, 0, 0, 0, 0, 0, "analytic")
    for l in layers:
        total = total + analytic_layer(l, cfg)
    return total


@lru_cache(maxsize=1)
def _rule4ml_version() -> str:
    return metadata.version("rule4ml")  # reads dist-info from disk: milliseconds, so once per process


class Rule4ml(Estimator):
    """rule4ml 0.2.0's GNN estimators (the package's default models), batched and cached; pooling layers
    added analytically (see the module docstring)."""

    name = "rule4ml"

    def __init__(self, board: Board, cache: Optional[Path] = None, progress=None):
        super().__init__(board, cache, progress)
        if not board.rule4ml:
            raise UserError(f"rule4ml has no model of board {board.name}; use --estimator analytic")
        self._wrapper = None

    @property
    def version(self) -> str:
        """rule4ml's installed version plus the GNN, hls4ml and Vivado versions it predicts for and
        ADAPTER_REVISION; part of the cache key."""
        return f"rule4ml-{_rule4ml_version()}-gnn-v2/hls4ml-{HLS4ML_VERSION}/vivado-{VIVADO_VERSION}/adapter-{ADAPTER_REVISION}"

    # -- rule4ml's view of a segment ----------------------------------------------------------------
    @staticmethod
    def rule4ml_layers(layers: Sequence[LayerSpec], cfg: HlsConfig) -> List[Dict[str, Any]]:
        """The layer dicts rule4ml's `config_from_keras_model` produces for this chain (pooling left out)."""
        out: List[Dict[str, Any]] = []
        for l in layers:
            if l.kind in POOLING or l.kind in REMOVED_BY_HLS4ML:
                continue
            if l.kind not in RULE4ML_LAYERS:
                raise UserError(f"layer {l.name} ({l.kind}) has no rule4ml estimate")
            d: Dict[str, Any] = {
                "class_name": l.kind,
                "name": l.name,
                "input_shape": (None,) + tuple(l.input_shape),
                "output_shape": (None,) + tuple(l.output_shape),
                "parameters": int(l.params),
                "trainable_parameters": int(l.trainable),
                "dtype": "float32",
                "reuse_factor": cfg.reuse_factor,
            }
            if l.kind == "Dense":
                d.update(neurons=l.units, use_bias=l.use_bias)
            elif l.kind in ("Conv1D", "Conv2D"):
                d.update(channels=int(l.input_shape[-1]), filters=l.units, kernel_size=l.kernel, strides=l.strides,
                         padding=l.padding, use_bias=l.use_bias)
            elif l.kind == "Activation":
                d["activation"] = l.activation
            elif l.kind == "Add":
                d["inbound_layers"] = [f"part{i}" for i in range(l.inputs)]
            if l.is_compute:
                d["reuse_factor"] = effective_reuse(l, cfg.reuse_factor)
            out.append(d)
            if l.kind != "Activation" and l.activation != "linear":
                out.append({
                    "class_name": "Activation",
                    "input_shape": d["output_shape"], "output_shape": d["output_shape"],
                    "activation": l.activation, "parameters": 0, "trainable_parameters": 0,
                    "dtype": "float32", "reuse_factor": cfg.reuse_factor,
                })
        return out

    def hls_config(self, cfg: HlsConfig) -> Dict[str, Any]:
        """The hls4ml configuration dict rule4ml's `get_global_inputs` reads: board name and model-level strategy,
        precision and reuse factor."""
        return {"board": self.board.name, "model": {"strategy": cfg.strategy, "precision": cfg.precision, "reuse_factor": cfg.reuse_factor}}

    # -- batched prediction ---------------------------------------------------------------------------
    def _load(self):
        if self._wrapper is None:
            self.progress("loading rule4ml (torch, torch_geometric, then TensorFlow) ...")
            # Order matters: with a CUDA torch, TensorFlow imported before torch_geometric segfaulted.
            import torch
            import torch_geometric  # noqa: F401

            torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
            from rule4ml.models.wrappers import MultiModelWrapper

            w = MultiModelWrapper()
            w.load_default_models()
            self._wrapper = w
        return self._wrapper

    def _compute(self, requests: Sequence[Request]) -> List[Estimate]:
        core_idx = [i for i, (layers, _) in enumerate(requests)
                    if any(l.kind not in POOLING and l.kind not in REMOVED_BY_HLS4ML for l in layers)]
        preds = self.predict_rows([(self.rule4ml_layers(requests[i][0], requests[i][1]), requests[i][1]) for i in core_idx])
        out: List[Estimate] = []
        by_req = dict(zip(core_idx, preds))
        for i, (layers, cfg) in enumerate(requests):
            pooled = [l for l in layers if l.kind in POOLING]
            est = by_req.get(i)
            if est is None:
                est = Estimate(0, 0, 0, 0, 0, 0, "analytic")
            for l in pooled:
                est = est + analytic_layer(l, cfg)
            out.append(est)
        return out

    def predict_rows(self, rows: Sequence[Tuple[List[Dict[str, Any]], HlsConfig]], chunk: int = 512) -> List[Estimate]:
        """rule4ml's six estimators on (rule4ml layer dicts, config) rows; each row as if predicted alone."""
        if not rows:
            return []
        w = self._load()
        from rule4ml.parsers.data_parser import get_global_inputs, get_layers_data, to_dataframe

        results: List[Estimate] = []
        for start in range(0, len(rows), chunk):
            part = rows[start : start + chunk]
            glob = [get_global_inputs(r, self.hls_config(c), hls4ml_version=HLS4ML_VERSION, vivado_version=VIVADO_VERSION) for r, c in part]
            seq = [get_layers_data(r) for r, _ in part]
            cols: Dict[str, List[float]] = {}
            built: Dict[str, tuple] = {}  # the six estimators share their input features: build them once
            for key, wrapper in w._models.items():
                spec = json.dumps([wrapper.global_numerical_labels, wrapper.sequential_numerical_labels,
                                   wrapper.global_categorical_maps, wrapper.sequential_categorical_maps],
                                  sort_keys=True, default=list)  # build_inputs leaves pandas arrays there
                if spec not in built:
                    df = to_dataframe(
                        meta_data=[], global_inputs=[dict(g) for g in glob], sequential_inputs=[list(s) for s in seq],
                        global_categorical_maps=wrapper.global_categorical_maps,
                        sequential_categorical_maps=wrapper.sequential_categorical_maps, targets=[],
                    )
                    built[spec] = _inputs(wrapper, df)
                pred = _forward(wrapper, *built[spec])
                for j, label in enumerate(key.split("-")):
                    cols[label.lower()] = [float(p[j]) for p in pred]
            for i in range(len(part)):
                results.append(Estimate(
                    cols["lut"][i], cols["ff"][i], cols["dsp"][i], cols["bram"][i],
                    cols["cycles"][i], cols["interval"][i], "rule4ml",
                ))
        return results


def _inputs(wrapper, inputs_df):
    """The input tensors `BaseModelWrapper.predict_from_df` builds, the GNN's batch vector, and the rows
    its scaler reads."""
    import torch

    feature_labels = list(wrapper.global_numerical_labels) + list(wrapper.global_categorical_maps.keys())
    if len(wrapper.sequential_numerical_labels) > 0:
        seq_labels = list(wrapper.sequential_numerical_labels) + list(wrapper.sequential_categorical_maps.keys())
        inputs_df.loc[:, "sequential_inputs"] = inputs_df["sequential_inputs"].apply(lambda x: x[seq_labels])
        feature_labels += ["sequential_inputs"]
    inputs_df = inputs_df[feature_labels]
    inputs = wrapper.build_inputs(inputs_df)
    tensors = dict(zip(inputs.keys(), wrapper._process_input_dict(inputs)))
    seq = tensors[wrapper.model.sequential_input_keys["numerical"]]
    counts = (~(seq == 0.0).all(dim=-1)).sum(dim=1)
    # the batch vector TorchGNN.forward builds (graphs with no node are skipped there, and here)
    batch = torch.cat([torch.full((int(n),), i, dtype=torch.long) for i, n in enumerate(counts.tolist()) if n > 0])
    return tensors, batch, inputs_df.to_dict("records")


def _forward(wrapper, tensors, batch, records):
    """TorchGNN.forward with each graph normalised alone (GraphNorm given the batch vector), then the
    wrapper's scaler, as `predict_from_df` applies it."""
    import numpy as np
    import torch

    model = wrapper.model
    model.eval()
    originals = [norm.forward for norm in model.norms]
    try:
        for norm, orig in zip(model.norms, originals):
            norm.forward = (lambda o: (lambda x, *a, **k: o(x, batch)))(orig)
        with torch.no_grad():
            pred = model(tensors).detach().cpu().numpy()
    finally:
        for norm, orig in zip(model.norms, originals):
            norm.forward = orig
    if wrapper.scaler:
        pred = np.asarray([
            list(wrapper.scaler.inverse(dict(zip(wrapper.output_labels, row)), records[i]).values())
            for i, row in enumerate(pred)
        ])
    return pred


ESTIMATORS = {"rule4ml": Rule4ml, "analytic": Analytic}


def make(name: str, board: Board, cache: Optional[Path] = None, progress=None) -> Estimator:
    """An estimator called `name` ('rule4ml' or 'analytic') for `board`, caching under `cache`
    (default `cache_root()`); `progress` gets status lines.

    Raises UserError for another name, or (Rule4ml) for a board rule4ml has no model of."""
    try:
        cls = ESTIMATORS[name]
    except KeyError:
        raise UserError(f"unknown estimator {name!r}: choose {' or '.join(ESTIMATORS)}") from None
    return cls(board, cache, progress)
