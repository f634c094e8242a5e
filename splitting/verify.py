"""`splitrack verify plan/`: prove a plan is exact.

float:  the chained Keras partitions against the original model (must agree to 1e-5 of the output scale);
hls:    the chained hls4ml emulation of the partitions against the emulation of the whole model (must agree
        within the output contract's quantisation step; bit for bit when every contract carries the layer
        output precision, which is how `split` writes plans);
keras:  both emulations against Keras, layer by layer (hls4ml's TraceOutput, `diagnose`): each layer of the
        whole model and of every partition, computed by Keras on hls4ml's own input, must agree with hls4ml
        within the bound its fixed-point types explain (`quant_bound`, per element, from the types hls4ml
        chose and the layer's weights; "quantisation" only where every layer is within it). The first layer
        beyond its bound is named, for the whole model and the chain, and whether hls4ml itself is the
        cause (its whole model departs too);
accuracy on labelled data when given (digits), for Keras, the split emulation and the whole emulation.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from .contract import FixedType, gather
from .errors import UserError
from .plan import Plan
from .report import table

FLOAT_TOL = 1e-5  # relative to the output scale
MAX_ACCURACY_DROP = 0.01  # labelled data: the split hls4ml chain may lose at most 1 point of Keras's accuracy


@dataclass
class Verification:
    """The result of verify_plan. Errors are max |difference| in the model's output units; float_rel_err is
    relative to the output scale (FLOAT_TOL 1e-5 is the bound); hls_step is the output type's step (the
    hls bound: at most one step); accuracies are fractions (None without labels or without hls)."""

    plan: str
    plan_hash: str
    data: str
    samples: int
    partitions: int
    stages: int
    float_max_abs_err: float
    float_rel_err: float
    hls_chain_max_abs_err: float
    hls_step: float
    hls_bit_exact: bool
    hls_vs_keras_max_abs_err: float
    accuracy_keras: Optional[float]
    accuracy_split_hls: Optional[float]
    accuracy_whole_hls: Optional[float]
    float_ok: bool
    hls_ok: bool
    per_partition: List[Dict] = field(default_factory=list)
    # every data set the float chain was checked on: the given data, and inputs spread uniformly over the
    # whole range of the input contract's type (a capped or bent activation cannot hide outside [0, 1])
    data_used: List[Dict] = field(default_factory=list)
    hls_checked: bool = True  # False with --no-hls: the hls chain was not run, nothing vouches for it
    # hls4ml against Keras, layer by layer: `*_within` is True when every layer is within its quantisation
    # bound, False when one departs, None when an overflow or an unchecked layer leaves it open;
    # `layer_checks` holds diagnose.ScopeCheck.summary() of the whole model, then of every partition
    whole_vs_keras_max_abs_err: float = 0.0
    chain_within: Optional[bool] = None
    whole_within: Optional[bool] = None
    layer_checks: List[Dict] = field(default_factory=list)
    # labelled data: the split hls4ml chain's accuracy within max_accuracy_drop of Keras's (None: no labels,
    # or the hls4ml chain not run). Bit exact to the whole model is no use when the types lose the model.
    accuracy_ok: Optional[bool] = None
    max_accuracy_drop: float = MAX_ACCURACY_DROP
    cause: str = ""  # one line: what the checks show to be the cause of a failure ("" when nothing failed)
    findings: List[str] = field(default_factory=list)  # departures, overflows, unchecked layers, for the user

    @property
    def ok(self) -> bool:
        """True when the float chain and the hls4ml chain checks passed, no layer of either emulation
        departs from Keras beyond its quantisation bound, and (labelled data) the split hls4ml chain keeps
        Keras's accuracy to within max_accuracy_drop."""
        return (self.float_ok and self.hls_ok and self.chain_within is not False and self.whole_within is not False
                and self.accuracy_ok is not False)


