"""PNG bytes in and out without a decoder library: chunks, CRC, text metadata, verification."""

from safeinfer.png._chunks import (
    PNG_SIGNATURE,
    Chunk,
    Ihdr,
    chunk_crc,
    iter_chunks,
    write_chunk,
)

__all__ = ["PNG_SIGNATURE", "Chunk", "Ihdr", "chunk_crc", "iter_chunks", "write_chunk"]
