"""Options several commands share, spelled once: the rack file is `--boards FILE` wherever a command takes one
(deploy, run, bench, nightly, demo, history add; pytest's own --boards too), a number of boards is
`--n-boards N` (rack up, plan). An old spelling keeps working for a release, with one line on stderr."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

RACK_FILE_HELP = "rack file (boards.toml, or the rack.toml of `splitrack rack up`)"


def add_rack_file(p, required: bool = True, help: str = RACK_FILE_HELP) -> None:
    """`--boards FILE`: the rack file (args.boards, a Path). `p`: a parser or an argument group."""
    p.add_argument("--boards", type=Path, required=required, metavar="FILE", help=help)


class Deprecated(argparse.Action):
    """An old spelling of an option: stores its value under the new option's dest, and says on stderr (one
    line) which spelling to use; hidden from --help."""

    def __init__(self, option_strings, dest, new: str = "", **kw):
        self.new = new
        super().__init__(option_strings, dest, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog}: {option_string} is deprecated, use {self.new} (the old spelling goes in the next "
              "release)", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_deprecated(p, old: str, new: str, dest: str, **kw) -> None:
    """`old` as a hidden, deprecated spelling of the option `new` (same dest, same type)."""
    p.add_argument(old, dest=dest, action=Deprecated, new=new, help=argparse.SUPPRESS, **kw)


def add_board_count(p, dest: str, default, help: str) -> None:
    """`--n-boards N`: a number of boards (args.<dest>), with `--boards N`, its spelling before the rack file
    took `--boards`, deprecated."""
    p.add_argument("--n-boards", type=int, default=default, dest=dest, metavar="N", help=help)
    add_deprecated(p, "--boards", "--n-boards", dest, type=int, metavar="N")
