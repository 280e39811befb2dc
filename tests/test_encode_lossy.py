"""JPEG and WebP output through encode_image, with metadata in EXIF and XMP."""

from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ElementTree
from typing import Any

import numpy as np
import pytest
from PIL import Image

from safeinfer.encode import encode_image, encode_png, format_parameters
from safeinfer.encode._lossy import (
    EXIF_IFD_POINTER,
    EXIF_USER_COMMENT,
    USER_COMMENT_UNICODE,
    XMP_NAMESPACE,
)
from safeinfer.errors import ConfigError, InvalidImageError, InvalidMetadataError

METADATA = {"prompt": "夕焼けの富士山 🗻", "seed": 11, "steps": 8, "guidance": 3.5}


def gradient(channels: int) -> np.ndarray[Any, Any]:
    y, x = np.mgrid[0:48, 0:64]
    planes = [x * 2 + y + c * 20 for c in range(channels)]
    return np.stack(planes, axis=2).astype(np.uint8)


def open_image(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


@pytest.mark.parametrize(("image_format", "pillow_format"), [("jpeg", "JPEG"), ("webp", "WEBP")])
@pytest.mark.parametrize("channels", [1, 3])
def test_lossy_output_decodes(image_format: str, pillow_format: str, channels: int) -> None:
    pixels = gradient(channels)
    image = open_image(encode_image(pixels, format=image_format))  # type: ignore[arg-type]
    assert image.format == pillow_format
    assert image.size == (64, 48)
    decoded = np.asarray(image.convert("RGB" if channels == 3 else "L"), dtype=np.int16)
    error = np.abs(decoded.reshape(pixels.shape) - pixels).mean()
    assert error < 4, f"mean error {error:.2f} at the default quality"


def test_webp_keeps_alpha() -> None:
    pixels = gradient(4)
    image = open_image(encode_image(pixels, format="webp", quality=100))
    assert image.mode == "RGBA"


def test_quality_changes_size() -> None:
    pixels = gradient(3)
    low = encode_image(pixels, format="jpeg", quality=10)
    high = encode_image(pixels, format="jpeg", quality=95)
    assert len(low) < len(high)


@pytest.mark.parametrize("image_format", ["jpeg", "webp"])
def test_metadata_in_exif_and_xmp(image_format: str) -> None:
    data = encode_image(gradient(3), format=image_format, metadata=METADATA)  # type: ignore[arg-type]
    image = open_image(data)
    comment = image.getexif().get_ifd(EXIF_IFD_POINTER)[EXIF_USER_COMMENT]
    assert comment.startswith(USER_COMMENT_UNICODE)
    assert comment[len(USER_COMMENT_UNICODE) :].decode("utf-16-be") == format_parameters(METADATA)
    root = ElementTree.fromstring(image.info["xmp"])
    element = root.find(f".//{{{XMP_NAMESPACE}}}metadata")
    assert element is not None
    assert json.loads(element.text or "") == METADATA


def test_png_format_is_lossless_png() -> None:
    pixels = gradient(3)
    assert encode_image(pixels, format="png", metadata=METADATA) == encode_png(
        pixels, metadata=METADATA
    )


@pytest.mark.parametrize(
    ("image", "image_format", "message"),
    [
        (gradient(4), "jpeg", r"JPEG has no alpha channel.*shape \(48, 64, 4\)"),
        (gradient(2), "jpeg", r"JPEG has no alpha channel"),
        (gradient(3).astype(np.uint16) * 257, "webp", r"webp stores 8-bit samples only"),
    ],
)
def test_unsupported_pixels_rejected(image: Any, image_format: str, message: str) -> None:
    with pytest.raises(InvalidImageError, match=message):
        encode_image(image, format=image_format)  # type: ignore[arg-type]


@pytest.mark.parametrize("quality", [0, 101, 9.5, True])
def test_invalid_quality_rejected(quality: Any) -> None:
    with pytest.raises(ConfigError, match="invalid jpeg quality"):
        encode_image(gradient(3), format="jpeg", quality=quality)


def test_quality_for_png_rejected() -> None:
    with pytest.raises(ConfigError, match="quality applies to JPEG and WebP only"):
        encode_image(gradient(3), format="png", quality=90)


def test_unknown_format_rejected() -> None:
    with pytest.raises(ConfigError, match="invalid format 'gif'"):
        encode_image(gradient(3), format="gif")  # type: ignore[arg-type]


def test_nul_in_lossy_metadata_rejected() -> None:
    with pytest.raises(InvalidMetadataError, match="NUL"):
        encode_image(gradient(3), format="webp", metadata={"prompt": "\x00"})
