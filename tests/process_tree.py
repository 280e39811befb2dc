"""The processes below a process, read from /proc (Linux), for tests that kill or count them."""

from __future__ import annotations

from pathlib import Path


def children(pid: int) -> list[int]:
    """Return the live (not zombie) child processes of ``pid``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # The command name in brackets may contain spaces; the fields follow its ")".
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def descendants(pid: int) -> list[int]:
    """Return every live process below ``pid``, parents before their children."""
    found = []
    for child in children(pid):
        found.append(child)
        found.extend(descendants(child))
    return found


def is_alive(pid: int) -> bool:
    """Return whether ``pid`` runs and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def command_line(pid: int) -> str:
    """Return the command line of ``pid`` with spaces between arguments, or ""."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""
