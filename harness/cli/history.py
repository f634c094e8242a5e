"""`splitrack history`: add, list, check, compare, ack, export. Exit 0 fine, 1 regression, 2 bad input or a
damaged / foreign database.

    splitrack history add out.json --db results.sqlite [--label NAME] [--boards rack.toml]
    splitrack history list --db results.sqlite
    splitrack history check --db results.sqlite            # exit 1 on a regression in effect
    splitrack history compare previous latest [--json]     # exit 1 on a significant slowdown
    splitrack history ack RUN --why "new bitstream, slower by design"
    splitrack history export RUN --format bmf [-o run.bmf.json]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional

from harness.cli.options import RACK_FILE_HELP, add_deprecated, add_rack_file
from harness.results.history import History, HistoryError, load_file


def configure(p: argparse.ArgumentParser) -> None:
    """Add the actions of `splitrack history` (add, list, check, compare, ack, export) and their arguments."""
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    def db(q):
        q.add_argument("--db", type=Path, default=Path("results.sqlite"), help="history database (default results.sqlite)")

    a = sub.add_parser("add", help="import bench --json or pytest-benchmark JSON files")
    a.add_argument("files", nargs="+", type=Path, help="bench --json, run.json or pytest-benchmark --benchmark-json files")
    db(a)
    add_rack_file(a, required=False, help=RACK_FILE_HELP + ": names the rack of pytest-benchmark files without one "
                  "in extra_info")
    add_deprecated(a, "--rack", "--boards FILE", "rack_name", metavar="NAME")
    a.add_argument("--label", default=None, help="series name (default: the file's label, else the model's name)")
    ls = sub.add_parser("list", help="the runs in the history")
    db(ls)
    c = sub.add_parser("check", help="change points in every series; exit 1 on a regression still in effect")
    db(c)
    c.add_argument("--all-metrics", action="store_true", help="check every metric, not only the watched ones (per hop the p50, per board and end to end the floor, the stream's throughput, accuracy)")
    c.add_argument("--min-change", type=float, default=0.05, help="smallest relative change reported (0.05 = 5%%)")
    k = sub.add_parser("compare", help="A/B: per hop p50/p99 of two runs, change and Mann-Whitney p-value")
    k.add_argument("a", help="run id, label, commit, latest or previous")
    k.add_argument("b", help="run id, label, commit, latest or previous")
    db(k)
    k.add_argument("--threshold", type=float, default=0.05, help="smallest p50 change that counts (0.05 = 5%%)")
    k.add_argument("--alpha", type=float, default=0.01, help="significance level after Bonferroni adjustment")
    k.add_argument("--json", action="store_true", help="print the comparison as JSON")
    ack = sub.add_parser("ack", help="mark a run's change as known, so that check no longer reports it")
    ack.add_argument("run", type=int, help="run id (see `history list`)")
    ack.add_argument("--why", required=True, help="why the change is expected")
    db(ack)
    e = sub.add_parser("export", help="one run in another tool's format (bmf: Bencher Metric Format JSON)")
    e.add_argument("run", help="run id, label, commit or latest")
    e.add_argument("--format", choices=("bmf",), required=True, help="bmf: Bencher Metric Format JSON")
    e.add_argument("-o", "--out", type=Path, default=None, help="file to write (default: standard output)")
    db(e)


def run(args: argparse.Namespace) -> int:
    """Open the history (created only by `add`) and run the action. Returns 0, or 1 when `check` finds a
    regression in effect or `compare` a significant slowdown; HistoryError gives exit status 2."""
    with History(args.db, create=args.action == "add") as h:
        return ACTIONS[args.action](h, args)


def _rack_name(args) -> Optional[str]:
    """The rack's name: from the rack file of --boards (read, not checked for a running rack: a run is often
    added after its rack was stopped), or the deprecated --rack NAME."""
    if args.boards is None:
        return getattr(args, "rack_name", None)
    from harness.rack.rackfile import RackError, parse_rack

    try:
        return parse_rack(args.boards.read_text(), args.boards.resolve()).name
    except (OSError, UnicodeDecodeError) as e:
        raise RackError(f"{args.boards}: cannot read the rack file: {e}") from None


def _add(h: History, args) -> int:
    rack = _rack_name(args)
    parsed = [(f, p) for f in args.files for p in load_file(f, rack, args.label)]  # all valid before any write
    for f, (run, rows, samples) in parsed:
        run_id, new = h.add_run(run, rows, samples)
        state = "" if run.complete else f", INCOMPLETE: {run.error}"
        print(f"{f}: run {run_id} {run.label!r}: {len(rows)} rows, {new} new, "
              f"{len(samples)} sample sets{state} -> {args.db}")
    return 0


def _list(h: History, args) -> int:
    acks = h.acks()
    print(f"{'run':>4s} {'time (UTC)':20s} {'label':16s} {'model':12s} {'rack':10s} {'machine':12s} {'commit':17s} "
          f"{'plan':17s} state")
    for r in h.run_infos():
        state = "complete" if r.complete else f"INCOMPLETE: {r.error}"
        if r.run_id in acks:
            state += f" (acknowledged: {acks[r.run_id]})"
        print(f"{r.run_id:4d} {_utc(r.time):20s} {r.label[:16]:16s} {r.model[:12]:12s} {r.rack[:10]:10s} "
              f"{r.machine[:12]:12s} {r.commit_id[:17]:17s} {r.plan_hash[:17]:17s} {state}")
    return 0


def _utc(iso: str) -> str:
    """An ISO 8601 time as 'YYYY-MM-DD HH:MM:SSZ' in UTC (the stored text when it does not parse)."""
    from datetime import datetime, timezone

    try:
        t = datetime.fromisoformat(iso)
    except ValueError:
        return iso[:20]
    t = t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)
    return t.strftime("%Y-%m-%d %H:%M:%SZ")


def _check(h: History, args) -> int:
    from harness.results import regress

    res = regress.check(h, None if args.all_metrics else regress.WATCH, min_relative=args.min_change)
    runs = {r.run_id: r for r in h.run_infos()}
    for line in res.report(runs, h.acks()):
        print(line)
    return 1 if res.live else 0


def _compare(h: History, args) -> int:
    from harness.results.compare import compare, resolve

    b = resolve(h, args.b)
    a = resolve(h, args.a, other=b)
    if a.run_id == b.run_id:
        raise HistoryError(f"{args.a!r} and {args.b!r} are the same run ({a.run_id}): give two different runs")
    c = compare(h, a, b, args.threshold, args.alpha)
    print(json.dumps(c.to_dict(), indent=1) if args.json else c.format())
    return 1 if c.regressions else 0


def _ack(h: History, args) -> int:
    if not args.why.strip():
        raise HistoryError("--why must say why the change is expected")
    r = h.ack(args.run, args.why.strip())
    print(f"acknowledged {r.describe()}: {args.why.strip()}")
    return 0


def _export(h: History, args) -> int:
    from harness.results.bmf import run_bmf
    from harness.results.compare import resolve

    doc = json.dumps(run_bmf(h, resolve(h, args.run)), indent=1)
    if args.out:
        args.out.write_text(doc + "\n")
        print(f"wrote {args.out}")
    else:
        print(doc)
    return 0


ACTIONS = {"add": _add, "list": _list, "check": _check, "compare": _compare, "ack": _ack, "export": _export}
