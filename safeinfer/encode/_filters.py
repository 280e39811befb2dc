"""PNG filtering on whole images with numpy (W3C PNG Third Edition, sections 7.3 and 9).

Filters work on bytes, so 16-bit samples are filtered after conversion to big-endian
bytes. Every original byte is available in advance, so each filter, Paeth included, is a
handful of array operations instead of a loop over pixels.
"""

from __future__ import annotations

from typing import Any, Final, Literal, TypeAlias

import numpy as np

from safeinfer.errors import ConfigError

# Filter types (section 9.2, table 9.1).
FILTER_NONE: Final = 0
FILTER_SUB: Final = 1
FILTER_UP: Final = 2
FILTER_AVERAGE: Final = 3
FILTER_PAETH: Final = 4

#: A filter type for every row, or "adaptive": per row, the filter whose output has the
#: smallest sum of absolute values read as signed bytes (the heuristic libpng uses).
FilterChoice: TypeAlias = "int | Literal['adaptive']"

ByteRows: TypeAlias = "np.ndarray[Any, np.dtype[np.uint8]]"

#: Rows per step of the Paeth computation. Its int16 temporaries for 16 rows of a
#: 1024-pixel RGB image take about 100 KB each, so they stay in the CPU cache. Measured
#: on such an image, whole-image temporaries made the filter about twice as slow.
_PAETH_BAND_ROWS: Final = 16

#: |x| of a byte read as a signed value, for the adaptive heuristic.
_SIGNED_MAGNITUDE: Final = np.minimum(np.arange(256), 256 - np.arange(256)).astype(np.uint8)


def filter_rows(
    rows: ByteRows,
    bytes_per_pixel: int,
    choice: FilterChoice,
    *,
    prior: ByteRows | None = None,
    out: ByteRows | None = None,
) -> ByteRows:
    """Filter ``rows`` (height x row bytes, uint8) and prefix each row with its filter type.

    ``prior`` is the unfiltered row above the first one, so a band of an image filters
    exactly as it would in the whole image. ``None`` means the first row of the image.
    Returns ``out`` (allocated when ``None``) of shape ``(height, 1 + row bytes)``: the
    exact bytes that go into deflate.
    """
    height, row_bytes = rows.shape
    if out is None:
        out = np.empty((height, row_bytes + 1), dtype=np.uint8)
    if height == 0:
        return out
    above = np.zeros(row_bytes, dtype=np.uint8) if prior is None else prior
    if choice == "adaptive":
        _filter_adaptive(rows, above, bytes_per_pixel, out)
    else:
        out[:, 0] = choice
        _apply_filter(rows, above, bytes_per_pixel, int(choice), out[:, 1:])
    return out


def _apply_filter(
    rows: ByteRows, above: ByteRows, bpp: int, filter_type: int, out: ByteRows
) -> None:
    if filter_type == FILTER_NONE:
        out[...] = rows
    elif filter_type == FILTER_SUB:
        out[:, :bpp] = rows[:, :bpp]
        np.subtract(rows[:, bpp:], rows[:, :-bpp], out=out[:, bpp:])
    elif filter_type == FILTER_UP:
        np.subtract(rows[0], above, out=out[0])
        np.subtract(rows[1:], rows[:-1], out=out[1:])
    elif filter_type == FILTER_AVERAGE:
        left, up, _ = _neighbours(rows, above, bpp)
        # floor((a + b) / 2) without leaving uint8: (a & b) + ((a ^ b) >> 1).
        mean = (left & up) + ((left ^ up) >> 1)
        np.subtract(rows, mean, out=out)
    elif filter_type == FILTER_PAETH:
        for start in range(0, rows.shape[0], _PAETH_BAND_ROWS):
            stop = start + _PAETH_BAND_ROWS
            band_above = above if start == 0 else rows[start - 1]
            _paeth_band(rows[start:stop], band_above, bpp, out[start:stop])
    else:
        raise ConfigError(f"invalid PNG filter type {filter_type}: expected 0 to 4")


def _neighbours(rows: ByteRows, above: ByteRows, bpp: int) -> tuple[ByteRows, ByteRows, ByteRows]:
    """Return the left (a), up (b) and upper-left (c) byte of every byte, 0 off the edge."""
    height, row_bytes = rows.shape
    padded = np.zeros((height + 1, row_bytes + bpp), dtype=np.uint8)
    padded[0, bpp:] = above
    padded[1:, bpp:] = rows
    return padded[1:, :-bpp], padded[:-1, bpp:], padded[:-1, :-bpp]


def _paeth_band(rows: ByteRows, above: ByteRows, bpp: int, out: ByteRows) -> None:
    left, up, upper_left = _neighbours(rows, above, bpp)
    # With p = a + b - c: |p - a| = |b - c|, |p - b| = |a - c|, |p - c| = |a + b - 2c|.
    from_left = np.subtract(left, upper_left, dtype=np.int16)
    from_up = np.subtract(up, upper_left, dtype=np.int16)
    distance_upper_left = np.add(from_left, from_up)
    np.abs(distance_upper_left, out=distance_upper_left)
    distance_up = np.abs(from_left, out=from_left)
    distance_left = np.abs(from_up, out=from_up)
    # Ties go to a, then b, then c (section 9.4), so c is overwritten in that order.
    predictor = out
    np.copyto(predictor, upper_left)
    np.copyto(predictor, up, where=distance_up <= distance_upper_left)
    use_left = distance_left <= distance_up
    use_left &= distance_left <= distance_upper_left
    np.copyto(predictor, left, where=use_left)
    np.subtract(rows, predictor, out=out)


def _filter_adaptive(rows: ByteRows, above: ByteRows, bpp: int, out: ByteRows) -> None:
    height, row_bytes = rows.shape
    candidates = np.empty((5, height, row_bytes), dtype=np.uint8)
    for filter_type in range(5):
        _apply_filter(rows, above, bpp, filter_type, candidates[filter_type])
    scores = _SIGNED_MAGNITUDE[candidates].sum(axis=2, dtype=np.uint64)
    best = np.argmin(scores, axis=0)
    out[:, 0] = best
    out[:, 1:] = candidates[best, np.arange(height)]
