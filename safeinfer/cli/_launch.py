"""``safeinfer launch``: run one copy of a server command per GPU and supervise them."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from safeinfer._supervisor import DEFAULT_MAX_RESTARTS, DEFAULT_STOP_TIMEOUT
from safeinfer.errors import ConfigError
from safeinfer.launch import DEFAULT_BASE_PORT, DEFAULT_HEALTH_TIMEOUT

EPILOG = """\
Each copy gets CUDA_VISIBLE_DEVICES (its GPU, or empty for --workers), PORT
(base port + index), a private TMPDIR and SAFEINFER_OUTPUT_DIR under the run
directory, SAFEINFER_GPU, SAFEINFER_WORKER and a CPU thread budget. {port}, {gpu} and {worker} in
the command are replaced per copy. The directory of this Python comes first on
PATH, because Cog starts its model worker as a bare `python`.

example:
  cd my-model && COG_PREDICT_TYPE_STUB=predict.py:Predictor \\
  safeinfer launch --gpus auto --health http://127.0.0.1:{port}/health-check \\
      -- python -m cog.server.http --host 127.0.0.1
"""


def register(subparsers: Any) -> None:
    """Add the ``launch`` subcommand."""
    parser = subparsers.add_parser(
        "launch",
        help="run one copy of a server command per GPU and restart copies that fail",
        description=(
            "Run one copy of COMMAND per GPU (or N CPU copies), each with its own GPU, "
            "port and temp dir, and supervise them until SIGINT or SIGTERM."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    devices = parser.add_mutually_exclusive_group(required=True)
    devices.add_argument(
        "--gpus",
        metavar="IDS",
        help="comma-separated GPU ids, one copy each, or 'auto' for every visible GPU",
    )
    devices.add_argument(
        "--workers", type=int, metavar="N", help="run N copies on the CPU (no GPU visible)"
    )
    parser.add_argument(
        "--base-port",
        type=int,
        default=DEFAULT_BASE_PORT,
        metavar="PORT",
        help=f"port of the first copy; copy i listens on PORT + i (default: {DEFAULT_BASE_PORT})",
    )
    parser.add_argument(
        "--run-dir",
        metavar="DIR",
        help="parent of each copy's tmp and outputs directories, kept after exit "
        "(default: a new temp dir, removed at exit)",
    )
    parser.add_argument(
        "--health",
        metavar="URL",
        help="health-check URL template, for example http://127.0.0.1:{port}/health-check; "
        "a copy counts as ready on HTTP 200 (and Cog status READY or BUSY)",
    )
    parser.add_argument(
        "--health-timeout",
        type=float,
        default=DEFAULT_HEALTH_TIMEOUT,
        metavar="SECONDS",
        help="seconds a copy gets to become ready after each start before it is "
        f"restarted (default: {DEFAULT_HEALTH_TIMEOUT:g})",
    )
    parser.add_argument(
        "--max-restarts",
        type=int,
        default=DEFAULT_MAX_RESTARTS,
        metavar="N",
        help=f"restarts per copy before the launcher gives up and exits with 1 "
        f"(default: {DEFAULT_MAX_RESTARTS})",
    )
    parser.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="CPU threads per copy (OMP_NUM_THREADS and friends; default: the cores "
        "split evenly between the copies)",
    )
    parser.add_argument(
        "--stop-timeout",
        type=float,
        default=DEFAULT_STOP_TIMEOUT,
        metavar="SECONDS",
        help=f"seconds copies get to exit after SIGTERM before they are killed "
        f"(default: {DEFAULT_STOP_TIMEOUT:g})",
    )
    parser.add_argument(
        "command",
        nargs=argparse.REMAINDER,
        metavar="-- COMMAND ARGS",
        help="the server command to run, after '--'",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run the launcher until the copies end or a signal arrives; return its exit code."""
    from safeinfer.launch import run_launch

    if args.verbose == 0:
        # A long-running service should show its starts, readiness and restarts.
        for name in ("safeinfer.launch", "safeinfer._supervisor"):
            logging.getLogger(name).setLevel(logging.INFO)
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise ConfigError("no command to launch; put the server command after '--'")
    return run_launch(
        command,
        gpus=args.gpus,
        workers=args.workers,
        base_port=args.base_port,
        run_dir=args.run_dir,
        health=args.health,
        health_timeout=args.health_timeout,
        max_restarts=args.max_restarts,
        stop_timeout=args.stop_timeout,
        threads=args.threads,
    )
