"""The `splitrack` command line: argparse only, one module per command group; `commands.py` is the dispatcher
(the `splitrack` entry point, `harness.cli.commands:main`)."""
