"""PNG bytes in and out without a decoder library: chunks, CRC, text metadata, verification."""

from safeinfer.png._chunks import (
    PNG_SIGNATURE,
    Chunk,
    Ihdr,
    chunk_crc,
    iter_chunks,
    write_chunk,
)
from safeinfer.png._limits import Limits
from safeinfer.png._report import ChunkInfo, PngReport, Problem
from safeinfer.png._scan import scan
from safeinfer.png._text import (
    TextEntry,
    build_text_chunk,
    parse_text_chunk,
    read_metadata,
    read_text,
)
from safeinfer.png._verify import check_png, verify_png

__all__ = [
    "PNG_SIGNATURE",
    "Chunk",
    "ChunkInfo",
    "Ihdr",
    "Limits",
    "PngReport",
    "Problem",
    "TextEntry",
    "build_text_chunk",
    "check_png",
    "chunk_crc",
    "iter_chunks",
    "parse_text_chunk",
    "read_metadata",
    "read_text",
    "scan",
    "verify_png",
    "write_chunk",
]
