"""The chunk rules of a PNG check, applied as the chunks stream past.

The ``structure`` level reads every chunk once, in bounded pieces, and checks the
framing and the chunk rules of the PNG specification (W3C PNG Third Edition, sections 5
and 11): the signature, every CRC, ancillary chunks included, lengths, IHDR first and
valid, the PLTE and tRNS rules, one run of IDAT chunks, chunks allowed only once, and an
empty IEND exactly at the end of the file. The ``full`` level also inflates the image
data in the same pass (see :mod:`safeinfer.png._imagedata`).

Every message names the chunk and the byte offset of the fault.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from safeinfer.png._chunks import (
    ALLOWED_BIT_DEPTHS,
    IDAT,
    IEND,
    IHDR,
    INDEXED_COLOUR,
    MAX_DIMENSION,
    PLTE,
    PNG_SIGNATURE,
    ChunkFramingError,
    ChunkHeader,
    ChunkReader,
    Ihdr,
)
from safeinfer.png._imagedata import ImageDataChecker
from safeinfer.png._limits import Limits
from safeinfer.png._report import (
    BAD_IEND,
    BAD_IHDR,
    BAD_PLTE,
    BAD_SIGNATURE,
    BAD_TRNS,
    CHUNK_ORDER,
    CRC_MISMATCH,
    DATA_AFTER_IEND,
    DUPLICATE_CHUNK,
    LIMIT_EXCEEDED,
    MISSING_IDAT,
    MISSING_IEND,
    MISSING_IHDR,
    TOO_MANY_PROBLEMS,
    TRUNCATED,
    UNKNOWN_CRITICAL_CHUNK,
    ChunkInfo,
    PngReport,
    Problem,
)

#: Problems recorded per file before the check stops: a file of a million bad chunks
#: gives a short report, not a million entries.
MAX_PROBLEMS: Final = 64

#: Chunks that may appear at most once (section 5.6 "Chunk ordering"; cICP, mDCV, cLLI
#: and eXIf come from the Third Edition).
ONCE_ONLY: Final = frozenset(
    b"IHDR PLTE IEND cHRM gAMA iCCP sBIT sRGB cICP mDCV cLLI bKGD hIST tRNS eXIf pHYs tIME".split()
)
_TRNS: Final = b"tRNS"
#: tRNS data length for the greyscale and truecolour types without alpha.
_TRNS_LENGTH: Final = {0: 2, 2: 6}
_PLTE_ENTRY_SIZE: Final = 3
_MAX_PLTE_ENTRIES: Final = 256
#: Chunks whose data the checker parses, and the most data it keeps of them.
_PARSED: Final = frozenset((IHDR, PLTE, _TRNS))
_MAX_PARSED_LENGTH: Final = 4096
_IHDR_LENGTH: Final = 13
_KNOWN_CRITICAL: Final = frozenset((IHDR, PLTE, IDAT, IEND))


class _StopCheck(Exception):
    """Raised inside the checker when the problem cap is reached."""


class ChunkRules:
    """The state of one check: which chunks came, in what order, and what they hold."""

    def __init__(self, report: PngReport, limits: Limits) -> None:
        self.report = report
        self.limits = limits
        self.full = report.level == "full"
        self.first_offset: dict[bytes, int] = {}
        self.ihdr: Ihdr | None = None
        self.palette_entries = 0
        self.idat_ended_at: int | None = None
        self.image_data: ImageDataChecker | None = None
        self.data_offset = 0
        # Image data faults found while an IDAT chunk streams in wait until its CRC is
        # known, so a damaged chunk reports the CRC mismatch first.
        self.deferred: list[Problem] | None = None

    def add(self, code: str, chunk: str | None, offset: int | None, message: str) -> None:
        problems = self.report.problems
        problems.append(Problem(code, chunk, offset, message))
        if len(problems) >= MAX_PROBLEMS:
            problems.append(
                Problem(TOO_MANY_PROBLEMS, None, offset, f"stopped after {MAX_PROBLEMS} problems")
            )
            raise _StopCheck

    def run(self, reader: ChunkReader, size: int | None) -> None:
        if size is not None and size > self.limits.max_bytes:
            self.add(
                LIMIT_EXCEEDED,
                None,
                None,
                f"file of {size} bytes is over the limit of {self.limits.max_bytes} bytes "
                f"(Limits.max_bytes); it was not checked",
            )
            return
        try:
            if self._check_signature(reader):
                self._read_chunks(reader)
        except ChunkFramingError as error:
            self.add(error.code, error.chunk, error.offset, str(error))
            self._add_deferred()
        except _StopCheck:
            pass
        finally:
            self.report.bytes = reader.offset

    def _check_signature(self, reader: ChunkReader) -> bool:
        signature = reader.read_signature()
        if signature == PNG_SIGNATURE:
            return True
        if PNG_SIGNATURE.startswith(signature):
            what = "the file is empty" if not signature else f"only {len(signature)} bytes"
            self.add(TRUNCATED, None, len(signature), f"truncated inside the signature: {what}")
        else:
            self.add(
                BAD_SIGNATURE,
                None,
                0,
                f"not a PNG: bad signature {signature.hex(' ')} at offset 0, expected "
                f"{PNG_SIGNATURE.hex(' ')}",
            )
        return False

    def _read_chunks(self, reader: ChunkReader) -> None:
        count = 0
        while (header := reader.next_header()) is not None:
            count += 1
            if not self._within_limits(header, count):
                return
            self.report.chunks.append(ChunkInfo(header.name, header.offset, header.length))
            self._check_order(header, count)
            parsed: list[memoryview] = []
            keep = header.type in _PARSED and header.length <= _MAX_PARSED_LENGTH
            consume: Callable[[memoryview], object] | None = None
            if keep:
                consume = parsed.append
            elif header.type == IDAT and self.image_data is not None:
                self.data_offset = header.offset + 8
                self.image_data.chunk_offset = header.offset
                consume = self._feed_image_data
            self.deferred = [] if consume == self._feed_image_data else None
            stored_crc, crc_ok = reader.read_data(header, consume)
            if not crc_ok:
                self.add(
                    CRC_MISMATCH,
                    header.name,
                    header.offset,
                    f"CRC mismatch in {header.name} chunk at offset {header.offset}: "
                    f"stored {stored_crc:08x}",
                )
            self._add_deferred()
            if keep:
                self._parse(header, b"".join(parsed))
            if header.type == IEND:
                self._check_end(reader, header)
                return
        last = f"the {self.report.chunks[-1].type} chunk" if self.report.chunks else "the signature"
        self.add(
            MISSING_IEND,
            None,
            reader.offset,
            f"missing IEND chunk: the file ends at offset {reader.offset}, after {last} "
            f"(truncated at a chunk boundary)",
        )

    def _within_limits(self, header: ChunkHeader, count: int) -> bool:
        if count > self.limits.max_chunks:
            message = f"more than {self.limits.max_chunks} chunks (Limits.max_chunks)"
        elif header.end > self.limits.max_bytes:
            message = (
                f"{header.name} chunk at offset {header.offset} ends past the limit of "
                f"{self.limits.max_bytes} bytes (Limits.max_bytes)"
            )
        else:
            return True
        self.add(LIMIT_EXCEEDED, header.name, header.offset, f"{message}; checking stopped")
        return False

    def _feed_image_data(self, piece: memoryview) -> None:
        assert self.image_data is not None
        self.image_data.feed(piece, self.data_offset)
        self.data_offset += len(piece)

    def _check_order(self, header: ChunkHeader, count: int) -> None:
        """Check the rules that depend on the chunk's position (section 5.6)."""
        chunk_type, name, offset = header.type, header.name, header.offset
        first = self.first_offset.get(chunk_type)
        if first is None:
            self.first_offset[chunk_type] = offset
        if count == 1 and chunk_type != IHDR:
            self.add(
                MISSING_IHDR, name, offset, f"first chunk is {name} at offset {offset}, not IHDR"
            )
        elif chunk_type == IHDR and first is None and count > 1:
            self.add(CHUNK_ORDER, name, offset, f"IHDR at offset {offset} is not the first chunk")
        if first is not None and chunk_type in ONCE_ONLY:
            self.add(
                DUPLICATE_CHUNK,
                name,
                offset,
                f"second {name} chunk at offset {offset} (the first is at offset {first}); "
                f"{name} may appear only once",
            )
        if not chunk_type[0] & 0x20 and chunk_type not in _KNOWN_CRITICAL:
            self.add(
                UNKNOWN_CRITICAL_CHUNK,
                name,
                offset,
                f"unknown critical chunk {name} at offset {offset}: a decoder must not "
                f"display this image",
            )
        if chunk_type == IDAT:
            self._start_idat(header, first is None)
        else:
            self._end_idat_run(header)
        ihdr = self.ihdr
        if chunk_type == PLTE and IDAT in self.first_offset:
            self.add(CHUNK_ORDER, name, offset, f"PLTE at offset {offset} comes after IDAT")
        if (
            chunk_type == _TRNS
            and ihdr is not None
            and ihdr.colour_type == INDEXED_COLOUR
            and PLTE not in self.first_offset
        ):
            self.add(CHUNK_ORDER, name, offset, f"tRNS at offset {offset} comes before PLTE")

    def _start_idat(self, header: ChunkHeader, first: bool) -> None:
        offset = header.offset
        if self.idat_ended_at is not None:
            self.add(
                CHUNK_ORDER,
                "IDAT",
                offset,
                f"IDAT chunk at offset {offset} after the IDAT run ended at offset "
                f"{self.idat_ended_at}: IDAT chunks must be consecutive",
            )
            self.idat_ended_at = None
            return
        if not first:
            return
        ihdr = self.ihdr
        if (
            ihdr is not None
            and ihdr.colour_type == INDEXED_COLOUR
            and PLTE not in self.first_offset
        ):
            self.add(
                BAD_PLTE,
                "IDAT",
                offset,
                f"missing PLTE chunk before the first IDAT at offset {offset}: colour type 3 "
                f"needs a palette",
            )
        if self.full and ihdr is not None and self._image_checkable():
            self.image_data = ImageDataChecker(ihdr, self._image_problem)

    def _image_checkable(self) -> bool:
        return not any(p.code in (BAD_IHDR, LIMIT_EXCEEDED) for p in self.report.problems)

    def _image_problem(self, code: str, offset: int, message: str) -> None:
        if self.deferred is not None:
            self.deferred.append(Problem(code, "IDAT", offset, message))
        else:
            self.add(code, "IDAT", offset, message)

    def _add_deferred(self) -> None:
        deferred, self.deferred = self.deferred, None
        for problem in deferred or ():
            self.add(problem.code, problem.chunk, problem.offset, problem.message)

    def _end_idat_run(self, header: ChunkHeader) -> None:
        if IDAT not in self.first_offset or self.idat_ended_at is not None:
            return
        self.idat_ended_at = header.offset
        if self.image_data is not None:
            image_data, self.image_data = self.image_data, None
            image_data.finish()

    def _parse(self, header: ChunkHeader, data: bytes) -> None:
        if header.type == IHDR:
            self._parse_ihdr(header, data)
        elif header.type == PLTE:
            self._parse_plte(header, data)
        elif header.type == _TRNS:
            self._parse_trns(header, data)

    def _parse_ihdr(self, header: ChunkHeader, data: bytes) -> None:
        offset = header.offset
        if len(data) != _IHDR_LENGTH or self.ihdr is not None:
            if len(data) != _IHDR_LENGTH:
                self.add(
                    BAD_IHDR,
                    "IHDR",
                    offset,
                    f"bad IHDR length {len(data)} at offset {offset}: expected 13",
                )
            return
        ihdr = Ihdr.parse(data)
        report = self.report
        report.width, report.height = ihdr.width, ihdr.height
        report.colour_type, report.bit_depth = ihdr.colour_type, ihdr.bit_depth
        report.interlace = ihdr.interlace_method
        faults = ihdr_faults(ihdr)
        for fault in faults:
            self.add(BAD_IHDR, "IHDR", offset, f"invalid IHDR at offset {offset}: {fault}")
        self.ihdr = ihdr
        if not faults:
            self._check_image_limits(ihdr, offset)

    def _check_image_limits(self, ihdr: Ihdr, offset: int) -> None:
        limits = self.limits
        pixels = ihdr.width * ihdr.height
        if ihdr.width > limits.max_width:
            excess = f"width {ihdr.width} is over Limits.max_width={limits.max_width}"
        elif ihdr.height > limits.max_height:
            excess = f"height {ihdr.height} is over Limits.max_height={limits.max_height}"
        elif pixels > limits.max_pixels:
            excess = (
                f"{ihdr.width}x{ihdr.height} = {pixels} pixels is over "
                f"Limits.max_pixels={limits.max_pixels}"
            )
        else:
            return
        self.add(
            LIMIT_EXCEEDED,
            "IHDR",
            offset,
            f"IHDR at offset {offset}: {excess}; the image data was not checked",
        )

    def _parse_plte(self, header: ChunkHeader, data: bytes) -> None:
        offset = header.offset
        entries, remainder = divmod(len(data), _PLTE_ENTRY_SIZE)
        ihdr = self.ihdr
        fault = ""
        if remainder or not 1 <= entries <= _MAX_PLTE_ENTRIES:
            fault = f"length {len(data)} is not 3 to 768 bytes in steps of 3"
        elif ihdr is not None and ihdr.colour_type in (0, 4):
            fault = f"colour type {ihdr.colour_type} (greyscale) forbids a palette"
        elif (
            ihdr is not None
            and ihdr.colour_type == INDEXED_COLOUR
            and entries > 1 << ihdr.bit_depth
        ):
            fault = f"{entries} entries is more than bit depth {ihdr.bit_depth} can index"
        if fault:
            self.add(BAD_PLTE, "PLTE", offset, f"bad PLTE chunk at offset {offset}: {fault}")
        self.palette_entries = entries

    def _parse_trns(self, header: ChunkHeader, data: bytes) -> None:
        ihdr = self.ihdr
        if ihdr is None:
            return
        offset = header.offset
        colour_type = ihdr.colour_type
        fault = ""
        if colour_type in _TRNS_LENGTH and len(data) != _TRNS_LENGTH[colour_type]:
            expected = _TRNS_LENGTH[colour_type]
            fault = f"length {len(data)}, expected {expected} for colour type {colour_type}"
        elif colour_type == INDEXED_COLOUR and len(data) > self.palette_entries:
            fault = f"{len(data)} entries, more than the {self.palette_entries} palette entries"
        elif colour_type not in _TRNS_LENGTH and colour_type != INDEXED_COLOUR:
            fault = f"colour type {colour_type} has an alpha channel, which forbids tRNS"
        if fault:
            self.add(BAD_TRNS, "tRNS", offset, f"bad tRNS chunk at offset {offset}: {fault}")

    def _check_end(self, reader: ChunkReader, header: ChunkHeader) -> None:
        offset = header.offset
        if header.length:
            self.add(
                BAD_IEND,
                "IEND",
                offset,
                f"IEND chunk at offset {offset} has {header.length} data bytes",
            )
        if IDAT not in self.first_offset:
            self.add(MISSING_IDAT, "IEND", offset, f"no IDAT chunk before IEND at offset {offset}")
        extra = reader.skip_to_end(self.limits.max_bytes)
        if extra:
            end = header.end
            self.add(
                DATA_AFTER_IEND,
                None,
                end,
                f"{count_bytes(extra)} after the IEND chunk, from offset {end}: an overwrite by a "
                f"shorter file leaves this",
            )


