"""PNG chunk layout: reading and writing chunks, CRC, and the IHDR header.

The names follow the PNG specification (ISO/IEC 15948, W3C PNG Third Edition), section 5
("Datastream structure") and 11.2.2 ("IHDR Image header"). This is the one PNG parser of
the project: the encoder, the metadata reader and the verifier all build on it.

:class:`ChunkReader` streams a datastream from a file or from memory in bounded pieces,
checking each chunk's CRC as its bytes pass, so a 2 GB IDAT costs no more memory than a
small one. :func:`iter_chunks` is the convenient form that returns whole chunks.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Final

from safeinfer.errors import CorruptPngError
from safeinfer.png._inflate import crc32
from safeinfer.png._report import BAD_CHUNK_TYPE, BAD_LENGTH, TRUNCATED

#: The eight bytes every PNG datastream starts with (section 5.2).
PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"

#: A chunk's length, type and CRC fields take 12 bytes around its data (section 5.3).
CHUNK_OVERHEAD: Final = 12

#: Lengths and dimensions are limited to 2**31 - 1 so that signed readers agree (section 5.3).
MAX_CHUNK_LENGTH: Final = 2**31 - 1
MAX_DIMENSION: Final = 2**31 - 1

# Critical chunk types (section 11.2).
IHDR: Final = b"IHDR"
PLTE: Final = b"PLTE"
IDAT: Final = b"IDAT"
IEND: Final = b"IEND"

# Textual chunk types (section 11.3.3).
TEXT: Final = b"tEXt"
ZTXT: Final = b"zTXt"
ITXT: Final = b"iTXt"

# Colour types (section 11.2.2, table 11.1).
GREYSCALE: Final = 0
TRUECOLOUR: Final = 2
INDEXED_COLOUR: Final = 3
GREYSCALE_ALPHA: Final = 4
TRUECOLOUR_ALPHA: Final = 6

#: Allowed bit depths for each colour type (section 11.2.2, table 11.1).
ALLOWED_BIT_DEPTHS: Final[dict[int, tuple[int, ...]]] = {
    GREYSCALE: (1, 2, 4, 8, 16),
    TRUECOLOUR: (8, 16),
    INDEXED_COLOUR: (1, 2, 4, 8),
    GREYSCALE_ALPHA: (8, 16),
    TRUECOLOUR_ALPHA: (8, 16),
}

#: Samples per pixel for each colour type.
CHANNELS: Final[dict[int, int]] = {
    GREYSCALE: 1,
    TRUECOLOUR: 3,
    INDEXED_COLOUR: 1,
    GREYSCALE_ALPHA: 2,
    TRUECOLOUR_ALPHA: 4,
}

_LENGTH_TYPE = struct.Struct(">I4s")
_CRC = struct.Struct(">I")
_IHDR = struct.Struct(">IIBBBBB")


def chunk_crc(chunk_type: bytes, data: bytes | memoryview) -> int:
    """Return the CRC-32 of a chunk, computed over its type and data (section 5.3)."""
    return crc32(data, crc32(chunk_type, 0)) & 0xFFFFFFFF


def write_chunk(chunk_type: bytes, data: bytes | memoryview = b"") -> bytes:
    """Return one serialised chunk: length, type, data and CRC."""
    if len(chunk_type) != 4 or not chunk_type.isalpha():
        raise ValueError(f"invalid chunk type {chunk_type!r}: expected 4 ASCII letters")
    if len(data) > MAX_CHUNK_LENGTH:
        raise ValueError(f"chunk data of {len(data)} bytes exceeds the PNG limit of 2**31-1")
    return b"".join(
        (_LENGTH_TYPE.pack(len(data), chunk_type), data, _CRC.pack(chunk_crc(chunk_type, data)))
    )


@dataclass(frozen=True, slots=True)
class Ihdr:
    """The image header: dimensions and pixel format of a PNG (section 11.2.2)."""

    width: int
    height: int
    bit_depth: int
    colour_type: int
    compression_method: int = 0
    filter_method: int = 0
    interlace_method: int = 0

    def pack(self) -> bytes:
        """Serialise the 13 data bytes of the IHDR chunk."""
        return _IHDR.pack(
            self.width,
            self.height,
            self.bit_depth,
            self.colour_type,
            self.compression_method,
            self.filter_method,
            self.interlace_method,
        )

    @classmethod
    def parse(cls, data: bytes | memoryview) -> Ihdr:
        """Parse the 13 data bytes of an IHDR chunk. Field values are not validated here."""
        if len(data) != _IHDR.size:
            raise CorruptPngError(f"bad IHDR length {len(data)}: expected {_IHDR.size}")
        return cls(*_IHDR.unpack(bytes(data)))

    @property
    def channels(self) -> int:
        """Samples per pixel."""
        return CHANNELS[self.colour_type]

    @property
    def bits_per_pixel(self) -> int:
        return self.channels * self.bit_depth


@dataclass(frozen=True, slots=True)
class Chunk:
    """One chunk read from a datastream. ``offset`` is where its length field starts."""

    type: bytes
    data: bytes
    offset: int
    crc: int
    crc_ok: bool

    @property
    def name(self) -> str:
        return self.type.decode("latin-1")

    @property
    def is_critical(self) -> bool:
        """Critical chunks have an upper-case first letter (section 5.4, ancillary bit)."""
        return not (self.type[0] & 0x20)


#: Bytes read from a file at a time. With the inflate output cap of the verifier, this keeps
#: one check near 1 MiB of memory whatever the size of the file.
READ_PIECE_SIZE: Final = 256 * 1024

#: Bytes that only a letter may take in a chunk type (section 5.3: A-Z and a-z).
_LETTERS: Final = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


@dataclass(frozen=True, slots=True)
class ChunkHeader:
    """The length and type fields of a chunk, and the file offset of its length field."""

    type: bytes
    length: int
    offset: int

    @property
    def name(self) -> str:
        return self.type.decode("latin-1")

    @property
    def end(self) -> int:
        """Offset of the first byte after the chunk's CRC."""
        return self.offset + CHUNK_OVERHEAD + self.length


