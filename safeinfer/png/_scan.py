"""Check whole trees of PNG files on all cores: :func:`scan`.

Paths are walked lazily and checked in batches by a process pool that keeps a bounded
number of batches in flight, so memory does not grow with the size of the tree, only
with the largest single directory, whose listing is sorted in memory. Reports come back
in a stable order: the order of the given paths, and in each directory first its files
sorted by name, then its subdirectories sorted by name, each walked the same way. The
same workers also check files against manifest entries (size and SHA-256, in the same
read as the PNG check).
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import itertools
import multiprocessing
import os
import stat
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Final

from safeinfer.png._chunks import READ_PIECE_SIZE
from safeinfer.png._limits import DEFAULT_LIMITS, Limits
from safeinfer.png._report import (
    MISSING_FILE,
    PATH_ESCAPE,
    READ_ERROR,
    SHA256_MISMATCH,
    SIZE_MISMATCH,
    Level,
    PngReport,
    Problem,
)
from safeinfer.png._verify import DEFAULT_LEVEL, LEVELS, verify_open_file

#: File name pattern of :func:`scan`, matched case-insensitively (``.PNG`` counts too).
DEFAULT_PATTERN: Final = "*.png"
#: Files per task sent to a worker process. A structure check of a 500 KB file takes
#: about 0.1 ms, the same order as sending one task, so files travel in batches.
BATCH_SIZE: Final = 16
#: Batches in flight per worker: enough to keep every worker busy while the caller
#: consumes reports, few enough that memory does not grow with the tree.
IN_FLIGHT_PER_JOB: Final = 4


@dataclass(frozen=True, slots=True)
class VerifyTask:
    """One file to check, with its manifest entry's size and SHA-256 when it has one."""

    path: str
    expected_bytes: int | None = None
    expected_sha256: str | None = None
    #: False for a manifest entry that is not a PNG: only its size and hash are checked.
    check_png: bool = True
    #: Why the manifest entry's path leads out of the manifest's folder. When set, the
    #: file is never opened and the report carries this as a ``path-escape`` problem.
    escape: str | None = None

    @property
    def from_manifest(self) -> bool:
        return self.expected_bytes is not None or self.expected_sha256 is not None


def scan(
    paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    *,
    level: Level = DEFAULT_LEVEL,
    jobs: int | None = None,
    pattern: str = DEFAULT_PATTERN,
    limits: Limits | None = None,
) -> Iterator[PngReport]:
    """Check every PNG under ``paths`` and yield one :class:`PngReport` per file.

    A directory is walked recursively, and its files whose names match ``pattern`` are
    checked. Symbolic links to directories are not followed. A path naming a file is
    checked whatever its name. Reports come in a stable order, not as completed: the
    order of ``paths``, and in each directory first its files sorted by name, then its
    subdirectories sorted by name, each walked the same way. ``jobs`` worker processes
    share the work (default: every core this process may use; ``1`` checks in this
    process). A path that is missing or unreadable yields a report with a
    ``read-error`` problem instead of raising.

    >>> bad = [r for r in scan("outputs/") if not r.ok]  # doctest: +SKIP
    >>> for report in scan(["a.png", "outputs/"], level="structure"):  # doctest: +SKIP
    ...     print(report.summary())
    """
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    tasks = (VerifyTask(path) for path in iter_files(paths, pattern=pattern))
    return run_tasks(tasks, level=level, jobs=jobs, limits=limits)


