"""The holder record: which process took a lock, written into the lock file itself.

flock records no owner, so a waiter that times out could not name the holder.
Each holder therefore writes one short line into the lock file right after it gets the
lock. The record is advisory: it names the last process that acquired the lock, which
is still the holder while the lock is taken (a child that inherited the descriptor can
keep holding it after the recorded process exited).
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import time
from dataclasses import dataclass
from typing import Final

#: First word of a record, so a record written by another program is not misread.
_MAGIC: Final = "safeinfer-lock/1"

#: Records are tiny; reading more than this means the file is not ours.
_MAX_RECORD_BYTES: Final = 1024


@dataclass(frozen=True)
class Holder:
    """The process recorded as holding a lock."""

    pid: int
    host: str
    since: float | None = None

    def describe(self) -> str:
        """Describe the holder for a message, with its liveness when it runs on this host."""
        text = f"pid {self.pid} on host {self.host}"
        if self.since is not None:
            text += f" since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(self.since))}"
        if self.host == socket.gethostname() and not _pid_alive(self.pid):
            text += " (that process has exited; a child that inherited its descriptor may hold it)"
        return text


def encode_holder() -> bytes:
    """Encode the record of the calling process."""
    record = f"{_MAGIC} pid={os.getpid()} host={socket.gethostname()} since={time.time():.3f}\n"
    return record.encode()


def write_holder(fd: int) -> None:
    """Replace the lock file's content with this process's record.

    Called by filelock with the locked descriptor. A failure here (a read-only file
    system, a full disk) must not lose the lock, so it only skips the record.
    """
    with contextlib.suppress(OSError):
        record = encode_holder()
        os.pwrite(fd, record, 0)
        os.ftruncate(fd, len(record))


def read_holder(path: str) -> Holder | None:
    """Read the record from a lock file, or return ``None`` when there is no usable one."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        data = os.read(fd, _MAX_RECORD_BYTES)
    except OSError:
        return None
    finally:
        os.close(fd)
    return parse_holder(data.decode("utf-8", "replace"))


def parse_holder(text: str) -> Holder | None:
    """Parse a record line; return ``None`` for anything that is not a complete record."""
    words = text.strip().split()
    if not words or words[0] != _MAGIC or not text.endswith("\n"):
        return None
    fields = dict(word.partition("=")[::2] for word in words[1:])
    try:
        pid = int(fields["pid"])
        since = float(fields["since"]) if "since" in fields else None
    except (KeyError, ValueError):
        return None
    host = fields.get("host", "")
    if pid <= 0 or not host:
        return None
    return Holder(pid=pid, host=host, since=since)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
