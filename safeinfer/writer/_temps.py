"""Temp files beside the target: their names, their creation, and sweeping leftovers.

A temp file is named::

    .<target name>.~safeinfer.<host>.<boot>.<pid namespace>.<pid>.<start>.<token>.tmp

The leading dot hides it from ``ls`` and from globs such as ``*.png``, and the ``.tmp``
ending keeps tools that pick the format from the name (Pillow, image browsers) from taking
it for a finished image. The fields after ``~safeinfer`` name the owner process (see
:mod:`safeinfer.writer._owner`), so a later sweep can tell a live writer's file from a
crashed writer's leftover without any lock or registry.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from safeinfer.writer._owner import Liveness, Owner, current_owner, owner_liveness

logger = logging.getLogger(__name__)

#: Marker between the target name and the owner fields.
_MARKER: Final = "~safeinfer"
_TEMP_SUFFIX: Final = ".tmp"

#: File systems limit one name to 255 bytes; the target part of a temp name is cut to fit.
_MAX_NAME_BYTES: Final = 255

#: Tokens to try when a temp name is taken. Each has 32 random bits, so even one retry is rare.
_CREATE_ATTEMPTS: Final = 16

#: Permission bits requested for a new file. The kernel subtracts the umask, as for any
#: file that ``open()`` creates, where mkstemp would use 0o600.
NEW_FILE_MODE: Final = 0o666

_TEMP_NAME: Final = re.compile(
    r"\.(?P<target>.*)\." + re.escape(_MARKER) + r"\.(?P<host>[A-Za-z0-9_-]{1,80})"
    r"\.(?P<boot>[0-9a-f]{8})\.(?P<ns>[0-9a-f]{1,16})\.(?P<pid>[0-9]{1,10})"
    r"\.(?P<start>[0-9]{1,20})\.(?P<token>[0-9a-f]{8})" + re.escape(_TEMP_SUFFIX),
    re.DOTALL,
)


@dataclass(frozen=True)
class TempFile:
    """A parsed temp-file name."""

    path: Path
    target_name: str  #: the target's file name, possibly cut short
    owner: Owner


def temp_name(target_name: str, owner: Owner, token: str) -> str:
    """Build the temp-file name for ``target_name`` owned by ``owner``."""
    fields = (
        f".{_MARKER}.{owner.host}.{owner.boot}.{owner.pid_namespace}"
        f".{owner.pid}.{owner.start}.{token}{_TEMP_SUFFIX}"
    )
    room = _MAX_NAME_BYTES - 1 - len(fields.encode())
    target = target_name.encode()[:room].decode("utf-8", errors="ignore")
    return f".{target}{fields}"


def parse_temp_name(path: Path) -> TempFile | None:
    """Parse ``path``'s name as a temp file of this module; None if it is not one."""
    match = _TEMP_NAME.fullmatch(path.name)
    if match is None:
        return None
    owner = Owner(
        host=match["host"],
        boot=match["boot"],
        pid_namespace=match["ns"],
        pid=int(match["pid"]),
        start=int(match["start"]),
    )
    return TempFile(path=path, target_name=match["target"], owner=owner)


def create_temp(target: Path) -> tuple[int, Path]:
    """Create a new, empty temp file beside ``target``; return its descriptor and path.

    The descriptor is opened for reading too, so atomic_open can hash the file back.
    """
    owner = current_owner()
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(_CREATE_ATTEMPTS):
        path = target.with_name(temp_name(target.name, owner, secrets.token_hex(4)))
        try:
            # O_EXCL: never open a file that someone else created, even through a symlink.
            return os.open(path, flags, NEW_FILE_MODE), path
        except FileExistsError:
            continue
    raise FileExistsError(
        errno.EEXIST, f"no free temp-file name after {_CREATE_ATTEMPTS} tries", str(target)
    )


def _iter_candidates(directory: Path, *, recursive: bool) -> Iterator[Path]:
    def log_walk_error(error: OSError) -> None:
        logger.warning("cannot list %s while cleaning temp files: %s", error.filename, error)

    if not recursive:
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.is_file(follow_symlinks=False):
                    yield Path(entry.path)
        return
    for root, _dirs, files in os.walk(directory, onerror=log_walk_error):
        for name in files:
            yield Path(root, name)


def clean_stale_temps(
    directory: str | os.PathLike[str],
    *,
    older_than: float | None = None,
    recursive: bool = True,
    dry_run: bool = False,
) -> list[Path]:
    """Remove temp files that crashed or killed writers left behind; return their paths.

    A temp file of this host is removed when its owner process is gone: no process with
    that pid and start time runs, or the host rebooted since. A live writer's temp file is
    never removed, however old. Temp files of other hosts (on shared storage) or other pid
    namespaces (containers) cannot be checked from here, so they are removed only when
    ``older_than`` is given and their last modification is more than that many seconds
    ago. Files that do not carry the writer's temp-file name are never touched.

    ``dry_run`` lists what would be removed without removing it. Symbolic links to
    directories are not followed. Raises ``FileNotFoundError`` or ``NotADirectoryError``
    when ``directory`` is not a directory.

    >>> from safeinfer import clean_stale_temps
    >>> clean_stale_temps("outputs/", older_than=3600)     # doctest: +SKIP
    [PosixPath('outputs/.cat.png.~safeinfer.gpu01.36282f19.effffffb.4242.98321.1a2b3c4d.tmp')]
    """
    root = Path(directory)
    if not root.is_dir():
        if root.exists():
            raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(root))
        raise FileNotFoundError(errno.ENOENT, "no such directory", str(root))

    removed: list[Path] = []
    now = time.time()
    for path in _iter_candidates(root, recursive=recursive):
        temp = parse_temp_name(path)
        if temp is None or not _is_stale(temp, now=now, older_than=older_than):
            continue
        if dry_run:
            removed.append(path)
            continue
        try:
            path.unlink()
        except FileNotFoundError:
            continue  # another sweep, or the owner's own cleanup, got there first
        except OSError as error:
            logger.warning("cannot remove stale temp file %s: %s", path, error)
            continue
        logger.info("removed stale temp file %s (owner pid %d)", path, temp.owner.pid)
        removed.append(path)
    return removed


def _is_stale(temp: TempFile, *, now: float, older_than: float | None) -> bool:
    liveness = owner_liveness(temp.owner)
    if liveness is Liveness.DEAD:
        return True
    if liveness is Liveness.ALIVE or older_than is None:
        return False
    try:
        age = now - temp.path.stat(follow_symlinks=False).st_mtime
    except FileNotFoundError:
        return False
    return age > older_than