def evaluation_data(plan: Plan, data: str, n: int, seed: int = 0, domain=None) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Inputs (and labels when known) in the plan's input shape: 'digits', 'random', or an .npz/.npy file
    (loaded by `splitting.eval_data`, the one home of every --data option), inside `domain` (an
    eval_data.InputDomain: what the model reads) when given."""
    from .eval_data import load

    d = load(data, plan.model["input_shape"], n, seed=seed, allow=("digits", "random", "file"), domain=domain)
    return d.x, d.y


def plan_input_domain(plan: Plan, source):
    """The values the plan's input may take (eval_data.InputDomain): the whole range of the input contract's
    type, narrowed by what the source model reads there (an Embedding: integers below its vocabulary)."""
    from .eval_data import input_domain

    ft = FixedType.parse(plan.input_links[0].dtype)
    return input_domain(source, ft.raw_min * ft.step, ft.raw_max * ft.step)


def wide_range_data(plan: Plan, n: int, seed: int = 1, domain=None) -> np.ndarray:
    """`n` inputs spread uniformly over the whole range the input may take (`domain`, default the input
    contract's type's range), shape as the plan's input."""
    from .eval_data import InputDomain

    if domain is None:
        ft = FixedType.parse(plan.input_links[0].dtype)
        domain = InputDomain(ft.raw_min * ft.step, ft.raw_max * ft.step)
    shape = tuple(plan.model["input_shape"])
    return domain.draw(np.random.default_rng(seed), (n,) + shape)


def _accuracy(out: np.ndarray, y: Optional[np.ndarray]) -> Optional[float]:
    if y is None:
        return None
    return float(np.mean(np.argmax(out.reshape(len(out), -1), axis=1) == y))


def separate_activation(layer) -> bool:
    """True when `layer` applies a non-linear activation after its own computation and that activation can
    be swapped out (Dense, Conv: hls4ml computes their result in the layer's type, then the activation in
    a layer of its own). A recurrent layer's activation is inside its cell (LSTM and GRU refuse the swap)."""
    import keras

    prop = getattr(type(layer), "activation", None)
    if isinstance(prop, property) and prop.fset is None:
        return False
    return getattr(layer, "activation", None) not in (None, keras.activations.linear)


def layer_peaks(model, x: np.ndarray) -> Dict[str, float]:
    """Largest |value| each layer produces on `x`, before its activation where it is separate
    (`separate_activation`: hls4ml computes Dense and Conv results in the layer's own type, then applies
    the activation: that is where overflow happens)."""
    import keras

    saved = {}
    for layer in model.layers:
        if separate_activation(layer):
            saved[layer.name] = layer.activation
            layer.activation = keras.activations.linear
    try:
        layers = [l for l in model.layers if type(l).__name__ != "InputLayer"]
        probe = keras.Model(model.inputs, [l.output for l in layers])
        outs = probe(x, training=False)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        return {l.name: float(np.max(np.abs(np.asarray(o)))) for l, o in zip(layers, outs)}
    finally:
        for layer in model.layers:
            if layer.name in saved:
                layer.activation = saved[layer.name]


def verify_plan(plan: Plan, data: str = "random", n: int = 512, hls: bool = True, log=print,
                max_accuracy_drop: float = MAX_ACCURACY_DROP) -> Verification:
    """Check a plan on `n` inputs of `data` ('random', 'digits' or an .npz/.npy file): the chain of Keras
    partitions against the original model (also over the input type's whole range), and with `hls` the
    chain of hls4ml emulations against the whole model's emulation. Raises UserError when the plan folder
    lacks its source model or the data do not fit. With labelled data, the split hls4ml chain's accuracy must
    be within `max_accuracy_drop` (a fraction: 0.01 is one percentage point) of Keras's."""
    from .split import load_models

    models = load_models(plan)
    if models.source is None:
        raise UserError(f"{plan.root} has no source model ({plan.model.get('source')}): split the model again")
    domain = plan_input_domain(plan, models.source)
    x, y = evaluation_data(plan, data, n, domain=domain)
    log(f"verify {plan.root}: {len(plan.partitions)} partitions in {len(plan.stages)} stages, {len(x)} samples ({data})")
    builds = sched = None
    if hls:
        # the cold path: the hls4ml builds (g++, in parallel) start first, and each model's emulation as soon
        # as its library is there; the float checks below run meanwhile (splitting.emulation_schedule)
        log("  hls4ml emulation of the whole model and of every partition, every layer traced (compiled once, then "
            "cached)")
        builds, sched = _start_emulations(plan, x, log)
    try:
        v = _verify(plan, models, data, x, y, domain, builds, sched)
        return _judge_accuracy(v, max_accuracy_drop)
    finally:
        if sched is not None:
            sched.close()
            builds.close()


