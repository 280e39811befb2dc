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

from safeinfer.encode._deflate import DeflateBackend, deflate
from safeinfer.encode._filters import FILTER_PAETH, FILTER_UP, FilterChoice, filter_rows
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


@dataclass(frozen=True, slots=True)
class EncoderSettings:
    """How one compression mode filters and deflates."""

    filter: FilterChoice
    level: int
    strategy: int = zlib.Z_DEFAULT_STRATEGY


#: ``fast``: one Up filter for all rows and deflate level 1 with run-length matching only
#: (Z_RLE), the settings of OpenCV's and libpng's fast modes.
FAST: Final = EncoderSettings(filter=FILTER_UP, level=1, strategy=zlib.Z_RLE)

#: ``balanced``: Paeth on every row, which predicts photographs well, at deflate level 6.
BALANCED: Final = EncoderSettings(filter=FILTER_PAETH, level=6)

#: ``small``: a filter per row chosen by libpng's heuristic, at deflate level 9.
SMALL: Final = EncoderSettings(filter="adaptive", level=9)


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


def bytes_per_pixel(pixels: np.ndarray[Any, np.dtype[Any]]) -> int:
    """Return the filter distance in bytes: channels times bytes per sample (section 9.2)."""
    return int(pixels.shape[2] * pixels.dtype.itemsize)


def compress_pixels(
    pixels: np.ndarray[Any, np.dtype[Any]],
    settings: EncoderSettings,
    *,
    backend: DeflateBackend | None = None,
) -> bytes:
    """Filter and deflate the pixels: the zlib stream that the IDAT chunks carry."""
    filtered = filter_rows(row_bytes(pixels), bytes_per_pixel(pixels), settings.filter)
    return deflate(
        filtered.data.cast("B"),
        level=settings.level,
        strategy=settings.strategy,
        backend=backend,
    )


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
    """Return the smallest zlib stream of :data:`SMALL`, Paeth at level 9, and Pillow's
    ``optimize=True``, so ``small`` output is never larger than Pillow's."""
    from safeinfer.encode._pillow import pillow_optimized_stream

    candidates = [
        compress_pixels(pixels, SMALL),
        compress_pixels(pixels, EncoderSettings(filter=FILTER_PAETH, level=9)),
    ]
    pillow_stream = pillow_optimized_stream(pixels)
    if pillow_stream is not None:
        candidates.append(pillow_stream)
    return min(candidates, key=len)
