"""PNG filtering on whole images with numpy (W3C PNG Third Edition, section 7.3 and 9).

Filters work on bytes, so 16-bit samples are filtered after conversion to big-endian
bytes. The encoder sees every original byte at once, so each filter, Paeth included,
is a handful of array operations instead of a loop over pixels.
"""

from __future__ import annotations

from typing import Any, Final, Literal, TypeAlias

import numpy as np

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

#: |x| of a byte read as a signed value, for the adaptive heuristic.
_SIGNED_MAGNITUDE: Final = np.minimum(np.arange(256), 256 - np.arange(256)).astype(np.uint8)


def filter_rows(rows: ByteRows, bytes_per_pixel: int, choice: FilterChoice) -> ByteRows:
    """Filter ``rows`` (height x row bytes, uint8) and prefix each row with its filter type.

    Returns a new ``(height, 1 + row bytes)`` array: the exact bytes that go into deflate.
    """
    height, row_bytes = rows.shape
    out = np.empty((height, row_bytes + 1), dtype=np.uint8)
    if choice == "adaptive":
        _filter_adaptive(rows, bytes_per_pixel, out)
        return out
    out[:, 0] = choice
    _apply_filter(rows, bytes_per_pixel, int(choice), out[:, 1:])
    return out


def _apply_filter(rows: ByteRows, bpp: int, filter_type: int, out: ByteRows) -> None:
    if filter_type == FILTER_NONE:
        out[...] = rows
    elif filter_type == FILTER_SUB:
        out[:, :bpp] = rows[:, :bpp]
        np.subtract(rows[:, bpp:], rows[:, :-bpp], out=out[:, bpp:])
    elif filter_type == FILTER_UP:
        out[0] = rows[0]
        np.subtract(rows[1:], rows[:-1], out=out[1:])
    elif filter_type == FILTER_AVERAGE:
        left, up, _ = _neighbours(rows, bpp)
        # floor((a + b) / 2) without leaving uint8: (a & b) + ((a ^ b) >> 1).
        mean = (left & up) + ((left ^ up) >> 1)
        np.subtract(rows, mean, out=out)
    elif filter_type == FILTER_PAETH:
        np.subtract(rows, _paeth_predictor(rows, bpp), out=out)
    else:
        raise ValueError(f"invalid PNG filter type {filter_type}: expected 0 to 4")


def _neighbours(rows: ByteRows, bpp: int) -> tuple[ByteRows, ByteRows, ByteRows]:
    """Return the left (a), up (b) and upper-left (c) byte of every byte, 0 off the edge."""
    height, row_bytes = rows.shape
    padded = np.zeros((height + 1, row_bytes + bpp), dtype=np.uint8)
    padded[1:, bpp:] = rows
    return padded[1:, :-bpp], padded[:-1, bpp:], padded[:-1, :-bpp]


def _paeth_predictor(rows: ByteRows, bpp: int) -> ByteRows:
    left, up, upper_left = (v.astype(np.int16) for v in _neighbours(rows, bpp))
    # With p = a + b - c: |p - a| = |b - c|, |p - b| = |a - c|, |p - c| = |a + b - 2c|.
    distance_left = np.abs(up - upper_left)
    distance_up = np.abs(left - upper_left)
    distance_upper_left = np.abs(left + up - 2 * upper_left)
    # Ties go to a, then b, then c (section 9.4).
    predictor = np.where(distance_up <= distance_upper_left, up, upper_left)
    use_left = (distance_left <= distance_up) & (distance_left <= distance_upper_left)
    predictor = np.where(use_left, left, predictor)
    return predictor.astype(np.uint8)


def _filter_adaptive(rows: ByteRows, bpp: int, out: ByteRows) -> None:
    height, row_bytes = rows.shape
    candidates = np.empty((5, height, row_bytes), dtype=np.uint8)
    for filter_type in range(5):
        _apply_filter(rows, bpp, filter_type, candidates[filter_type])
    scores = _SIGNED_MAGNITUDE[candidates].sum(axis=2, dtype=np.uint64)
    best = np.argmin(scores, axis=0)
    out[:, 0] = best
    out[:, 1:] = candidates[best, np.arange(height)]
