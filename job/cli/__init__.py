"""The command-line wing: `python -m job COMMAND`, one module per command.

Each command module has `HELP`, `add_arguments(parser)` and `run(args) -> int`, and is listed
in `COMMANDS` below; nothing is discovered or skipped at run time. Commands that load
TensorFlow or Ray import them inside `run`, so `--help` stays instant.

Every command exits 0 on success and 1 on a user error, printing what is wrong and what to
do, without a traceback. `--verbose` turns Ray's and TensorFlow's own logging back up.

May import: every other wing.
"""

from __future__ import annotations

import argparse
import sys

from job.cli import (
    analyze,
    demo,
    evaluate,
    export,
    predict,
    prepare,
    synth,
    train,
    validate,
)
from job.console import setup_logging
from job.errors import UserError

COMMANDS = {
    "demo": demo,
    "synth": synth,
    "prepare": prepare,
    "validate": validate,
    "train": train,
    "evaluate": evaluate,
    "analyze": analyze,
    "export": export,
    "predict": predict,
}


def build_parser() -> argparse.ArgumentParser:
    """The `python -m job` parser with every command registered."""
    parser = argparse.ArgumentParser(
        prog="python -m job", description=__doc__.split("\n\n")[2], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--verbose", action="store_true", help="Show Ray's and TensorFlow's own logs.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        command = sub.add_parser(
            name, help=module.HELP, description=module.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        module.add_arguments(command)
        command.set_defaults(func=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse, set up the console, run the command; user errors become one line on stderr."""
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to resume from the last checkpoint", file=sys.stderr)
        return 130
