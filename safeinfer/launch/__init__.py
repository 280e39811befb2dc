"""Run several copies of a server command on one host, one per GPU, and supervise them.

>>> from safeinfer.launch import launch
>>> launcher = launch(
...     ["python", "-m", "cog.server.http", "--host", "127.0.0.1"],
...     gpus="auto",
...     health="http://127.0.0.1:{port}/health-check",
... )                                                          # doctest: +SKIP
>>> launcher.urls()                                            # doctest: +SKIP
['http://127.0.0.1:5000', 'http://127.0.0.1:5001']
>>> launcher.stop()                                            # doctest: +SKIP
0

The ``safeinfer launch`` command does the same from a shell.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Unpack

from safeinfer.launch._health import Health, probe
from safeinfer.launch._launcher import DEFAULT_HEALTH_TIMEOUT, Launcher, LaunchOptions
from safeinfer.launch._plan import DEFAULT_BASE_PORT, WorkerInfo, detect_gpus, parse_gpus

__all__ = [
    "DEFAULT_BASE_PORT",
    "DEFAULT_HEALTH_TIMEOUT",
    "Health",
    "LaunchOptions",
    "Launcher",
    "WorkerInfo",
    "detect_gpus",
    "launch",
    "parse_gpus",
    "probe",
    "run_launch",
]


def launch(
    command: Sequence[str],
    *,
    wait: bool = True,
    timeout: float | None = None,
    **options: Unpack[LaunchOptions],
) -> Launcher:
    """Start the workers in the background and return the running :class:`Launcher`.

    ``options`` are those of :class:`Launcher` (``gpus`` or ``workers``, ``base_port``,
    ``run_dir``, ``health``, ``max_restarts``, ...). With ``wait`` (the default) this
    returns once every worker is ready (passed the ``health`` check, when given), and
    raises :class:`~safeinfer.errors.LaunchError` after stopping them all if a worker
    keeps failing or ``timeout`` seconds pass first. Call :meth:`Launcher.stop` when done.

    >>> launcher = launch(["python", "server.py", "--port", "{port}"], workers=2)  # doctest: +SKIP
    >>> launcher.stop()                                                          # doctest: +SKIP
    0
    """
    launcher = Launcher(command, **options)
    launcher.start(wait=wait, timeout=timeout)
    return launcher


def run_launch(command: Sequence[str], **options: Unpack[LaunchOptions]) -> int:
    """Run the workers in this thread until they end, one keeps failing, or a signal.

    ``options`` are those of :class:`Launcher`. Returns 0 when every worker finished,
    1 when one kept failing, ``128 + signum`` after SIGINT or SIGTERM (which stop every
    worker first).

    >>> code = run_launch(["python", "-m", "cog.server.http"], gpus="auto")  # doctest: +SKIP
    """
    return Launcher(command, **options).run()
