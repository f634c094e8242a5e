"""`splitrack verify PLAN`: float composition and the hls4ml emulation chain of a plan (splitting.verify)."""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from splitting.plan import Plan
from splitting.errors import UserError
from splitting.verify import MAX_ACCURACY_DROP, render, verify_plan


def configure(p: argparse.ArgumentParser) -> None:
    """Add the arguments of `splitrack verify`: plan folder, --data, -n samples, --no-hls, --json."""
    p.add_argument("plan", help="plan folder (written by `splitrack split` or `splitrack plan`)")
    p.add_argument("--data", default="random", help="digits (splitrack's own split: may overlap your training "
                   "data) | random | your file.npz with x (and y) or file.npy (default: random)")
    p.add_argument("-n", "--samples", type=int, default=512, help="number of evaluation samples (default 512)")
    p.add_argument("--no-hls", action="store_true", help="check the float composition only")
    p.add_argument("--max-accuracy-drop", type=float, default=100 * MAX_ACCURACY_DROP, metavar="POINTS",
                   help="labelled data: the most accuracy (percentage points) the split hls4ml chain may lose "
                        f"against Keras before verify fails (default {100 * MAX_ACCURACY_DROP:g})")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")


def run(args) -> int:
    """Verify the plan (float composition, and the hls4ml emulation chain unless --no-hls) and print the
    result. Returns 0 when it verifies, 1 when it does not."""
    plan = Plan.load(Path(args.plan))
    log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    if not 0 <= args.max_accuracy_drop <= 100:
        raise UserError(f"--max-accuracy-drop {args.max_accuracy_drop:g}: give percentage points from 0 to 100")
    v = verify_plan(plan, args.data, args.samples, hls=not args.no_hls, log=log,
                    max_accuracy_drop=args.max_accuracy_drop / 100)
    if args.json:
        d = asdict(v)
        d["ok"] = v.ok
        print(json.dumps(d, indent=1))
    else:
        print(render(v))
    return 0 if v.ok else 1
