"""Image to PNG, JPEG or WebP bytes: fast by default, lossless for PNG.

Inputs are PIL images, numpy arrays and torch tensors (see :func:`to_array`). PNG output
is standard, non-interlaced PNG in grey, grey + alpha, RGB or RGBA at 8 or 16 bits, and
decodes to exactly the input pixels.

>>> from safeinfer.encode import encode_png
>>> png = encode_png(numpy.zeros((64, 64, 3), numpy.uint8), metadata={"seed": 1})  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Literal, TypeAlias

from safeinfer.encode._deflate import available_backends, default_backend
from safeinfer.encode._fast import (
    MODE_CANDIDATES,
    assemble_png,
    compress_pixels,
    compress_smallest,
    image_header,
)
from safeinfer.encode._inputs import FLOAT_QUANTISATION, to_array
from safeinfer.encode._lossy import DEFAULT_QUALITY, encode_jpeg_or_webp
from safeinfer.encode._metadata import format_parameters, metadata_chunks, metadata_json
from safeinfer.errors import ConfigError

__all__ = [
    "COMPRESSION_MODES",
    "DEFAULT_COMPRESSION",
    "DEFAULT_QUALITY",
    "FLOAT_QUANTISATION",
    "Compression",
    "ImageFormat",
    "available_backends",
    "default_backend",
    "encode_image",
    "encode_png",
    "format_parameters",
    "metadata_json",
    "to_array",
]

Compression: TypeAlias = Literal["fast", "balanced", "small"]
ImageFormat: TypeAlias = Literal["png", "jpeg", "webp"]

#: ``fast`` is the default: the encode costs a fraction of a Pillow save, for a file a few
#: percent larger. Use ``small`` for archives.
DEFAULT_COMPRESSION: Final[Compression] = "fast"
COMPRESSION_MODES: Final[tuple[Compression, ...]] = ("fast", "balanced", "small")
IMAGE_FORMATS: Final[tuple[ImageFormat, ...]] = ("png", "jpeg", "webp")


def encode_png(
    image: Any,
    *,
    compression: Compression = DEFAULT_COMPRESSION,
    metadata: Mapping[str, Any] | None = None,
) -> bytes:
    """Encode an image as a lossless PNG and return its bytes.

    ``compression`` trades time for size: ``"fast"`` (Paeth filter, deflate level 1
    matching runs only), ``"balanced"`` (the smaller of ``fast`` and a per-row filter
    choice at level 6) or ``"small"`` (the smallest of those, level 9, and Pillow's
    ``optimize=True``).

    ``metadata`` is the generation metadata (prompt, negative_prompt, seed, steps,
    guidance, width, height, model, scheduler, versions, ...). It is stored as UTF-8 JSON
    with sorted keys in an iTXt chunk with keyword ``safeinfer``, plus an A1111-style
    ``parameters`` text for image browsers. Equal inputs give equal bytes.

    Raises :class:`~safeinfer.errors.InvalidImageError` for an unsupported image and
    :class:`~safeinfer.errors.InvalidMetadataError` for metadata that PNG text cannot
    hold (NUL characters, values that are not JSON-serialisable).

    >>> png = encode_png(image, metadata={"prompt": "a cat", "seed": 7})  # doctest: +SKIP
    >>> safeinfer.read_metadata(png)["safeinfer"]["seed"]                 # doctest: +SKIP
    7
    """
    if compression not in COMPRESSION_MODES:
        raise ConfigError(
            f"invalid compression {compression!r}: expected one of {', '.join(COMPRESSION_MODES)}"
        )
    pixels = to_array(image)
    ancillary = metadata_chunks(metadata) if metadata is not None else []
    if compression == "small":
        stream = compress_smallest(pixels)
    else:
        stream = compress_pixels(pixels, MODE_CANDIDATES[compression])
    return assemble_png(image_header(pixels), stream, ancillary)


def encode_image(
    image: Any,
    *,
    format: ImageFormat,
    quality: int | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> bytes:
    """Encode an image as PNG (lossless, ``fast`` mode), JPEG or WebP.

    ``quality`` (1 to 100) applies to JPEG and WebP; ``None`` takes the format's entry
    in :data:`~safeinfer.encode.DEFAULT_QUALITY`. For JPEG and WebP, the ``parameters``
    text goes into the EXIF UserComment and the JSON into an XMP packet. JPEG rejects
    images with alpha, and both lossy formats reject 16-bit images, with an
    :class:`~safeinfer.errors.InvalidImageError` that names the fix.

    >>> jpeg = encode_image(image, format="jpeg", quality=90)  # doctest: +SKIP
    """
    if format == "png":
        if quality is not None:
            raise ConfigError("quality applies to JPEG and WebP only: PNG is always lossless")
        return encode_png(image, metadata=metadata)
    if format in ("jpeg", "webp"):
        return encode_jpeg_or_webp(
            to_array(image), format=format, quality=quality, metadata=metadata
        )
    raise ConfigError(f"invalid format {format!r}: expected one of {', '.join(IMAGE_FORMATS)}")
