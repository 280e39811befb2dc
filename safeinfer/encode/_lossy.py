"""JPEG and WebP output, with generation metadata in EXIF and XMP.

JPEG and WebP have no PNG text chunks. Image browsers that read A1111's ``parameters``
from these formats look in the EXIF UserComment tag, so the text goes there. The
``safeinfer`` JSON goes into an XMP packet.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Literal, TypeAlias
from xml.sax.saxutils import escape

import numpy as np
from PIL import Image

from safeinfer.encode._metadata import check_metadata, format_parameters, metadata_json
from safeinfer.encode._pillow import encode_lossy
from safeinfer.errors import ConfigError, InvalidImageError

LossyFormat: TypeAlias = Literal["jpeg", "webp"]

#: Default quality per format: high enough that artefacts are hard to see in generated
#: images, the usual choice for archiving JPEG (95) and WebP (90).
DEFAULT_QUALITY: Final[dict[str, int]] = {"jpeg": 95, "webp": 90}

#: EXIF tags (EXIF 2.32, section 4.6): the Exif IFD pointer and UserComment inside it.
EXIF_IFD_POINTER: Final = 0x8769
EXIF_USER_COMMENT: Final = 0x9286

#: UserComment starts with an 8-byte character code; "UNICODE" means UTF-16. A1111 and
#: piexif write it big-endian, so that is what readers expect.
USER_COMMENT_UNICODE: Final = b"UNICODE\x00"

#: XML namespace of the safeinfer property in the XMP packet.
XMP_NAMESPACE: Final = "https://github.com/safeinfer/safeinfer/ns/metadata/1.0/"

_XMP_TEMPLATE: Final = (
    '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
    '<x:xmpmeta xmlns:x="adobe:ns:meta/">'
    '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    '<rdf:Description rdf:about="" xmlns:safeinfer="{namespace}">'
    "<safeinfer:metadata>{json}</safeinfer:metadata>"
    "</rdf:Description></rdf:RDF></x:xmpmeta>"
    '<?xpacket end="r"?>'
)


def encode_jpeg_or_webp(
    pixels: np.ndarray[Any, np.dtype[Any]],
    *,
    format: LossyFormat,
    quality: int | None,
    metadata: Mapping[str, Any] | None,
) -> bytes:
    """Encode 8-bit pixels as JPEG or WebP, with metadata in EXIF and XMP."""
    quality = DEFAULT_QUALITY[format] if quality is None else quality
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise ConfigError(f"invalid {format} quality {quality!r}: expected an int from 1 to 100")
    _check_pixels(pixels, format)
    exif = xmp = None
    if metadata is not None:
        check_metadata(metadata)
        exif = user_comment_exif(format_parameters(metadata))
        xmp = metadata_xmp(metadata)
    return encode_lossy(pixels, format=format, quality=quality, exif=exif, xmp=xmp)


def _check_pixels(pixels: np.ndarray[Any, np.dtype[Any]], format: LossyFormat) -> None:
    shape = tuple(pixels.shape)
    if pixels.dtype != np.uint8:
        raise InvalidImageError(
            f"{format} stores 8-bit samples only, but the image of shape {shape} is 16-bit: "
            "save it as PNG, or reduce it with (array >> 8).astype(numpy.uint8)"
        )
    if format == "jpeg" and pixels.shape[2] in (2, 4):
        raise InvalidImageError(
            f"JPEG has no alpha channel, but the image of shape {shape} has one: save it as "
            "PNG or WebP, or drop the alpha with array[..., :-1]"
        )


def user_comment_exif(text: str) -> bytes:
    """Return EXIF data whose UserComment contains ``text`` as big-endian UTF-16."""
    exif = Image.Exif()
    exif.get_ifd(EXIF_IFD_POINTER)[EXIF_USER_COMMENT] = USER_COMMENT_UNICODE + text.encode(
        "utf-16-be"
    )
    return exif.tobytes()


def metadata_xmp(metadata: Mapping[str, Any]) -> bytes:
    """Return an XMP packet with the metadata JSON in the ``safeinfer:metadata`` property."""
    packet = _XMP_TEMPLATE.format(namespace=XMP_NAMESPACE, json=escape(metadata_json(metadata)))
    return packet.encode("utf-8")
