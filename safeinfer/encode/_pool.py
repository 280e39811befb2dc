"""The thread pool that filters and deflates large images in parallel.

numpy's array operations and the deflate libraries release the GIL while they work on
large buffers, so threads give real parallelism here without extra processes.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Final, TypeVar

#: Upper bound on threads per image: beyond this, blocks get too few per thread to gain.
MAX_THREADS: Final = 8

#: The per-process CPU thread budget that safeinfer's launcher and job workers set.
THREADS_ENV: Final = "SAFEINFER_THREADS"

_Item = TypeVar("_Item")
_Result = TypeVar("_Result")

_lock = threading.Lock()
_executors: dict[int, ThreadPoolExecutor] = {}


def thread_count() -> int:
    """Return the threads to use per image, at most :data:`MAX_THREADS`.

    The budget in ``SAFEINFER_THREADS`` wins when it is a positive integer, because the
    launcher sets it so that several workers on one machine do not oversubscribe the
    cores. Otherwise the count is the CPUs this process may run on.
    """
    budget = os.environ.get(THREADS_ENV, "")
    if budget.isdigit() and int(budget) > 0:
        return min(int(budget), MAX_THREADS)
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no sched_getaffinity.
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, MAX_THREADS))


def map_in_threads(
    function: Callable[[_Item], _Result], items: Iterable[_Item], threads: int
) -> list[_Result]:
    """Return ``[function(item) for item in items]``, computed on up to ``threads`` threads."""
    if threads <= 1:
        return [function(item) for item in items]
    return list(_executor(threads).map(function, items))


def _forget_pools_in_child() -> None:
    # A forked child inherits the pools but not their threads, and ThreadPoolExecutor
    # does not notice: work submitted to an inherited pool would wait forever. The child
    # starts new pools instead, and a new lock in case the fork happened while it was held.
    global _lock
    _lock = threading.Lock()
    _executors.clear()


if hasattr(os, "register_at_fork"):  # Windows has no fork.
    os.register_at_fork(after_in_child=_forget_pools_in_child)


def _executor(threads: int) -> ThreadPoolExecutor:
    # Long-lived pools: starting threads for every image would cost more than the
    # parallelism saves on mid-sized images.
    with _lock:
        pool = _executors.get(threads)
        if pool is None:
            pool = ThreadPoolExecutor(threads, thread_name_prefix="safeinfer-encode")
            _executors[threads] = pool
        return pool
