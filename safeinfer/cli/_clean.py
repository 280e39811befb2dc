"""``safeinfer clean``: remove temp files that crashed or killed writers left behind."""

from __future__ import annotations

import argparse
import sys
from typing import Any

EPILOG = """\
A temp file is removed when its owner process on this host is gone (no process
with its pid and start time runs any more). Temp files of other hosts, or of other
containers on this host, are removed only with --older-than, once unchanged for
that long. Live writers' temp files and files that safeinfer did not create are
never touched.

example:
  safeinfer clean outputs/ --older-than 3600
"""


def _non_negative_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number of seconds: {text!r}") from None
    if not seconds >= 0:  # also rejects NaN
        raise argparse.ArgumentTypeError(f"seconds must be zero or more, got {text!r}")
    return seconds


def register(subparsers: Any) -> None:
    """Add the ``clean`` subcommand."""
    parser = subparsers.add_parser(
        "clean",
        help="remove temp files left by crashed or killed writers",
        description="Remove the writer's temp files whose owner process is gone, in DIR "
        "and every directory below it.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("directory", metavar="DIR", help="directory to sweep, recursively")
    parser.add_argument(
        "--older-than",
        type=_non_negative_seconds,
        metavar="SECONDS",
        help="also remove temp files of other hosts and containers unchanged for SECONDS",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="list what would be removed, remove nothing"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Sweep ``args.directory`` and print one removed path per line."""
    from safeinfer.cli import EXIT_OK, EXIT_USAGE
    from safeinfer.writer import clean_stale_temps

    if not args.directory:
        # An empty path would sweep the current directory, which is never what an empty
        # argument means.
        print(
            "safeinfer clean: error: DIR is empty; give the folder to sweep ('.' for this one)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        removed = clean_stale_temps(
            args.directory, older_than=args.older_than, dry_run=args.dry_run
        )
    except OSError as error:
        # A missing DIR or a file in its place.
        print(f"safeinfer clean: error: {error.filename}: {error.strerror}", file=sys.stderr)
        return EXIT_USAGE
    for path in removed:
        print(path)
    verb = "would remove" if args.dry_run else "removed"
    print(f"{verb} {len(removed)} stale temp file(s)", file=sys.stderr)
    return EXIT_OK
