"""`splitrack deploy PLAN --boards FILE`: upload a plan's partitions and start the agents (harness.rack.deploy)."""
from __future__ import annotations

import argparse
from pathlib import Path

from splitting.plan import Plan

from harness.rack import wiring as wiring_mod
from harness.rack.deploy import deploy
from harness.cli.options import add_rack_file


def configure(p: argparse.ArgumentParser) -> None:
    """Add the arguments of `splitrack deploy`: plan folder, --boards, --force, --wait."""
    p.add_argument("plan", type=Path, help="plan folder (written by `splitrack split` or `splitrack plan`)")
    add_rack_file(p)
    p.add_argument("--force", action="store_true", help="upload and program even when a board carries the artifact")
    add_wait_option(p)


def add_wait_option(p: argparse.ArgumentParser) -> None:
    """--wait SECONDS: how long to wait for a board another user holds (deploy, run, bench, nightly)."""
    p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="when another user holds a board's lease, wait up to this long for it (default: fail at once)")


def run(args) -> int:
    """Upload the plan's partitions to the rack's boards, start their agents and print where each runs.
    Returns 0; a board or plan problem raises UserError (exit status 2)."""
    from harness.rack.rackfile import load_rack

    plan = Plan.load(args.plan)
    rack = load_rack(args.boards)
    dep = deploy(plan, rack, force=args.force, progress=lambda s: print(s, flush=True), lease_wait=args.wait)
    for pl in dep.placed.values():
        print(f"  {pl.partition:>12} on {pl.board:<10} agent {pl.host}:{pl.port}  "
              f"{'flashed' if pl.flashed else 'not flashed (same artifact)'}")
    print(f"deployed plan {plan.hash} to {len(dep.placed)} boards in {dep.seconds:.1f} s; "
          f"wiring in {plan.root / wiring_mod.WIRING_FILE}")
    return 0