def _judge_accuracy(v: Verification, max_drop: float) -> Verification:
    """Set v.accuracy_ok (labelled data and the hls4ml chain run) and, when the split loses the model, the
    cause: the split is exact, the types are too narrow (the whole model's emulation loses it too) or not."""
    v.max_accuracy_drop = max_drop
    if v.accuracy_keras is None or v.accuracy_split_hls is None:
        return v
    v.accuracy_ok = v.accuracy_split_hls >= v.accuracy_keras - max_drop - 1e-12
    if not v.accuracy_ok and not v.cause:
        whole = v.accuracy_whole_hls
        same = whole is not None and abs(whole - v.accuracy_split_hls) <= 1e-12
        v.cause = (f"the hls4ml types lose the model's accuracy: {100 * v.accuracy_split_hls:.2f} % on the split "
                   f"hls4ml chain against {100 * v.accuracy_keras:.2f} % in Keras (at most {100 * max_drop:.2f} "
                   "points may be lost)" + (", and the unsplit model's emulation loses it too: the split is exact, "
                   "the precisions are too narrow; plan or split again with wider --precisions (e.g. "
                   "\"ap_fixed<16,6>\") or more integer bits" if same else ""))
    return v


def _start_emulations(plan: Plan, x: np.ndarray, log):
    """(hls.Builds, EmulationSchedule): the plan's hls4ml projects converted and their builds under way, the
    traced emulations of the whole model and of every partition on `x` set to start as each build ends."""
    from .emulation_schedule import EmulationSchedule
    from .hls import layers_of, plan_projects, start_projects

    names = [None] + [p.name for p in plan.ordered_partitions()]
    builds = start_projects(plan_projects(plan), progress=lambda m: log(f"  hls4ml: {m}"))
    ready = dict(zip(names, builds.ready))
    try:
        for name, f in ready.items():
            if f.done() and f.exception() is None:
                # a project cached by an older splitrack is traced or read once more here, in this thread:
                # hls4ml's converters keep state on shared handler objects and cannot run in two at once
                layers_of(plan, name, traced=True)
        return builds, EmulationSchedule(plan, x, ready)
    except BaseException:
        builds.close()
        raise


