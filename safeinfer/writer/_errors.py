"""Turn a failed system call during a write into a WriteError that names the cause and fix."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Final

from safeinfer.errors import WriteError

#: The cause and the fix for the errno values that users meet in practice.
_HINTS: Final[dict[int, str]] = {
    errno.EROFS: "the file system is read-only; choose a writable destination",
    errno.EACCES: "permission denied; check that this user may write to {directory}",
    errno.EPERM: "operation not permitted; check the permissions of {directory}",
    errno.ENOSPC: "no space left on the device; free space or choose another destination",
    errno.EDQUOT: "the disk quota is exceeded; free space or choose another destination",
    errno.EFBIG: (
        "the file is too large for the file system or for this process's file-size "
        "limit (ulimit -f); raise the limit or write a smaller file"
    ),
    errno.ENAMETOOLONG: "the file name is too long; choose a shorter name",
    errno.EISDIR: "a directory has that name; choose a file name",
    errno.ENOTDIR: "a part of the path is a file, not a directory",
    errno.EIO: "an input/output error occurred; check the device and the kernel log",
}


def describe_os_error(error: OSError, directory: Path) -> str:
    """Return the cause of ``error`` and its usual fix, in words."""
    hint = _HINTS.get(error.errno or 0)
    if hint is None:
        return error.strerror or str(error)
    return hint.format(directory=directory)


def write_error(error: OSError, *, target: Path, step: str) -> WriteError:
    """Build the WriteError for ``error`` raised while ``step`` ran for ``target``."""
    cause = describe_os_error(error, target.parent)
    return WriteError(
        f"cannot write {target}: {step} failed: {cause} [errno {error.errno}]. "
        "The previous file, if any, is unchanged and no temp file was left.",
        path=str(target),
        errno=error.errno,
    )
