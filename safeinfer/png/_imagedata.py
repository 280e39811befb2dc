"""Streamed check of the image data: the zlib stream that the IDAT chunks carry together.

The checker inflates the data in bounded pieces without keeping any decoded row, so its
memory stays the same for a 64x64 and a 20000x20000 image. It checks what a decoder
needs (PNG specification sections 9 "Filtering" and 10 "Compression"):

- a valid zlib header without a preset dictionary, and deflate data that decodes;
- the Adler-32 of the decompressed bytes;
- a stream that ends exactly with the last IDAT byte;
- exactly as many bytes as IHDR implies, Adam7 passes included;
- a filter type of 0 to 4 at the start of every scanline.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from safeinfer.png._chunks import INDEXED_COLOUR, Ihdr
from safeinfer.png._inflate import ZLIB_ERRORS, adler32, raw_decompressobj
from safeinfer.png._report import (
    ADLER32_MISMATCH,
    BAD_FILTER,
    BAD_ZLIB,
    DATA_AFTER_ZLIB,
    NOT_ENOUGH_DATA,
    TOO_MUCH_DATA,
    TRUNCATED_ZLIB,
)

#: Compressed bytes handed to the inflater per call. A small input bounds the copy that
#: the inflater keeps as ``unconsumed_tail`` when the output cap stops it early.
INFLATE_INPUT_SIZE: Final = 32 * 1024
#: Decompressed bytes produced per call, so a decompression bomb never allocates more.
INFLATE_OUTPUT_SIZE: Final = 256 * 1024

#: Filter types defined for filter method 0 (section 9.2): None, Sub, Up, Average, Paeth.
FILTER_TYPES: Final = bytes(range(5))

#: Adam7 passes as (first column, first row, column step, row step), section 8.2.
ADAM7_PASSES: Final = (
    (0, 0, 8, 8),
    (4, 0, 8, 8),
    (0, 4, 4, 8),
    (2, 0, 4, 4),
    (0, 2, 2, 4),
    (1, 0, 2, 2),
    (0, 1, 1, 2),
)

#: Deflate compression method in the zlib header (RFC 1950): the only one PNG allows.
_ZLIB_DEFLATE: Final = 8
#: The largest window size field: 2**(7+8) = 32 KiB.
_ZLIB_MAX_WINDOW_INFO: Final = 7
#: FDICT flag: PNG forbids a preset dictionary (section 10.1).
_ZLIB_FDICT: Final = 0x20
_ZLIB_HEADER_SIZE: Final = 2
_ADLER32_SIZE: Final = 4
_ADLER32 = struct.Struct(">I")

ReportProblem = Callable[[str, int, str], None]
"""Callback ``(code, file offset, message)``; the chunk is always IDAT."""


@dataclass(frozen=True, slots=True)
class _Segment:
    """The scanlines of the whole image or of one Adam7 pass, in decompressed bytes."""

    start: int
    stride: int
    end: int
    label: str


def scanline_segments(ihdr: Ihdr) -> list[_Segment]:
    """Return where each run of scanlines lies in the decompressed data (filter byte + row)."""
    bits = ihdr.bits_per_pixel
    if not ihdr.interlace_method:
        stride = 1 + (ihdr.width * bits + 7) // 8
        return [_Segment(0, stride, stride * ihdr.height, "")]
    segments = []
    start = 0
    for number, (x0, y0, dx, dy) in enumerate(ADAM7_PASSES, start=1):
        columns = max(0, (ihdr.width - x0 + dx - 1) // dx)
        rows = max(0, (ihdr.height - y0 + dy - 1) // dy)
        if not columns or not rows:
            continue
        stride = 1 + (columns * bits + 7) // 8
        segments.append(_Segment(start, stride, start + stride * rows, f" of Adam7 pass {number}"))
        start += stride * rows
    return segments


def describe_format(ihdr: Ihdr) -> str:
    interlace = "Adam7" if ihdr.interlace_method else "not interlaced"
    palette = ", indexed" if ihdr.colour_type == INDEXED_COLOUR else ""
    return (
        f"{ihdr.width}x{ihdr.height}, colour type {ihdr.colour_type}{palette}, "
        f"bit depth {ihdr.bit_depth}, {interlace}"
    )


class ImageDataChecker:
    """Inflate the IDAT data as it arrives and check it against the IHDR.

    ``feed`` takes the data of each IDAT chunk in order, ``finish`` is called once after
    the last IDAT chunk. After the first fault the checker ignores the rest: one broken
    stream gives one problem, not one per later chunk.
    """

    def __init__(self, ihdr: Ihdr, report: ReportProblem) -> None:
        self._ihdr = ihdr
        self._report = report
        self._segments = scanline_segments(ihdr)
        self.expected = self._segments[-1].end
        self._decompressor = raw_decompressobj()
        self._header = b""
        self._trailer = b""
        self._inflating = False
        self._stream_ended = False
        self._failed = False
        self._produced = 0
        self._adler = 1
        self._last_offset = 0
        #: Offset of the IDAT chunk being fed. Faults found in decompressed bytes name the
        #: chunk, because the inflater buffers input and the exact byte is not known.
        self.chunk_offset = 0

    def feed(self, data: memoryview, offset: int) -> None:
        """Take the next piece of IDAT data; ``offset`` is its first byte's file offset."""
        if self._failed or not data:
            return
        self._last_offset = offset + len(data)
        if not self._inflating and not self._stream_ended:
            take = _ZLIB_HEADER_SIZE - len(self._header)
            self._header += data[:take]
            data, offset = data[take:], offset + len(data[:take])
            if len(self._header) < _ZLIB_HEADER_SIZE or not self._check_header(offset):
                return
            self._inflating = True
        if self._inflating:
            data, offset = self._inflate(data, offset)
        if self._stream_ended and data:
            self._take_trailer(data, offset)

    def _check_header(self, offset: int) -> bool:
        cmf, flg = self._header
        start = offset - _ZLIB_HEADER_SIZE
        fault = ""
        if (cmf << 8 | flg) % 31:
            fault = f"bad zlib header check bits (bytes {self._header.hex(' ')})"
        elif cmf & 0x0F != _ZLIB_DEFLATE:
            fault = f"zlib compression method {cmf & 0x0F}: PNG allows only deflate (8)"
        elif cmf >> 4 > _ZLIB_MAX_WINDOW_INFO:
            fault = f"zlib window size field {cmf >> 4} is over the maximum of 7"
        elif flg & _ZLIB_FDICT:
            fault = "zlib stream asks for a preset dictionary, which PNG forbids"
        if fault:
            self._fail(BAD_ZLIB, start, f"{fault} at offset {start} in the IDAT data")
            return False
        return True

    def _inflate(self, data: memoryview, offset: int) -> tuple[memoryview, int]:
        """Inflate ``data``; return what follows the end of the stream, with its offset."""
        position = 0
        while position < len(data):
            piece = data[position : position + INFLATE_INPUT_SIZE]
            pending: bytes | memoryview = piece
            while pending:
                try:
                    out = self._decompressor.decompress(pending, INFLATE_OUTPUT_SIZE)
                except ZLIB_ERRORS as error:
                    where = self.chunk_offset
                    self._fail(
                        BAD_ZLIB,
                        where,
                        f"invalid deflate data in the IDAT chunk at offset {where}: {error}",
                    )
                    return data[:0], offset
                if out and not self._check_output(out):
                    return data[:0], offset
                if self._decompressor.eof:
                    self._inflating = False
                    self._stream_ended = True
                    used = len(piece) - len(self._decompressor.unused_data)
                    rest = position + used
                    return data[rest:], offset + rest
                tail = self._decompressor.unconsumed_tail
                if not out and len(tail) == len(pending):
                    # zlib consumes input or produces output on every call; this is a guard
                    # against a backend that does neither, which would loop forever.
                    where = self.chunk_offset
                    self._fail(
                        BAD_ZLIB,
                        where,
                        f"inflate made no progress in the IDAT chunk at offset {where}",
                    )
                    return data[:0], offset
                pending = tail
            position += len(piece)
        return data[:0], offset + len(data)

    def _check_output(self, out: bytes) -> bool:
        start = self._produced
        within = out[: max(0, self.expected - start)]
        # Scanlines inside the expected size are checked before the excess is reported, so
        # the first fault found does not depend on how the input was split into pieces.
        if not self._check_filters(within, start):
            return False
        if len(within) < len(out):
            self._fail(
                TOO_MUCH_DATA,
                self.chunk_offset,
                f"too much image data: the zlib stream decompresses to more than the "
                f"{self.expected} bytes that IHDR implies ({describe_format(self._ihdr)}); "
                f"found in the IDAT chunk at offset {self.chunk_offset}",
            )
            return False
        self._adler = adler32(out, self._adler)
        self._produced = start + len(out)
        return True

    def _check_filters(self, out: bytes, start: int) -> bool:
        end = start + len(out)
        for segment in self._segments:
            if segment.end <= start or segment.start >= end:
                continue
            low = max(start, segment.start)
            first_row = -(-(low - segment.start) // segment.stride)
            first = segment.start + first_row * segment.stride
            stop = min(end, segment.end)
            if first >= stop:
                continue
            filters = out[first - start : stop - start : segment.stride]
            if filters.translate(None, FILTER_TYPES):
                index = next(i for i, value in enumerate(filters) if value not in FILTER_TYPES)
                self._fail(
                    BAD_FILTER,
                    self.chunk_offset,
                    f"bad filter type {filters[index]} for row {first_row + index}"
                    f"{segment.label}: filter types are 0 to 4; found in the IDAT chunk at "
                    f"offset {self.chunk_offset}",
                )
                return False
        return True

    def _take_trailer(self, data: memoryview, offset: int) -> None:
        take = _ADLER32_SIZE - len(self._trailer)
        self._trailer += data[:take]
        if len(data) > take:
            where = offset + take
            self._fail(
                DATA_AFTER_ZLIB,
                where,
                f"data after the end of the zlib stream at offset {where}: the stream must "
                f"end with the last IDAT byte (a second zlib stream or a repeated IDAT chunk "
                f"leaves this)",
            )

    def finish(self) -> None:
        """Check the end of the stream after the last IDAT chunk."""
        if self._failed:
            return
        offset = self._last_offset
        if not self._stream_ended:
            state = "no zlib header" if not self._inflating else "no final deflate block"
            self._fail(
                TRUNCATED_ZLIB,
                offset,
                f"zlib stream ends early: the IDAT data ends at offset {offset} with {state}, "
                f"after {self._produced} of {self.expected} image bytes",
            )
            return
        if len(self._trailer) < _ADLER32_SIZE:
            self._fail(
                TRUNCATED_ZLIB,
                offset,
                f"zlib stream ends early: the IDAT data ends at offset {offset} inside the "
                f"Adler-32 checksum",
            )
            return
        (stored,) = _ADLER32.unpack(self._trailer)
        if stored != self._adler & 0xFFFFFFFF:
            self._fail(
                ADLER32_MISMATCH,
                offset - _ADLER32_SIZE,
                f"Adler-32 mismatch in the zlib stream at offset {offset - _ADLER32_SIZE}: "
                f"stored {stored:08x}, computed {self._adler & 0xFFFFFFFF:08x}",
            )
        if self._produced < self.expected:
            self._fail(
                NOT_ENOUGH_DATA,
                offset,
                f"not enough image data: the zlib stream decompresses to {self._produced} "
                f"bytes, but IHDR implies {self.expected} ({describe_format(self._ihdr)})",
            )

    def _fail(self, code: str, offset: int, message: str) -> None:
        self._failed = True
        self._report(code, offset, message)
