"""Cutting a Keras model into a Plan: sequential cuts, neuron splits and input splits.

Sequential cut after layer L: L's output crosses the link.
Cuts follow a topological order of the layer graph: a cut after L may fall inside branches, and every tensor
that crosses it gets its own link (a tensor read several stages later travels on a link that skips the stages
between). A partition may read several tensors and give several (see plan.Partition).
Neuron split of L (Dense by units, Conv1D/Conv2D by filters) in k parts: every part reads the whole input and
computes a slice of the outputs; the consumer concatenates. Element-wise activations stay in the parts;
others (softmax) move after the join.
Input split of L (Dense by inputs, Conv1D/Conv2D by input channels) in k parts: part j reads a slice of the input
and emits a partial sum (no activation; the bias is folded into part 0). A join partition, which runs on a
board like any other, sums the partial sums (a Dense or kernel-1 convolution whose kernel is k stacked identities:
exact in fixed point, since the products by one are exact and the accumulator type is the layer's own) and
applies the activation.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .contract import Contract, Select
from .graph import (ACTIVATION_LAYERS, LayerGraph, SplitError, activation_name, clone_layer, is_elementwise,
                    submodel, weights_sha256)
from .rebuild import activation_argument, channel_wise, rebuild
from .plan import HOST, Partition, Plan, Stage

SPLITTABLE = ("Dense", "Conv1D", "Conv2D")
DEFAULT_PRECISION = "ap_fixed<16,6>"
HLS_DEFAULTS = {
    "backend": "VivadoAccelerator",
    "board": "pynq-z2",
    "part": "xc7z020clg400-1",
    "io_type": "io_stream",
    "interface": "axi_stream",
    "clock_period": 10,  # the PYNQ-Z2 block design clocks the IP at 100 MHz
}
SOURCE_FILE = "source.keras"
FOLDED_FILE = "source_folded.keras"  # the source with BatchNormalization folded: what the whole-model hls compiles


class PlanModels(dict):
    """Partition name -> Keras sub-model, plus the source model the plan was cut from."""

    source = None
    folded_source = None  # the source with BatchNormalization folded in, when it had any


def hls_config(precision: str, reuse_factor: int, strategy: str, input_layer, input_precision: str) -> dict:
    """hls4ml configuration of one partition, as the plain dict hls4ml takes (granularity 'model', plus the
    input layer's precision pinned to the incoming contract's type so chained emulation is exact).
    `input_layer`: the name of its input layer, or a list of them (a partition with several inputs)."""
    names = [input_layer] if isinstance(input_layer, str) else list(input_layer)
    return {
        "Model": {"Precision": {"default": precision}, "ReuseFactor": int(reuse_factor), "Strategy": strategy,
                  "BramFactor": 1000000000, "TraceOutput": False},
        "LayerName": {n: {"Precision": {"result": input_precision}} for n in names},
    }


@dataclass
class _Producer:
    name: str                  # partition name or HOST
    shape: Tuple[int, ...]     # the shape of the tensor it gives (its output, or one of its outputs)
    lo: int                    # range it covers on the last axis of the logical tensor
    hi: int
    output: int = 0            # which output of a partition with several
    flat: Optional[Tuple[int, int]] = None  # where that output sits in the partition's flat output


@dataclass
class _Builder:
    graph: LayerGraph
    precision: str
    reuse_factor: int
    strategy: str
    stages: List[Stage] = field(default_factory=list)
    partitions: Dict[str, Partition] = field(default_factory=dict)
    links: List[Contract] = field(default_factory=list)
    models: PlanModels = field(default_factory=PlanModels)

    def _link_into(self, producers: List[_Producer], dst: str, need: Optional[Tuple[int, int]], combine: str,
                   dst_input: int = 0):
        pieces = []
        for p in producers:
            if p.flat is not None:  # one output of several: its slice of the flat output, whole
                pieces.append((p, Select(-1, p.flat[0], p.flat[1], flat=True), p.shape))
                continue
            if need is None:
                pieces.append((p, None, p.shape))
                continue
            s, e = max(need[0], p.lo), min(need[1], p.hi)
            if s >= e:
                continue
            sel = None if (s, e) == (p.lo, p.hi) else Select(-1, s - p.lo, e - p.lo)
            pieces.append((p, sel, tuple(p.shape[:-1]) + (e - s,)))
        if combine != "sum":
            combine = "single" if len(pieces) == 1 else "concat"
        # `index` is unique among all the links into `dst` (a board keys the parts of a frame by it); within
        # one input it orders the pieces
        first = sum(1 for c in self.links if c.dst == dst)
        for i, (p, sel, shape) in enumerate(pieces):
            self.links.append(Contract(src=p.name, dst=dst, shape=shape, dtype=self.precision, combine=combine,
                                       axis=-1, index=first + i, count=len(pieces), select=sel, dst_input=dst_input,
                                       src_output=p.output))

    def _add(self, stage: int, name: str, kind: str, layers: List[str], model, split=None) -> Partition:
        ins = [[int(d) for d in t.shape[1:]] for t in model.inputs]
        outs = [[int(d) for d in t.shape[1:]] for t in model.outputs]
        flat = lambda shapes: [int(sum(np.prod(s) for s in shapes))]
        part = Partition(
            name=name, stage=stage, kind=kind, layers=layers,
            input_shape=ins[0] if len(ins) == 1 else flat(ins), output_shape=outs[0] if len(outs) == 1 else flat(outs),
            input_precision=self.precision, output_precision=self.precision,
            hls=hls_config(self.precision, self.reuse_factor, self.strategy,
                           [f"{name}_in{i}" for i in range(len(ins))] if len(ins) > 1 else f"{name}_in",
                           self.precision),
            weights_sha256=weights_sha256(model), split=split,
            input_shapes=ins if len(ins) > 1 else None, output_shapes=outs if len(outs) > 1 else None,
        )
        self.partitions[name] = part
        self.models[name] = model
        return part


def _sizes(n: int, k: int) -> List[Tuple[int, int]]:
    edges = np.cumsum([0] + [len(a) for a in np.array_split(np.arange(n), k)])
    return [(int(edges[i]), int(edges[i + 1])) for i in range(k)]


def _check_split(graph: LayerGraph, name: str, k: int, how: str) -> None:
    layer = graph.layer(name)
    cls = type(layer).__name__
    if cls not in SPLITTABLE:
        raise SplitError(
            f"{how} split supports Dense, Conv1D and Conv2D layers; {name!r} is {cls}: split one of those, or "
            f"cut before or after {name!r} with --at"
        )
    if k < 2:
        raise SplitError(f"{how} split of {name!r} into {k} parts: k must be at least 2")
    if how == "neuron":
        n = layer.get_config()["units"] if cls == "Dense" else layer.get_config()["filters"]
        what = "units" if cls == "Dense" else "filters"
    else:
        n = int(layer.input.shape[-1])
        what = "inputs" if cls == "Dense" else "input channels"
    if k > n:
        raise SplitError(f"cannot {how}-split {name!r} into {k} parts: it has {n} {what}; use k <= {n}")
    if cls in ("Conv1D", "Conv2D") and layer.get_config().get("groups", 1) != 1:
        raise SplitError(f"{name!r} is a grouped convolution: splitting it is not supported")


def _group(graph: LayerGraph, name: str) -> List[str]:
    """A split layer and the stand-alone activation layers that directly follow it."""
    group = [name]
    while True:
        cons = graph.consumers(group[-1])
        if len(cons) != 1 or type(graph.layer(cons[0])).__name__ not in ACTIVATION_LAYERS:
            return group
        group.append(cons[0])


def _apply(inp, layer, weights):
    out = layer(inp)
    if weights:
        layer.set_weights(weights)
    return out


def split_model(model, at: Sequence[str] = (), neurons: Optional[Dict[str, int]] = None,
                inputs: Optional[Dict[str, int]] = None, precision: str = DEFAULT_PRECISION,
                reuse_factor: int = 1, strategy: str = "Latency") -> Tuple[Plan, PlanModels]:
    """Cut `model` into a Plan; see the module docstring for the three kinds of cut."""
    import keras

    from .contract import FixedType

    from .fold import fold_batchnorm

    from .layers import check_model

    FixedType.parse(precision)
    check_model(model)  # the one list of layers split, plan and verify take (splitting/layers.py)
    neurons, inputs = dict(neurons or {}), dict(inputs or {})
    user_at = list(at)
    original = model
    from . import hgq

    quantised = hgq.is_hgq(model)
    if quantised:
        hgq.refuse_splits(model, neurons, inputs)
    model, folded = fold_batchnorm(model)
    for name in list(neurons) + list(inputs):
        if name in folded:
            raise SplitError(f"layer {name!r} is a BatchNormalization, folded into {folded[name]!r}: split {folded[name]!r}")
    at = list(dict.fromkeys(folded.get(n, n) for n in at))  # a cut after a folded BN is a cut after its host
    g = LayerGraph.of(model)
    both = set(neurons) & set(inputs)
    if both:
        raise SplitError(f"layer {sorted(both)[0]!r} is given both a neuron and an input split: choose one")
    for name, k in neurons.items():
        _check_split(g, name, k, "neuron")
    for name, k in inputs.items():
        _check_split(g, name, k, "input")

    cuts = []
    for name in at:
        g.check_cut(name)  # any width: every tensor that crosses gets its own link
        cuts.append(name)
    groups = {}
    for name in list(neurons) + list(inputs):
        grp = _group(g, name)
        groups[name] = grp
        for inner in grp[:-1]:
            if inner in cuts:
                raise SplitError(f"cut after {inner!r} falls inside the split of {name!r}; cut after {grp[-1]!r}")
        i = g.order.index(name)
        if i > 0:
            pred = g.order[i - 1]
            g.check_clean(pred, f"cannot split {name!r}: the model branches around it (split a layer on the main path)")
            cuts.append(pred)
        if grp[-1] != g.order[-1]:
            g.check_cut(grp[-1])
            g.check_clean(grp[-1], f"cannot split {name!r}: the model branches around it (split a layer on the main path)")
            cuts.append(grp[-1])

    segments, cur = [], []
    for n in g.order:
        cur.append(n)
        if n in cuts:
            segments.append(cur)
            cur = []
    if cur:
        segments.append(cur)

    b = _Builder(g, precision, reuse_factor, strategy)
    in_shape = tuple(int(d) for d in model.inputs[0].shape[1:])
    # who gives each tensor the partitions read: a list of pieces (the parts of a neuron split give one
    # tensor together), from the host (the model input) or a partition (its output, or one of its outputs)
    sources: Dict[str, List[_Producer]] = {g.input_name: [_Producer(HOST, in_shape, 0, in_shape[-1])]}
    # activation layers (the originals, or one made from a layer's activation argument) that cannot act on
    # a slice of the channels: moved after a neuron join, rebuilt whole from their config and weights
    prefix: List[object] = []
    last = g.input_name  # the tensor the previous split stage produced (where a prefix applies)

    def layers_stage(names: List[str], pre: List[object]) -> None:
        s = len(b.stages)
        pname = f"s{s}"
        pre_layers = [rebuild(a, f"{pname}_post_{a.name}") for a in pre]
        ins, outs = g.segment_io(names) if names else ([last], [last])
        if names:
            m = submodel(g, names, g.tensor_shape(ins[0]), pname, prefix=pre_layers, inputs=ins, outputs=outs)
        else:
            m = _prefix_model(g.tensor_shape(last), pname, pre_layers)
        for i, t in enumerate(ins):
            b._link_into(sources[t], pname, None, "concat", dst_input=i if len(ins) > 1 else 0)
        b._add(s, pname, "layers", [f"({a.name})" for a in pre] + list(names), m)
        b.stages.append(Stage(s, "layers", [pname]))
        shapes = [tuple(int(d) for d in t.shape[1:]) for t in m.outputs]
        if len(outs) == 1:
            sources[outs[0]] = [_Producer(pname, shapes[0], 0, shapes[0][-1])]
            return
        off = 0
        for j, (t, shp) in enumerate(zip(outs, shapes)):
            n = int(np.prod(shp))
            sources[t] = [_Producer(pname, shp, 0, shp[-1], output=j, flat=(off, off + n))]
            off += n

    for seg in segments:
        head = seg[0]
        if head not in neurons and head not in inputs:
            layers_stage(seg, prefix)
            prefix = []
            continue
        if prefix:  # an activation left over from a neuron join cannot go into split parts
            layers_stage([], prefix)
            prefix = []
        src = g.layer(head)
        cls = type(src).__name__
        t_in = g.inbound[head][0]  # the one tensor a split layer reads (the cut before it is clean)
        producers, shape = sources[t_in], g.tensor_shape(t_in)
        act_arg = src.get_config().get("activation", "linear")  # as Keras serialised it: a name or a layer
        trailing = [g.layer(n) for n in seg[1:]]
        W = src.get_weights()
        kernel, bias = W[0], (W[1] if len(W) > 1 else None)
        out_full = tuple(int(d) for d in src.output.shape[1:])
        rank = len(out_full) + 1
        s = len(b.stages)
        last = seg[-1]
        if head in neurons:
            k = neurons[head]
            own = activation_argument(src)  # a layer object given as activation=, with its settings
            own_ok = channel_wise(own, rank) if own is not None else is_elementwise(activation_name(src))
            if not own_ok:  # e.g. softmax over the split axis: runs after the join, as the same function
                prefix.append(own if own is not None else
                              keras.layers.Activation(act_arg, name=f"{head}_{activation_name(src)}"))
            keep = []  # stand-alone activation layers that act per channel stay in the parts, in order
            for t in trailing:
                if not prefix and channel_wise(t, rank):
                    keep.append(t)
                else:
                    prefix.append(t)
            names, new_producers = [], []
            for j, (lo, hi) in enumerate(_sizes(out_full[-1], k)):
                pname = f"s{s}_{j}"
                inp = keras.Input(shape, name=f"{pname}_in")
                ov = {"units": hi - lo} if cls == "Dense" else {"filters": hi - lo}
                ov["activation"] = act_arg if own_ok else "linear"
                w = [kernel[..., lo:hi]] + ([bias[lo:hi]] if bias is not None else [])
                layer = clone_layer(src, name=f"{src.name}_n{j}", **ov)
                x = _apply(inp, layer, w)
                for t in keep:  # PReLU alphas sliced with the units/filters of this part
                    x = _apply(x, *rebuild(t, f"{t.name}_n{j}", (lo, hi)))
                m = keras.Model(inp, x, name=pname)
                b._link_into(producers, pname, None, "concat")
                b._add(s, pname, "neuron", list(seg), m,
                       split={"layer": head, "kind": "neuron", "part": j, "parts": k, "range": [lo, hi]})
                names.append(pname)
                new_producers.append(_Producer(pname, tuple(int(d) for d in m.outputs[0].shape[1:]), lo, hi))
            b.stages.append(Stage(s, "neuron", names))
            sources[seg[-1]] = new_producers
        else:
            k = inputs[head]
            names, new_producers = [], []
            for j, (lo, hi) in enumerate(_sizes(shape[-1], k)):
                pname = f"s{s}_{j}"
                part_shape = tuple(shape[:-1]) + (hi - lo,)
                inp = keras.Input(part_shape, name=f"{pname}_in")
                w = [kernel[..., lo:hi, :]] + ([bias] if (bias is not None and j == 0) else [])
                layer = clone_layer(src, name=f"{src.name}_i{j}", activation="linear",
                                    use_bias=bias is not None and j == 0)
                m = keras.Model(inp, _apply(inp, layer, w), name=pname)
                b._link_into(producers, pname, (lo, hi), "concat")
                b._add(s, pname, "input", [head], m,
                       split={"layer": head, "kind": "input", "part": j, "parts": k, "range": [lo, hi]})
                names.append(pname)
                new_producers.append(_Producer(pname, out_full, j * out_full[-1], (j + 1) * out_full[-1]))
            b.stages.append(Stage(s, "input", names))
            # the join: sum the k partial sums, then the layer's activation and the activation layers after it
            s += 1
            jname = f"s{s}"
            units = out_full[-1]
            join_shape = tuple(out_full[:-1]) + (k * units,)
            eye = np.concatenate([np.eye(units, dtype=np.float32)] * k, axis=0)
            inp = keras.Input(join_shape, name=f"{jname}_in")
            join = _join_layer(cls, units, len(out_full), act_arg, f"{head}_join")
            wj = [eye.reshape((1,) * (len(out_full) - 1) + eye.shape)]
            x = _apply(inp, join, wj)
            for t in trailing:  # whole, with every setting and weight
                x = _apply(x, *rebuild(t, f"{t.name}_j"))
            m = keras.Model(inp, x, name=jname)
            b._link_into(new_producers, jname, None, "sum")
            b._add(s, jname, "join", list(seg), m, split={"layer": head, "kind": "join", "parts": k})
            b.stages.append(Stage(s, "join", [jname]))
            out_t = tuple(int(d) for d in m.outputs[0].shape[1:])
            sources[seg[-1]] = [_Producer(jname, out_t, 0, out_t[-1])]
    if prefix:
        layers_stage([], prefix)
    b._link_into(sources[g.order[-1]], HOST, None, "concat")

    out_shape = [int(d) for d in model.outputs[0].shape[1:]]
    plan = Plan(
        model={"name": model.name, "input_shape": list(in_shape), "output_shape": out_shape,
               "weights_sha256": weights_sha256(original), "source": SOURCE_FILE, "precision": precision,
               "reuse_factor": int(reuse_factor), "strategy": strategy,
               "split": {"at": user_at, "neurons": neurons, "inputs": inputs}},
        stages=b.stages, partitions=b.partitions, links=b.links, board="pynq-z2", hls_defaults=dict(HLS_DEFAULTS),
    )
    if folded:
        plan.model.update({"batchnorm_folded": dict(folded), "hls_source": FOLDED_FILE,
                           "hls_source_weights_sha256": weights_sha256(model)})
        plan.notes.append("BatchNormalization folded into the layer before it (exact in float): " +
                          ", ".join(f"{bn} into {host}" for bn, host in folded.items()) +
                          f"; the whole-model hls4ml reference is compiled from {FOLDED_FILE}")
    if quantised:  # the exact types of HGQ2's quantisers on every link
        hgq.apply(plan, model)
    plan.check()
    b.models.source = original
    b.models.folded_source = model if folded else None
    return plan, b.models


def _join_layer(cls: str, units: int, out_rank: int, act_arg, name: str):
    """The layer that sums the k partial sums of an input split: a Dense, or a kernel-1 convolution of the
    split layer's own rank, with k stacked identities as its kernel."""
    import keras

    if cls == "Dense":
        return keras.layers.Dense(units, use_bias=False, activation=act_arg, name=name)
    conv = keras.layers.Conv1D if out_rank == 2 else keras.layers.Conv2D
    return conv(units, 1, use_bias=False, activation=act_arg, name=name)


