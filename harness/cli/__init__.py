"""The `splitrack` command line: argparse only, one module per command group; `commands.py` is the dispatcher."""

from harness.cli.commands import main  # noqa: E402,F401  (the `splitrack` entry point of installs made before the move)
