"""The lock directory, and the mapping from lock names to file names."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Final

from safeinfer.errors import InvalidNameError, LockError

#: Environment variable that names the lock directory for every process of a job.
LOCK_DIR_ENV: Final = "SAFEINFER_LOCK_DIR"

#: Suffix of every lock file, so a directory listing shows what the files are for.
LOCK_SUFFIX: Final = ".lock"

#: Maximum lock-name stem kept verbatim; longer names are cut and get a hash suffix.
#: File systems allow 255 bytes per name, and soft locks add break and restore names
#: of about 50 bytes beside the marker.
_MAX_STEM_CHARS: Final = 120

_UNSAFE_CHARS: Final = re.compile(r"[^A-Za-z0-9._-]")


def default_lock_dir() -> Path:
    """Return the lock directory used when a caller passes none.

    ``$SAFEINFER_LOCK_DIR`` when set, else ``<tempdir>/safeinfer-locks-<uid>``: host-local
    and private to this user. Processes only exclude each other when they agree on the
    directory, so set ``SAFEINFER_LOCK_DIR`` for jobs whose processes see different
    ``TMPDIR`` values (batch schedulers often set one per job).
    """
    configured = os.environ.get(LOCK_DIR_ENV)
    if configured:
        return Path(configured)
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(tempfile.gettempdir()) / f"safeinfer-locks-{uid}"


def lock_file_name(name: str) -> str:
    """Turn a lock name into a safe file name; distinct names stay distinct.

    Characters outside ``[A-Za-z0-9._-]`` become ``_``, and a name that had to change
    (or was cut to length) gets 12 hex digits of its SHA-256, so ``a/b`` and ``a_b``
    never share a lock file.

    >>> lock_file_name("gpu-0")
    'gpu-0.lock'
    """
    if not isinstance(name, str) or not name.strip():
        raise InvalidNameError(f"invalid lock name {name!r}: expected a non-empty string")
    stem = _UNSAFE_CHARS.sub("_", name).lstrip(".")
    if stem != name or len(stem) > _MAX_STEM_CHARS:
        digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:12]
        stem = f"{stem[:_MAX_STEM_CHARS]}-{digest}" if stem else digest
    return stem + LOCK_SUFFIX


def prepare_lock_dir(lock_dir: str | os.PathLike[str] | None) -> Path:
    """Create the lock directory if needed and return it.

    The default per-user directory is created 0700 and must be a real directory owned by
    this user: in a shared temp directory another user could otherwise plant it first,
    or plant a symlink to somewhere else. A directory the caller names is created with
    the umask's permissions and is trusted as given.
    """
    if lock_dir is not None:
        return _make_named_dir(Path(lock_dir), "lock_dir")

    path = default_lock_dir()
    if os.environ.get(LOCK_DIR_ENV):
        return _make_named_dir(path, LOCK_DIR_ENV)
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700, parents=True)
    info = path.lstat()
    owned = not hasattr(os, "getuid") or info.st_uid == os.getuid()
    if not stat.S_ISDIR(info.st_mode) or not owned:
        raise LockError(
            f"cannot use the lock directory {path}: it is not a directory owned by this user; "
            f"remove it, or set {LOCK_DIR_ENV} to another directory",
            lock_file=str(path),
        )
    return path


def _make_named_dir(path: Path, source: str) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as error:
        raise LockError(
            f"cannot use the lock directory {path} ({source}): it or a parent is a file, "
            "not a directory; pass a directory path",
            lock_file=str(path),
        ) from error
    except OSError as error:
        raise LockError(
            f"cannot create the lock directory {path} ({source}): {error.strerror} "
            f"[errno {error.errno}]; pass a directory this user can write to",
            lock_file=str(path),
        ) from error
    return path