def default_jobs() -> int:
    """Return the number of cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def name_matches(name: str, pattern: str) -> bool:
    """Return True when the file name ``name`` matches ``pattern``, ignoring case."""
    return fnmatch.fnmatchcase(name.lower(), pattern.lower())


def iter_files(
    paths: Iterable[str | os.PathLike[str]], *, pattern: str = DEFAULT_PATTERN
) -> Iterator[str]:
    """Yield the files under ``paths`` in the order :func:`scan` documents.

    A path that does not exist or a directory that cannot be listed is yielded as it is,
    so that the check reports it as a ``read-error``.
    """
    for top in paths:
        top = os.fspath(top)
        if not os.path.isdir(top):
            yield top
            continue
        stack = [top]
        while stack:
            directory = stack.pop()
            try:
                with os.scandir(directory) as entries:
                    listed = sorted(entries, key=lambda entry: entry.name)
            except OSError:
                yield directory
                continue
            subdirectories = []
            for entry in listed:
                if entry.is_dir(follow_symlinks=False):
                    subdirectories.append(entry.path)
                elif not name_matches(entry.name, pattern):
                    continue
                elif entry.is_file() or entry.is_symlink():
                    # A broken link is yielded and reported as unreadable; FIFOs, sockets
                    # and devices are skipped, because opening a FIFO blocks forever.
                    yield entry.path
            stack.extend(reversed(subdirectories))


def run_tasks(
    tasks: Iterable[VerifyTask],
    *,
    level: Level = DEFAULT_LEVEL,
    jobs: int | None = None,
    limits: Limits | None = None,
) -> Iterator[PngReport]:
    """Check ``tasks`` on ``jobs`` processes and yield the reports in task order."""
    if level not in LEVELS:
        raise ValueError(f"invalid level {level!r}: expected one of {', '.join(LEVELS)}")
    if jobs is not None and jobs < 1:
        raise ValueError(f"invalid jobs {jobs}: expected 1 or more")
    workers = jobs if jobs is not None else default_jobs()
    limits = limits if limits is not None else DEFAULT_LIMITS
    if workers == 1:
        return (verify_task(task, level, limits) for task in tasks)
    return _run_in_pool(tasks, level, workers, limits)


def start_method() -> str:
    """Return the multiprocessing start method for the worker pool."""
    methods = multiprocessing.get_all_start_methods()
    # fork starts workers fastest and never re-runs the caller's main script (which spawn
    # and forkserver do for a script without an ``if __name__ == "__main__"`` guard). But a
    # fork while other threads run (a progress bar's monitor, a notebook kernel's threads)
    # can copy a lock that one of them holds, so then forkserver forks from a clean process.
    if "fork" in methods and threading.active_count() == 1:
        return "fork"
    return "forkserver" if "forkserver" in methods else "spawn"


def _run_in_pool(
    tasks: Iterable[VerifyTask], level: Level, workers: int, limits: Limits
) -> Iterator[PngReport]:
    context = multiprocessing.get_context(start_method())
    pool = ProcessPoolExecutor(workers, mp_context=context)
    pending: deque[Future[list[PngReport]]] = deque()
    try:
        iterator = iter(tasks)
        while batch := list(itertools.islice(iterator, BATCH_SIZE)):
            pending.append(pool.submit(verify_batch, batch, level, limits))
            while len(pending) >= workers * IN_FLIGHT_PER_JOB:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def verify_batch(batch: list[VerifyTask], level: Level, limits: Limits) -> list[PngReport]:
    return [verify_task(task, level, limits) for task in batch]


def verify_task(task: VerifyTask, level: Level, limits: Limits) -> PngReport:
    """Check one file, and its size and SHA-256 against a manifest entry when given."""
    if task.escape is not None:
        report = PngReport(path=task.path, level=level)
        report.problems.append(Problem(PATH_ESCAPE, None, None, task.escape))
        return report
    digest = hashlib.sha256() if task.expected_sha256 is not None else None
    on_read = digest.update if digest is not None else None
    try:
        if not stat.S_ISREG(os.stat(task.path).st_mode):
            return _unreadable(task, level, OSError(errno.EINVAL, "not a regular file"))
        with open(task.path, "rb", buffering=0) as file:
            if task.check_png:
                report = verify_open_file(
                    file, task.path, level=level, limits=limits, on_read=on_read
                )
            else:
                report = PngReport(path=task.path, level=level)
            if digest is not None:
                # The check may stop early (a framing fault, a limit); hash the rest too.
                while piece := file.read(READ_PIECE_SIZE):
                    digest.update(piece)
            size = os.fstat(file.fileno()).st_size
    except OSError as error:
        return _unreadable(task, level, error)
    if task.expected_bytes is not None and size != task.expected_bytes:
        report.problems.append(
            Problem(
                SIZE_MISMATCH,
                None,
                None,
                f"size {size} bytes differs from the manifest's {task.expected_bytes} bytes",
            )
        )
    if digest is not None and digest.hexdigest() != task.expected_sha256:
        report.problems.append(
            Problem(
                SHA256_MISMATCH,
                None,
                None,
                f"SHA-256 {digest.hexdigest()} differs from the manifest's "
                f"{task.expected_sha256}: the file was changed or replaced",
            )
        )
    return report


def _unreadable(task: VerifyTask, level: Level, error: OSError) -> PngReport:
    report = PngReport(path=task.path, level=level)
    if isinstance(error, FileNotFoundError) and task.from_manifest:
        problem = Problem(MISSING_FILE, None, None, "file listed in the manifest is missing")
    else:
        reason = error.strerror or str(error)
        problem = Problem(READ_ERROR, None, None, f"cannot read {task.path}: {reason}")
    report.problems.append(problem)
    return report
