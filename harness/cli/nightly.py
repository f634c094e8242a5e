"""`splitrack nightly --boards FILE`: bench, history, regression check, dashboard (harness.jobs.nightly)."""
from __future__ import annotations

import argparse
from pathlib import Path

from harness.cli.bench import add_data_option
from harness.cli.deploy import add_wait_option
from harness.jobs.nightly import nightly
from harness.cli.options import add_rack_file


def configure(p: argparse.ArgumentParser) -> None:
    """Add the arguments of `splitrack nightly`: --boards, --db, -o, --plan, frames, rate, --data, label,
    --min-change, --wait."""
    add_rack_file(p)
    p.add_argument("--db", type=Path, default=Path("results.sqlite"), help="history database (SQLite; default results.sqlite in the current folder, created on first use)")
    p.add_argument("-o", "--out", type=Path, default=Path("site"), help="dashboard folder (index.html, runs/)")
    p.add_argument("--plan", type=Path, default=None, help="plan folder (default: the digits FC reference plan)")
    p.add_argument("--frames", type=int, default=500, help="frames in each run of the bench (default 500)")
    p.add_argument("--rate", type=float, default=None, help="offered rate of the stream, frames/s")
    add_data_option(p)
    p.add_argument("--label", default=None, help="name of the series (default: the plan's model name)")
    p.add_argument("--commit", default=None, help="your project's commit recorded with the run (default: the git "
                   "commit of the plan's folder)")
    p.add_argument("--min-change", type=float, default=0.05, help="smallest relative change that counts (0.05 = 5%%)")
    add_wait_option(p)


def run(args: argparse.Namespace) -> int:
    """Bench, add the run to the history, check for regressions and write the dashboard. Returns 1 when a
    regression is in effect (each printed), else 0."""
    live = nightly(args.boards, args.db, args.out, args.plan, args.frames, args.rate, args.min_change,
                   lease_wait=args.wait, label=args.label, data=args.data, commit=args.commit)
    for al, r in live:
        print(al.describe(r))
    if live:
        hops = sorted({al.primary.key.hop for al, _ in live})
        print(f"nightly: {len(live)} regression(s) in effect, at {', '.join(hops)}: exit 1")
        return 1
    print("nightly: no regression in effect")
    return 0
