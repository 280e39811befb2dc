"""The writer pool: encodes and writes images in threads while the next batch runs.

Inference holds the device; PNG encoding, hashing and fsync hold only a CPU core and the
disk, and all of them release the GIL. Running them in a few threads lets the next
inference start at once. The pool is bounded: ``submit`` blocks while ``max_pending``
images wait or are being written, so a slow disk slows the producer down instead of
filling memory with decoded images.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Final, TypeVar

from safeinfer.errors import ConfigError

T = TypeVar("T")

#: Threads that encode and write. Two keep the disk busy while one thread encodes;
#: more rarely help, because a tiny or fast model is limited by its own CPU time.
DEFAULT_WRITER_THREADS: Final = 2

#: Images that may wait or be in flight before the producer blocks.
DEFAULT_MAX_PENDING: Final = 4


class WriterPool:
    """A bounded thread pool for write jobs. ``threads=0`` writes in the caller's thread."""

    def __init__(
        self, *, threads: int = DEFAULT_WRITER_THREADS, max_pending: int = DEFAULT_MAX_PENDING
    ) -> None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
            raise ConfigError(f"invalid writer_threads {threads!r}: use 0 or more")
        if isinstance(max_pending, bool) or not isinstance(max_pending, int) or max_pending < 1:
            raise ConfigError(f"invalid max_pending {max_pending!r}: use 1 or more")
        self.threads = threads
        self.max_pending = max_pending
        self._slots = threading.BoundedSemaphore(max_pending)
        self._executor = (
            ThreadPoolExecutor(max_workers=threads, thread_name_prefix="safeinfer-writer")
            if threads
            else None
        )

    def submit(self, function: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Queue ``function(*args, **kwargs)``; block while the pool is full."""
        if self._executor is None:
            inline: Future[T] = Future()
            try:
                inline.set_result(function(*args, **kwargs))
            except Exception as error:
                inline.set_exception(error)
            return inline

        self._slots.acquire()
        try:
            future = self._executor.submit(function, *args, **kwargs)
        except BaseException:
            self._slots.release()
            raise
        future.add_done_callback(lambda _: self._slots.release())
        return future

    def close(self) -> None:
        """Wait for queued writes, then stop the threads. Later submits raise RuntimeError."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