class ChunkFramingError(CorruptPngError):
    """The chunk framing is broken, so no later chunk can be found.

    ``code`` is a problem code of :mod:`safeinfer.png._report` (``truncated``,
    ``bad-length`` or ``bad-chunk-type``), ``offset`` the byte offset of the fault.
    """

    def __init__(self, message: str, *, code: str, offset: int, chunk: str | None = None):
        super().__init__(message)
        self.code = code
        self.offset = offset
        self.chunk = chunk


def _describe_type(chunk_type: bytes) -> str:
    if chunk_type == bytes(4):
        return "four zero bytes (the file was likely cut short and zero-filled)"
    return repr(chunk_type)


class ChunkReader:
    """Read a PNG datastream chunk by chunk, ``READ_PIECE_SIZE`` bytes at a time.

    ``source`` is a binary file object (read from its current position) or bytes in
    memory. ``on_read`` receives every piece read, in order, so a caller can hash the file in
    the same pass. Offsets count from the first byte read.

    >>> reader = ChunkReader(open("image.png", "rb"))  # doctest: +SKIP
    >>> reader.read_signature() == PNG_SIGNATURE  # doctest: +SKIP
    True
    >>> header = reader.next_header()  # doctest: +SKIP
    >>> stored_crc, crc_ok = reader.read_data(header)  # doctest: +SKIP
    """

    def __init__(
        self,
        source: bytes | bytearray | memoryview | IO[bytes],
        *,
        piece_size: int = READ_PIECE_SIZE,
        on_read: Callable[[memoryview], object] | None = None,
    ) -> None:
        self._piece_size = piece_size
        self._on_read = on_read
        self._base = 0
        self._pos = 0
        self._stream: IO[bytes] | None
        if isinstance(source, bytes | bytearray | memoryview):
            self._stream = None
            self._buf = memoryview(source).cast("B")
            if on_read is not None:
                on_read(self._buf)
        else:
            self._stream = source
            self._buf = memoryview(b"")

    @property
    def offset(self) -> int:
        """Offset of the next byte to be read."""
        return self._base + self._pos

    def _fill(self) -> bool:
        """Replace the consumed buffer with the next piece; return False at the end of data."""
        if self._stream is None:
            return False
        piece = self._stream.read(self._piece_size)
        if not piece:
            return False
        self._base += len(self._buf)
        self._buf = memoryview(piece)
        self._pos = 0
        if self._on_read is not None:
            self._on_read(self._buf)
        return True

    def _read_small(self, size: int) -> bytes:
        """Read up to ``size`` bytes across piece boundaries; fewer only at the end of data."""
        end = self._pos + size
        if end <= len(self._buf):
            out = self._buf[self._pos : end].tobytes()
            self._pos = end
            return out
        parts = bytearray(self._buf[self._pos :])
        self._pos = len(self._buf)
        while len(parts) < size and self._fill():
            take = min(size - len(parts), len(self._buf))
            parts += self._buf[:take]
            self._pos = take
        return bytes(parts)

    def read_signature(self) -> bytes:
        """Read the first eight bytes (fewer if the data is shorter)."""
        return self._read_small(len(PNG_SIGNATURE))

    def next_header(self) -> ChunkHeader | None:
        """Read the next chunk's length and type; return None at the end of the data.

        Raises :class:`ChunkFramingError` for a partial header, a length over 2**31-1 or
        a type that is not four ASCII letters.
        """
        offset = self.offset
        head = self._read_small(_LENGTH_TYPE.size)
        if not head:
            return None
        if len(head) < _LENGTH_TYPE.size:
            raise ChunkFramingError(
                f"truncated chunk header at offset {offset}: {len(head)} of 8 bytes present",
                code=TRUNCATED,
                offset=offset,
            )
        length, chunk_type = _LENGTH_TYPE.unpack(head)
        if not _LETTERS.issuperset(chunk_type):
            raise ChunkFramingError(
                f"invalid chunk type {_describe_type(chunk_type)} at offset {offset}",
                code=BAD_CHUNK_TYPE,
                offset=offset,
            )
        name = chunk_type.decode("ascii")
        if length > MAX_CHUNK_LENGTH:
            raise ChunkFramingError(
                f"bad length {length} of {name} chunk at offset {offset}: over 2**31-1",
                code=BAD_LENGTH,
                offset=offset,
                chunk=name,
            )
        return ChunkHeader(chunk_type, length, offset)

    def read_data(
        self, header: ChunkHeader, consume: Callable[[memoryview], object] | None = None
    ) -> tuple[int, bool]:
        """Read a chunk's data and CRC; return the stored CRC and whether it matches.

        ``consume`` receives the data in pieces of at most ``piece_size`` bytes, each valid
        during the call only. Raises :class:`ChunkFramingError` when the data ends early.
        """
        crc = crc32(header.type, 0)
        remaining = header.length
        while remaining:
            available = len(self._buf) - self._pos
            if not available:
                if not self._fill():
                    raise self._truncated(header, remaining + 4)
                continue
            take = min(available, remaining)
            piece = self._buf[self._pos : self._pos + take]
            self._pos += take
            remaining -= take
            crc = crc32(piece, crc)
            if consume is not None:
                consume(piece)
        stored = self._read_small(4)
        if len(stored) < 4:
            raise self._truncated(header, 4 - len(stored))
        (stored_crc,) = _CRC.unpack(stored)
        return stored_crc, stored_crc == crc & 0xFFFFFFFF

    def _truncated(self, header: ChunkHeader, missing: int) -> ChunkFramingError:
        return ChunkFramingError(
            f"truncated {header.name} chunk at offset {header.offset}: the data ends at "
            f"offset {self.offset}, {missing} bytes short of the chunk's end",
            code=TRUNCATED,
            offset=self.offset,
            chunk=header.name,
        )

    def skip_to_end(self, limit: int) -> int:
        """Read the remaining data, stopping after ``limit`` bytes; return the count read."""
        count = len(self._buf) - self._pos
        self._pos = len(self._buf)
        while count < limit and self._fill():
            count += len(self._buf)
            self._pos = len(self._buf)
        return count


