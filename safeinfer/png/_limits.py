"""Bounds on the size of a file that a check will read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from safeinfer.png._chunks import MAX_DIMENSION


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds past which a file is reported as ``limit-exceeded`` instead of checked.

    The pixel bound is checked from IHDR before any decompression, so a small file that
    claims a huge image (a decompression bomb) costs nothing. ``max_bytes`` bounds the
    file size and ``max_chunks`` the number of chunks, which bounds the time of a check.

    >>> verify_png("big.png", limits=Limits(max_pixels=8192 * 8192))  # doctest: +SKIP
    """

    #: 4 GiB: room for the largest image that ``max_pixels`` allows at 16 bits per sample.
    max_bytes: int = 4 * 2**30
    #: Enough for 8 KiB IDAT chunks (libpng's default) up to ``max_bytes``.
    max_chunks: int = 1_000_000
    max_width: int = MAX_DIMENSION
    max_height: int = MAX_DIMENSION
    #: 16384 x 16384. Pillow's default bomb threshold is lower (about 179 million).
    max_pixels: int = 16384 * 16384


DEFAULT_LIMITS: Final = Limits()
