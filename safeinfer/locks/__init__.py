"""Named inter-process mutexes on filelock, with finite timeouts and named holders.

>>> from safeinfer.locks import mutex
>>> with mutex("index", timeout=30):                     # doctest: +SKIP
...     rebuild_index()

A mutex is a lock file in a lock directory. By default it is an flock lock, which the
kernel releases when the holder dies. The file is never deleted on release. Each holder
writes its pid and host into the file, so a waiter that times out can name it. For
directories on NFS, Lustre or GPFS, where flock may not exclude across hosts, pass
``shared_fs`` (see :data:`SharedFs`).
"""

from safeinfer.locks._holder import Holder
from safeinfer.locks._model import DEFAULT_MODEL_TIMEOUT, model_lock
from safeinfer.locks._mutex import (
    DEFAULT_LEASE_DURATION,
    DEFAULT_LOCK_FILE_MODE,
    DEFAULT_POLL_INTERVAL,
    DEFAULT_TIMEOUT,
    Mutex,
    SharedFs,
    mutex,
)
from safeinfer.locks._paths import LOCK_DIR_ENV, default_lock_dir, lock_file_name

__all__ = [
    "DEFAULT_LEASE_DURATION",
    "DEFAULT_LOCK_FILE_MODE",
    "DEFAULT_MODEL_TIMEOUT",
    "DEFAULT_POLL_INTERVAL",
    "DEFAULT_TIMEOUT",
    "LOCK_DIR_ENV",
    "Holder",
    "Mutex",
    "SharedFs",
    "default_lock_dir",
    "lock_file_name",
    "model_lock",
    "mutex",
]
