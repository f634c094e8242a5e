"""`splitrack rack up|down|check`: start, stop and check a rack (deployment is `splitrack deploy`, in deploy.py)."""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from splitting.user_cache import cache_root
from harness.cli.options import add_board_count


def configure(p: argparse.ArgumentParser) -> None:
    """Add the actions of `splitrack rack` (up, down, check) and their arguments."""
    sub = p.add_subparsers(dest="rack_command", metavar="ACTION", required=True)
    up = sub.add_parser("up", help="start a virtual rack of PYNQ-Z2 boards and write its rack file")
    add_board_count(up, "n_boards", 5, "number of virtual boards (default 5)")
    up.add_argument("--out", type=Path, default=Path("rack.toml"), help="rack file to write (default rack.toml)")
    up.add_argument("--state", type=Path, default=None, help="folder for keys, homes and logs "
                    "(default <cache>/racks/..., see `splitrack cache`)")
    up.add_argument("--netns", action="store_true", help="each board in its own network namespace (root)")
    up.add_argument("--rate", default=None, help="with --netns: rate-limit every link, e.g. 1gbit (tbf)")
    up.add_argument("--timing", choices=["estimate"], default=None,
                    help="boards take the time the FPGA would (cycles from the plan at 100 MHz)")
    up.add_argument("--disk-mb", type=int, default=2048, help="disk size of every board (default 2048)")
    down = sub.add_parser("down", help="stop a virtual rack started by `rack up`")
    down.add_argument("rack", type=Path, help="rack file written by `rack up`")
    check = sub.add_parser("check", help="health check of every board: SSH, python, free memory and disk")
    check.add_argument("rack", type=Path, help="rack file (boards.toml, or rack.toml of `rack up`)")
    check.add_argument("--power-cycle", action="store_true", help="power-cycle bad boards that have a "
                       "power_cycle command, then check them again")


def run(args) -> int:
    """up: start a virtual rack and write its rack file; down: stop it; check: health-check every board.
    Returns 0, or 1 when `check` finds a bad board."""
    from harness.rack.virtual_rack import rack_down, rack_up, refuse_running

    if args.rack_command == "up":
        refuse_running(args.out)  # before "starting...": nothing starts when the rack is already up
        t0 = time.monotonic()
        print(f"starting {args.n_boards} virtual PYNQ-Z2 boards...", flush=True)
        rack = rack_up(args.n_boards, args.out, state=args.state, netns=args.netns, rate=args.rate,
                       timing=args.timing, disk_mb=args.disk_mb, progress=lambda s: print(s, flush=True))
        print(f"rack {rack.name}: {len(rack.boards)} boards up in {time.monotonic() - t0:.1f} s, "
              f"wrote {args.out}")
        return 0
    if args.rack_command == "down":
        n = rack_down(args.rack)
        print(f"stopped {n} virtual boards of {args.rack}" if n else f"{args.rack}: already stopped")
        return 0
    if args.rack_command == "check":
        from harness.rack.health import check_rack
        from harness.rack.rackfile import load_rack

        rack = load_rack(args.rack)
        bad = 0
        for h in check_rack(rack, recover=args.power_cycle):
            print(h.line())
            bad += not h.ok
        return 1 if bad else 0
    return 2
