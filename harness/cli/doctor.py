"""`splitrack doctor --boards RACK [PLAN]`: is the rack ready for a deploy (of this plan)? (harness.jobs.doctor)"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from harness.cli.options import add_rack_file


def configure(p: argparse.ArgumentParser) -> None:
    """Add the arguments of `splitrack doctor`: --boards, the optional plan folder, --json."""
    p.add_argument("plan", type=Path, nargs="?", default=None,
                   help="plan folder: also check what it needs (enough boards, bitstreams, disk for its files)")
    add_rack_file(p)
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout (the problems and "
                   "every board's facts) instead of the table")


def run(args) -> int:
    """Check every board (and the plan). Prints a table and returns 0 when all is good; prints one line per
    problem (or the JSON document) and returns 2 otherwise. A rack file or plan that cannot be read: exit 2
    (with --json, as a JSON document with that one problem)."""
    from splitting.errors import UserError
    from splitting.plan import Plan

    from harness.jobs.doctor import doctor
    from harness.rack.rackfile import load_rack

    def refuse(what: str, e: Exception) -> int:
        if not args.json:
            raise e
        print(json.dumps({"ok": False, "rack": str(args.boards), "plan": str(args.plan) if args.plan else None,
                          "host": {}, "boards": [], "problems": [f"{what}: {e}"]}, indent=1))
        return 2

    try:
        rack = load_rack(args.boards)
    except UserError as e:
        return refuse("rack", e)
    try:
        plan = Plan.load(args.plan) if args.plan is not None else None
    except UserError as e:
        return refuse("plan", e)
    report = doctor(rack, plan, progress=lambda s: print(s, file=sys.stderr, flush=True))
    if args.json:
        print(json.dumps(report.to_dict(), indent=1))
    elif report.ok:
        print(report.table())
        print(f"doctor: {len(report.boards)} boards ready" + (f" for plan {plan.hash}" if plan else ""))
    else:
        for line in report.lines():
            print(line)
        n = len(report.lines())
        print(f"splitrack doctor: {n} problem{'s' if n != 1 else ''}: exit 2", file=sys.stderr)
    return 0 if report.ok else 2
