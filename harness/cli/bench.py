"""`splitrack bench PLAN --boards RACK`: latency per hop beside the CPU reference (harness.measure.bench)."""
from __future__ import annotations

import argparse
from pathlib import Path

from harness.measure.bench import DEFAULT_SINGLE_RATE, bench, format_bench, save


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("plan", type=Path, help="plan folder (from `splitrack split` or `splitrack plan`)")
    p.add_argument("--boards", type=Path, required=True, help="rack file (boards.toml)")
    p.add_argument("--frames", type=int, default=2000)
    p.add_argument("--rate", type=float, default=None, help="offered rate of the stream, frames/s (default: as fast "
                   "as the rack takes them)")
    p.add_argument("--in-flight", type=int, default=8, help="frames in flight in the stream (and the CPU's batch)")
    p.add_argument("--single-rate", type=float, default=DEFAULT_SINGLE_RATE,
                   help="pace of the single-frame run, frames/s (0: back to back)")
    p.add_argument("--data", default="auto", choices=("auto", "digits", "random"))
    p.add_argument("--no-cpu", action="store_true", help="skip the CPU reference")
    p.add_argument("--json", type=Path, default=None, help="write the result here (and a PNG beside it)")


def run(args: argparse.Namespace) -> int:
    from splitting.plan import Plan

    from harness.rack.rackfile import load_rack

    plan = Plan.load(args.plan)
    rack = load_rack(args.boards)
    doc = bench(plan, rack, args.frames, args.rate, args.in_flight, args.single_rate or None, args.data,
                cpu=not args.no_cpu)
    print(format_bench(doc))
    if args.json:
        png = save(doc, args.json)
        print(f"wrote {args.json} and {png}")
    return 0
