"""`splitrack plan` (propose partitions from resource estimates) and `splitrack boards` (the board catalog).

    splitrack plan model.keras --board pynq-z2 --max-util 0.8 --objective latency -o plan/ [--json]
    splitrack plan model.keras --board pynq-z2 --boards-available 5 --pareto
    splitrack plan model.keras --n-boards 3 -o plan/    # exactly 3 boards
    splitrack boards

Planning reads only the model's architecture (the `.keras` file's config.json) and the estimate cache, so a
plan whose estimates are cached needs neither TensorFlow nor torch; writing the plan folder (`-o`) loads the
model with Keras and cuts it with `split.split_model`, then records each partition's chosen hls4ml
configuration and estimate in plan.json, ready for `splitrack verify`.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from splitting import catalog
from splitting.errors import UserError
from splitting.estimate import HlsConfig, make
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
    p.add_argument("--reuse-factors", default="1,2,4,8,16,32,64", help="comma-separated reuse factors to consider")
    p.add_argument("--strategies", default="Latency,Resource", help="comma-separated hls4ml strategies to consider")
    p.add_argument("--max-parts", type=int, default=16, help="most parts a neuron or input split may have (default 16)")
    p.add_argument("--hop-overhead-us", type=float, default=100.0, help="software overhead per link hop, microseconds (default 100)")
    p.add_argument("--estimator", choices=("rule4ml", "analytic"), default="rule4ml", help="resource estimator (default rule4ml)")
    p.add_argument("--raw-rule4ml", action="store_true",
                   help="use rule4ml's figures as they are, even where a run is predicted smaller than a run it contains")
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
        monotone=not args.raw_rule4ml,
    )
    for c in opts.configs:  # validates precisions and strategies with a readable message
        HlsConfig(c.precision, c.reuse_factor, c.strategy)
    from splitting.graph import load_model
    from splitting.layers import model_specs

    # the graph in the topological order split_model cuts, with the layers split takes (splitting.layers)
    name, specs, reads, unsplittable = model_specs(load_model(args.model))
    est = make(args.estimator, board, progress=progress)
    result = plan_search(specs, est, opts, pareto=args.pareto, progress=progress, reads=reads,
                         unsplittable=unsplittable)
    seconds = time.perf_counter() - t0
    progress(f"searched in {seconds:.2f} s: {result.candidates} (partition, configuration) estimates, "
             f"{est.stats['cached']} from the cache, {est.stats['computed']} computed")
    report = to_json(result.best, name, opts, est.version, result)
    if args.output:
        folder = write(args.model, result.best, opts, est.version, args.output, progress, force=args.force)
        report["plan_folder"] = str(folder)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print("\n".join(table(result.best, name, opts)))
        if args.pareto:
            print()
            print("\n".join(pareto_table(result.pareto)))
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


def partition_rows(plan: PlanChoice, opts: SearchOptions) -> List[Dict[str, Any]]:
    """One dict per partition of `plan`, stage by stage: name, kind, layers, hls4ml configuration, utilization
    (fraction of the board per resource), resources (LUT, FF, DSP, BRAM18), cycles and interval_cycles (clock
    cycles), estimator, split, note, implausible."""
    rows = []
    for (stage, st), pnames in zip(enumerate(plan.stages), names(plan)):
        for part, pname in zip(st.parts, pnames):
            e = part.estimate
            rows.append({
                "name": pname, "stage": stage, "kind": part.kind, "layers": list(part.layers),
                "precision": part.config.precision, "reuse_factor": part.config.reuse_factor, "strategy": part.config.strategy,
                "utilization": {k: round(v, 4) for k, v in e.utilization(opts.board).items()},
                "resources": {"lut": round(e.lut), "ff": round(e.ff), "dsp": round(e.dsp), "bram": round(e.bram, 1)},
                "cycles": round(e.cycles, 1), "interval_cycles": round(e.interval, 1), "estimator": e.estimator,
                "split": part.split, "note": e.note, "implausible": implausible(part, opts),
            })
    return rows


# rule4ml is a learned model: outside its training data its DSP figure can be far from anything hls4ml
# builds. The closed-form count (splitting/estimate.py, analytic: one DSP48 per parallel multiplier at
# >= 10 bits) is rough, a factor of two either way; a figure beyond PLAUSIBLE_FACTOR of it is named.
PLAUSIBLE_FACTOR = 4.0


def implausible(part: PartChoice, opts: SearchOptions) -> List[str]:
    """Why this partition's estimate is outside the plausible range ([] when it is not): DSP figures beyond
    PLAUSIBLE_FACTOR of the closed-form count of parallel multipliers at the chosen reuse factor."""
    from splitting.estimate import analytic_segment

    e, c = part.estimate, part.config
    if "rule4ml" not in e.estimator or c.bits < 10:  # below 10 bits hls4ml puts multipliers in LUTs
        return []
    mults = analytic_segment(part.specs, c).dsp
    pct = 100 * e.dsp / opts.board.capacity("dsp")
    what = f"at reuse {c.reuse_factor} it has about {mults:.0f} parallel multipliers (one DSP48 each at {c.bits} bits)"
    if e.dsp > PLAUSIBLE_FACTOR * mults + 2:
        return [f"rule4ml's {e.dsp:.1f} DSP ({pct:.1f} %) is implausibly high: {what}; "
                f"more than {PLAUSIBLE_FACTOR:g}x that"]
    if mults >= 8 and e.dsp < mults / PLAUSIBLE_FACTOR:
        return [f"rule4ml's {e.dsp:.1f} DSP ({pct:.1f} %) is implausibly low: {what}; "
                f"under 1/{PLAUSIBLE_FACTOR:g} of that, so the partition may not fit once synthesised"]
    return []


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


def to_json(plan: PlanChoice, model: str, opts: SearchOptions, version: str, result: Optional[SearchResult] = None) -> Dict[str, Any]:
    """The --json report of a plan: model, board, cap, objective, boards, latency_us (us), interval_cycles,
    estimator version, hop_overhead_us (us), link_gbps (Gb/s), cuts and splits, partition_rows, and the
    Pareto front when `result` has one."""
    out = {
        "model": model, "board": opts.board.name, "cap": opts.cap, "objective": opts.objective,
        "boards": plan.boards, "latency_us": round(plan.latency_us, 2), "interval_cycles": round(plan.interval_cycles, 1),
        "exact": plan.exact, "estimator_version": version, "hop_overhead_us": opts.hop_overhead_us, "link_gbps": opts.gbps,
        "cut_after": plan.cut_after, "neurons": plan.neurons, "inputs": plan.inputs,
        "partitions": partition_rows(plan, opts),
    }
    if result is not None and result.pareto:
        out["pareto"] = [{"boards": p.boards, "latency_us": round(p.latency_us, 2), "interval_cycles": round(p.interval_cycles, 1),
                          "plan": p.describe(), "configs": p.configs()} for p in result.pareto]
    return out


def table(plan: PlanChoice, model: str, opts: SearchOptions) -> List[str]:
    """The plan as text lines: a summary (boards, latency in us, interval in cycles), one row per partition
    (utilisation in % of one board, cycles), then notes and implausible estimates."""
    rows = partition_rows(plan, opts)
    cap = f"{opts.cap:.0%}"
    di = decimals([plan.interval_cycles])
    dc = decimals([r["cycles"] for r in rows] + [r["interval_cycles"] for r in rows])
    lines = [
        f"{model} on {opts.board.name}, objective {opts.objective}: {plan.boards} board(s), latency {plan.latency_us:.1f} us, "
        f"interval {plan.interval_cycles:.{di}f} cycles ({plan.describe()})",
        f"utilisation in % of one {opts.board.name}, cap {cap} on every resource; hops: {opts.hop_overhead_us:g} us + bytes on {opts.gbps:g} Gb/s",
    ]
    head = f"{'part':<7}{'kind':<7}{'layers':<28}{'precision':<16}{'reuse':>5} {'strategy':<9}{'LUT':>6}{'FF':>6}{'DSP':>6}{'BRAM':>6}{'cycles':>9}{'interval':>9}  estimator"
    lines += [head, "-" * len(head)]
    for r in rows:
        u = r["utilization"]
        layers = ",".join(r["layers"])
        if len(layers) > 27:
            layers = layers[:24] + "..."
        lines.append(
            f"{r['name']:<7}{r['kind']:<7}{layers:<28}{r['precision']:<16}{r['reuse_factor']:>5} {r['strategy']:<9}"
            + "".join(f"{100 * u[k]:>6.1f}" for k in ("lut", "ff", "dsp", "bram"))
            + f"{r['cycles']:>9.{dc}f}{r['interval_cycles']:>9.{dc}f}  {r['estimator']}{'*' if r['note'] else ''}"
            + ("  IMPLAUSIBLE" if r["implausible"] else "")
        )
    for r in rows:
        if r["note"]:
            lines.append(f"* {r['name']}: {r['note']}")
    for r in rows:
        for why in r["implausible"]:
            lines.append(f"IMPLAUSIBLE {r['name']}: {why}")
    if any("analytic" in r["estimator"] for r in rows):
        lines.append("estimator 'analytic': closed-form figures where rule4ml cannot read a layer (see splitting/estimate.py)")
    if not plan.exact:
        lines.append("note: the search dropped labels past its bound; this plan is the best found, not proven optimal")
    return lines


def pareto_table(front: List[PlanChoice]) -> List[str]:
    """The non-dominated plans as text lines: boards, latency (us), interval (cycles), stages and configurations."""
    lines = ["non-dominated plans (boards, latency, interval):",
             f"{'boards':>6} {'latency us':>11} {'interval':>9}  plan [reuse factor and strategy per stage]"]
    dl = decimals([p.latency_us for p in front], least=1)
    di = decimals([p.interval_cycles for p in front])
    for p in front:
        lines.append(f"{p.boards:>6} {p.latency_us:>11.{dl}f} {p.interval_cycles:>9.{di}f}  {p.describe()} [{p.configs()}]")
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
    apply(p, plan, opts, version)
    refuse_overwrite(folder, p.hash, force)
    from splitting.hls_support import check_plan

    check_plan(p, models, progress=progress)  # know before writing: hls4ml converts every partition
    return write_plan(p, models, folder).parent


def apply(p, plan: PlanChoice, opts: SearchOptions, version: str) -> None:
    """Set every partition's hls4ml configuration and estimate on the Plan `p` that split_model made."""
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
            r = rows[pname]
            part_obj.estimate = {
                "utilization": r["utilization"], "resources": r["resources"], "cycles": r["cycles"],
                "interval_cycles": r["interval_cycles"], "estimator": r["estimator"], "estimator_version": version,
                "note": r["note"],
                "board": opts.board.name, "cap": opts.cap,
            }
    b = opts.board
    p.board = b.name
    p.hls_defaults.update({"board": b.name, "part": b.part, "clock_period": round(b.clock_period_ns, 3)})
    p.model["planned"] = {
        "objective": opts.objective, "cap": opts.cap, "boards": plan.boards, "latency_us": round(plan.latency_us, 2),
        "interval_cycles": round(plan.interval_cycles, 1), "estimator_version": version, "exact": plan.exact,
    }
    p.notes.append(f"splitrack plan: {plan.describe()}; {plan.boards} board(s), latency {plan.latency_us:.1f} us, "
                   f"interval {plan.interval_cycles:.{decimals([plan.interval_cycles])}f} cycles (estimates: {version})")
