"""CPU thread budgets, so N workers on C cores do not oversubscribe them."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Final

from safeinfer.errors import ConfigError

__all__ = [
    "THREADS_ENV",
    "THREAD_ENV_VARS",
    "apply_thread_budget",
    "available_cores",
    "thread_budget",
]

logger = logging.getLogger(__name__)

#: The budget this project's launcher gave a worker.
THREADS_ENV: Final = "SAFEINFER_THREADS"

#: Thread-count variables of the OpenMP, MKL, OpenBLAS, Accelerate and numexpr runtimes.
#: Only the count is set: ``OPENBLAS_CORETYPE`` and other tuning variables stay as given.
THREAD_ENV_VARS: Final = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    THREADS_ENV,
)

_CGROUP_CPU_MAX: Final = "/sys/fs/cgroup/cpu.max"


def available_cores(*, cgroup_cpu_max: str = _CGROUP_CPU_MAX) -> int:
    """Count the cores this process may run on: its CPU affinity, capped by a cgroup quota.

    Containers often get a CPU quota (cgroup v2 ``cpu.max``) smaller than the cores they
    see; a budget from ``os.cpu_count()`` alone would then oversubscribe.
    """
    if hasattr(os, "sched_getaffinity"):
        cores = len(os.sched_getaffinity(0))
    else:
        cores = os.cpu_count() or 1
    quota = _cgroup_quota(cgroup_cpu_max)
    if quota is not None:
        cores = min(cores, quota)
    return max(1, cores)


def thread_budget(workers: int, *, cores: int | None = None) -> int:
    """Return the threads each of ``workers`` processes may use on ``cores`` cores (at least 1).

    >>> thread_budget(4, cores=16)
    4
    >>> thread_budget(8, cores=2)
    1
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"invalid worker count {workers!r}: expected an integer >= 1")
    if cores is None:
        cores = available_cores()
    if cores < 1:
        raise ConfigError(f"invalid core count {cores!r}: expected an integer >= 1")
    return max(1, cores // workers)


def apply_thread_budget(threads: int) -> None:
    """Limit this process to ``threads`` CPU threads.

    Sets :data:`THREAD_ENV_VARS` (read by runtimes that start later, and inherited by
    child processes) and, when torch is already imported, ``torch.set_num_threads``.
    ``torch.set_num_interop_threads`` only works before torch's first parallel work, so a
    refusal there is logged and skipped. NOTE: a BLAS runtime that numpy already loaded
    keeps its thread count; set the budget before importing numpy, or launch the worker
    with :func:`~safeinfer.gpu.worker_env`.

    >>> apply_thread_budget(thread_budget(4))               # doctest: +SKIP
    """
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"invalid thread count {threads!r}: expected an integer >= 1")
    for name in THREAD_ENV_VARS:
        os.environ[name] = str(threads)

    torch = sys.modules.get("torch")
    if torch is None:
        return
    torch.set_num_threads(threads)
    if torch.get_num_interop_threads() != threads:
        try:
            torch.set_num_interop_threads(threads)
        except RuntimeError as error:
            logger.debug("torch kept its inter-op thread count: %s", error)


def _cgroup_quota(path: str) -> int | None:
    try:
        fields = Path(path).read_text().split()
    except OSError:
        return None
    if len(fields) != 2 or fields[0] == "max":
        return None
    try:
        quota, period = int(fields[0]), int(fields[1])
    except ValueError:
        return None
    if quota <= 0 or period <= 0:
        return None
    # A quota of 1.5 cores still lets one more thread make progress, so round up.
    return max(1, -(-quota // period))
