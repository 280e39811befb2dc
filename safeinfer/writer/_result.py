"""The value every write returns, and the option types the writer accepts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, get_args

#: Protection of a write against a crash or power loss. "none": atomic visibility
#: only. "file": fsync the file before publishing it. "full": also fsync the directory
#: after publishing, so the new name itself is on disk.
Durability = Literal["none", "file", "full"]

#: Policy for a target name that exists. "unique": never overwrite, choose a fresh
#: name. "replace": atomically replace the file. "error": raise FileExistsConflict.
IfExists = Literal["unique", "replace", "error"]

DEFAULT_DURABILITY: Final[Durability] = "full"
DURABILITIES: Final[tuple[str, ...]] = get_args(Durability)
IF_EXISTS_CHOICES: Final[tuple[str, ...]] = get_args(IfExists)


@dataclass(frozen=True)
class WriteResult:
    """A published file: its final path, its size in bytes and the SHA-256 of its bytes."""

    path: Path
    bytes: int
    sha256: str  #: lowercase hex digest of exactly the bytes that were published
