"""A partition's fixed-point computation as a list of plain ops, read from the hls4ml model graph.

hls4ml decides the types (result, accumulator, weight, bias of every layer) and quantises the weights; we take
both from its converted graph, so that the reference model and the generated RTL compute what the hls4ml
emulation computes. Weights are taken as the exact decimal strings hls4ml writes into the firmware headers
(then assigned to the weight type, as the C++ does), not from the float array: the two can differ by one LSB.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from splitting.contract import FixedType
from splitting.errors import UserError

from .fixed import fixed_type, from_float


class UnsupportedLayer(UserError):
    """A layer the cosimulation has no reference / RTL for."""


@dataclass
class Op:
    """One hls4ml layer as the bit-exact reference and the RTL generator see it: kind, output shape and
    fixed-point type, parameters, and weights and biases as raw integers of their types."""

    kind: str                      # input, pad, dense, conv2d, relu, linear, maxpool, reshape, softmax
                                   # (and sigmoid, tanh: table lookups, for the fast model only)
    name: str
    out_shape: Tuple[int, ...]
    out: FixedType                 # result type
    params: Dict[str, Any] = field(default_factory=dict)
    weight: Optional[np.ndarray] = None   # raw integers (weight type)
    bias: Optional[np.ndarray] = None     # raw integers (bias type)
    wtype: Optional[FixedType] = None
    btype: Optional[FixedType] = None
    accum: Optional[FixedType] = None

    def describe(self) -> str:
        """One line: kind, name, output shape and type (and accumulator type)."""
        extra = f" accum {self.accum}" if self.accum else ""
        return f"{self.kind:8s} {self.name:20s} -> {self.out_shape} {self.out}{extra}"


def _weights(var, t: FixedType) -> np.ndarray:
    """hls4ml's weight text (what the C++ compiles), parsed and assigned to type t."""
    text = [float(s) for s in var]
    return from_float(np.asarray(text, dtype=np.float64).reshape(var.data.shape), t)


def _shape(layer) -> Tuple[int, ...]:
    return tuple(int(d) for d in layer.get_output_variable().shape)


def _softmax_op(layer, name, shape, out, params, types) -> Op:
    """The types hls4ml's softmax config template derives (vivado core_templates.SoftmaxConfigTemplate)."""
    import math

    accum, inv_inp = types["accum_t"], types["inv_inp_t"]
    if layer.types["accum_t"].name == "model_default_t":  # then the template widens exp_table_t instead
        e = types["exp_table_t"]
        scale = math.ceil(math.log2(int(layer.get_attr("n_in"))))
        accum = FixedType(e.width + scale, e.integer + scale, e.signed)
    if layer.types["inv_inp_t"].name == "model_default_t":
        inv_inp = types["exp_table_t"]
    in_t = fixed_type(layer.get_input_variable().type.precision)
    w, iw = in_t.width - in_t.signed, in_t.integer - in_t.signed
    if in_t.signed:
        params["exp_table_size"] = min(params["inv_table_size"], 2 ** w)
    params["inp_norm"] = FixedType(w, iw, False)
    params["types"] = {"exp_table_t": types["exp_table_t"], "inv_table_t": types["inv_table_t"], "inv_inp_t": inv_inp}
    return Op("softmax", name, shape, out, params=params, accum=accum)


# axes that undo ApplyResourceStrategy's transpose (hls4ml backends/vivado/passes/resource_strategy.py)
_UNTRANSPOSE = {"Dense": (1, 0), "Conv2D": (1, 2, 3, 0)}

TABLE_ACTIVATIONS = ("sigmoid", "tanh")  # lookup tables of nnet_activation(_stream).h


