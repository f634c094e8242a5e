"""HGQ2 models (package `hgq`: QDense, QConv2D, ... with trained quantisers) in a plan.

hls4ml 1.3 converts HGQ2 models through its Keras-3 handlers with bit-exact precision propagation: every
quantiser becomes a FixedPointQuantizer and each layer's result type is inferred from them. Two facts of
hls4ml 1.3 decide how a plan of such a model is made:

- heterogeneous activation quantisers (one type per element, HGQ2's default) convert only with
  io_parallel, and only with the Vivado backend (VivadoAccelerator's mask generation asserts "not tested"):
  HGQ2 plans use backend Vivado, io_parallel (`HLS_DEFAULTS`); the emulation is the same C simulation.
- a partition keeps its quantisers only if what crosses each link is exactly what flows there in the
  whole model: each link's type is the type hls4ml infers for that tensor in the whole model (read from
  one conversion of it), and the receiving partition's input layer is pinned to that type.

Sequential cuts keep every quantised layer whole. Neuron and input splits of quantised layers would need
their quantisers sliced per element (heterogeneous) and re-derived for partial sums: refused in one line.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Dict

from .errors import UserError

HLS_DEFAULTS = {"backend": "Vivado", "io_type": "io_parallel", "part": "xc7z020clg400-1", "clock_period": 10}


def is_hgq(model) -> bool:
    """True when any layer of the Keras model comes from the `hgq` package (an HGQ2-quantised model)."""
    return any(type(l).__module__.split(".")[0] == "hgq" for l in model.layers)


def refuse_splits(model, neurons: Dict[str, int], inputs: Dict[str, int]) -> None:
    """Raise UserError when any neuron or input split is asked for (HGQ2 models are split by cuts only);
    do nothing when `neurons` and `inputs` are empty."""
    for name in list(neurons) + list(inputs):
        kind = "neuron" if name in neurons else "input"
        raise UserError(
            f"cannot {kind}-split {name!r}: the model is quantised with HGQ2, and splitrack splits HGQ2 models "
            f"with sequential cuts only (their quantisers cannot be sliced exactly yet); cut with --at instead"
        )


def _type_text(precision) -> str:
    """'ap_fixed<W,I>' / 'ap_ufixed<W,I>' of an hls4ml FixedPrecisionType."""
    signed = getattr(precision, "signed", True)
    return f"ap_{'' if signed else 'u'}fixed<{int(precision.width)},{int(precision.integer)}>"


def tensor_types(model, precision: str) -> Dict[str, str]:
    """{Keras layer name: type of its output in hls4ml's conversion of the whole model}, plus '' for the
    model input. The output of a Keras layer is that of the last hls4ml layer made from it (hls4ml names
    them `<layer>`, `<layer>_<activation>`; the next layer's input quantiser `<next>_iq` is not its own)."""
    from .hls import _convert_model, owner_of

    cfg = {"Model": {"Precision": {"default": precision}, "ReuseFactor": 1, "Strategy": "Latency"}}
    with tempfile.TemporaryDirectory(prefix="splitrack-hgq-") as tmp:
        hm = _convert_model(model, cfg, HLS_DEFAULTS, Path(tmp) / "p", "sr_types", what="the whole model")
    names = [l.name for l in model.layers if type(l).__name__ != "InputLayer"]
    out: Dict[str, str] = {}
    for hl in hm.get_layers():
        prec = _type_text(hl.get_output_variable().type.precision)
        if hl.class_name == "Input":
            out[""] = prec
            continue
        owner = owner_of(hl.name, names)
        if owner:
            out[owner] = prec  # later hls layers of the same Keras layer overwrite earlier ones
    return out


def apply(plan, model) -> None:
    """Make `plan` (sequential cuts of the HGQ2 `model`) carry the exact types: links, partition input and
    output precisions and the pinned input layer of each partition; Vivado/io_parallel settings."""
    from .plan import HOST

    types = tensor_types(model, plan.model["precision"])
    last = {p.name: p.layers[-1] for p in plan.ordered_partitions()}
    for c in plan.links:
        key = "" if c.src == HOST else last[c.src]
        if key not in types:
            raise UserError(f"hls4ml gave no type for the output of {key or 'the input'!r}: cannot vouch for this cut; "
                            "cut after another layer")
        c.dtype = types[key]
        if c.dst != HOST:
            dst = plan.partitions[c.dst]
            dst.input_precision = types[key]
            dst.hls["LayerName"] = {f"{dst.name}_in": {"Precision": {"result": types[key]}}}
        if c.src != HOST:
            plan.partitions[c.src].output_precision = types[key]
    plan.hls_defaults = dict(HLS_DEFAULTS)
    plan.model["quantised"] = "hgq2"
    plan.notes.append("HGQ2 model: every link carries the type hls4ml infers for that tensor in the whole model, "
                      "so each partition keeps its quantisers bit for bit; hls4ml 1.3 converts HGQ2's heterogeneous "
                      "quantisers only with the Vivado backend and io_parallel, which these partitions use")
