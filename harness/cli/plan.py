"""`splitrack plan` (propose partitions from resource estimates) and `splitrack boards` (the board catalog).

    splitrack plan model.keras --board pynq-z2 --max-util 0.8 --objective latency -o plan/ [--json]
    splitrack plan model.keras --board pynq-z2 --boards-available 5 --pareto
    splitrack plan model.keras --n-boards 3 -o plan/    # exactly 3 boards
    splitrack boards

Planning loads the model with Keras and reads its graph in the topological order `split.split_model` cuts
(`layerspec.model_specs`: any graph shape `split` accepts, BatchNormalization folded as split folds it); the
default estimator (auto: per layer kind the one with the lowest error on published hls4ml results, the
analytic model today) needs no torch. Every figure is printed with its range, and the chosen end of each range
(`--fit`, default the upper bound) fits under `--max-util`. Writing the plan folder (`-o`) loads the model
with Keras and cuts it with `split.split_model`, then records each partition's hls4ml configuration (with
each compute layer's own reuse factor and strategy) and estimate in plan.json, ready for `splitrack verify`.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from splitting import catalog
from splitting.errors import UserError
from splitting.estimates import BOUNDS
from splitting.estimators import ESTIMATORS, make
from splitting.intervals import EXTRAPOLATED, widened_figures
from splitting.layerspec import COMPUTE, HlsConfig
from splitting.reuse import layer_reuse
from splitting.search import OBJECTIVES, PartChoice, PlanChoice, SearchOptions, SearchResult, plan_search
from harness.cli.options import add_board_count


def configure(p: argparse.ArgumentParser) -> None:
    """Add the arguments of `splitrack plan` (model file, board, cap, objective, search space, estimator, -o)
    or, when the parser is `splitrack boards`, of the board catalog (--max-util, --json)."""
    if p.prog.split()[-1] == "boards":
        p.add_argument("--max-util", type=float, default=catalog.DEFAULT_CAP, help="utilisation cap to show the budget for")
        p.add_argument("--json", action="store_true", help="print the catalog as JSON")
        return
    p.add_argument("model", help="Keras 3 model file (.keras)")
    p.add_argument("--board", default="pynq-z2", help="board type (see `splitrack boards`); default pynq-z2")
    p.add_argument("--max-util", type=float, default=catalog.DEFAULT_CAP, help="cap on every resource, fraction of the board (default 0.8)")
    p.add_argument("--objective", choices=OBJECTIVES, default="boards", help="fewest boards (default), lowest latency, or lowest pipeline interval")
    add_board_count(p, "boards_exact", None, "use exactly this many boards: the best plan of that size for the objective")
    p.add_argument("--boards-available", type=int, default=None, help="use at most this many boards")
    p.add_argument("--pareto", action="store_true", help="also print the non-dominated plans over (boards, latency, interval)")
    p.add_argument("--precisions", default="ap_fixed<16,6>",
                   help="comma-separated precisions a partition may use, the first also on the links (default ap_fixed<16,6>; "
                        "rule4ml knows ap_fixed<2,1>, <8,3>, <8,4>, <16,6>)")
    p.add_argument("--reuse-factors", default="1,2,4,8,16,32,64,128,256,512,1024,2048,4096",
                   help="comma-separated model-level reuse factors to consider; each layer then takes the largest "
                        "valid reuse that keeps pace with the partition's slowest layer")
    p.add_argument("--strategies", default="Latency,Resource", help="comma-separated hls4ml strategies to consider")
    p.add_argument("--max-parts", type=int, default=16, help="most parts a neuron or input split may have (default 16)")
    p.add_argument("--hop-overhead-us", type=float, default=100.0, help="software overhead per link hop, microseconds (default 100)")
    p.add_argument("--estimator", choices=tuple(ESTIMATORS), default="auto",
                   help="resource estimator: auto (default: per layer kind the one with the lowest error measured on "
                        "published hls4ml results), analytic or rule4ml")
    p.add_argument("--fit", choices=BOUNDS, default="high",
                   help="which end of each estimate's range must fit under --max-util: high (default, the upper bound), "
                        "point or low")
    p.add_argument("--raw-rule4ml", action="store_true",
                   help="use rule4ml's figures as they are, even where a run is predicted smaller than a run it contains")
    p.add_argument("--fifo-depth", choices=("optimized", "default"), default="optimized",
                   help="io_stream FIFO depths to assume and write: 'optimized' (default) as hls4ml's FIFO depth "
                        "optimisation leaves them (sized from the graph; only Vivado's cosimulation, not run here, confirms them), "
                        "'default' hls4ml's own (pixels of each stream)")
    p.add_argument("-o", "--output", default=None, help="write the plan folder here (for `splitrack verify`)")
    p.add_argument("--force", action="store_true", help="replace a different plan already in the -o folder")
    p.add_argument("--json", action="store_true", help="print the chosen plan as JSON on stdout")


def run(args) -> int:
    """`splitrack boards`: print the catalog. `splitrack plan`: search partitions of the model, print the best
    plan (table or --json, with --pareto the front) and write the plan folder with -o. Returns 0; a
    UserError (bad model, option or board) makes the dispatcher exit with status 2."""
    if args.command == "boards":
        if args.json:
            print(json.dumps({"boards": [b.to_dict() for b in catalog.BOARDS.values()], "cap": args.max_util}, indent=1))
        else:
            print("\n".join(catalog.table(args.max_util)))
        return 0
    progress = (lambda msg: print(f"[plan] {msg}", file=sys.stderr, flush=True))
    t0 = time.perf_counter()
    board = catalog.board(args.board)
    opts = SearchOptions(
        board=board, cap=args.max_util, objective=args.objective, precisions=tuple(_list(args.precisions)),
        reuse_factors=tuple(_ints(args.reuse_factors, "--reuse-factors")), strategies=tuple(_list(args.strategies)),
        max_parts=args.max_parts, boards_available=args.boards_available, boards_exact=args.boards_exact,
        hop_overhead_us=args.hop_overhead_us,
        monotone=not args.raw_rule4ml, fit=args.fit, fifo_depth=args.fifo_depth,
    )
    for c in opts.configs:  # validates precisions and strategies with a readable message
        HlsConfig(c.precision, c.reuse_factor, c.strategy)
    from splitting.graph import load_model
    from splitting.layerspec import model_specs

    # the graph in the topological order split_model cuts, with the layers split takes (splitting.layers, layerspec.model_specs)
    name, specs, reads, unsplittable = model_specs(load_model(args.model))
    est = make(args.estimator, board, progress=progress)
    result = plan_search(specs, est, opts, pareto=args.pareto, progress=progress, reads=reads,
                         unsplittable=unsplittable)
    seconds = time.perf_counter() - t0
    progress(f"searched in {seconds:.2f} s: {result.candidates} (partition, configuration) estimates, "
             f"{est.stats['cached']} from the cache, {est.stats['computed']} computed")
    report = to_json(result.best, name, opts, est.version, result)
    report["estimator"] = est.describe()
    if args.output:
        folder = write(args.model, result.best, opts, est.version, args.output, progress, force=args.force)
        report["plan_folder"] = str(folder)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print("\n".join(table(result.best, name, opts, est.describe())))
        if args.pareto:
            print()
            print("\n".join(pareto_table(result.pareto, opts)))
        if args.output:
            print(f"\nplan written to {args.output} (check it with: splitrack verify {args.output})")
    return 0


def _list(text: str) -> List[str]:
    # precisions contain commas: split on commas outside <...>
    out, depth, cur = [], 0, ""
    for ch in text:
        depth += ch == "<"
        depth -= ch == ">"
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        out.append(cur.strip())
    if not out:
        raise UserError(f"empty list {text!r}")
    return out


def _ints(text: str, flag: str) -> List[int]:
    try:
        return [int(x) for x in _list(text)]
    except ValueError:
        raise UserError(f"{flag} {text!r}: give comma-separated integers, e.g. 1,2,4,8") from None


# ---------------------------------------------------------------------------------------------------------
def names(plan: PlanChoice) -> List[List[str]]:
    """Partition names per stage, as split_model names them."""
    return [[f"s{s}"] if len(st.parts) == 1 else [f"s{s}_{j}" for j in range(len(st.parts))] for s, st in enumerate(plan.stages)]


# Digits a figure is reported with, in plan.json, --json and the table alike: utilisation as a fraction to 4
# decimals (0.01 %), LUT/FF/DSP whole, BRAM18 blocks and cycles to 0.1. A range is rounded outward (low down,
# high up) at those digits, so the point, rounded to the nearest, always lies inside the range as printed.
DIGITS = {"lut": 0, "ff": 0, "dsp": 0, "bram": 1, "cycles": 1, "interval": 1}
UTIL_DIGITS = 4


def down(x: float, digits: int) -> float:
    """x rounded down to `digits` decimals (a range's low end as reported)."""
    s = 10 ** digits
    return round(math.floor(x * s + 1e-9) / s, digits)


def up(x: float, digits: int) -> float:
    """x rounded up to `digits` decimals (a range's high end as reported)."""
    s = 10 ** digits
    return round(math.ceil(x * s - 1e-9) / s, digits)


def _bound(x: float, digits: int, at: str) -> float:
    v = down(x, digits) if at == "low" else up(x, digits)
    return int(v) if digits == 0 else v


def partition_rows(plan: PlanChoice, opts: SearchOptions) -> List[Dict[str, Any]]:
    """One dict per partition of `plan`, stage by stage: name, kind, layers, hls4ml configuration
    (reuse_factor: the model-level ReuseFactor; layer_reuse: the ReuseFactor per compute layer hls4ml is
    given), utilization (fraction of the board per resource, 4 decimals) and its range (utilization_low,
    utilization_high, rounded outward), resources (LUT, FF, DSP, BRAM18 blocks) with range (rounded outward),
    cycles and interval_cycles (clock cycles) with range, estimator, extrapolated (what lies beyond the
    calibration data), split, note, implausible."""
    rows = []
    for (stage, st), pnames in zip(enumerate(plan.stages), names(plan)):
        for part, pname in zip(st.parts, pnames):
            e = part.estimate
            rng = {at: {f: _bound(e.bound(f, at), d, at) for f, d in DIGITS.items()} for at in ("low", "high")}
            util = {at: {k: _bound(v, UTIL_DIGITS, at) for k, v in e.utilization(opts.board, at).items()} for at in ("low", "high")}
            rows.append({
                "name": pname, "stage": stage, "kind": part.kind, "layers": list(part.layers),
                "precision": part.config.precision, "reuse_factor": part.config.reuse_factor, "strategy": part.config.strategy,
                "layer_reuse": layer_reuses(part),
                "utilization": {k: round(v, UTIL_DIGITS) for k, v in e.utilization(opts.board).items()},
                "utilization_low": util["low"],
                "utilization_high": util["high"],
                "resources": {"lut": round(e.lut), "ff": round(e.ff), "dsp": round(e.dsp), "bram": round(e.bram, 1)},
                "range": rng,
                "cycles": round(e.cycles, 1), "interval_cycles": round(e.interval, 1), "estimator": e.estimator,
                "extrapolated": list(e.extrapolated),
                "split": part.split, "note": e.note, "implausible": implausible(part, opts),
            })
    return rows


def layer_reuses(part: PartChoice) -> Dict[str, int]:
    """Reuse factor per compute layer of a partition, by the planner's layer name (a join runs at reuse 1)."""
    if part.kind == "join":
        return {}
    return {l.name: r for l, r in zip(part.specs, layer_reuse(part.specs, part.config)) if l.kind in COMPUTE}


def implausible(part: PartChoice, opts: SearchOptions) -> List[str]:
    """Why this partition's estimate is outside the plausible range ([] when it is not): see
    `splitting.estimators.implausible` (the search never proposes such a partition)."""
    from splitting.estimators import implausible as check

    return check(part.specs, part.config, part.estimate, opts.board.capacity("dsp"))


def decimals(values, least: int = 0, most: int = 3) -> int:
    """Fewest decimals (>= least, and >= 1 when a value is not whole) at which distinct values print
    distinctly, so a table never shows two different plans with the same figure (1.4 cycles is not 1)."""
    vals = sorted(set(float(v) for v in values))
    if any(abs(v - round(v)) > 1e-9 for v in vals):
        least = max(least, 1)
    for d in range(least, most + 1):
        if len({f"{v:.{d}f}" for v in vals}) == len(vals):
            return d
    return most


def plan_range(plan: PlanChoice, opts: SearchOptions) -> Dict[str, Dict[str, float]]:
    """The plan's latency (us, 2 decimals) and interval (cycles, 1 decimal) at the low and high ends of its
    partitions' ranges, rounded outward."""
    out = {}
    for at in ("low", "high"):
        lat = plan.out_hop_us + sum(max(p.estimate.bound("cycles", at) for p in st.parts) / opts.board.clock_mhz + st.hop_in_us
                                    for st in plan.stages)
        itv = max(p.estimate.bound("interval", at) for p in plan.partitions)
        out[at] = {"latency_us": _bound(lat, 2, at), "interval_cycles": _bound(itv, 1, at)}
    return out


UNITS = {"utilization": "fraction of one board (1.0 = full), 4 decimals; ranges rounded outward",
         "resources": "LUT, FF, DSP48, BRAM18 blocks; ranges rounded outward",
         "cycles": "clock cycles at clock_mhz", "latency_us": "microseconds", "interval_cycles": "clock cycles at clock_mhz",
         "reuse_factor": "model-level hls4ml ReuseFactor", "layer_reuse": "hls4ml ReuseFactor per compute layer (LayerName)"}


def to_json(plan: PlanChoice, model: str, opts: SearchOptions, version: str, result: Optional[SearchResult] = None) -> Dict[str, Any]:
    """The --json report of a plan: model, board, cap, fit (which end of the ranges fits), objective, boards,
    latency_us (us), interval_cycles and their range (rounded outward), clock_mhz, units, estimator version, hop_overhead_us (us), link_gbps
    (Gb/s), cuts and splits, partition_rows, and the Pareto front when `result` has one."""
    out = {
        "model": model, "board": opts.board.name, "cap": opts.cap, "fit": opts.fit, "objective": opts.objective,
        "boards": plan.boards, "latency_us": round(plan.latency_us, 2), "interval_cycles": round(plan.interval_cycles, 1),
        "range": plan_range(plan, opts), "clock_mhz": opts.board.clock_mhz,
        "units": UNITS,
        "exact": plan.exact, "estimator_version": version, "hop_overhead_us": opts.hop_overhead_us, "link_gbps": opts.gbps,
        "cut_after": plan.cut_after, "neurons": plan.neurons, "inputs": plan.inputs,
        "fifo_depth": fifo_note(opts),
        "partitions": partition_rows(plan, opts),
    }
    if result is not None and result.pareto:
        out["pareto"] = [{"boards": p.boards, "latency_us": round(p.latency_us, 2), "interval_cycles": round(p.interval_cycles, 1),
                          "range": plan_range(p, opts), "plan": p.describe(), "configs": p.configs()} for p in result.pareto]
    return out


def fifo_note(opts: SearchOptions) -> Dict[str, str]:
    """Which io_stream FIFO depths the estimates assumed (and the plan's hls4ml projects carry), and what
    confirms them: {'assumed': 'optimized'|'default', 'confirmed_by': ...}."""
    if opts.fifo_depth == "optimized":
        return {"assumed": "optimized",
                "what": "as hls4ml's FIFO depth optimisation leaves them, sized from the graph (splitting.fifo_depths): "
                        "2 between layers and for the wrapper streams, the branch skew into a merge",
                "confirmed_by": "not confirmed: only Vivado's RTL cosimulation (hls4ml's vivado:fifo_depth_optimization flow) "
                                "confirms them, and it needs Vivado (not run here)"}
    return {"assumed": "default", "what": "hls4ml's default: each stream as deep as its pixels",
            "confirmed_by": "safe: hls4ml's default depths never stall a dataflow"}


def _num(v: float, digits: int) -> str:
    return f"{v:.{digits}f}"


def _pct(r: Dict[str, Any], k: str) -> str:
    # exactly the reported fractions (4 decimals) as percent (2 decimals): table == --json == plan.json
    lo, p, hi = (100 * r[key][k] for key in ("utilization_low", "utilization", "utilization_high"))
    return f"{p:.2f} [{lo:.2f}-{hi:.2f}]"


def _cyc(v: float, lo: float, hi: float) -> str:
    # exactly the reported figures (0.1 cycle): no decimals when all three are whole
    d = 0 if all(float(x).is_integer() for x in (v, lo, hi)) else 1
    return f"{v:.{d}f} [{lo:.{d}f}-{hi:.{d}f}]"


def table(plan: PlanChoice, model: str, opts: SearchOptions, estimator: str = "") -> List[str]:
    """The plan as text lines: a summary (boards, latency in us and interval in cycles at the board's clock,
    each with its range), the estimator, one row per partition (utilisation in % of one board, latency and
    interval in cycles, each as estimate [low-high], the same figures as --json and plan.json), then notes:
    the reuse factor per layer, raised figures (*), figures beyond the calibration data (~)."""
    rows = partition_rows(plan, opts)
    cap = f"{opts.cap:.0%}"
    rng = plan_range(plan, opts)
    di = 0 if all(float(x).is_integer() for x in (round(plan.interval_cycles, 1), rng["low"]["interval_cycles"], rng["high"]["interval_cycles"])) else 1
    b = opts.board
    lines = [
        f"{model} on {b.name}, objective {opts.objective}: {plan.boards} board(s), latency {plan.latency_us:.2f} us "
        f"[{rng['low']['latency_us']:.2f}-{rng['high']['latency_us']:.2f}], interval {plan.interval_cycles:.{di}f} cycles "
        f"[{rng['low']['interval_cycles']:.{di}f}-{rng['high']['interval_cycles']:.{di}f}] at {b.clock_mhz:g} MHz "
        f"(hls4ml clock period {b.clock_period_ns:g} ns) ({plan.describe()})",
    ]
    if estimator:
        lines.append(f"estimates: {estimator}")
    fn = fifo_note(opts)
    lines.append(f"io_stream FIFO depths: {fn['assumed']} ({fn['what']}); {fn['confirmed_by']}")
    lines.append(f"columns: LUT/FF/DSP/BRAM18 in % of one {b.name} ({b.lut} LUT, {b.ff} FF, {b.dsp} DSP48, {b.bram} BRAM18 blocks), "
                 f"latency and interval in clock cycles, each as estimate [range] (--json and plan.json: the same figures, "
                 f"utilisation as fractions, resources in LUT, FF, DSP48, BRAM18 blocks); "
                 f"the {'upper bound' if opts.fit == 'high' else opts.fit if opts.fit == 'point' else 'lower bound'} "
                 f"fits under the {cap} cap (--fit); model RF: the model-level ReuseFactor; hops: {opts.hop_overhead_us:g} us + bytes on {opts.gbps:g} Gb/s")
    cyc = {r["name"]: (_cyc(r["cycles"], r["range"]["low"]["cycles"], r["range"]["high"]["cycles"]),
                       _cyc(r["interval_cycles"], r["range"]["low"]["interval"], r["range"]["high"]["interval"]))
           for r in rows}
    wc = max([18] + [len(c) + 2 for pair in cyc.values() for c in pair])  # a long range must not run into the next
    wu = max([16] + [len(_pct(r, k)) + 2 for r in rows for k in ("lut", "ff", "dsp", "bram")])
    head = (f"{'part':<6}{'kind':<7}{'layers':<24}{'model RF':>8} {'strategy':<9}{'LUT %':<{wu}}{'FF %':<{wu}}{'DSP %':<{wu}}"
            f"{'BRAM18 %':<{wu}}{'latency cycles':<{wc}}{'interval cycles':<{wc}}estimator")
    lines += [head, "-" * len(head)]
    for r in rows:
        layers = ",".join(r["layers"])
        if len(layers) > 23:
            layers = layers[:20] + "..."
        mark = ("*" if r["note"] else "") + ("~" if r["extrapolated"] else "")
        lines.append(
            f"{r['name']:<6}{r['kind']:<7}{layers:<24}{r['reuse_factor']:>8} {r['strategy']:<9}"
            + "".join(f"{_pct(r, k):<{wu}}" for k in ("lut", "ff", "dsp", "bram"))
            + f"{cyc[r['name']][0]:<{wc}}{cyc[r['name']][1]:<{wc}}"
            + f"{r['estimator']}{mark}" + ("  IMPLAUSIBLE" if r["implausible"] else "")
        )
    per_layer = [f"{r['name']}: " + ", ".join(f"{k} {v}" for k, v in r["layer_reuse"].items()) for r in rows
                 if set(r["layer_reuse"].values()) - {r["reuse_factor"]}]
    if per_layer:
        lines.append("ReuseFactor per layer, as hls4ml is given it (plan.json LayerName; 'model RF' is the model-level one "
                     "the search chose): each layer takes the largest reuse factor hls4ml accepts for it (a divisor of its "
                     "products, per hls4ml's rules) that keeps pace with its partition's slowest layer: " + "; ".join(per_layer))
    for r in rows:
        if r["note"]:
            lines.append(f"* {r['name']}: {r['note']}")
    for r in rows:
        if r["extrapolated"]:
            wide = any(widened_figures(x) for x in r["extrapolated"])
            lines.append(f"~ {r['name']}: beyond the published figures"
                         + (f" (the figures in [widened: ...] get a range of at least x{EXTRAPOLATED[0]:g}-x{EXTRAPOLATED[1]:g} "
                            "for that layer's share; the rest of the partition keeps its calibrated range)" if wide else "")
                         + ": " + "; ".join(r["extrapolated"]))
    for r in rows:
        for why in r["implausible"]:
            lines.append(f"IMPLAUSIBLE {r['name']}: {why}")
    if not plan.exact:
        lines.append("note: the search dropped labels past its bound; this plan is the best found, not proven optimal")
    return lines


def pareto_table(front: List[PlanChoice], opts: Optional[SearchOptions] = None) -> List[str]:
    """The non-dominated plans as text lines: boards, latency (us), interval (cycles), each with its range
    when `opts` is given, then stages and configurations."""
    lines = ["non-dominated plans (boards, latency, interval; [range]):",
             f"{'boards':>6} {'latency us':>11} {'interval cycles':>15}  plan [reuse factor and strategy per stage]"]
    dl = decimals([p.latency_us for p in front], least=1)
    di = decimals([p.interval_cycles for p in front])
    for p in front:
        rng = ""
        if opts is not None and p.partitions:
            r = plan_range(p, opts)
            # outward at the printed digits, so each point stays inside its printed range
            rng = (f"  latency [{down(r['low']['latency_us'], dl):.{dl}f}-{up(r['high']['latency_us'], dl):.{dl}f}] us,"
                   f" interval [{down(r['low']['interval_cycles'], di):.{di}f}-{up(r['high']['interval_cycles'], di):.{di}f}] cycles")
        lines.append(f"{p.boards:>6} {p.latency_us:>11.{dl}f} {p.interval_cycles:>15.{di}f}  {p.describe()} [{p.configs()}]{rng}")
    return lines


# ---------------------------------------------------------------------------------------------------------
def write(model_path, plan: PlanChoice, opts: SearchOptions, version: str, folder, progress=None,
          force: bool = False) -> Path:
    """Cut the model as planned (split.split_model), put each partition's configuration and estimate in the
    plan, and write the folder. Raises UserError when the folder holds a different plan and not `force`."""
    from harness.cli.split import refuse_overwrite
    from splitting.graph import load_model
    from splitting.split import split_model, write_plan

    progress = progress or (lambda m: None)
    model = load_model(model_path) if isinstance(model_path, (str, Path)) else model_path
    progress(f"cutting the model: {plan.describe()}")
    base = plan.stages[0].parts[0].config
    p, models = split_model(model, at=plan.cut_after, neurons=plan.neurons, inputs=plan.inputs,
                            precision=opts.precisions[0], reuse_factor=base.reuse_factor, strategy=base.strategy)
    apply(p, plan, opts, version, models)
    refuse_overwrite(folder, p.hash, force)
    from splitting.hls_support import check_plan

    check_plan(p, models, progress=progress)  # know before writing: hls4ml converts every partition
    return write_plan(p, models, folder).parent


def apply(p, plan: PlanChoice, opts: SearchOptions, version: str, models=None) -> None:
    """Set every partition's hls4ml configuration and estimate on the Plan `p` that split_model made; with
    `models` (split_model's Keras sub-models), each compute layer's own reuse factor and strategy too
    (hls4ml's LayerName section), matched to the planner's compute layers in order."""
    from splitting.split import hls_config

    if len(p.stages) != len(plan.stages) or any(len(a.partitions) != len(b.parts) for a, b in zip(p.stages, plan.stages)):
        got = [len(s.partitions) for s in p.stages]
        want = [len(s.parts) for s in plan.stages]
        raise RuntimeError(f"split_model made stages {got}, the planner expected {want}: the planner's model of split_model is out of date")
    rows = {r["name"]: r for r in partition_rows(plan, opts)}
    for st_plan, st in zip(p.stages, plan.stages):
        for pname, part in zip(st_plan.partitions, st.parts):
            part_obj = p.partitions[pname]
            if part_obj.kind != part.kind:
                raise RuntimeError(f"partition {pname} is a {part_obj.kind} partition, the planner expected {part.kind}")
            c = part.config
            part_obj.hls = hls_config(c.precision, c.reuse_factor, c.strategy, f"{pname}_in", part_obj.input_precision)
            if models is not None and part.kind != "join":
                _layer_configs(part_obj.hls, models[pname], part)
            r = rows[pname]
            part_obj.estimate = {
                "utilization": r["utilization"], "utilization_low": r["utilization_low"], "utilization_high": r["utilization_high"],
                "resources": r["resources"], "range": r["range"], "cycles": r["cycles"],
                "interval_cycles": r["interval_cycles"], "estimator": r["estimator"], "estimator_version": version,
                "extrapolated": r["extrapolated"], "note": r["note"], "layer_reuse": r["layer_reuse"],
                "board": opts.board.name, "cap": opts.cap, "fit": opts.fit,
            }
    b = opts.board
    p.board = b.name
    p.hls_defaults.update({"board": b.name, "part": b.part, "clock_period": round(b.clock_period_ns, 3)})
    if opts.fifo_depth != "default":  # hls.set_fifo_depths writes them into every hls4ml project of the plan
        p.hls_defaults["fifo_depth"] = opts.fifo_depth
    p.model["planned"] = {
        "objective": opts.objective, "cap": opts.cap, "boards": plan.boards, "latency_us": round(plan.latency_us, 2),
        "interval_cycles": round(plan.interval_cycles, 1), "estimator_version": version, "exact": plan.exact,
        "fifo_depth": fifo_note(opts),
    }
    p.notes.append(f"splitrack plan: {plan.describe()}; {plan.boards} board(s), latency {plan.latency_us:.1f} us, "
                   f"interval {plan.interval_cycles:.{decimals([plan.interval_cycles])}f} cycles (estimates: {version})")


def _layer_configs(hls: Dict[str, Any], model, part: PartChoice) -> None:
    """Per compute layer of the partition's Keras model, the reuse factor `reuse.layer_reuse` chose and the
    strategy, in hls4ml's LayerName section. Matched by name (split_model keeps a layer's name, or adds a
    part's index to it: `fc1_n0`), else in order. A depthwise convolution is priced as the Conv it costs like
    (`layerspec.layer_spec`) but hls4ml counts its multipliers otherwise: it keeps the partition's reuse factor."""
    from splitting.layers import SUPPORTED, base_class

    def kind(layer) -> str:
        return SUPPORTED.get(base_class(type(layer).__name__), "")

    keras_layers = [l for l in model.layers if kind(l) in COMPUTE]
    depthwise = {l.name for l in model.layers if kind(l) == "depthwise"}
    planned = [(l.name, r) for l, r in zip(part.specs, layer_reuse(part.specs, part.config))
               if l.kind in COMPUTE and l.name not in depthwise]
    if len(keras_layers) != len(planned):
        raise RuntimeError(f"the partition model has {len(keras_layers)} compute layers, the planner {len(planned)}: "
                           "the planner's model of split_model is out of date")

    def named(spec_name: str) -> List[str]:
        stem = spec_name[:-2] if spec_name.endswith(("_n", "_i")) else spec_name
        return [l.name for l in keras_layers if l.name == spec_name
                or (l.name.startswith(spec_name) and l.name[len(spec_name):].isdigit())
                or l.name == stem]

    found = [named(n) for n, _ in planned]
    if all(len(f) == 1 for f in found) and len({f[0] for f in found}) == len(found):
        pairs = [(f[0], r) for f, (_, r) in zip(found, planned)]
    else:
        pairs = [(l.name, r) for l, (_, r) in zip(keras_layers, planned)]
    names = hls.setdefault("LayerName", {})
    for lname, r in pairs:
        names.setdefault(lname, {}).update({"ReuseFactor": int(r), "Strategy": part.config.strategy})