def _verify(plan: Plan, models, data: str, x: np.ndarray, y, domain, builds, sched) -> Verification:
    from .chain import keras_runner, run_chain

    hls = sched is not None
    ref = models.source.predict(x, verbose=0, batch_size=256)
    kept: Dict[str, np.ndarray] = {}
    out_keras = run_chain(plan, x, keras_runner(models), keep=kept)
    ferr = float(np.max(np.abs(out_keras - ref)))
    scale = float(max(np.max(np.abs(ref)), 1e-12))
    used = [{"name": data, "samples": int(len(x)), "min": float(np.min(x)), "max": float(np.max(x)),
             "float_max_abs_err": ferr, "float_rel_err": ferr / scale}]
    xw = wide_range_data(plan, min(len(x), 256), seed=1, domain=domain)
    ref_w = models.source.predict(xw, verbose=0, batch_size=256)
    err_w = float(np.max(np.abs(run_chain(plan, xw, keras_runner(models)) - ref_w)))
    # float32 rounding is relative to the values computed, and over the whole input range the layers inside
    # the model reach far more than its output (a softmax stays <= 1 while its logits reach hundreds): the
    # bound is 1e-5 of the largest value the original model computes on these inputs
    scale_w = float(max(np.max(np.abs(ref_w)), max(layer_peaks(models.source, xw).values(), default=0.0), 1e-12))
    wide = f"wide: uniform over the input type {plan.input_links[0].dtype}" + (f", {domain.why}" if domain.why else "")
    used.append({"name": wide, "samples": int(len(xw)),
                 "min": float(np.min(xw)), "max": float(np.max(xw)), "float_max_abs_err": err_w,
                 "float_rel_err": err_w / scale_w, "scale": scale_w})
    used[0]["scale"] = scale
    step = plan.output_links[0].step
    herr = hk_err = 0.0
    acc_split = acc_whole = None
    per = []
    keras_checks: Dict = {}
    if hls:
        from .diagnose import PlanCheck, check_scope

        builds.wait()  # every build ended (HlsUnsupported when one failed); the emulations may still run
        # each model's layers are checked against Keras as soon as its emulation ends, while the others run
        whole_run = sched.result(None)
        pc = PlanCheck(check_scope(plan, models, None, whole_run))
        runs: Dict[str, object] = {}
        for p in plan.ordered_partitions():
            runs[p.name] = sched.result(p.name)
            pc.parts.append(check_scope(plan, models, p.name, runs[p.name]))

        def ran(name: str, inp: np.ndarray) -> np.ndarray:
            # the chain assembles each partition's input once more: it must be what the emulation was given
            if not np.array_equal(np.asarray(inp, dtype=np.float64), runs[name].batch):
                raise RuntimeError(f"partition {name}: the scheduled emulation ran on another input than the chain's")
            return runs[name].out

        hkept: Dict[str, np.ndarray] = {}
        out_hls = run_chain(plan, x, ran, keep=hkept)
        whole = whole_run.out
        herr = float(np.max(np.abs(out_hls - whole)))
        hk_err = float(np.max(np.abs(out_hls - ref)))
        acc_split, acc_whole = _accuracy(out_hls, y), _accuracy(whole, y)
        for p in plan.ordered_partitions():
            ft = FixedType.parse(p.output_precision)
            inp = gather(plan.inputs_of(p.name), [c.take(kept.get(c.src, x)) for c in plan.inputs_of(p.name)])
            inp = inp if len(inp) > 1 else inp[0]
            peaks = layer_peaks(models[p.name], inp)
            worst = max(peaks, key=peaks.get) if peaks else None
            per.append({"peak_layer": worst, "keras_peak": peaks.get(worst, 0.0), "type_limit": ft.raw_max * ft.step,
                        "overflow": peaks.get(worst, 0.0) > ft.raw_max * ft.step,"partition": p.name, "stage": p.stage, "kind": p.kind, "layers": p.layers,
                        "input_shape": p.input_shape, "output_shape": p.output_shape, "precision": p.output_precision,
                        "params": int(models[p.name].count_params()),
                        "hls_vs_keras_max_abs_err": float(np.max(np.abs(hkept[p.name] - kept[p.name])))})
        keras_checks = _against_keras(pc, ref, whole_run, per, herr <= step)
    v = Verification(
        plan=str(plan.root), plan_hash=plan.hash, data=data, samples=len(x), partitions=len(plan.partitions),
        stages=len(plan.stages), float_max_abs_err=ferr, float_rel_err=ferr / scale, hls_chain_max_abs_err=herr,
        hls_step=step, hls_bit_exact=hls and herr == 0.0, hls_vs_keras_max_abs_err=hk_err,
        accuracy_keras=_accuracy(ref, y), accuracy_split_hls=acc_split, accuracy_whole_hls=acc_whole,
        float_ok=all(u["float_rel_err"] <= FLOAT_TOL for u in used), hls_ok=(herr <= step) if hls else True,
        per_partition=per, data_used=used, hls_checked=bool(hls), **keras_checks,
    )
    return v


def _against_keras(pc, ref, whole_run, per, chain_ok: bool) -> Dict:
    """The Verification fields of hls4ml against Keras from `pc` (diagnose.PlanCheck: every layer of the
    whole model and of each partition checked on hls4ml's own input, on the traced runs), and the cause of
    what fails."""
    from .diagnose import cause, describe

    for row, part in zip(per, pc.parts):
        row["within"] = part.check.within
    found = [line for s in [pc.whole] + pc.parts for line in describe(s)]
    return {"whole_vs_keras_max_abs_err": float(np.max(np.abs(whole_run.out - ref))), "chain_within": pc.chain_within,
            "whole_within": pc.whole.check.within, "layer_checks": [s.summary() for s in [pc.whole] + pc.parts],
            "cause": cause(pc, chain_ok), "findings": found}


