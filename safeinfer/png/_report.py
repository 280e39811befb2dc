"""The result of a PNG check: :class:`PngReport`, its :class:`Problem` entries and their codes.

Each problem code is a short, stable string for scripts (``crc-mismatch``), and each code
belongs to one kind: ``corrupt`` (the bytes break the PNG rules), ``unsupported`` (a valid
PNG that the checker cannot verify, such as one with an unknown critical chunk), ``limit``
(the file is over a configured limit, so it was not verified), ``mismatch`` (the file
disagrees with its manifest entry or is missing) and ``io`` (the file could not be read).
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any, Final, Literal

Level = Literal["structure", "full"]
ProblemKind = Literal["corrupt", "unsupported", "limit", "mismatch", "io"]

#: The first eight bytes are not the PNG signature.
BAD_SIGNATURE: Final = "bad-signature"
#: The file ends inside a chunk (or inside the signature).
TRUNCATED: Final = "truncated"
#: The file ends at a chunk boundary before the IEND chunk.
MISSING_IEND: Final = "missing-iend"
#: A chunk's stored CRC-32 differs from the one computed over its type and data.
CRC_MISMATCH: Final = "crc-mismatch"
#: A length field is over 2**31-1, or a chunk's length is wrong for its type.
BAD_LENGTH: Final = "bad-length"
#: The four type bytes are not ASCII letters, so the chunk framing is lost.
BAD_CHUNK_TYPE: Final = "bad-chunk-type"
#: The first chunk is not IHDR, or there is no IHDR at all.
MISSING_IHDR: Final = "missing-ihdr"
#: IHDR has a zero or oversized dimension, an illegal bit depth or colour type, or bad methods.
BAD_IHDR: Final = "bad-ihdr"
#: PLTE is missing where required, present where forbidden, or has a bad entry count.
BAD_PLTE: Final = "bad-plte"
#: tRNS has the wrong length for the colour type, or appears where it is forbidden.
BAD_TRNS: Final = "bad-trns"
#: A chunk is in a position that the specification forbids (IDAT run split, PLTE after IDAT).
CHUNK_ORDER: Final = "chunk-order"
#: A chunk that the specification allows only once appears again.
DUPLICATE_CHUNK: Final = "duplicate-chunk"
#: There is no IDAT chunk before IEND.
MISSING_IDAT: Final = "missing-idat"
#: IEND carries data.
BAD_IEND: Final = "bad-iend"
#: Bytes follow the IEND chunk, as an overwrite by a shorter file leaves behind.
DATA_AFTER_IEND: Final = "data-after-iend"
#: The zlib header is invalid, or the deflate data cannot be decoded.
BAD_ZLIB: Final = "bad-zlib"
#: The Adler-32 checksum at the end of the zlib stream does not match the image data.
ADLER32_MISMATCH: Final = "adler32-mismatch"
#: The zlib stream ends before the last IDAT byte (a second stream or trailing bytes).
DATA_AFTER_ZLIB: Final = "data-after-zlib-stream"
#: The IDAT data ends before the zlib stream does.
TRUNCATED_ZLIB: Final = "truncated-zlib-stream"
#: The image data decompresses to fewer bytes than IHDR implies.
NOT_ENOUGH_DATA: Final = "not-enough-image-data"
#: The image data decompresses to more bytes than IHDR implies.
TOO_MUCH_DATA: Final = "too-much-image-data"
#: A scanline starts with a filter type other than 0 to 4.
BAD_FILTER: Final = "bad-filter-type"
#: The checker stopped recording problems for this file.
TOO_MANY_PROBLEMS: Final = "too-many-problems"
#: A critical chunk that the specification does not define.
UNKNOWN_CRITICAL_CHUNK: Final = "unknown-critical-chunk"
#: The file is over a configured limit (bytes, chunks, width, height or pixels).
LIMIT_EXCEEDED: Final = "limit-exceeded"
#: The file listed in a manifest does not exist.
MISSING_FILE: Final = "missing-file"
#: The file's size differs from its manifest entry.
SIZE_MISMATCH: Final = "size-mismatch"
#: The file's SHA-256 differs from its manifest entry.
SHA256_MISMATCH: Final = "sha256-mismatch"
#: The file could not be opened or read.
READ_ERROR: Final = "read-error"
#: The manifest entry's path leads out of the manifest's folder, so the file was not read.
PATH_ESCAPE: Final = "path-escape"

#: Kind of every code that is not ``corrupt``.
_KIND_BY_CODE: Final[dict[str, ProblemKind]] = {
    UNKNOWN_CRITICAL_CHUNK: "unsupported",
    LIMIT_EXCEEDED: "limit",
    MISSING_FILE: "mismatch",
    SIZE_MISMATCH: "mismatch",
    SHA256_MISMATCH: "mismatch",
    READ_ERROR: "io",
    PATH_ESCAPE: "mismatch",
}


@dataclass(frozen=True, slots=True)
class Problem:
    """One fault found in a file: a code, the chunk and byte offset where it sits, a message.

    ``chunk`` is the chunk type (``"IDAT"``) or ``None`` for faults outside any chunk, and
    ``offset`` is the byte offset in the file, or ``None`` when no position applies.
    """

    code: str
    chunk: str | None
    offset: int | None
    message: str

    @property
    def kind(self) -> ProblemKind:
        """``corrupt``, ``unsupported``, ``limit``, ``mismatch`` or ``io``."""
        return _KIND_BY_CODE.get(self.code, "corrupt")

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        """Return the problem as a JSON-ready dict."""
        return {
            "code": self.code,
            "kind": self.kind,
            "chunk": self.chunk,
            "offset": self.offset,
            "message": self.message,
        }


@dataclass(frozen=True, slots=True)
class ChunkInfo:
    """Type, file offset (of its length field) and data length of one chunk."""

    type: str
    offset: int
    length: int


@dataclass(slots=True)
class PngReport:
    """Everything one check of a PNG found.

    ``ok`` is true when no problem was found. The header fields are ``None`` when the file
    has no readable IHDR. ``bytes`` is the number of bytes read, which is the file size
    unless the check stopped early (a framing error, or a file over a limit).

    >>> report = verify_png("image.png")  # doctest: +SKIP
    >>> report.ok, [p.code for p in report.problems]  # doctest: +SKIP
    (False, ['data-after-iend'])
    """

    path: str | None
    level: Level
    bytes: int = 0
    width: int | None = None
    height: int | None = None
    colour_type: int | None = None
    bit_depth: int | None = None
    interlace: int | None = None
    chunks: list[ChunkInfo] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the check found no problem."""
        return not self.problems

    @property
    def corrupt(self) -> bool:
        """True when at least one problem is of kind ``corrupt``: the bytes break the rules."""
        return any(problem.kind == "corrupt" for problem in self.problems)

    def summary(self) -> str:
        """Return one line: the path and either ``ok`` or the first problem."""
        name = self.path if self.path is not None else "<PNG data>"
        if self.ok:
            return f"{name}: ok"
        more = len(self.problems) - 1
        suffix = f" (and {more} more)" if more else ""
        return f"{name}: {self.problems[0]}{suffix}"

    def to_dict(self) -> dict[str, Any]:
        """Return the report as a JSON-ready dict, as ``safeinfer verify --json`` prints it."""
        return {
            "path": self.path,
            "ok": self.ok,
            "level": self.level,
            "bytes": self.bytes,
            "width": self.width,
            "height": self.height,
            "colour_type": self.colour_type,
            "bit_depth": self.bit_depth,
            "interlace": self.interlace,
            "chunks": [
                {"type": chunk.type, "offset": chunk.offset, "length": chunk.length}
                for chunk in self.chunks
            ],
            "problems": [problem.to_dict() for problem in self.problems],
        }

    def _repr_html_(self) -> str:
        name = html.escape(self.path if self.path is not None else "<PNG data>")
        status = "ok" if self.ok else f"{len(self.problems)} problem(s)"
        colour = "#1a7f37" if self.ok else "#cf222e"
        size = "unknown"
        if self.width is not None and self.height is not None:
            size = f"{self.width} x {self.height}"
        rows = [
            f"<tr><th style='text-align:left'>file</th><td>{name}</td></tr>",
            f"<tr><th style='text-align:left'>status</th>"
            f"<td style='color:{colour}'><b>{status}</b> ({self.level} check)</td></tr>",
            f"<tr><th style='text-align:left'>size</th><td>{size}, {self.bytes} bytes</td></tr>",
            f"<tr><th style='text-align:left'>format</th><td>colour type {self.colour_type}, "
            f"bit depth {self.bit_depth}, interlace {self.interlace}</td></tr>",
            f"<tr><th style='text-align:left'>chunks</th><td>{len(self.chunks)}</td></tr>",
        ]
        table = "<table>" + "".join(rows) + "</table>"
        if self.ok:
            return table
        problem_rows = "".join(
            "<tr>"
            f"<td>{html.escape(p.code)}</td><td>{html.escape(p.kind)}</td>"
            f"<td>{html.escape(p.chunk or '')}</td>"
            f"<td style='text-align:right'>{'' if p.offset is None else p.offset}</td>"
            f"<td style='text-align:left'>{html.escape(p.message)}</td>"
            "</tr>"
            for p in self.problems
        )
        header = (
            "<tr><th>code</th><th>kind</th><th>chunk</th><th>offset</th>"
            "<th style='text-align:left'>message</th></tr>"
        )
        return f"{table}<table>{header}{problem_rows}</table>"