def ops_from_graph(hm, tables: bool = False) -> List[Op]:
    """The op list of a converted hls4ml ModelGraph (io_stream, Vivado-family backend). `tables`: also read
    sigmoid and tanh activations (their table size and table_t), which the fast model computes and the RTL
    cosimulation does not; without it they raise UnsupportedLayer."""
    ops: List[Op] = []
    for layer in hm.get_layers():
        cls = layer.class_name
        types = {k: fixed_type(v.precision) for k, v in layer.types.items() if k in
                 ("result_t", "accum_t", "weight_t", "bias_t", "exp_table_t", "inv_table_t", "inv_inp_t", "table_t")}
        out, shape, name = types["result_t"], _shape(layer), layer.name
        if cls == "Input":
            ops.append(Op("input", name, shape, out))
        elif cls == "Concatenate" and _concat_of_inputs(layer, ops):
            # a partition with several inputs arrives as their flat concatenation on one stream (the plan's
            # contract); a 1-D concatenation of exactly those inputs, in their order, is that stream itself
            total = sum(int(np.prod(o.out_shape)) for o in ops)
            ops[:] = [Op("input", name, (total,), out)]
        elif cls == "ZeroPadding2D":
            ops.append(Op("pad", name, shape, out, params={k: int(layer.get_attr(k)) for k in
                                                          ("pad_top", "pad_bottom", "pad_left", "pad_right")}))
        elif cls in ("Dense", "Conv2D"):
            wt, bt = types["weight_t"], types["bias_t"]
            w = _weights(layer.weights["weight"], wt)
            if layer.get_attr("_weights_transposed", False):
                # the Resource strategy's optimizer pass (vivado ApplyResourceStrategy) stores the weights
                # transposed for dense_resource: Dense (n_out, n_in), Conv2D (F, H, W, C); the product is the same
                w = np.transpose(w, _UNTRANSPOSE[cls])
            b = _weights(layer.weights["bias"], bt) if "bias" in layer.weights else np.zeros(shape[-1], np.int64)
            params = {}
            if str(layer.get_attr("strategy", "latency")).lower() in ("resource", "resource_unrolled"):
                # dense_resource adds the products in its reuse-factor order, dense_latency in input order:
                # the same sum when accum_t wraps (modulo 2^width), not when it saturates
                params["resource_reuse"] = int(layer.get_attr("reuse_factor", 1))
            if cls == "Conv2D":
                params.update({k: int(layer.get_attr(k)) for k in ("filt_height", "filt_width", "stride_height", "stride_width",
                                                                 "pad_top", "pad_bottom", "pad_left", "pad_right")})
                if w.ndim != 4:
                    raise UnsupportedLayer(f"{name}: Conv2D weights of shape {w.shape}, expected (kh, kw, cin, cout)")
            ops.append(Op("dense" if cls == "Dense" else "conv2d", name, shape, out, params=params, weight=w, bias=b,
                          wtype=wt, btype=bt, accum=types["accum_t"]))
        elif cls in ("Activation", "ReLU"):
            act = (layer.get_attr("activation") or "relu").lower()
            if tables and act in TABLE_ACTIVATIONS and "table_t" in types:
                ops.append(Op(act, name, shape, out, params={"table_size": int(layer.get_attr("table_size", 1024)),
                                                             "types": {"table_t": types["table_t"]}}))
                continue
            if act not in ("relu", "linear"):
                raise UnsupportedLayer(f"{name}: activation {act!r} has no cosimulation model (relu and linear do)")
            ops.append(Op(act, name, shape, out))
        elif cls == "Pooling2D":
            if str(layer.get_attr("pool_op")).lower() != "max":
                raise UnsupportedLayer(f"{name}: {layer.get_attr('pool_op')} pooling has no cosimulation model (max does)")
            ops.append(Op("maxpool", name, shape, out, params={k: int(layer.get_attr(k)) for k in (
                "pool_height", "pool_width", "stride_height", "stride_width", "pad_top", "pad_bottom", "pad_left",
                "pad_right")}))
        elif cls in ("Reshape", "Repack"):  # io_stream repacking only regroups the stream: the values stay
            ops.append(Op("reshape", name, shape, out))
        elif cls == "Softmax":
            impl = str(layer.get_attr("implementation", "stable")).lower()
            if impl != "stable":
                raise UnsupportedLayer(f"{name}: softmax implementation {impl!r} has no model (stable does)")
            params = {"exp_table_size": int(layer.get_attr("exp_table_size", layer.get_attr("table_size", 1024))),
                      "inv_table_size": int(layer.get_attr("inv_table_size", layer.get_attr("table_size", 1024))),
                      "exp_scale": float(layer.get_attr("exp_scale", 1.0))}
            ops.append(_softmax_op(layer, name, shape, out, params, types))
        else:
            raise UnsupportedLayer(
                f"layer {name} ({cls}) has no cosimulation model: supported are Dense, Conv2D, ZeroPadding2D, "
                "ReLU/linear activations, MaxPooling2D, Flatten/Reshape and softmax"
            )
    if not ops or ops[0].kind != "input":
        raise UnsupportedLayer("hls4ml graph does not start with an Input layer")
    return ops


def _concat_of_inputs(layer, ops: List[Op]) -> bool:
    """True when `layer` (hls4ml Concatenate) joins 1-D inputs that are all the model's inputs so far, in
    their order, with their type: then it only passes the partition's one input stream on."""
    inputs = [o for o in ops if o.kind == "input"]
    if len(inputs) < 2 or len(inputs) != len(ops) or any(len(o.out_shape) != 1 for o in inputs):
        return False
    src = _input_layer_names(layer)
    out = fixed_type(layer.get_output_variable().type.precision)
    return src == [o.name for o in inputs] and all(o.out == out for o in inputs)


def _input_layer_names(layer) -> List[str]:
    """Names of the layers whose outputs `layer` reads, in order (hls4ml keeps output variable names)."""
    by_output = {o: n.name for n in layer.model.graph.values() for o in n.outputs}
    return [by_output.get(i, i) for i in layer.inputs]


def partition_ops(plan, name: str, tables: bool = False) -> List[Op]:
    """The op list of one partition of a plan, converted with the plan's own hls4ml settings (`tables`: see
    ops_from_graph)."""
    import tempfile

    from splitting import hls

    p = plan.partition(name)
    with tempfile.TemporaryDirectory(prefix="splitrack-cosim-") as tmp:
        # the model its compiled project was built from (keyed and checked), not the plan folder's file
        _, hm = hls._convert(hls.model_file(plan, name), p.hls, plan.hls_defaults, Path(tmp) / "prj", f"sr_{name}")
        return ops_from_graph(hm, tables)
