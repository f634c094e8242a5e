"""`splitrack dashboard`: write the static HTML dashboard of a history (harness.results.dashboard)."""
from __future__ import annotations

import argparse
from pathlib import Path

from harness.results.dashboard import write


def configure(p: argparse.ArgumentParser) -> None:
    """Add the arguments of `splitrack dashboard`: --db (history), -o (output folder)."""
    p.add_argument("--db", type=Path, default=Path("results.sqlite"), help="history database (default results.sqlite)")
    p.add_argument("-o", "--out", type=Path, default=Path("site"), help="folder for index.html, runs/ and plotly.min.js")


def run(args: argparse.Namespace) -> int:
    """Write the static HTML dashboard of the history and print how many regressions are in effect. Returns 0
    (a bad history exits with status 2)."""
    index, live = write(args.db, args.out)
    print(f"dashboard: {index} ({len(live)} regression(s) in effect)")
    return 0
