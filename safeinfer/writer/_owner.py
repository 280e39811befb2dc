"""Who owns a temp file: host, boot, pid namespace, pid and process start time.

A pid alone does not identify a process: pids are reused, repeat after a reboot, and mean
different processes in different pid namespaces (containers). So a temp file's name
records the host name, the boot, the pid namespace, the pid and the start time of that
pid. A temp file is only judged abandoned when that exact process is gone.
"""

from __future__ import annotations

import errno
import hashlib
import os
import socket
import sys
from dataclasses import dataclass
from enum import Enum
from typing import Final

#: Longest encoded host name kept verbatim. Longer ones are replaced by a hash, so the
#: temp-file name stays well under the 255-byte limit of a file name.
_MAX_HOST_FIELD: Final = 64

#: Characters of a host name kept as they are. Any other byte becomes ``_`` plus two hex
#: digits, so the encoding is lossless and never contains the ``.`` field separator.
_HOST_SAFE: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")

_PROC: Final = "/proc"


@dataclass(frozen=True)
class Owner:
    """The process that created a temp file, as written into the temp file's name."""

    host: str  #: encoded host name (see :func:`encode_host`)
    boot: str  #: 8 hex digits of the kernel boot id, "0" * 8 where unknown
    pid_namespace: str  #: hex inode of the pid namespace, "0" where unknown
    pid: int
    start: int  #: process start time in clock ticks since boot, 0 where unknown


class Liveness(Enum):
    """Whether the owner of a temp file is known to be running."""

    ALIVE = "alive"
    DEAD = "dead"
    #: Another host or pid namespace: its processes cannot be checked from here.
    UNKNOWN = "unknown"


def encode_host(name: str) -> str:
    """Encode a host name for use inside a file name, losslessly up to a hashed fallback."""
    encoded = "".join(
        char if char in _HOST_SAFE else "".join(f"_{byte:02x}" for byte in char.encode())
        for char in name
    )
    if not encoded or len(encoded) > _MAX_HOST_FIELD:
        # "_h" cannot start a byte escape, so a hashed name never equals an encoded one.
        return "_h" + hashlib.sha256(name.encode()).hexdigest()[:16]
    return encoded


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as file:
            return file.read().strip().replace("-", "")[:8]
    except OSError:
        return "0" * 8


def _pid_namespace() -> str:
    try:
        return format(os.stat("/proc/self/ns/pid").st_ino, "x")
    except OSError:
        return "0"


def read_start_time(pid: int) -> tuple[int, str] | None:
    """Return (start time in clock ticks since boot, state letter) of ``pid``, or None.

    None means the process does not exist, or /proc is not available.
    """
    try:
        with open(f"{_PROC}/{pid}/stat", "rb") as file:
            stat = file.read()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may contain spaces and ")", so
    # split after the last ")". The rest starts at field 3 (state); field 22 is starttime.
    fields = stat[stat.rfind(b")") + 2 :].split()
    try:
        return int(fields[19]), fields[0].decode("ascii")
    except (IndexError, ValueError):
        return None


_own_owner: dict[int, Owner] = {}


def current_owner() -> Owner:
    """Return the identity of this process, computed once per pid (so forks get their own)."""
    pid = os.getpid()
    owner = _own_owner.get(pid)
    if owner is None:
        start_state = read_start_time(pid)
        owner = Owner(
            host=encode_host(socket.gethostname()),
            boot=_boot_id(),
            pid_namespace=_pid_namespace(),
            pid=pid,
            start=start_state[0] if start_state else 0,
        )
        _own_owner[pid] = owner
    return owner


def owner_liveness(owner: Owner) -> Liveness:
    """Decide whether the process that ``owner`` names still runs.

    A temp file from this host and an earlier boot is dead (a reboot ends every process).
    One from another host or pid namespace is unknown. Otherwise the pid must exist, with
    the same start time, and not be a zombie: a killed writer that its parent has not
    reaped yet is a zombie that still keeps its pid.
    """
    me = current_owner()
    if owner.host != me.host:
        return Liveness.UNKNOWN
    if owner.boot != me.boot:
        return Liveness.DEAD
    if owner.pid_namespace != me.pid_namespace:
        return Liveness.UNKNOWN
    if os.path.isdir(_PROC):
        start_state = read_start_time(owner.pid)
        if start_state is None:
            return Liveness.DEAD
        start, state = start_state
        if start != owner.start or state in ("Z", "X"):
            return Liveness.DEAD
        return Liveness.ALIVE
    return _kill_probe(owner.pid)


def _kill_probe(pid: int) -> Liveness:
    # NOTE: without /proc (macOS, BSD) a reused pid is taken for the owner, which errs on
    # the side of keeping the temp file. Untested off Linux.
    if sys.platform == "win32":
        return Liveness.UNKNOWN
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return Liveness.DEAD
    except OSError as error:
        return Liveness.ALIVE if error.errno == errno.EPERM else Liveness.UNKNOWN
    return Liveness.ALIVE
