"""`splitrack history add|list|check`: the SQLite result history (harness.results.history) and its
regression check (harness.results.regress)."""
from __future__ import annotations

import argparse
from pathlib import Path

from harness.results import regress
from harness.results.history import History, HistoryError, rows_from_file


def configure(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    a = sub.add_parser("add", help="import bench --json or pytest-benchmark JSON files")
    a.add_argument("files", nargs="+", type=Path)
    a.add_argument("--db", type=Path, default=Path("results.sqlite"))
    a.add_argument("--rack", default=None, help="rack name for pytest-benchmark files without one in extra_info")
    ls = sub.add_parser("list", help="the runs in the history")
    ls.add_argument("--db", type=Path, default=Path("results.sqlite"))
    c = sub.add_parser("check", help="change points in every series; exit 1 on a regression still in effect")
    c.add_argument("--db", type=Path, default=Path("results.sqlite"))
    c.add_argument("--all-metrics", action="store_true", help="check every metric, not only the watched medians")
    c.add_argument("--min-change", type=float, default=0.05, help="smallest relative change reported (0.05 = 5%%)")


def run(args: argparse.Namespace) -> int:
    if args.action != "add" and not args.db.exists():
        raise HistoryError(f"{args.db} does not exist: add results first with `splitrack history add FILE --db {args.db}`")
    with History(args.db) as h:
        if args.action == "add":
            for f in args.files:
                rows = rows_from_file(f, args.rack)
                new = h.add(rows)
                print(f"{f}: {len(rows)} rows, {new} new -> {args.db}")
        elif args.action == "check":
            changes = regress.detect(h, None if args.all_metrics else regress.WATCH, min_relative=args.min_change)
            for c in changes:
                print(c.describe())
            live = regress.live_regressions(changes)
            print(f"{len(changes)} change(s), {len(live)} regression(s) in effect")
            return 1 if live else 0
        else:
            print(f"{'time':33s} {'rack':12s} {'machine':14s} {'commit':18s} {'plan':17s} rows")
            for t, rack, machine, commit, plan, n in h.runs():
                print(f"{t:33s} {rack:12s} {machine:14s} {commit:18s} {plan:17s} {n}")
    return 0
