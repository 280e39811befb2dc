"""A lock per model, so one process downloads or warms a model while the others wait."""

from __future__ import annotations

import os
from typing import Final

from safeinfer.locks._mutex import DEFAULT_LEASE_DURATION, Mutex, SharedFs

__all__ = ["DEFAULT_MODEL_TIMEOUT", "model_lock"]

#: Seconds to wait for another process's download or warm-up. Multi-gigabyte checkpoints
#: take many minutes on a slow link, so this is far longer than the plain mutex default.
DEFAULT_MODEL_TIMEOUT: Final = 3600.0


def model_lock(
    model_id: str,
    *,
    lock_dir: str | os.PathLike[str] | None = None,
    timeout: float = DEFAULT_MODEL_TIMEOUT,
    shared_fs: SharedFs = False,
    lease_duration: float = DEFAULT_LEASE_DURATION,
) -> Mutex:
    """Return the mutex for one model id (a hub id, a local path or any name).

    Several processes that call ``from_pretrained`` on a cold cache race on the same
    partial downloads. Load under this lock: the first process downloads and fills the
    cache, and the rest load from the warm cache one after another. Put ``lock_dir`` on
    the cache's file system (with ``shared_fs=True`` on NFS, Lustre or GPFS) when
    processes on several hosts share one cache.

    >>> from safeinfer.locks import model_lock
    >>> with model_lock("stabilityai/sdxl-turbo"):                     # doctest: +SKIP
    ...     pipe = DiffusionPipeline.from_pretrained("stabilityai/sdxl-turbo")
    """
    return Mutex(
        f"model-{model_id}",
        lock_dir=lock_dir,
        timeout=timeout,
        shared_fs=shared_fs,
        lease_duration=lease_duration,
    )
