"""Every option and argument of every `splitrack` command (and of their actions: rack up, history add, ...)
says what it is for in --help: the parsers of harness/cli/commands.py's COMMANDS are walked, all configured.
Only an old spelling kept for a release (harness/cli/options.Deprecated) is hidden from --help."""
from __future__ import annotations

import argparse

from harness.cli.commands import COMMANDS, build_parser
from harness.cli.options import Deprecated, add_board_count


def without_help(parser: argparse.ArgumentParser, path: str):
    """'command [action] option' of every argument under `parser` that has no help text."""
    for a in parser._actions:
        if isinstance(a, argparse._HelpAction):
            continue
        if isinstance(a, argparse._SubParsersAction):
            for name, sub in a.choices.items():
                yield from without_help(sub, f"{path} {name}")
            continue
        if isinstance(a, Deprecated):  # hidden on purpose; its new spelling is walked with the rest
            continue
        if a.help is None or not str(a.help).strip() or a.help == argparse.SUPPRESS:
            yield f"{path} {'/'.join(a.option_strings) or a.dest}"


def test_every_option_of_every_command_has_help():
    parser = build_parser()
    assert sorted(parser.commands) == sorted(name for name, _, _ in COMMANDS)
    missing = list(without_help(parser, "splitrack"))
    assert missing == [], f"options without help text: {', '.join(missing)}"


def test_the_walk_finds_an_option_without_help():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers().add_parser("up")
    add_board_count(sub, "n", 1, help="number of boards")  # --n-boards, and --boards N hidden as deprecated
    sub.add_argument("--frames", type=int)
    sub.add_argument("--secret", help=argparse.SUPPRESS)
    assert list(without_help(p, "x")) == ["x up --frames", "x up --secret"]