def _prefix_model(shape, name, pre_layers):
    import keras

    inp = keras.Input(tuple(shape), name=f"{name}_in")
    x = inp
    for layer, w in pre_layers:
        x = _apply(x, layer, w)
    return keras.Model(inp, x, name=name)


def write_plan(plan: Plan, models: PlanModels, folder) -> Path:
    """Write plan.json, the source model and every partition's model and hls4ml config."""
    folder = Path(folder)
    path = plan.save(folder)
    for name, m in models.items():
        m.save(folder / plan.partition(name).model_file)
    if models.source is not None:
        models.source.save(folder / SOURCE_FILE)
    if getattr(models, "folded_source", None) is not None:
        models.folded_source.save(folder / FOLDED_FILE)
    return path


def load_models(plan: Plan) -> PlanModels:
    """The Keras models of a saved plan (needs TensorFlow), checked against the plan's weight hashes."""
    import keras

    from .graph import register_layer_packages
    from .plan import PlanError

    def load(f, claimed: str, what: str):
        register_layer_packages(f)  # HGQ2 layers
        try:
            m = keras.models.load_model(f, compile=False)
        except Exception as e:  # Keras raises many kinds for a file that is not a model
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise PlanError(f"{what}: cannot load it as a Keras model ({first[:160]}): write the plan again with "
                            "`splitrack split`") from None
        if claimed and weights_sha256(m) != claimed:
            raise PlanError(f"{what}: weights do not match the plan (hash {weights_sha256(m)} != {claimed}): the "
                            "file was changed after the plan was written; write the plan again with `splitrack split`")
        return m

    out = PlanModels()
    for p in plan.ordered_partitions():  # regular files inside the plan folder only (Plan.file)
        out[p.name] = load(plan.file(p.model_file), p.weights_sha256, str(plan.path(p.model_file)))
    rel = plan.model.get("source", SOURCE_FILE)
    if plan.path(rel).exists() or plan.path(rel).is_symlink():
        out.source = load(plan.file(rel), plan.model.get("weights_sha256", ""), str(plan.path(rel)))
    return out
