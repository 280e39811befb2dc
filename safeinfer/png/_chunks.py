"""PNG chunk layout: reading and writing chunks, CRC, and the IHDR header.

The names follow the PNG specification (ISO/IEC 15948, W3C PNG Third Edition), section 5
("Datastream structure") and 11.2.2 ("IHDR Image header"). This is the one PNG parser of
the project: the encoder, the metadata reader and the verifier all build on it.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from safeinfer.errors import CorruptPngError

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
    return zlib.crc32(data, zlib.crc32(chunk_type)) & 0xFFFFFFFF


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


def iter_chunks(data: bytes | memoryview, *, check_crc: bool = True) -> Iterator[Chunk]:
    """Yield the chunks of an in-memory PNG, stopping after IEND.

    Raises :class:`CorruptPngError` for a bad signature, a truncated chunk, or (with
    ``check_crc``) a CRC mismatch; the message names the chunk and its byte offset. For a
    report of every problem instead of the first one, use ``safeinfer.verify_png``.
    """
    view = memoryview(data)
    if bytes(view[:8]) != PNG_SIGNATURE:
        raise CorruptPngError("not a PNG: bad signature at offset 0")
    offset = 8
    end = len(view)
    while offset < end:
        if end - offset < 8:
            raise CorruptPngError(f"truncated chunk header at offset {offset}")
        length, chunk_type = _LENGTH_TYPE.unpack_from(view, offset)
        if length > MAX_CHUNK_LENGTH:
            raise CorruptPngError(f"bad length {length} of chunk at offset {offset}")
        data_start = offset + 8
        data_end = data_start + length
        if data_end + 4 > end:
            raise CorruptPngError(
                f"truncated {chunk_type.decode('latin-1')} chunk at offset {offset}"
            )
        body = bytes(view[data_start:data_end])
        (crc,) = _CRC.unpack_from(view, data_end)
        crc_ok = crc == chunk_crc(chunk_type, body)
        if check_crc and not crc_ok:
            raise CorruptPngError(
                f"CRC mismatch in {chunk_type.decode('latin-1')} chunk at offset {offset}"
            )
        yield Chunk(chunk_type, body, offset, crc, crc_ok)
        offset = data_end + 4
        if chunk_type == IEND:
            return
    raise CorruptPngError(f"missing IEND chunk: the data ends at offset {offset}")
