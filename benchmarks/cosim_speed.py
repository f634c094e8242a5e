"""Simulated clock cycles per second for one partition of the reference CNN, Verilator against Icarus.

    .venv/bin/python benchmarks/cosim_speed.py [--out benchmarks/out] [--partition s0] [--frames 12]

The reference CNN is split as the demo's "cnn-sequential" plan (cuts after conv2 and fc1); the default partition
is s2 (fc2 + softmax: 130 values in, 10 out), its da4ml datapath in our AXI-stream shell between two link
FIFOs; --partition s0 takes conv1+conv2 (two da4ml kernels behind our pixel sequencer, 1024 beats out). The same build of the same RTL runs the same seeded traffic on both simulators, in
two testbench modes: "checked" (protocol checker and AxiStreamMonitor on every interface, as in the tests)
and "bare" (only cocotbext-axi source and sink). Speed = simulated cycles / testbench seconds (simulator
start-up and build excluded; build times are reported separately). Both runs must pass and agree cycle for
cycle, or the figures are not printed as a result.
Prints a table and saves cosim_speed.png (+ .json) in --out.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SIMS = ("verilator", "icarus")
MODES = ("bare", "checked")


def cnn_plan(folder: Path):
    from splitting.plan import Plan
    from splitting.reference_models import reference_model
    from splitting.split import split_model, write_plan

    from harness.jobs.demo import CNN_PLANS

    if not (folder / "plan.json").is_file():
        plan, models = split_model(reference_model("cnn"), **CNN_PLANS["cnn-sequential"])
        write_plan(plan, models, folder)
    return Plan.load(folder)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="benchmarks/out")
    ap.add_argument("--partition", default="s2")
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--plan", default=None, help="plan folder (default <cache>/cosim/bench/cnn-sequential)")
    args = ap.parse_args(argv)

    from harness.cosim import rtlgen, sim
    from harness.cosim.cosim import cosimulate, single_partition_plan
    from harness.cosim.ops import partition_ops

    from splitting.user_cache import cache_root

    plan = cnn_plan(Path(args.plan) if args.plan else cache_root() / "cosim" / "bench" / "cnn-sequential")
    sub = single_partition_plan(plan, args.partition)
    t0 = time.time()
    core = rtlgen.generate(args.partition, partition_ops(plan, args.partition), sim.CACHE)
    print(f"{args.partition}: da4ml core, {core.stages} pipeline stages, cost {core.cost:.0f}, "
          f"in {core.in_packing['beats']} beats, out {core.out_packing['beats']} beats ({time.time() - t0:.0f} s)")
    rows = []
    for mode in MODES:
        for s in SIMS:
            r = cosimulate(sub, s, n_frames=args.frames, cores={args.partition: core}, checks=(mode == "checked"),
                           log=lambda *a, **k: print(*a, flush=True))
            if not r.ok:
                print(r.summary())
                print(f"{s} {mode}: the cosimulation failed; no speed figure for it")
                return 1
            rows.append({"sim": s, "mode": mode, "cycles": r.sim_cycles, "tb_seconds": round(r.tb_seconds, 2),
                         "cycles_per_second": round(r.cycles_per_second, 1), "build_seconds": round(r.build_seconds, 1),
                         "wall_seconds": round(r.wall_seconds, 2)})
    for mode in MODES:
        cyc = {r["sim"]: r["cycles"] for r in rows if r["mode"] == mode}
        if len(set(cyc.values())) != 1:
            print(f"{mode}: simulators disagree on the cycle count {cyc}: not comparable")
            return 1
    print(f"\n{'simulator':10s} {'mode':8s} {'cycles':>8s} {'tb s':>7s} {'cycles/s':>10s} {'build s':>8s}")
    for r in rows:
        print(f"{r['sim']:10s} {r['mode']:8s} {r['cycles']:8d} {r['tb_seconds']:7.2f} {r['cycles_per_second']:10.0f} "
              f"{r['build_seconds']:8.1f}")
    for mode in MODES:
        v = next(r for r in rows if r["sim"] == "verilator" and r["mode"] == mode)["cycles_per_second"]
        i = next(r for r in rows if r["sim"] == "icarus" and r["mode"] == mode)["cycles_per_second"]
        print(f"{mode}: Verilator / Icarus = {v / i:.1f}x")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"partition": args.partition, "plan_hash": plan.hash, "core_cost": core.cost, "stages": core.stages,
            "frames": args.frames, "rows": rows}
    (out / "cosim_speed.json").write_text(json.dumps(meta, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.38
    for k, s in enumerate(SIMS):
        vals = [next(r for r in rows if r["sim"] == s and r["mode"] == m)["cycles_per_second"] for m in MODES]
        bars = ax.bar([j + (k - 0.5) * width for j in range(len(MODES))], vals, width, label=s)
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
    ax.set_xticks(range(len(MODES)), [f"{m} testbench" for m in MODES])
    ax.set_ylabel("simulated cycles / s")
    ax.set_title(f"cosim speed: reference CNN partition {args.partition} (da4ml cost {core.cost:.0f})", fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "cosim_speed.png", dpi=120)
    print(f"saved {out / 'cosim_speed.png'} and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
