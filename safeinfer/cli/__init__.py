"""The ``safeinfer`` command. Each subcommand lives in its own ``_<name>.py`` module.

A subcommand module defines ``register(subparsers)``, which adds its parser and sets
``handler`` to a function that takes the parsed arguments and returns the exit code.
Exit codes: 0 success, 1 the work found or produced failures, 2 usage or I/O errors.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
from collections.abc import Sequence

from safeinfer._version import __version__
from safeinfer.errors import SafeInferError

#: Subcommand modules, in the order ``--help`` lists them.
SUBCOMMANDS: tuple[str, ...] = ("clean", "generate", "launch", "verify")

EXIT_OK = 0
EXIT_FAILURES = 1
EXIT_USAGE = 2
#: Exit status after the reader of standard output went away (``safeinfer verify | head``):
#: the status a shell shows for a process that SIGPIPE killed.
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE

_SUBCOMMAND = "_subcommand"

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """Build the full argument parser (also used to generate the command-line reference)."""
    parser = argparse.ArgumentParser(
        prog="safeinfer",
        description="Safe outputs for diffusion inference in many processes.",
    )
    parser.add_argument("--version", action="version", version=f"safeinfer {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)"
    )
    # A dest no subcommand option uses: launch's positional "command" would overwrite it.
    subparsers = parser.add_subparsers(dest=_SUBCOMMAND, metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        module = importlib.import_module(f"safeinfer.cli._{name}")
        module.register(subparsers)
    return parser


def _configure_logging(verbosity: int) -> None:
    # The command line owns its process, so configuring the root logger is fine here;
    # the library itself never does.
    level = logging.WARNING
    if verbosity == 1:
        level = logging.INFO
    elif verbosity >= 2:
        level = logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``safeinfer`` command and return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    name = getattr(args, _SUBCOMMAND)
    _configure_logging(args.verbose)
    try:
        code: int = args.handler(args)
        # Flushing here, not at interpreter exit, lets a closed pipe surface below.
        sys.stdout.flush()
    except SafeInferError as error:
        print(f"safeinfer {name}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"safeinfer {name}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader (head, less) went away. Point stdout at /dev/null so that the flush
        # at interpreter exit does not raise again, and end quietly like other tools.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE
    return code
