"""`splitrack bench PLAN --boards FILE`: latency per hop beside the CPU reference (harness.jobs.bench)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness.cli.deploy import add_wait_option
from harness.jobs.bench import (DEFAULT_SINGLE_RATE, BenchIncomplete, bench, bench_eval_data, dumps, format_bench,
                                save, write_incomplete)
from harness.cli.options import add_rack_file


def configure(p: argparse.ArgumentParser) -> None:
    """Add the arguments of `splitrack bench`: plan folder, --boards, frames, rate (frames/s), data, --json, --wait."""
    p.add_argument("plan", type=Path, help="plan folder (from `splitrack split` or `splitrack plan`)")
    add_rack_file(p)
    p.add_argument("--frames", type=int, default=2000, help="frames in each run, the single frames and the stream "
                   "(default 2000; the data set is cycled when it has fewer)")
    p.add_argument("--rate", type=float, default=None, help="offered rate of the stream, frames/s (default: as fast "
                   "as the rack takes them)")
    p.add_argument("--in-flight", type=int, default=8, help="frames in flight in the stream (and the CPU's batch)")
    p.add_argument("--single-rate", type=float, default=DEFAULT_SINGLE_RATE,
                   help=f"pace of the single-frame run, frames/s (default {DEFAULT_SINGLE_RATE:g}; 0: back to back)")
    add_data_option(p)
    p.add_argument("--label", default=None, help="name of this run's series in the history (default: the plan's "
                   "model name)")
    p.add_argument("--commit", default=None, help="your project's commit recorded with the run (default: the git "
                   "commit of the plan's folder)")
    p.add_argument("--no-cpu", action="store_true", help="skip the CPU reference")
    p.add_argument("--json", type=Path, default=None, metavar="FILE",
                   help="write the result here (and a PNG beside it); '-': print it on stdout as one JSON document "
                        "(progress on stderr)")
    add_wait_option(p)


def add_data_option(p: argparse.ArgumentParser) -> None:
    """--data: the frames a bench streams (bench, nightly), read by splitting.eval_data."""
    p.add_argument("--data", default="auto", help="frames and labels for accuracy: your FILE.npz (x, optional y) or "
                   "FILE.npy, 'digits' (splitrack's own split: may overlap your training data), 'random' (no labels), "
                   "or 'auto' (digits for 64 inputs, else random; default)")


def run(args: argparse.Namespace) -> int:
    """Deploy the plan, measure latency per hop (single frames and a stream) beside the CPU reference, print it
    (and write --json and its PNG; with --json - only the document, on stdout). Returns 0; a fault raises
    BenchIncomplete after writing what was measured (the dispatcher exits with status 2, as for any
    UserError)."""
    from splitting.plan import Plan

    from harness.rack.lab_lease import leased_rack
    from harness.rack.rackfile import load_rack

    to_stdout = str(args.json) == "-"
    say = (lambda s: print(s, file=sys.stderr, flush=True)) if to_stdout else print
    plan = Plan.load(args.plan)
    bench_eval_data(plan, 2, args.data)  # a bad --data fails here, before anything is deployed
    with leased_rack(load_rack(args.boards), len(plan.partitions), progress=say) as rack:  # a shared rack: leased
        try:
            doc = bench(plan, rack, args.frames, args.rate, args.in_flight, args.single_rate or None, args.data,
                        cpu=not args.no_cpu, progress=say, lease_wait=args.wait, label=args.label,
                        commit=args.commit)
        except BenchIncomplete as e:
            # where the complete result would have gone; without a --json file, beside the plan (nothing
            # measured is lost)
            path = (None if to_stdout else args.json) or (
                plan.root / "bench" / f"incomplete-{e.doc['time'].replace(':', '')}.json")
            write_incomplete(e.doc, path)
            raise BenchIncomplete(f"{e}; wrote {path} and {path.with_suffix('.png')}", e.doc) from None
    if to_stdout:
        print(dumps(doc))
        return 0
    print(format_bench(doc))
    if args.json:
        png = save(doc, args.json)
        print(f"wrote {args.json} and {png}")
    return 0
