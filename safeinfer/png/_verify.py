"""PNG integrity verification: :func:`verify_png` and :func:`check_png`.

Two levels. ``structure`` reads every chunk once and checks the framing and the chunk
rules: signature, every CRC, lengths, IHDR, PLTE and tRNS rules, chunk order, chunks
allowed once, and an empty IEND exactly at the end of the file. ``full`` (the default)
also inflates the image data in the same pass and checks the zlib stream, its Adler-32,
the exact decompressed size and every scanline's filter type. Both read the file in
bounded pieces, so memory stays near 1 MiB whatever the image size.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import IO, Final, get_args

from safeinfer.errors import CorruptPngError
from safeinfer.png._chunks import ChunkReader
from safeinfer.png._limits import DEFAULT_LIMITS, Limits
from safeinfer.png._report import Level, PngReport
from safeinfer.png._structure import ChunkRules

#: The input of :func:`verify_png`: a path, the PNG in memory, or a binary file object.
Source = str | os.PathLike[str] | bytes | bytearray | memoryview | IO[bytes]

#: The level that :func:`verify_png` and ``safeinfer verify`` use by default.
DEFAULT_LEVEL: Final[Level] = "full"
LEVELS: Final[tuple[str, ...]] = get_args(Level)


def verify_png(
    source: Source, *, level: Level = DEFAULT_LEVEL, limits: Limits | None = None
) -> PngReport:
    """Check a PNG and return a :class:`PngReport` that lists every problem found.

    ``source`` is a path, the PNG's bytes, or a binary file object (read from its current
    position). ``level`` is ``"full"`` (also inflate and check the image data) or
    ``"structure"`` (chunks only, several times faster). A file over ``limits`` is
    reported with the code ``limit-exceeded``. Raises ``OSError`` when a path cannot be
    opened or read, and ``ValueError`` for an unknown level; every fault in the bytes
    becomes a problem in the report, never an exception.

    >>> report = verify_png("outputs/cat.png")  # doctest: +SKIP
    >>> report.ok
    True
    >>> verify_png(b"not a png").problems[0].code  # doctest: +SKIP
    'bad-signature'
    """
    return verify_source(source, level=level, limits=limits)


def check_png(
    source: Source, *, level: Level = DEFAULT_LEVEL, limits: Limits | None = None
) -> PngReport:
    """Check a PNG like :func:`verify_png`, but raise when it is not ok.

    Raises :class:`~safeinfer.errors.CorruptPngError` whose ``report`` attribute is the
    :class:`PngReport`, also for a file over ``limits`` (it could not be verified); the
    problem kinds in the report tell corrupt bytes from an unsupported or oversized file.

    >>> check_png("outputs/cat.png").width  # doctest: +SKIP
    512
    """
    report = verify_source(source, level=level, limits=limits)
    if not report.ok:
        raise CorruptPngError(report.summary(), report=report)
    return report


def verify_source(
    source: Source,
    *,
    level: Level = DEFAULT_LEVEL,
    limits: Limits | None = None,
    on_read: Callable[[memoryview], object] | None = None,
) -> PngReport:
    """Check ``source``; ``on_read`` receives every byte read (the manifest check hashes it)."""
    if level not in LEVELS:
        raise ValueError(f"invalid level {level!r}: expected one of {', '.join(LEVELS)}")
    limits = limits if limits is not None else DEFAULT_LIMITS
    if isinstance(source, str | os.PathLike):
        path = os.fspath(source)
        with open(path, "rb", buffering=0) as file:
            return verify_open_file(file, path, level=level, limits=limits, on_read=on_read)
    if isinstance(source, bytes | bytearray | memoryview):
        report = PngReport(path=None, level=level)
        reader = ChunkReader(source, on_read=on_read)
        ChunkRules(report, limits).run(reader, memoryview(source).nbytes)
        return report
    name = getattr(source, "name", None)
    report = PngReport(path=name if isinstance(name, str) else None, level=level)
    ChunkRules(report, limits).run(ChunkReader(source, on_read=on_read), None)
    return report


def verify_open_file(
    file: IO[bytes],
    path: str,
    *,
    level: Level,
    limits: Limits,
    on_read: Callable[[memoryview], object] | None = None,
) -> PngReport:
    """Check an open file whose size ``os.fstat`` gives; the report carries ``path``."""
    size = os.fstat(file.fileno()).st_size
    report = PngReport(path=path, level=level)
    ChunkRules(report, limits).run(ChunkReader(file, on_read=on_read), size)
    return report
