"""Encoding through Pillow: the zlib stream of Pillow's ``optimize=True`` PNG, and JPEG/WebP."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image

from safeinfer.png._chunks import IDAT, iter_chunks


def to_pillow(pixels: np.ndarray[Any, np.dtype[Any]]) -> Image.Image | None:
    """Return the pixels as a PIL image, or None when Pillow has no matching mode.

    Pillow has 16-bit grey (``I;16``) but no 16-bit grey + alpha, RGB or RGBA.
    """
    channels = pixels.shape[2]
    plane = pixels[:, :, 0] if channels == 1 else pixels
    if pixels.dtype == np.uint8 or channels == 1:
        # Pillow picks L, LA, RGB or RGBA for uint8, and I;16 for 2-D uint16.
        return Image.fromarray(plane)
    return None


def pillow_optimized_stream(pixels: np.ndarray[Any, np.dtype[Any]]) -> bytes | None:
    """Return the zlib stream of Pillow's ``optimize=True`` PNG, or None where Pillow
    cannot store the pixels unchanged."""
    image = to_pillow(pixels)
    if image is None:
        return None
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return b"".join(chunk.data for chunk in iter_chunks(buffer.getvalue()) if chunk.type == IDAT)


def encode_lossy(
    pixels: np.ndarray[Any, np.dtype[Any]],
    *,
    format: str,
    quality: int,
    exif: bytes | None = None,
    xmp: bytes | None = None,
) -> bytes:
    """Encode 8-bit pixels as JPEG or WebP with Pillow."""
    image = to_pillow(pixels)
    if image is None:  # pragma: no cover - callers pass uint8 only
        raise ValueError("JPEG and WebP take 8-bit pixels")
    options: dict[str, Any] = {"quality": quality}
    if exif is not None:
        options["exif"] = exif
    if xmp is not None:
        options["xmp"] = xmp
    buffer = io.BytesIO()
    image.save(buffer, format=format.upper(), **options)
    return buffer.getvalue()
