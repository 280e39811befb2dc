"""PNG bytes in and out without a decoder library: chunks, CRC, text metadata, verification."""

from safeinfer.png._chunks import (
    PNG_SIGNATURE,
    Chunk,
    Ihdr,
    chunk_crc,
    iter_chunks,
    write_chunk,
)

from safeinfer.png._text import (
    TextEntry,
    build_text_chunk,
    parse_text_chunk,
    read_metadata,
    read_text,
)

__all__ = [
    "PNG_SIGNATURE",
    "Chunk",
    "Ihdr",
    "TextEntry",
    "build_text_chunk",
    "chunk_crc",
    "iter_chunks",
    "parse_text_chunk",
    "read_metadata",
    "read_text",
    "write_chunk",
]