def _keras_row(what: str, err: float, within: Optional[bool], checked: bool) -> List[str]:
    if not checked:
        return [what, "-", "-", "skipped (--no-hls)"]
    verdict = {True: "ok (quantisation)", False: "DEPARTS", None: "exact" if err == 0 else "open (see below)"}[within]
    return [what, f"{err:.3g}", "each layer within its types", verdict]


def render(v: Verification) -> str:
    """The Verification as text: a table per partition, a table of checks with bounds and ok/FAIL, where
    hls4ml departs from Keras and why, overflow warnings, and a final PASS/FAIL line."""
    within = {True: "ok", False: "DEPARTS", None: "open"}
    rows = [[p["partition"], p["stage"], p["kind"], ",".join(p["layers"]), "x".join(map(str, p["input_shape"])),
             "x".join(map(str, p["output_shape"])), p["precision"], p["params"], f"{p['hls_vs_keras_max_abs_err']:.3g}",
             within[p.get("within")] if "within" in p else "-"]
            for p in v.per_partition]
    out = []
    if rows:
        out.append(table(["partition", "stage", "kind", "layers", "in", "out", "precision", "params", "|hls-keras|",
                          "layers vs Keras"], rows))
        out.append("")
    pct = lambda a: "-" if a is None else f"{100 * a:.2f} %"
    checks = [["float chain vs original" + ("" if i == 0 else f" ({u['name'].split(':')[0]} [{u['min']:.3g}, {u['max']:.3g}])"),
               f"{u['float_max_abs_err']:.3g}", f"<= {FLOAT_TOL:g} x scale",
               "ok" if u["float_rel_err"] <= FLOAT_TOL else "FAIL"] for i, u in enumerate(v.data_used)] or [
        ["float chain vs original", f"{v.float_max_abs_err:.3g}", f"<= {FLOAT_TOL:g} x scale", "ok" if v.float_ok else "FAIL"]]
    checks += [
        ["hls chain vs whole-model hls", f"{v.hls_chain_max_abs_err:.3g}" if v.hls_checked else "-",
         f"<= {v.hls_step:g} (1 step)", "skipped (--no-hls)" if not v.hls_checked else
         ("ok, bit exact" if v.hls_bit_exact else "ok") if v.hls_ok else "FAIL"],
        _keras_row("hls chain vs Keras", v.hls_vs_keras_max_abs_err, v.chain_within, v.hls_checked),
        _keras_row("whole-model hls vs Keras", v.whole_vs_keras_max_abs_err, v.whole_within, v.hls_checked),
        ["accuracy Keras / split hls / whole hls", f"{pct(v.accuracy_keras)} / {pct(v.accuracy_split_hls)} / "
         f"{pct(v.accuracy_whole_hls)}", f"split >= Keras - {100 * v.max_accuracy_drop:g} pt ({v.samples} samples)",
         {True: "ok", False: "FAIL", None: "no labels" if v.accuracy_keras is None else "-"}[v.accuracy_ok]],
    ]
    out.append(table(["check", "value", "bound", "result"], checks))
    out += v.findings
    if v.cause:
        out.append(f"cause: {v.cause}")
    for p in v.per_partition:
        if p["overflow"] and not any(f.startswith(f"overflow: partition {p['partition']}:") for f in v.findings):
            # not a split error (the whole model wraps the same way), but worth knowing
            out.append(f"warning: {p['partition']}: layer {p['peak_layer']} reaches {p['keras_peak']:.3g} in Keras (before "
                       f"its activation), beyond the range of "
                       f"{p['precision']} (max {p['type_limit']:.6g}): values wrap or saturate; give more integer bits "
                       f"(e.g. split again with --precision ap_fixed<18,8>)")
    out.append(f"plan {v.plan_hash}: {'PASS' if v.ok else 'FAIL'}"
               + ("" if v.hls_checked or not v.ok else " (float composition only: the hls4ml chain was not checked)"))
    return "\n".join(out)
