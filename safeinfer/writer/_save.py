"""save_png and save_image: encode an image and publish it with atomic_write."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, cast

from safeinfer.errors import ConfigError, CorruptPngError
from safeinfer.writer._atomic import TempCheck, validate_options, write_checked
from safeinfer.writer._dest import resolve_destination
from safeinfer.writer._result import DEFAULT_DURABILITY, Durability, IfExists, WriteResult

if TYPE_CHECKING:
    from safeinfer.encode import Compression

#: Depth of save_png's check of the encoded file before publishing. "structure":
#: signature, chunk order and CRCs. "full": also inflates the image data and checks its size.
VerifyLevel = Literal["structure", "full"]
_VERIFY_LEVELS: Final = ("structure", "full")

ImageFormat = Literal["png", "jpeg", "webp"]

#: Accepted file suffixes per format; generated names use the first one.
_SUFFIXES: Final[dict[str, tuple[str, ...]]] = {
    "png": (".png",),
    "jpeg": (".jpg", ".jpeg"),
    "webp": (".webp",),
}
_FORMAT_ALIASES: Final = {"jpg": "jpeg"}

#: The encoder's speed/size trade-off used unless the caller picks another.
DEFAULT_COMPRESSION: Final[Compression] = "fast"


def _png_check(level: VerifyLevel | None, target: Path) -> TempCheck | None:
    if level is None:
        return None
    if level not in _VERIFY_LEVELS:
        raise ConfigError(f"invalid verify {level!r}: expected None, 'structure' or 'full'")

    def check(temp: Path) -> None:
        from safeinfer.png import check_png

        try:
            check_png(temp, level=level)
        except CorruptPngError as error:
            raise CorruptPngError(
                f"not publishing {target}: the encoded PNG failed the {level!r} check: {error}",
                report=error.report,
            ) from error

    return check


def save_png(
    image: Any,
    dest: str | os.PathLike[str],
    *,
    name: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    compression: Compression = DEFAULT_COMPRESSION,
    durability: Durability = DEFAULT_DURABILITY,
    if_exists: IfExists | None = None,
    verify: VerifyLevel | None = None,
) -> WriteResult:
    """Encode ``image`` as PNG and publish it atomically in or at ``dest``.

    ``image`` is a PIL image, a numpy array or a torch tensor. Arrays are HW or HWC with
    1 to 4 channels, as uint8, uint16, or float in [0, 1]. Other integer dtypes are
    stored at 8 bits when every value is at most 255, else at 16 bits when every value is
    at most 65535. Other values raise. Tensors are CHW or HWC, on any device. Decoding
    the file gives back the pixels exactly, after floats are quantised to 8 bits.

    ``dest`` is a directory when it exists as one, ends with a path separator, or has no
    suffix: the file then gets a unique, time-sortable name with ``name`` (sanitised) as
    its stem, and ``if_exists`` defaults to "unique". Otherwise ``dest`` is the file path
    and ``if_exists`` defaults to "error". ``metadata`` goes into an iTXt chunk as JSON.
    ``verify`` checks the temp file before it is published ("structure" or "full") and
    raises CorruptPngError instead of publishing a bad file. ``durability`` is as for
    :func:`atomic_write`.

    Raises InvalidImageError for NaN or infinite values, floats outside [0, 1], integers
    outside [0, 65535], bool or complex dtypes, or unsupported shapes;
    InvalidNameError for a name with nothing usable in it; WriteError when the file
    cannot be written (the old file then stays as it was and no temp file is left).

    >>> import numpy as np, safeinfer
    >>> result = safeinfer.save_png(np.zeros((64, 64, 3), np.uint8), "outputs/", name="cat")
    >>> result.path.name                                   # doctest: +SKIP
    '20261204T204512123456Z-9f1c2a7be04d3316-cat.png'
    """
    target, policy = resolve_destination(
        dest, name=name, suffixes=_SUFFIXES["png"], if_exists=if_exists
    )
    validate_options(durability, policy)
    check = _png_check(verify, target)

    from safeinfer.encode import encode_png

    data = encode_png(image, compression=compression, metadata=metadata)
    return write_checked(target, data, durability=durability, if_exists=policy, check=check)


def save_image(
    image: Any,
    dest: str | os.PathLike[str],
    *,
    format: str = "png",
    name: str | None = None,
    quality: int | None = None,
    metadata: Mapping[str, Any] | None = None,
    compression: Compression = DEFAULT_COMPRESSION,
    durability: Durability = DEFAULT_DURABILITY,
    if_exists: IfExists | None = None,
    verify: VerifyLevel | None = None,
) -> WriteResult:
    """Encode ``image`` as PNG, JPEG or WebP and publish it atomically in or at ``dest``.

    PNG goes through :func:`save_png` (``quality`` does not apply). JPEG (``"jpg"`` is
    accepted too) and WebP are lossy: ``quality`` (1 to 100) is passed to the encoder,
    ``metadata`` goes into EXIF and XMP, and ``compression`` and ``verify`` apply to PNG
    only. ``dest``, ``name``, ``durability`` and ``if_exists`` work as for
    :func:`save_png`; a JPEG file path may end in .jpg or .jpeg.

    >>> result = save_image(image, "outputs/", format="webp", quality=90)  # doctest: +SKIP
    """
    image_format = _FORMAT_ALIASES.get(format, format)
    if image_format not in _SUFFIXES:
        raise ConfigError(f"invalid format {format!r}: expected 'png', 'jpeg' or 'webp'")
    if image_format == "png":
        if quality is not None:
            raise ConfigError("quality applies to JPEG and WebP only; PNG is always lossless")
        return save_png(
            image,
            dest,
            name=name,
            metadata=metadata,
            compression=compression,
            durability=durability,
            if_exists=if_exists,
            verify=verify,
        )
    if verify is not None or compression != DEFAULT_COMPRESSION:
        raise ConfigError(f"compression and verify apply to PNG only, not to {image_format!r}")

    target, policy = resolve_destination(
        dest, name=name, suffixes=_SUFFIXES[image_format], if_exists=if_exists
    )
    validate_options(durability, policy)

    from safeinfer.encode import encode_image

    data = encode_image(
        image,
        format=cast("ImageFormat", image_format),
        quality=quality,
        metadata=metadata,
    )
    return write_checked(target, data, durability=durability, if_exists=policy)
