"""The private output directory of one server process, with deferred cleanup.

Cog reads a returned file by path after ``predict()`` returns, from another process, so
a file must outlive the call that made it. Each process therefore keeps its outputs in a
directory of its own and deletes only the oldest ones once more than ``keep`` exist.
"""

from __future__ import annotations

import atexit
import collections
import logging
import os
import re
import secrets
import shutil
import stat
import tempfile
import threading
from pathlib import Path
from typing import Final

from safeinfer.errors import ConfigError, WriteError
from safeinfer.naming import unique_name
from safeinfer.writer._owner import Liveness, Owner, current_owner, owner_liveness

logger = logging.getLogger(__name__)

#: Environment variable naming the parent of the private directories.
OUTPUT_DIR_ENV: Final = "SAFEINFER_OUTPUT_DIR"
#: Environment variable overriding how many recent outputs each process keeps.
KEEP_OUTPUTS_ENV: Final = "SAFEINFER_KEEP_OUTPUTS"
#: Cog's setting for the number of predictions one server runs at once.
COG_CONCURRENCY_ENV: Final = "COG_MAX_CONCURRENCY"
#: Recent outputs kept per process. The Cog server reads each output once, right after
#: its prediction returns, so a file only has to survive the next few predictions. A
#: value above the number of slots covers that, and 16 leaves room for a slow read.
DEFAULT_KEEP_OUTPUTS: Final = 16

#: Directory names carry their owner process, like the writer's temp files, so a sweep
#: can tell a live server's directory from a crashed one's without a registry:
#: ``safeinfer-cog.<host>.<boot>.<pid namespace>.<pid>.<start time>.<token>``.
_DIR_PREFIX: Final = "safeinfer-cog"
_DIR_PATTERN: Final = re.compile(
    re.escape(_DIR_PREFIX) + r"\.(?P<host>[A-Za-z0-9_-]{1,80})\.(?P<boot>[0-9a-f]{8})"
    r"\.(?P<pid_namespace>[0-9a-f]{1,16})\.(?P<pid>[0-9]{1,10})\.(?P<start>[0-9]{1,20})\.[0-9a-f]{8}"
)
_PRIVATE_MODE: Final = 0o700


def resolve_root(root: str | os.PathLike[str] | None) -> Path:
    """Pick the parent directory: the argument, ``SAFEINFER_OUTPUT_DIR``, or the temp dir."""
    if root is not None:
        return Path(root)
    from_env = os.environ.get(OUTPUT_DIR_ENV)
    if from_env:
        return Path(from_env)
    return Path(tempfile.gettempdir())


def resolve_keep(keep: int | None) -> int:
    """Validate the number of outputs to keep against Cog's concurrency setting."""
    source = "keep"
    if keep is None:
        from_env = os.environ.get(KEEP_OUTPUTS_ENV)
        if from_env:
            source = KEEP_OUTPUTS_ENV
            try:
                keep = int(from_env)
            except ValueError:
                raise ConfigError(
                    f"{KEEP_OUTPUTS_ENV}={from_env!r} is not an integer; "
                    f"set it to a count such as {DEFAULT_KEEP_OUTPUTS}"
                ) from None
        else:
            keep = DEFAULT_KEEP_OUTPUTS
    slots = _cog_slots()
    if keep <= slots:
        raise ConfigError(
            f"{source}={keep} must be larger than the number of prediction slots "
            f"({COG_CONCURRENCY_ENV}={slots}), or an output could be deleted before Cog "
            f"reads it; use at least {slots + 1}"
        )
    return keep


def _cog_slots() -> int:
    try:
        return max(1, int(os.environ.get(COG_CONCURRENCY_ENV, "1")))
    except ValueError:
        return 1


