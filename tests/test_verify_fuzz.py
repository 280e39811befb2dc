"""The reader against arbitrary input: only reports, no other exception, no hang, bounded memory."""

from __future__ import annotations

import io
import struct
import tracemalloc
import zlib
from pathlib import Path

import pytest
from corruption import build, sample_png
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from safeinfer.png import PngReport, verify_png
from safeinfer.png import _report as codes

VALID = sample_png(24, 16)
LEVELS = ("structure", "full")

#: An edit of a valid PNG: (operation, position as a fraction of the length, byte value).
edits = st.lists(
    st.tuples(
        st.sampled_from(["replace", "insert", "delete", "truncate"]),
        st.floats(min_value=0, max_value=1, allow_nan=False),
        st.integers(min_value=0, max_value=255),
    ),
    min_size=1,
    max_size=6,
)


def _apply(data: bytes, changes: list[tuple[str, float, int]]) -> bytes:
    damaged = bytearray(data)
    for operation, fraction, value in changes:
        position = min(int(fraction * len(damaged)), max(len(damaged) - 1, 0))
        if operation == "replace" and damaged:
            damaged[position] = value
        elif operation == "insert":
            damaged.insert(position, value)
        elif operation == "delete" and damaged:
            del damaged[position]
        elif operation == "truncate":
            del damaged[position:]
    return bytes(damaged)


class _TrickleReader(io.RawIOBase):
    """A file that returns at most ``step`` bytes per read, as pipes and sockets may."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data = memoryview(data)
        self._position = 0
        self._step = step

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        size = self._step if size < 0 else min(size, self._step)
        chunk = self._data[self._position : self._position + size].tobytes()
        self._position += len(chunk)
        return chunk


def _summary(report: PngReport) -> tuple[object, ...]:
    return (report.bytes, report.chunks, report.problems, report.width, report.height)


@pytest.mark.timeout(120)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=2048))
def test_arbitrary_bytes_give_report(data: bytes) -> None:
    for level in LEVELS:
        report = verify_png(data, level=level)  # type: ignore[arg-type]
        assert isinstance(report, PngReport)
        assert not report.ok


@pytest.mark.timeout(120)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=512))
def test_signature_prefixed_bytes_give_report(data: bytes) -> None:
    report = verify_png(b"\x89PNG\r\n\x1a\n" + data)
    assert isinstance(report, PngReport)


@pytest.mark.timeout(120)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(changes=edits, step=st.integers(min_value=1, max_value=64))
def test_edited_png_report_does_not_depend_on_read_size(
    changes: list[tuple[str, float, int]], step: int
) -> None:
    damaged = _apply(VALID, changes)
    for level in LEVELS:
        whole = verify_png(damaged, level=level)  # type: ignore[arg-type]
        trickled = verify_png(_TrickleReader(damaged, step), level=level)  # type: ignore[arg-type]
        assert _summary(trickled) == _summary(whole)


def _constant_colour_png(width: int, height: int) -> bytes:
    row = b"\x00" + bytes([200, 100, 50]) * width
    compressor = zlib.compressobj(9)
    rows_per_piece = 100
    pieces = [compressor.compress(row * rows_per_piece) for _ in range(height // rows_per_piece)]
    pieces.append(compressor.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return build([(b"IHDR", ihdr), (b"IDAT", b"".join(pieces)), (b"IEND", b"")])


def _verify_traced(source: Path | bytes) -> tuple[PngReport, int]:
    """Verify ``source`` and return the report with the peak of traced allocations."""
    tracemalloc.start()
    try:
        report = verify_png(source)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return report, peak


@pytest.fixture(scope="module")
def large_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("large") / "constant-8000x8000.png"
    path.write_bytes(_constant_colour_png(8000, 8000))
    return path


@pytest.mark.timeout(120)
def test_large_image_memory_bounded(large_png: Path) -> None:
    # 8000x8000 RGB is 192 MB of image data; the check must stay near 1 MiB.
    report, peak = _verify_traced(large_png)
    assert report.ok, report.problems
    assert (report.width, report.height) == (8000, 8000)
    assert peak < 2 * 2**20


@pytest.mark.timeout(120)
def test_decompression_bomb_stops_early() -> None:
    # 256 MB of zeros behind a 64x64 header: the check stops at the first output piece
    # past the 12,352 bytes that the header allows.
    compressor = zlib.compressobj(9)
    zeros = bytes(2**20)
    stream = b"".join(compressor.compress(zeros) for _ in range(256)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", 64, 64, 8, 2, 0, 0, 0)
    bomb = build([(b"IHDR", ihdr), (b"IDAT", stream), (b"IEND", b"")])
    report, peak = _verify_traced(bomb)
    assert [p.code for p in report.problems] == [codes.TOO_MUCH_DATA]
    assert peak < 2 * 2**20
