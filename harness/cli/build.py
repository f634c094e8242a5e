"""`splitrack build PLAN`: bitstreams of a plan's partitions with hls4ml + Vivado (splitting.hls)."""
from __future__ import annotations

import argparse
from pathlib import Path

from splitting.hls import build_bitstream, vivado_path
from splitting.plan import Plan


def configure(p: argparse.ArgumentParser) -> None:
    """Add the arguments of `splitrack build`: plan folder, --partition."""
    p.add_argument("plan", help="plan folder")
    p.add_argument("--partition", help="build only this partition")


def run(args) -> int:
    """Build the bitstream of every partition (or --partition) with hls4ml and Vivado. Returns 0; no Vivado on
    the PATH raises UserError (exit status 2)."""
    plan = Plan.load(Path(args.plan))
    vivado_path()  # before any work: say what to do when there is no Vivado
    names = [args.partition] if args.partition else [p.name for p in plan.ordered_partitions()]
    for i, name in enumerate(names, 1):
        print(f"[{i}/{len(names)}] {name}: hls4ml + Vivado build (synthesis, implementation, bitstream)", flush=True)
        out = build_bitstream(plan, name)
        print(f"  {name}: bitstream under {out}", flush=True)
    return 0