class OutputDirectory:
    """A mode-0700 directory owned by the current process, keeping its newest outputs.

    Creating one first removes the directories under ``root`` whose owner process has
    died. :meth:`close` (also run at interpreter exit) removes the directory itself.
    """

    def __init__(self, root: Path, *, keep: int) -> None:
        self.root = root
        self.keep = keep
        self.pid = os.getpid()
        self._lock = threading.Lock()
        self._published: collections.deque[Path] = collections.deque()
        self._closed = False
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=_PRIVATE_MODE)
        except OSError as error:
            raise WriteError(
                f"cannot create the output root {self.root}: {error}; "
                f"set {OUTPUT_DIR_ENV} to a writable directory",
                path=str(self.root),
                errno=error.errno,
            ) from error
        sweep_dead_owners(self.root)
        self.path = self._create()
        atexit.register(self.close)
        logger.info("output directory %s created (keeps the last %d outputs)", self.path, keep)

    def new_path(self, stem: str | None, suffix: str) -> Path:
        """Return a fresh, unused path for an output (the file is not created).

        The name is unique and keeps ``suffix``, because Cog uploads an output under its
        base name and takes the MIME type from the extension.
        """
        name = unique_name(stem, suffix=suffix)
        with self._lock:
            self._ensure_exists()
            return self.path / name

    def publish(self, path: Path) -> None:
        """Record a finished output and delete the oldest beyond ``keep``."""
        with self._lock:
            self._published.append(path)
            expired = []
            while len(self._published) > self.keep:
                expired.append(self._published.popleft())
        for old in expired:
            _unlink_quietly(old)

    def close(self) -> None:
        """Remove the directory and everything in it. Safe to call twice or after fork."""
        # atexit handlers are inherited by forked children; only the creator removes it.
        if self._closed or os.getpid() != self.pid:
            return
        self._closed = True
        atexit.unregister(self.close)
        shutil.rmtree(self.path, ignore_errors=True)
        logger.info("output directory %s removed", self.path)

    def _create(self) -> Path:
        owner = current_owner()
        prefix = (
            f"{_DIR_PREFIX}.{owner.host}.{owner.boot}.{owner.pid_namespace}"
            f".{owner.pid}.{owner.start}"
        )
        for _ in range(8):
            candidate = self.root / f"{prefix}.{secrets.token_hex(4)}"
            try:
                # mkdir fails if the name exists, so another user cannot plant the
                # directory (or a symlink under that name) before us.
                candidate.mkdir(mode=_PRIVATE_MODE)
            except FileExistsError:
                continue
            except OSError as error:
                raise WriteError(
                    f"cannot create the output directory {candidate}: {error}; "
                    f"make {self.root} writable or set {OUTPUT_DIR_ENV}",
                    path=str(candidate),
                    errno=error.errno,
                ) from error
            # The umask may have removed bits; the owner needs all three.
            os.chmod(candidate, _PRIVATE_MODE)
            return candidate
        raise WriteError(f"cannot find a free directory name under {self.root}")

    def _ensure_exists(self) -> None:
        # Something (a tmp cleaner, a user) may have removed the directory; make a new
        # private one instead of failing every later prediction.
        if not self.path.is_dir():
            logger.warning("output directory %s vanished; creating a new one", self.path)
            self._published.clear()
            self.path = self._create()


def sweep_dead_owners(root: Path) -> list[Path]:
    """Remove the output directories under ``root`` whose owner process is gone.

    Only directories that this user owns and whose name records the owner process are
    considered. A directory of a live process, or of a process on another host or in
    another container, is never removed. Returns the removed directories.
    """
    removed: list[Path] = []
    try:
        entries = list(os.scandir(root))
    except OSError as error:
        logger.warning("cannot list %s to remove stale output directories: %s", root, error)
        return removed
    for entry in entries:
        match = _DIR_PATTERN.fullmatch(entry.name)
        if match is None:
            continue
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
            continue
        owner = Owner(
            match["host"],
            match["boot"],
            match["pid_namespace"],
            int(match["pid"]),
            int(match["start"]),
        )
        # UNKNOWN (another host or container sharing the directory) is kept.
        if owner_liveness(owner) is not Liveness.DEAD:
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        logger.info("removed output directory %s of dead process %d", entry.path, owner.pid)
        removed.append(Path(entry.path))
    return removed


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        # Already removed by someone else; the goal is reached.
        pass
    except OSError as error:
        logger.warning("cannot delete old output %s: %s", path, error)
