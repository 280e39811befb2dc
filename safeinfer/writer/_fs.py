"""File-system steps of a publish: fsync, no-clobber rename, directory creation."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import sys
from pathlib import Path
from typing import Final

logger = logging.getLogger(__name__)

#: renameat2() flag: fail with EEXIST instead of replacing the target (Linux 3.15+).
_RENAME_NOREPLACE: Final = 1
_AT_FDCWD: Final = -100

#: errno values meaning "this file system or kernel cannot do that", after which the
#: no-clobber publish falls back from renameat2() to link() + unlink().
_UNSUPPORTED: Final = frozenset(
    {errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)}
)


def _load_renameat2() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        function = libc.renameat2  # glibc 2.28+, musl 1.2.2+
    except (OSError, AttributeError):
        return None
    directory_fd, name = ctypes.c_int, ctypes.c_char_p
    function.argtypes = (directory_fd, name, directory_fd, name, ctypes.c_uint)
    function.restype = ctypes.c_int
    return function


_renameat2 = _load_renameat2()


def fsync_file(fd: int) -> None:
    """Flush a file's data and metadata to stable storage."""
    if sys.platform == "darwin":  # pragma: no cover - untested off Linux
        import fcntl

        # fsync() on macOS only reaches the drive's cache; F_FULLFSYNC reaches the medium.
        fcntl.fcntl(fd, fcntl.F_FULLFSYNC)
        return
    os.fsync(fd)


def fsync_directory(directory: Path) -> None:
    """Flush a directory's entries, so a rename or a new file in it survives a power loss."""
    if sys.platform == "win32":  # pragma: no cover - directories cannot be opened there
        return
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as error:
        # Some file systems (several FUSE and network ones) reject fsync on a directory
        # with EINVAL; they give no stronger guarantee to ask for, so go on.
        if error.errno != errno.EINVAL:
            raise
        logger.debug("file system of %s does not fsync directories", directory)
    finally:
        os.close(fd)


def rename_no_replace(source: Path, target: Path) -> None:
    """Rename ``source`` to ``target`` atomically; raise FileExistsError if the target exists.

    Uses renameat2(RENAME_NOREPLACE) where the kernel and file system support it, and
    link() then unlink() elsewhere. Both publish the complete file in one step and never
    replace an existing one. After a crash between link() and unlink(), the target is
    complete and the temp file is a second name for it, which the stale-temp sweep removes.
    """
    if _renameat2 is not None:
        result = _renameat2(
            _AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), _RENAME_NOREPLACE
        )
        if result == 0:
            return
        code = ctypes.get_errno()
        if code not in _UNSUPPORTED:
            raise OSError(code, os.strerror(code), str(source), None, str(target))
    os.link(source, target)
    os.unlink(source)


def make_directories(directory: Path, *, durable: bool) -> None:
    """Create ``directory`` and missing parents; with ``durable``, fsync each new entry."""
    missing: list[Path] = []
    current = directory
    while not current.is_dir():
        if os.path.lexists(current):
            raise _not_a_directory(current)
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for path in reversed(missing):
        try:
            os.mkdir(path)
        except FileExistsError:
            if not path.is_dir():
                raise _not_a_directory(path) from None
        if durable:
            fsync_directory(path.parent)


def _not_a_directory(path: Path) -> NotADirectoryError:
    return NotADirectoryError(errno.ENOTDIR, "a file is in the way of a directory", str(path))
