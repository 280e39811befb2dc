"""Named inter-process mutexes on top of filelock."""

from __future__ import annotations

import errno
import logging
import os
import stat
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Final, Literal, TypeAlias

import filelock

from safeinfer.errors import ConfigError, LockError, LockTimeout
from safeinfer.locks._holder import Holder, read_holder, write_holder
from safeinfer.locks._paths import lock_file_name, prepare_lock_dir

if TYPE_CHECKING:
    from typing import Self

__all__ = [
    "DEFAULT_LEASE_DURATION",
    "DEFAULT_LOCK_FILE_MODE",
    "DEFAULT_POLL_INTERVAL",
    "DEFAULT_TIMEOUT",
    "Mutex",
    "SharedFs",
    "mutex",
]

logger = logging.getLogger(__name__)

#: Seconds a mutex waits by default. Finite, so a holder that hangs shows up as a
#: LockTimeout that names it instead of a job that never finishes.
DEFAULT_TIMEOUT: Final = 300.0

#: Seconds between attempts while the lock is taken. flock releases a dead holder's lock
#: at once, so a waiter gets in within one interval of the holder's death.
DEFAULT_POLL_INTERVAL: Final = 0.05

#: Permissions of a new flock lock file: read and write for everyone, set with fchmod so
#: the umask cannot narrow them. A lock file created 0644 by one user cannot be opened
#: for writing by the next, which then cannot take the lock at all.
DEFAULT_LOCK_FILE_MODE: Final = 0o666

#: Seconds a lease holder on another host may stay silent before a waiter takes over.
#: Every process that uses the same lock must pass the same value.
DEFAULT_LEASE_DURATION: Final = 30.0

#: ``False``: flock. ``"soft"``: a marker file, reclaimed when its holder on the same host
#: died. ``"lease"`` (also ``True``): a marker refreshed by its holder, taken over after
#: ``lease_duration`` of silence from any host. ``"strict"``: fail-closed claims that
#: never expire and need manual recovery.
SharedFs: TypeAlias = bool | Literal["soft", "lease", "strict"]

_SHARED_FS_KINDS: Final = ("soft", "lease", "strict")


