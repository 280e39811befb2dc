"""The PNG encoder: numpy filtering, deflate, and chunk assembly.

Pixels arrive as a ``(height, width, channels)`` uint8 or uint16 array (see
``_inputs.to_array``); the output is a complete, non-interlaced PNG datastream.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from safeinfer.encode._deflate import PARALLEL_MIN_SIZE, DeflateBackend, deflate
from safeinfer.encode._filters import FILTER_PAETH, FilterChoice, filter_rows
from safeinfer.encode._pool import map_in_threads, thread_count
from safeinfer.png._chunks import (
    GREYSCALE,
    GREYSCALE_ALPHA,
    IDAT,
    IEND,
    IHDR,
    PNG_SIGNATURE,
    TRUECOLOUR,
    TRUECOLOUR_ALPHA,
    Ihdr,
    write_chunk,
)

#: PNG colour type for each channel count.
COLOUR_TYPES: Final = {1: GREYSCALE, 2: GREYSCALE_ALPHA, 3: TRUECOLOUR, 4: TRUECOLOUR_ALPHA}

#: Largest IDAT chunk written. Decoders accept any size up to 2**31 - 1; 1 MiB keeps the
#: chunk count low while streaming readers with fixed buffers still cope.
IDAT_CHUNK_SIZE: Final = 1024 * 1024

#: Rows per filtering task when a large image is filtered on several threads.
_FILTER_TASK_ROWS: Final = 64


@dataclass(frozen=True, slots=True)
class EncoderSettings:
    """The filter and deflate settings of one candidate encoding."""

    filter: FilterChoice
    level: int
    strategy: int = zlib.Z_DEFAULT_STRATEGY


#: Paeth on every row, then deflate level 1 matching runs only (Z_RLE). On the photographs
#: of bench/encode.py this was as small as Pillow's default save, at about a tenth of its
#: time. The Up filter that OpenCV and libpng use in their fast modes was 6 to 13 % larger.
PAETH_RLE: Final = EncoderSettings(filter=FILTER_PAETH, level=1, strategy=zlib.Z_RLE)

#: libpng's per-row filter choice and full LZ77 matching at level 6: far smaller than
#: run-length matching on flat or repetitive images (drawings, text, masks).
ADAPTIVE_6: Final = EncoderSettings(filter="adaptive", level=6)

#: As ``ADAPTIVE_6`` at level 9 with the strategy zlib tunes for filtered data.
ADAPTIVE_9: Final = EncoderSettings(filter="adaptive", level=9, strategy=zlib.Z_FILTERED)

#: Candidate encodings per compression mode. Each mode writes the smallest of its
#: candidates (the first one on equal sizes), so a later mode is never larger.
MODE_CANDIDATES: Final[dict[str, tuple[EncoderSettings, ...]]] = {
    "fast": (PAETH_RLE,),
    "balanced": (PAETH_RLE, ADAPTIVE_6),
    "small": (PAETH_RLE, ADAPTIVE_6, ADAPTIVE_9),
}


def image_header(pixels: np.ndarray[Any, np.dtype[Any]]) -> Ihdr:
    """Return the IHDR for a ``(height, width, channels)`` uint8 or uint16 array."""
    height, width, channels = pixels.shape
    bit_depth = 16 if pixels.dtype == np.uint16 else 8
    return Ihdr(width, height, bit_depth, COLOUR_TYPES[channels])


def row_bytes(pixels: np.ndarray[Any, np.dtype[Any]]) -> np.ndarray[Any, np.dtype[np.uint8]]:
    """Return the image as ``(height, row bytes)`` uint8, with 16-bit samples big-endian."""
    height = pixels.shape[0]
    if pixels.dtype == np.uint16:
        pixels = pixels.astype(">u2", copy=False)
    return np.ascontiguousarray(pixels).view(np.uint8).reshape(height, -1)


def filter_image(
    pixels: np.ndarray[Any, np.dtype[Any]], choice: FilterChoice, *, threads: int | None = None
) -> np.ndarray[Any, np.dtype[np.uint8]]:
    """Filter every row of the image: the bytes that deflate compresses.

    Large images are filtered in bands of rows on several threads. Each band gets the row
    above it, so the result is the same as on one thread.
    """
    rows = row_bytes(pixels)
    bpp = int(pixels.shape[2] * pixels.dtype.itemsize)
    height, width_bytes = rows.shape
    out = np.empty((height, width_bytes + 1), dtype=np.uint8)
    threads = thread_count() if threads is None else threads
    if threads <= 1 or out.nbytes < PARALLEL_MIN_SIZE:
        return filter_rows(rows, bpp, choice, out=out)

    def filter_band(start: int) -> None:
        stop = start + _FILTER_TASK_ROWS
        prior = rows[start - 1] if start else None
        filter_rows(rows[start:stop], bpp, choice, prior=prior, out=out[start:stop])

    map_in_threads(filter_band, range(0, height, _FILTER_TASK_ROWS), threads)
    return out


def compress_pixels(
    pixels: np.ndarray[Any, np.dtype[Any]],
    candidates: Sequence[EncoderSettings],
    *,
    backend: DeflateBackend | None = None,
    threads: int | None = None,
) -> bytes:
    """Return the smallest zlib stream (the IDAT content) among ``candidates``."""
    filtered: dict[FilterChoice, np.ndarray[Any, np.dtype[np.uint8]]] = {}
    best: bytes | None = None
    for settings in candidates:
        if settings.filter not in filtered:
            filtered[settings.filter] = filter_image(pixels, settings.filter, threads=threads)
        stream = deflate(
            filtered[settings.filter].data.cast("B"),
            level=settings.level,
            strategy=settings.strategy,
            backend=backend,
            threads=threads,
        )
        if best is None or len(stream) < len(best):
            best = stream
    if best is None:
        raise ValueError("no candidate encoder settings given")
    return best


def assemble_png(header: Ihdr, zlib_stream: bytes, ancillary: Sequence[bytes] = ()) -> bytes:
    """Join signature, IHDR, ancillary chunks (already serialised), IDAT chunks and IEND."""
    view = memoryview(zlib_stream)
    idat_chunks = [
        write_chunk(IDAT, view[start : start + IDAT_CHUNK_SIZE])
        for start in range(0, max(len(view), 1), IDAT_CHUNK_SIZE)
    ]
    return b"".join(
        (
            PNG_SIGNATURE,
            write_chunk(IHDR, header.pack()),
            *ancillary,
            *idat_chunks,
            write_chunk(IEND),
        )
    )


def compress_smallest(pixels: np.ndarray[Any, np.dtype[Any]]) -> bytes:
    """Return the ``small`` zlib stream: the smallest of the ``small`` candidates and of
    Pillow's ``optimize=True`` output, so ``small`` is never larger than Pillow's."""
    from safeinfer.encode._pillow import pillow_optimized_stream

    ours = compress_pixels(pixels, MODE_CANDIDATES["small"])
    pillow_stream = pillow_optimized_stream(pixels)
    if pillow_stream is not None and len(pillow_stream) < len(ours):
        return pillow_stream
    return ours
