"""The `splitrack` command: the dispatcher. Each sub-command's argparse code is a module of harness/cli/ (the
cosim command's is harness/cosim/cli.py) that calls the library; this file only knows their names, so that
`splitrack --help` does not import TensorFlow."""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

# (command, module, one-line help). A module provides configure(parser) and run(args) -> int.
COMMANDS = [
    ("split", "harness.cli.split", "cut a Keras model by hand into a plan folder"),
    ("verify", "harness.cli.verify", "check a plan: float composition and hls4ml emulation chain"),
    ("plan", "harness.cli.plan", "propose partitions from rule4ml resource estimates (cuts, neuron/input splits)"),
    ("boards", "harness.cli.plan", "the board catalog: resources, clock, part"),
    ("build", "harness.cli.build", "build bitstreams for a plan's partitions (needs Vivado)"),
    ("cosim", "harness.cosim.cli", "RTL cosimulation of a plan's AXI-stream partitions and links (cocotb)"),
    ("reference", "harness.cli.reference", "train and save the reference models (digits FC and CNN)"),
    ("rack", "harness.cli.rack", "start, stop or check a rack (`rack up` starts virtual PYNQ-Z2 boards)"),
    ("deploy", "harness.cli.deploy", "upload a plan's partitions to a rack over SSH and start the board agents"),
    ("run", "harness.cli.run", "stream frames (e.g. digits) through a deployed plan and check every answer"),
    ("history", "harness.cli.history", "result history (SQLite): add bench/pytest-benchmark JSON, list runs, check regressions"),
    ("dashboard", "harness.cli.dashboard", "write the static HTML dashboard (trends, per-hop breakdown, regressions)"),
    ("bench", "harness.cli.bench", "latency per hop of a plan on a rack, beside the CPU reference"),
    ("nightly", "harness.cli.nightly", "bench, add to the history, detect regressions, write the dashboard; exit 1 on a regression"),
    ("demo", "harness.cli.demo", "the main job: reference models, CNN split three ways, verified"),
]


def _errors():
    from splitting.contract import ContractError
    from splitting.errors import UserError

    return (UserError, ContractError)


def main(argv=None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # keras' predict on partitions of different shapes triggers tf.function "retracing" warnings: noise here
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    parser = argparse.ArgumentParser(prog="splitrack", description="Split neural networks across a rack of PYNQ-Z2 boards, verify the split, deploy it over SSH (real or virtual rack) and measure it hop by hop.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = argv[0] if argv else (sys.argv[1] if len(sys.argv) > 1 else None)
    for name, module, help_ in COMMANDS:
        p = sub.add_parser(name, help=help_, description=help_)
        if name == chosen:  # import only the module of the command being run
            mod = importlib.import_module(module)
            mod.configure(p)
            p.set_defaults(_run=mod.run)
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except _errors() as e:
        print(f"splitrack {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"splitrack {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
