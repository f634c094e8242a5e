"""`splitrack run PLAN (--boards FILE | --local)`: stream frames through a plan's boards and check every answer
(harness.jobs.run)."""
from __future__ import annotations

import argparse
from pathlib import Path

from splitting.plan import Plan

from harness.cli.deploy import add_wait_option
from harness.jobs.run import load_data, run_local, run_on_rack
from harness.cli.options import add_rack_file


def configure(p: argparse.ArgumentParser) -> None:
    """Add the arguments of `splitrack run`: plan folder, --boards or --local, data, frames, in-flight,
    rate (frames/s), timeout (s), --no-check, --out, --wait."""
    p.add_argument("plan", type=Path, help="plan folder (written by `splitrack split` or `splitrack plan`)")
    where = p.add_mutually_exclusive_group(required=True)
    add_rack_file(where, required=False)
    where.add_argument("--local", action="store_true", help="run the agents as local processes (no SSH, no rack)")
    p.add_argument("--data", default="digits", help="'digits' (splitrack's own split: may overlap your training data) "
                   "or your .npz (x, optional y labels) / .npy file (default digits)")
    p.add_argument("--label", default=None, help="name of this run's series (default: the plan's model name)")
    p.add_argument("--commit", default=None, help="your project's commit recorded with the run (default: the git commit of the plan's folder)")
    p.add_argument("--frames", type=int, default=None, help="stream only the first N frames")
    p.add_argument("--in-flight", type=int, default=8, help="frames in flight (default 8)")
    p.add_argument("--rate", type=float, default=None, help="offered rate, frames/s (default: as fast as it goes)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds a frame may take before it is lost")
    p.add_argument("--no-check", action="store_true", help="skip the comparison with the chained emulation")
    p.add_argument("--out", type=Path, default=None, help="folder for run.json and run.png (default: plan/run)")
    add_wait_option(p)


def run(args) -> int:
    """Stream the data through the plan (on the rack or local agents), write run.json and run.png, check every
    output against the chained emulation. Returns 0; a mismatch or a fault raises RunError (exit status 2)."""
    plan = Plan.load(args.plan)
    data = load_data(args.data, plan, args.frames)
    print(f"data: {data.describe()}" + (f"\n  note: {data.note}" if data.note else ""), flush=True)
    out_dir = args.out or plan.root / "run"
    kw = dict(in_flight=args.in_flight, rate=args.rate, timeout=args.timeout, check=not args.no_check,
              progress=lambda s: print(s, flush=True), label=args.label, data_source=data.source,
              commit=args.commit)
    if args.local:
        run_local(plan, data.x, data.y, out_dir, **kw)
    else:
        from harness.rack.rackfile import load_rack

        rack = load_rack(args.boards)
        # the rack by its name, as `bench` records it: one rack, one series (the file is named on screen)
        run_on_rack(plan, rack, data.x, data.y, out_dir, lease_wait=args.wait, where=f"rack {rack.name} ({args.boards})",
                    **kw)
    return 0