def iter_chunks(
    data: bytes | bytearray | memoryview | IO[bytes], *, check_crc: bool = True
) -> Iterator[Chunk]:
    """Yield the chunks of a PNG, stopping after IEND.

    ``data`` is the PNG in memory or a binary file object. Raises
    :class:`CorruptPngError` for a bad signature, a truncated chunk, or (with
    ``check_crc``) a CRC mismatch; the message names the chunk and its byte offset. For a
    report of every problem instead of the first one, use ``safeinfer.verify_png``.

    >>> [chunk.name for chunk in iter_chunks(png_bytes)]  # doctest: +SKIP
    ['IHDR', 'IDAT', 'IEND']
    """
    reader = ChunkReader(data)
    if reader.read_signature() != PNG_SIGNATURE:
        raise CorruptPngError("not a PNG: bad signature at offset 0")
    while (header := reader.next_header()) is not None:
        pieces: list[memoryview] = []
        crc, crc_ok = reader.read_data(header, pieces.append)
        if check_crc and not crc_ok:
            raise CorruptPngError(f"CRC mismatch in {header.name} chunk at offset {header.offset}")
        yield Chunk(header.type, b"".join(pieces), header.offset, crc, crc_ok)
        if header.type == IEND:
            return
    raise CorruptPngError(f"missing IEND chunk: the data ends at offset {reader.offset}")