class Mutex:
    """A named mutex shared by every process that uses the same lock directory.

    Create one with :func:`mutex`. The object is a reentrant context manager: nested
    ``with`` blocks on the same object count levels. Threads exclude each other only when
    each one creates its own ``Mutex``, because each object opens its own descriptor.
    """

    def __init__(
        self,
        name: str,
        *,
        lock_dir: str | os.PathLike[str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        shared_fs: SharedFs = False,
        mode: int = DEFAULT_LOCK_FILE_MODE,
        lease_duration: float = DEFAULT_LEASE_DURATION,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
    ) -> None:
        if timeout < 0 or timeout != timeout or timeout == float("inf"):
            raise ConfigError(f"invalid lock timeout {timeout!r}: expected a finite number >= 0")
        kind = _shared_fs_kind(shared_fs)
        self.name = name
        self.path = prepare_lock_dir(lock_dir) / lock_file_name(name)
        self.timeout = timeout
        self.kind = kind
        self._poll_interval = poll_interval
        self._lock = _build_lock(self.path, kind, mode=mode, lease_duration=lease_duration)

    @property
    def is_locked(self) -> bool:
        """Whether this object holds the lock."""
        return bool(self._lock.is_locked)

    def acquire(self, *, timeout: float | None = None) -> Self:
        """Take the lock, waiting up to ``timeout`` seconds (the object's default if None).

        Raises :class:`~safeinfer.errors.LockTimeout` naming the lock file and, where the
        holder recorded itself, its pid and host.

        >>> with mutex("cache-warmup", timeout=60):              # doctest: +SKIP
        ...     warm_cache()
        """
        wait = self.timeout if timeout is None else timeout
        _reject_symlink(self.path)
        try:
            self._lock.acquire(timeout=wait, poll_interval=self._poll_interval)
        except filelock.Timeout:
            raise self._timeout_error(wait) from None
        except OSError as error:
            if error.errno == errno.ELOOP:
                _reject_symlink(self.path)
            raise LockError(
                f"could not take the lock {self.path}: {error}", lock_file=str(self.path)
            ) from error
        return self

    def release(self) -> None:
        """Release one level of the lock. The lock file stays in place for the next waiter."""
        self._lock.release()

    def holder(self) -> Holder | None:
        """Return the process recorded as the holder, or ``None`` when none is recorded."""
        if self.kind == "flock":
            return read_holder(str(self.path))
        owner = getattr(self._lock, "owner", None)
        if owner is None:
            return None
        return Holder(pid=owner.pid, host=owner.hostname)

    def __enter__(self) -> Self:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "locked" if self.is_locked else "unlocked"
        return f"<Mutex {self.name!r} {self.kind} {state} at {self.path}>"

    def _timeout_error(self, waited: float) -> LockTimeout:
        holder = self.holder()
        held_by = f"it is held by {holder.describe()}" if holder else "no holder is recorded"
        return LockTimeout(
            f"timed out after {waited:g} s waiting for the lock {self.path}: {held_by}. "
            "Wait longer (timeout=...), or stop the holding process if it hangs",
            lock_file=str(self.path),
            holder_pid=holder.pid if holder else None,
            holder_host=holder.host if holder else None,
        )


def mutex(
    name: str,
    *,
    lock_dir: str | os.PathLike[str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    shared_fs: SharedFs = False,
    mode: int = DEFAULT_LOCK_FILE_MODE,
    lease_duration: float = DEFAULT_LEASE_DURATION,
) -> Mutex:
    """Return a named inter-process mutex; use it as a context manager.

    ``name`` may be any text: it is sanitised into a file name in ``lock_dir`` (see
    :func:`safeinfer.locks.default_lock_dir`). ``timeout`` is in seconds and finite.
    ``shared_fs`` picks the lock kind for directories on NFS, Lustre or GPFS, where
    flock may not exclude across hosts (see :data:`SharedFs`). ``mode`` sets the
    permissions of a new flock lock file.

    >>> from safeinfer.locks import mutex
    >>> with mutex("outputs-index", timeout=30):          # doctest: +SKIP
    ...     update_index()
    """
    return Mutex(
        name,
        lock_dir=lock_dir,
        timeout=timeout,
        shared_fs=shared_fs,
        mode=mode,
        lease_duration=lease_duration,
    )


def _shared_fs_kind(shared_fs: SharedFs) -> str:
    if shared_fs is False:
        return "flock"
    if shared_fs is True:
        return "lease"
    if shared_fs in _SHARED_FS_KINDS:
        return shared_fs
    raise ConfigError(
        f"invalid shared_fs {shared_fs!r}: expected False, True, 'soft', 'lease' or 'strict'"
    )


def _build_lock(
    path: Path, kind: str, *, mode: int, lease_duration: float
) -> filelock.BaseFileLock:
    # thread_local=False lets a claim taken in one thread be released in another.
    if kind == "flock":
        # preserve_lock_file keeps the pathname on release (deleting it would split later
        # waiters across two inodes) and turns off filelock's silent switch to soft locks
        # on file systems without flock, where an error is the honest result.
        return filelock.FileLock(
            path,
            mode=mode,
            thread_local=False,
            fallback_to_soft=False,
            preserve_lock_file=True,
            on_acquired=write_holder,
        )
    if kind == "soft":
        return filelock.MarkerSoftFileLock(path, thread_local=False)
    if kind == "lease":
        return filelock.SoftFileLease(path, lease_duration=lease_duration, thread_local=False)
    return filelock.StrictSoftFileLock(path, thread_local=False)


def _reject_symlink(path: Path) -> None:
    # filelock opens lock files with O_NOFOLLOW, which fails with ELOOP; checking first
    # turns that into a message that names the link to remove.
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    if stat.S_ISLNK(info.st_mode):
        raise LockError(
            f"cannot use the lock file {path}: it is a symbolic link, and lock files are opened "
            "without following links; remove the link",
            lock_file=str(path),
        )
