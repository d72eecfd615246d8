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
import errno
import signal
import sys
import threading

from job.cli import (
    analyze,
    demo,
    drain,
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
from job.storage import scratch

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
    "drain": drain,
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
    if threading.current_thread() is threading.main_thread():
        # Kubernetes and `ray job stop` stop a driver with SIGTERM. As SystemExit it unwinds
        # like an error: the run lease is released and scratch space removed.
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        return _run(args)
    finally:
        scratch.cleanup()  # every exit path, not only the ones that reach atexit


def _run(args: argparse.Namespace) -> int:
    """The command, with user errors turned into one `error:` line."""
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        # A full disk can surface from any library's own writes (TensorFlow's checkpoint and
        # event files, temp files); ours say which path, theirs at least say what to do.
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            raise
        where = f" ({exc.filename})" if exc.filename else ""
        print(
            f"error: {exc.strerror}{where}. Free space on that disk or choose another location; "
            "files are published only when complete, so nothing half-written was left as a result.",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to resume from the last checkpoint", file=sys.stderr)
        return 130