def ihdr_faults(ihdr: Ihdr) -> list[str]:
    """Return what is wrong with an IHDR's fields (section 11.2.2), empty when valid."""
    faults = []
    for name, value in (("width", ihdr.width), ("height", ihdr.height)):
        if not 1 <= value <= MAX_DIMENSION:
            faults.append(f"{name} {value} is not between 1 and 2**31-1")
    allowed = ALLOWED_BIT_DEPTHS.get(ihdr.colour_type)
    if allowed is None:
        faults.append(f"colour type {ihdr.colour_type} is invalid (allowed: 0, 2, 3, 4, 6)")
    elif ihdr.bit_depth not in allowed:
        faults.append(
            f"bit depth {ihdr.bit_depth} is invalid for colour type {ihdr.colour_type} "
            f"(allowed: {', '.join(map(str, allowed))})"
        )
    if ihdr.compression_method:
        faults.append(f"compression method {ihdr.compression_method} is not 0 (deflate)")
    if ihdr.filter_method:
        faults.append(f"filter method {ihdr.filter_method} is not 0 (adaptive filtering)")
    if ihdr.interlace_method not in (0, 1):
        faults.append(f"interlace method {ihdr.interlace_method} is not 0 (none) or 1 (Adam7)")
    return faults


def count_bytes(count: int) -> str:
    return "1 byte" if count == 1 else f"{count} bytes"
