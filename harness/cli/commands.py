"""The `splitrack` command: the dispatcher. Each sub-command's argparse code is a module of harness/cli/ that
calls the library; this file only knows their names, so that
`splitrack --help` does not import TensorFlow."""
from __future__ import annotations

import argparse
import importlib
import sys

# (command, module, one-line help). A module provides configure(parser) and run(args) -> int.
COMMANDS = [
    ("split", "harness.cli.split", "cut a Keras model by hand into a plan folder"),
    ("verify", "harness.cli.verify", "check a plan: float composition and hls4ml emulation chain"),
    ("plan", "harness.cli.plan", "propose partitions from calibrated resource estimates (analytic or rule4ml; cuts, neuron/input splits)"),
    ("boards", "harness.cli.plan", "the board catalog: resources, clock, part"),
    ("build", "harness.cli.build", "build bitstreams for a plan's partitions (needs Vivado)"),
    ("cosim", "harness.cli.cosim", "RTL cosimulation of a plan's AXI-stream partitions and links (cocotb)"),
    ("reference", "harness.cli.reference", "write the reference models (digits FC and CNN, trained; MLPerf Tiny shapes)"),
    ("rack", "harness.cli.rack", "start, stop or check a rack (`rack up` starts virtual PYNQ-Z2 boards)"),
    ("lab", "harness.cli.lab", "a shared rack through labgrid: exporter config, places, status, health tags"),
    ("doctor", "harness.cli.doctor", "check a rack before a deploy: SSH, Python and numpy, pynq, sudo, disk, clock, "
     "data port, and what a plan needs; one line per problem"),
    ("deploy", "harness.cli.deploy", "upload a plan's partitions to a rack over SSH and start the board agents"),
    ("run", "harness.cli.run", "stream frames (e.g. digits) through a deployed plan and check every answer"),
    ("history", "harness.cli.history", "result history (SQLite): add, list, check regressions, compare two runs, ack, export (BMF)"),
    ("dashboard", "harness.cli.dashboard", "write the static HTML dashboard (trends, per-hop breakdown, regressions)"),
    ("bench", "harness.cli.bench", "latency per hop of a plan on a rack, beside the CPU reference"),
    ("nightly", "harness.cli.nightly", "bench, add to the history, detect regressions, write the dashboard; exit 1 on a regression, 2 when the run failed"),
    ("demo", "harness.cli.demo", "the main job: reference models, CNN split three ways, verified"),
    ("cache", "harness.cli.cache", "the user cache (hls4ml projects, estimates, models): folder, size, `clean`"),
]


def _errors():
    from splitting.contract import ContractError
    from splitting.errors import UserError

    return (UserError, ContractError)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    from splitting.user_cache import cache_root

    try:
        v = version("splitrack")
    except PackageNotFoundError:  # run from a checkout that was not installed
        v = "(not installed)"
    return f"splitrack {v}, cache {cache_root()} (`splitrack cache` for its size, `splitrack cache clean`)"


class _Version(argparse.Action):
    """--version, printed as it is (argparse's own action re-wraps it, breaking the cache path)."""

    def __call__(self, parser, namespace, values, option_string=None):
        print(_version())
        parser.exit()


def build_parser(configured=None) -> argparse.ArgumentParser:
    """The `splitrack` parser, with the sub-commands named in `configured` (default: all) configured by their
    modules (imported here: `splitrack --help` configures none, so that it does not import TensorFlow).
    Every sub-parser is reachable as parser.commands[name]."""
    parser = argparse.ArgumentParser(prog="splitrack", description="Split neural networks across a rack of PYNQ-Z2 boards, verify the split, deploy it over SSH (real or virtual rack) and measure it hop by hop.")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show TensorFlow's and Keras' start-up messages (silenced by default)")
    parser.add_argument("--version", action=_Version, nargs=0, help="version and the cache folder, then exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    parser.commands = {}
    for name, module, help_ in COMMANDS:
        p = parser.commands[name] = sub.add_parser(name, help=help_, description=help_)
        if configured is None or name in configured:
            mod = importlib.import_module(module)
            mod.configure(p)
            p.set_defaults(_run=mod.run)
    return parser


def main(argv=None) -> int:
    """The `splitrack` command: parse `argv` (default sys.argv[1:]) and run the sub-command. Returns its exit
    status: the command's own (0, or 1 where it says so), 2 for no command or a UserError/ContractError
    (printed in one line), 130 on Ctrl-C."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # -v anywhere before the command: keep TensorFlow's and Keras' start-up noise (silenced by default)
    verbose = False
    while argv and argv[0] in ("-v", "--verbose"):
        verbose = True
        argv.pop(0)
    if not verbose:
        from splitting.quiet_tensorflow import quiet

        quiet()
    parser = build_parser([argv[0]] if argv else [])  # import only the module of the command being run
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
