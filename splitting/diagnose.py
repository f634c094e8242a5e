"""Where hls4ml's emulation departs from Keras, layer by layer, for the whole model and for the chain.

Every project splitrack compiles keeps hls4ml's TraceOutput (hls.compiled), so each layer's output can be
read back with the emulation's result (`traced_run`: emulation_guard.trace_isolated, in a child process).
`check_plan` checks each layer of the whole model, and of every partition on the input the hls4ml chain
gave it, against Keras computing that layer on hls4ml's own input (`quant_bound.check_model`: within the
layer's quantisation bound, or the first layer beyond it).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional

import numpy as np

from .plan import Plan
from .quant_bound import HlsLayer, ModelCheck, check_model, input_values, split_inputs


@dataclass
class ScopeCheck:
    """The layer checks of one model: 'the whole model' or 'partition s0_1'."""

    scope: str
    check: ModelCheck

    def summary(self) -> Dict:
        """JSON-ready: scope, within (True/False/None), departure (layer, kind, hls layer, error, bound or
        None), overflow ([layer, why] or None), unchecked ([[layer, why], ...]), layers checked."""
        d = self.check.departure
        return {"scope": self.scope, "within": self.check.within, "departure": None if d is None else asdict(d),
                "overflow": list(self.check.overflow) if self.check.overflow else None,
                "unchecked": [list(u) for u in self.check.unchecked], "layers_checked": len(self.check.checks)}


@dataclass
class PlanCheck:
    """The layer checks of a plan's whole model and of each partition of its chain, in order."""

    whole: ScopeCheck
    parts: List[ScopeCheck] = field(default_factory=list)

    @property
    def chain_within(self) -> Optional[bool]:
        """False when a partition departs; True when every partition is within; None otherwise."""
        w = [p.check.within for p in self.parts]
        return False if False in w else (True if all(x is True for x in w) else None)

    def chain_departure(self) -> Optional[ScopeCheck]:
        """The first partition with a layer beyond its bound."""
        return next((p for p in self.parts if p.check.departure is not None), None)


@dataclass
class TracedRun:
    """One model's hls4ml emulation on a batch, traced: its input, outputs (batch first, in the partition's
    output shape), hls4ml layers and their traced outputs ({name: (n, size)})."""

    batch: np.ndarray
    out: np.ndarray
    layers: List[HlsLayer]
    trace: Dict[str, np.ndarray]


def traced_run(plan: Plan, name: Optional[str], batch: np.ndarray) -> TracedRun:
    """Partition `name`'s (None: the whole model's) hls4ml emulation on `batch`, every layer traced, in a
    child process (a crash of its C++ code is a one-line EmulationCrash)."""
    from .emulation_guard import trace_isolated
    from .hls import layers_of, load_emulation

    folder, recs = layers_of(plan, name, traced=True)
    shape = plan.model["output_shape"] if name is None else plan.partition(name).output_shape
    what = "the whole model" if name is None else f"partition {name} (layers {', '.join(plan.partition(name).layers)})"
    out, trace = trace_isolated(load_emulation(folder), batch, recs, shape, what=what)
    return TracedRun(np.asarray(batch), out, [HlsLayer.from_record(r) for r in recs], trace)


def _input_type(layers: List[HlsLayer]):
    inp = next((h for h in layers if h.cls == "Input" and "result_t" in h.types), None)
    return None if inp is None else inp.types["result_t"]


def _check(model, run: TracedRun) -> ModelCheck:
    types = [h.types["result_t"] for h in run.layers if h.cls == "Input" and "result_t" in h.types]
    if len(model.inputs) > 1 and len(types) == len(model.inputs):
        # several inputs, one hls4ml input layer each (in the Keras model's input order): each cast to its type
        parts = [input_values(t, v).reshape(len(v), -1) for t, v in zip(types, split_inputs(model, run.batch))]
        return check_model(model, np.concatenate(parts, axis=1), run.layers, run.trace)
    t = _input_type(run.layers)
    return check_model(model, run.batch if t is None else input_values(t, run.batch), run.layers, run.trace)


def whole_model(plan: Plan, models):
    """The Keras model hls4ml compiles as the whole model: the source with its BatchNormalization folded
    when the plan folded any (`hls_source`)."""
    if plan.model.get("hls_source"):
        from .graph import load_model

        return load_model(plan.path(plan.model["hls_source"]))
    return getattr(models, "folded_source", None) or models.source


def check_plan(plan: Plan, models, whole: TracedRun, parts: Dict[str, TracedRun]) -> PlanCheck:
    """Check every layer of the whole model and of every partition (each traced on the input the hls4ml
    chain gave it) against Keras on hls4ml's own input."""
    return PlanCheck(check_scope(plan, models, None, whole),
                     [check_scope(plan, models, p.name, parts[p.name]) for p in plan.ordered_partitions()])


def check_scope(plan: Plan, models, name: Optional[str], run: TracedRun) -> ScopeCheck:
    """Check every layer of partition `name` (None: the whole model) on its traced run against Keras on
    hls4ml's own input: one scope of check_plan, for a caller that checks each as its run ends."""
    if name is None:
        return ScopeCheck("the whole model", _check(whole_model(plan, models), run))
    return ScopeCheck(f"partition {name}", _check(models[name], run))


def describe(s: ScopeCheck) -> List[str]:
    """Lines for the user: where `s` departs (first layer, error, bound), overflows, or is unchecked."""
    c, lines = s.check, []
    d = c.departure
    if d is not None:
        lines.append(f"departure: {s.scope}: first at layer {d.layer} ({d.kind}, hls4ml layer {d.hls_layer}): "
                     f"|hls4ml - Keras| {d.error:.3g} on hls4ml's own input, beyond its quantisation bound "
                     f"{d.bound:.3g}")
    if c.overflow:
        lines.append(f"overflow: {s.scope}: layer {c.overflow[0]} ({c.kinds.get(c.overflow[0], '?')}): {c.overflow[1]}")
    for layer, why in c.unchecked:
        lines.append(f"unchecked: {s.scope}: layer {layer} ({c.kinds.get(layer, '?')}): {why}")
    return lines


def cause(pc: PlanCheck, chain_ok: bool) -> str:
    """One line: what the checks show to be the cause of a failure or departure ("" when there is none)."""
    w = pc.whole.check.departure
    part = pc.chain_departure()
    if w is not None:
        return (f"hls4ml itself: its emulation of the whole model departs from Keras too (first at layer {w.layer}, "
                f"{w.kind}), so the split is not the cause: change that layer or its settings in the model")
    if part is not None:
        d = part.check.departure
        return (f"the split: {part.scope} departs from Keras at layer {d.layer} ({d.kind}) while the whole model's "
                "emulation stays within its quantisation bounds")
    if not chain_ok:
        return ("the links: every layer of the chain and of the whole model is within its quantisation bound, yet "
                "their outputs differ by more than one step: what crosses a link is cast differently")
    return ""
