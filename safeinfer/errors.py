"""The exceptions that safeinfer raises.

Every error derives from :class:`SafeInferError`, so ``except SafeInferError`` catches
all of them. The tree::

    SafeInferError
    ├── WriteError                 publishing a file failed; the old file is intact
    │   └── FileExistsConflict     if_exists="error" and the name is taken
    ├── InvalidImageError          an image has the wrong shape, dtype or values (ValueError)
    ├── InvalidMetadataError       metadata cannot be stored as PNG text (ValueError)
    ├── InvalidNameError           a user-supplied file name cannot be made safe (ValueError)
    ├── InvalidTypeError           an argument has the wrong type (TypeError)
    ├── PngError                   a PNG could not be read
    │   ├── CorruptPngError        the bytes break the PNG rules (carries a PngReport)
    │   └── UnsupportedPngError    a valid PNG that uses a feature safeinfer does not handle
    ├── ManifestError              a manifest line is invalid, or an entry is inconsistent
    ├── LockError                  a lock file could not be used (OSError)
    │   └── LockTimeout            a mutex was not acquired in time (TimeoutError)
    ├── GpuBindingError            the GPU choice is impossible, or came too late (RuntimeError)
    ├── ClosedError                an object was used after its close() (RuntimeError)
    ├── ModelError                 a model could not be found or loaded
    ├── ConfigError                invalid job options or prompt files (ValueError)
    ├── JobError                   a generate job finished with failed items
    │   └── JobInterrupted         SIGINT or SIGTERM stopped a job; it can be resumed
    ├── LaunchError                a launched server kept failing
    └── MissingDependencyError     an optional extra is not installed (ImportError)

Errors that also fit a built-in category inherit from it as well, so code that already
catches ``ValueError``, ``TypeError``, ``TimeoutError`` or ``ImportError`` keeps working.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ClosedError",
    "ConfigError",
    "CorruptPngError",
    "FileExistsConflict",
    "GpuBindingError",
    "InvalidImageError",
    "InvalidMetadataError",
    "InvalidNameError",
    "InvalidTypeError",
    "JobError",
    "JobInterrupted",
    "LaunchError",
    "LockError",
    "LockTimeout",
    "ManifestError",
    "MissingDependencyError",
    "ModelError",
    "PngError",
    "SafeInferError",
    "UnsupportedPngError",
    "WriteError",
]


class SafeInferError(Exception):
    """Base class of every error raised by safeinfer."""


class WriteError(SafeInferError, OSError):
    """Publishing a file failed; no partial file is left and the previous file is intact.

    ``path`` is the destination that was being written; ``__cause__`` is the
    underlying ``OSError`` when there is one, and ``errno`` mirrors it.
    """

    def __init__(self, message: str, *, path: str | None = None, errno: int | None = None):
        super().__init__(message)
        self.path = path
        self.errno = errno

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class FileExistsConflict(WriteError, FileExistsError):
    """The destination exists and ``if_exists="error"`` forbids replacing it."""


class InvalidImageError(SafeInferError, ValueError):
    """An image has an unsupported type, shape or dtype, or contains NaN or infinity."""


class InvalidMetadataError(SafeInferError, ValueError):
    """Metadata cannot be stored as PNG text: NUL in a string, a bad keyword, or a value
    that is not JSON-serialisable."""


class InvalidNameError(SafeInferError, ValueError):
    """A user-supplied file name or stem cannot be made into a safe name."""


class InvalidTypeError(SafeInferError, TypeError):
    """An argument has the wrong type, such as text where bytes are expected."""


class PngError(SafeInferError):
    """A PNG file could not be read or checked."""


class CorruptPngError(PngError):
    """The bytes break the PNG rules. ``report`` lists every problem found, when known."""

    def __init__(self, message: str, *, report: Any = None):
        super().__init__(message)
        self.report = report


class UnsupportedPngError(PngError):
    """The PNG is valid, but uses a feature that safeinfer does not handle."""


class ManifestError(SafeInferError, ValueError):
    """A manifest line is invalid, or a manifest disagrees with the files."""


class LockError(SafeInferError, OSError):
    """A lock file could not be used (a symlink at its path, a failed open or flock).

    ``lock_file`` names the lock file; ``__cause__`` is the underlying ``OSError``.
    """

    def __init__(self, message: str, *, lock_file: str | None = None):
        super().__init__(message)
        self.lock_file = lock_file

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class LockTimeout(LockError, TimeoutError):
    """A mutex was not acquired within its timeout. ``lock_file`` names the lock.

    ``holder_pid`` and ``holder_host`` name the holding process when it recorded itself.
    """

    def __init__(
        self,
        message: str,
        *,
        lock_file: str | None = None,
        holder_pid: int | None = None,
        holder_host: str | None = None,
    ):
        super().__init__(message, lock_file=lock_file)
        self.holder_pid = holder_pid
        self.holder_host = holder_host


class GpuBindingError(SafeInferError, RuntimeError):
    """The requested GPU binding is impossible, or CUDA was initialised before binding."""


class ClosedError(SafeInferError, RuntimeError):
    """An object such as a SafePipeline was used after ``close()``; create a new one."""


class ModelError(SafeInferError):
    """A model could not be found or loaded."""


class ConfigError(SafeInferError, ValueError):
    """Job options or a prompt file are invalid. The message names the value or line."""


class JobError(SafeInferError):
    """A job finished, but some items failed. ``failed`` lists their ids.

    ``summary`` is the job's summary (a ``safeinfer.jobs.JobSummary``) when the job ran.
    """

    def __init__(self, message: str, *, failed: list[str] | None = None, summary: Any = None):
        super().__init__(message)
        self.failed = failed or []
        self.summary = summary


class JobInterrupted(JobError):
    """SIGINT or SIGTERM stopped a job before it finished. ``signal`` is the signal number.

    Finished images are written and recorded, so running the job again with resume
    makes only the rest.
    """

    def __init__(
        self, message: str, *, signal: int, failed: list[str] | None = None, summary: Any = None
    ):
        super().__init__(message, failed=failed, summary=summary)
        self.signal = signal


class LaunchError(SafeInferError):
    """A launched worker or server kept failing and was given up."""


class MissingDependencyError(SafeInferError, ImportError):
    """An optional dependency is missing. The message names the extra to install."""
