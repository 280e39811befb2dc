"""The test image of a request: its pixels encode the request id, so a client can tell
its own image from any other request's image."""

from __future__ import annotations

import numpy as np

#: Side of the square test image in pixels.
SIZE = 64


def request_image(request_id: int) -> np.ndarray:
    """Return the SIZE x SIZE RGB uint8 image that belongs to ``request_id`` (< 2**24)."""
    y, x, channel = np.indices((SIZE, SIZE, 3))
    image = (request_id * 31 + y * 7 + x * 13 + channel * 17) % 256
    # The first pixel holds the id itself, so two ids never share an image.
    image[0, 0] = [request_id & 0xFF, (request_id >> 8) & 0xFF, (request_id >> 16) & 0xFF]
    return image.astype(np.uint8)
