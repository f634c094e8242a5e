"""`splitrack demo` (what `make demo` runs): the main job, harness.jobs.demo."""
from __future__ import annotations

import argparse
from pathlib import Path

from harness.jobs.demo import demo
from harness.cli.options import add_rack_file


def configure(p: argparse.ArgumentParser) -> None:
    """Add the arguments of `splitrack demo`: -o, -n samples, --boards, --no-rack, --frames."""
    p.add_argument("-o", "--out", default="plans", help="folder for the plans (default plans/)")
    p.add_argument("-n", "--samples", type=int, default=450, help="digits test samples to verify on (max 450)")
    add_rack_file(p, required=False, help="rack file to run on (default: start a 5-board virtual rack)")
    p.add_argument("--no-rack", action="store_true", help="stop after verification (no deployment)")
    p.add_argument("--frames", type=int, default=500, help="frames for the rack benchmark (default 500)")


def run(args) -> int:
    """The main job (harness.jobs.demo.demo). Returns its exit status: 0 all verified (and run on the rack), 1 a
    verification or rack step failed."""
    return demo(Path(args.out), args.samples, Path(args.boards) if args.boards else None, not args.no_rack,
                args.frames)
