"""PNG encoding: lossless round trips in Pillow, OpenCV and pypng, modes, determinism."""

from __future__ import annotations

import io
import os
import zlib
from typing import Any

import cv2
import numpy as np
import png
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from safeinfer.encode import COMPRESSION_MODES, encode_png, to_array
from safeinfer.encode._deflate import PARALLEL_MIN_SIZE, available_backends, deflate
from safeinfer.encode._fast import (
    MODE_CANDIDATES,
    assemble_png,
    compress_pixels,
    compress_smallest,
    filter_image,
    image_header,
)
from safeinfer.encode._filters import FILTER_PAETH, FILTER_UP, filter_rows
from safeinfer.encode._pillow import pillow_optimized_stream
from safeinfer.encode._pool import thread_count
from safeinfer.errors import ConfigError
from safeinfer.png import Ihdr, iter_chunks

Array = np.ndarray[Any, Any]

PILLOW_MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}


def decode_pillow(data: bytes) -> tuple[str, Array]:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.mode, np.asarray(image)


def decode_pypng(data: bytes) -> tuple[int, Array]:
    """Decode with pypng, a pure-Python decoder independent of libpng and zlib-ng."""
    width, height, rows, info = png.Reader(bytes=data).read_flat()
    dtype = np.uint16 if info["bitdepth"] == 16 else np.uint8
    pixels = np.asarray(rows, dtype=dtype).reshape(height, width, info["planes"])
    return info["bitdepth"], pixels


def decode_opencv(data: bytes, channels: int) -> Array:
    """Decode with OpenCV (libpng), undoing its BGR order and grey expansion."""
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert decoded is not None
    if decoded.ndim == 2:
        return decoded[:, :, np.newaxis]
    if channels == 2:
        # OpenCV expands grey + alpha to BGRA.
        return decoded[:, :, [0, 3]]
    if channels == 3:
        return decoded[:, :, ::-1]
    return decoded[:, :, [2, 1, 0, 3]]


def assert_decodes_exactly(data: bytes, pixels: Array) -> None:
    """Check the PNG against Pillow (where it keeps every bit), pypng and OpenCV."""
    channels = pixels.shape[2]
    mode, decoded = decode_pillow(data)
    if pixels.dtype == np.uint8:
        assert mode == PILLOW_MODES[channels]
        assert np.array_equal(decoded.reshape(pixels.shape), pixels)
    elif channels == 1:
        assert mode == "I;16"
        assert np.array_equal(decoded.reshape(pixels.shape), pixels)
    else:
        # Pillow has no 16-bit colour modes: it keeps the high byte of each sample, and
        # opens grey + alpha as RGBA.
        if channels == 2:
            assert mode == "RGBA"
            decoded = decoded[:, :, [0, 3]]
        assert np.array_equal(decoded.reshape(pixels.shape), (pixels >> 8).astype(np.uint8))
    bit_depth, by_pypng = decode_pypng(data)
    assert bit_depth == pixels.dtype.itemsize * 8
    assert np.array_equal(by_pypng, pixels)
    assert np.array_equal(decode_opencv(data, channels), pixels)


def smooth_image(height: int, width: int, channels: int, seed: int = 0) -> Array:
    """A photograph-like image: gradients plus mild noise, so filters and deflate matter."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([(x * (c + 1) + y * (3 - c)) % 256 for c in range(channels)], axis=2)
    noise = rng.integers(0, 6, size=base.shape)
    return ((base + noise) % 256).astype(np.uint8)


image_shapes = st.tuples(st.integers(1, 24), st.integers(1, 24), st.sampled_from([0, 1, 2, 3, 4]))


@st.composite
def integer_images(draw: st.DrawFn) -> Array:
    height, width, channels = draw(image_shapes)
    shape = (height, width) if channels == 0 else (height, width, channels)
    dtype = draw(st.sampled_from([np.uint8, np.uint16]))
    return draw(hnp.arrays(dtype, shape))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pixels=integer_images(), compression=st.sampled_from(["fast", "balanced"]))
def test_round_trip_integer_arrays(pixels: Array, compression: str) -> None:
    data = encode_png(pixels, compression=compression)  # type: ignore[arg-type]
    expected = pixels if pixels.ndim == 3 else pixels[:, :, np.newaxis]
    assert_decodes_exactly(data, expected)


@settings(max_examples=30, deadline=None)
@given(
    pixels=hnp.arrays(
        st.sampled_from([np.float16, np.float32, np.float64]),
        st.tuples(st.integers(1, 16), st.integers(1, 16), st.sampled_from([1, 3, 4])),
        elements=st.floats(0.0, 1.0, width=16),
    )
)
def test_round_trip_float_arrays(pixels: Array) -> None:
    data = encode_png(pixels)
    expected = np.rint(pixels.astype(np.float64) * 255).astype(np.uint8)
    _, decoded = decode_pillow(data)
    assert np.array_equal(decoded.reshape(expected.shape), expected)


@settings(max_examples=20, deadline=None)
@given(
    pixels=hnp.arrays(
        st.sampled_from([np.int8, np.int32, np.int64, np.uint32, np.uint64]),
        st.tuples(st.integers(1, 12), st.integers(1, 12), st.sampled_from([1, 2, 3])),
        elements=st.integers(0, 127),
    ),
    scale=st.sampled_from([1, 300]),
)
def test_round_trip_other_integer_dtypes(pixels: Array, scale: int) -> None:
    values = pixels.astype(np.int64) * scale
    if pixels.dtype.itemsize > 1:
        pixels = (pixels * scale).astype(pixels.dtype)
    else:
        values = pixels.astype(np.int64)
    _, decoded = decode_pypng(encode_png(pixels))
    assert np.array_equal(decoded.astype(np.int64), values)
    expected_dtype = np.uint8 if values.max() <= 255 else np.uint16
    assert decoded.dtype == expected_dtype


@pytest.mark.parametrize("compression", COMPRESSION_MODES)
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_every_mode_decodes_in_three_decoders(
    compression: str, channels: int, dtype: type[np.generic]
) -> None:
    pixels = smooth_image(37, 53, channels).astype(dtype)
    if dtype == np.uint16:
        pixels = pixels * 257 + np.arange(53, dtype=np.uint16)[np.newaxis, :, np.newaxis]
    data = encode_png(pixels, compression=compression)  # type: ignore[arg-type]
    assert_decodes_exactly(data, pixels)


@pytest.mark.parametrize(
    ("channels", "dtype", "colour_type", "bit_depth"),
    [
        (1, np.uint8, 0, 8),
        (2, np.uint8, 4, 8),
        (3, np.uint8, 2, 8),
        (4, np.uint8, 6, 8),
        (1, np.uint16, 0, 16),
        (3, np.uint16, 2, 16),
    ],
)
def test_header_colour_type_and_depth(
    channels: int, dtype: type[np.generic], colour_type: int, bit_depth: int
) -> None:
    data = encode_png(np.zeros((3, 5, channels), dtype=dtype))
    first = next(iter_chunks(data))
    header = Ihdr.parse(first.data)
    assert first.type == b"IHDR"
    assert (header.width, header.height) == (5, 3)
    assert header.colour_type == colour_type
    assert header.bit_depth == bit_depth
    assert header.interlace_method == 0


def test_large_image_takes_parallel_path() -> None:
    pixels = smooth_image(640, 640, 3, seed=3)
    assert pixels.nbytes + 640 > PARALLEL_MIN_SIZE
    single = compress_pixels(pixels, MODE_CANDIDATES["fast"], threads=1)
    several = compress_pixels(pixels, MODE_CANDIDATES["fast"], threads=4)
    assert single == several
    data = encode_png(pixels)
    assert_decodes_exactly(data, pixels)


@pytest.mark.parametrize("backend", sorted(available_backends()))
@pytest.mark.parametrize(("level", "strategy"), [(1, zlib.Z_RLE), (6, 0), (9, zlib.Z_FILTERED)])
def test_block_deflate_is_one_valid_zlib_stream(backend: str, level: int, strategy: int) -> None:
    rng = np.random.default_rng(5)
    # A random pattern shorter than the 32 KiB window, repeated across many blocks.
    pattern = rng.integers(0, 256, 20_000, dtype=np.uint8).tobytes()
    data = (pattern * 200)[: 3 * PARALLEL_MIN_SIZE + 12_345]
    chosen = available_backends()[backend]
    stream = deflate(data, level=level, strategy=strategy, backend=chosen, threads=3)
    assert zlib.decompress(stream) == data
    assert stream == deflate(data, level=level, strategy=strategy, backend=chosen, threads=1)
    # Each block is primed with the 32 KiB before it, so the blocks stay as small as one
    # stream. Without priming, each of the 7 blocks stores the pattern again (3.5x larger).
    if not chosen.supports_strategy:
        level, strategy = min(level, chosen.max_level), zlib.Z_DEFAULT_STRATEGY
    compressor = chosen.compressobj(level, zlib.DEFLATED, zlib.MAX_WBITS, 9, strategy)
    one_stream = compressor.compress(data) + compressor.flush()
    assert len(stream) <= 1.05 * len(one_stream)


def test_same_input_gives_identical_bytes() -> None:
    pixels = smooth_image(64, 48, 3)
    metadata = {"prompt": "a lighthouse", "seed": 7, "steps": 4}
    reordered = {"steps": 4, "seed": 7, "prompt": "a lighthouse"}
    for compression in COMPRESSION_MODES:
        first = encode_png(pixels, compression=compression, metadata=metadata)
        assert encode_png(pixels.copy(), compression=compression, metadata=metadata) == first
        assert encode_png(pixels, compression=compression, metadata=reordered) == first


def test_modes_never_grow() -> None:
    for pixels in (smooth_image(96, 96, 3), np.zeros((96, 96, 3), np.uint8)):
        sizes = [len(encode_png(pixels, compression=mode)) for mode in COMPRESSION_MODES]
        assert sizes[1] <= sizes[0]
        assert sizes[2] <= sizes[1]


def test_small_not_larger_than_pillow_optimize() -> None:
    pixels = smooth_image(80, 120, 3, seed=9)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", optimize=True)
    assert len(encode_png(pixels, compression="small")) <= len(buffer.getvalue())


@pytest.mark.parametrize(
    "pixels",
    [
        smooth_image(30, 20, 1),
        smooth_image(30, 20, 2),
        smooth_image(30, 20, 3),
        smooth_image(30, 20, 4),
        smooth_image(30, 20, 1).astype(np.uint16) * 257,
    ],
    ids=["L", "LA", "RGB", "RGBA", "I;16"],
)
def test_pillow_stream_fits_our_header(pixels: Array) -> None:
    # "small" may keep Pillow's zlib stream under safeinfer's own IHDR.
    stream = pillow_optimized_stream(pixels)
    assert stream is not None
    assert_decodes_exactly(assemble_png(image_header(pixels), stream), pixels)


def test_pillow_stream_absent_for_16_bit_colour() -> None:
    assert pillow_optimized_stream(np.zeros((4, 4, 3), np.uint16)) is None
    assert_decodes_exactly(
        encode_png(np.full((4, 4, 3), 1000, np.uint16), compression="small"),
        np.full((4, 4, 3), 1000, np.uint16),
    )


def test_small_keeps_smallest_candidate() -> None:
    pixels = smooth_image(64, 64, 3, seed=4)
    ours = compress_pixels(pixels, MODE_CANDIDATES["small"])
    pillow_stream = pillow_optimized_stream(pixels)
    assert pillow_stream is not None
    assert len(compress_smallest(pixels)) == min(len(ours), len(pillow_stream))


def test_flat_image_compresses_to_little() -> None:
    pixels = np.full((256, 256, 3), 200, np.uint8)
    assert len(encode_png(pixels)) < 2_000


@pytest.mark.parametrize("choice", [0, 1, 2, 3, 4, "adaptive"])
def test_banded_filter_matches_whole_image(choice: int | str) -> None:
    pixels = smooth_image(150, 33, 3, seed=2)
    rows = pixels.reshape(150, -1)
    whole = filter_rows(rows, 3, choice)  # type: ignore[arg-type]
    upper = filter_rows(rows[:70], 3, choice)  # type: ignore[arg-type]
    lower = filter_rows(rows[70:], 3, choice, prior=rows[69])  # type: ignore[arg-type]
    assert np.array_equal(whole, np.vstack([upper, lower]))
    assert np.array_equal(filter_image(pixels, choice, threads=3), whole)  # type: ignore[arg-type]


def test_filter_types_written_per_row() -> None:
    rows = smooth_image(5, 4, 3).reshape(5, -1)
    assert set(filter_rows(rows, 3, FILTER_UP)[:, 0]) == {FILTER_UP}
    assert set(filter_rows(rows, 3, FILTER_PAETH)[:, 0]) == {FILTER_PAETH}
    with pytest.raises(ConfigError, match="invalid PNG filter type 7"):
        filter_rows(rows, 3, 7)


def test_pil_inputs_round_trip() -> None:
    rgb = smooth_image(20, 30, 3)
    cases = {
        "RGB": (Image.fromarray(rgb), rgb),
        "L": (Image.fromarray(rgb[:, :, 0]), rgb[:, :, :1]),
        "1": (Image.fromarray(rgb[:, :, 0] > 128), (rgb[:, :, :1] > 128).astype(np.uint8) * 255),
        "I;16": (
            Image.fromarray(rgb[:, :, 0].astype(np.uint16) * 257),
            rgb[:, :, :1].astype(np.uint16) * 257,
        ),
    }
    for mode, (image, expected) in cases.items():
        assert image.mode == mode
        assert np.array_equal(to_array(image), expected), mode
        assert_decodes_exactly(encode_png(image), expected)


def test_palette_image_becomes_rgb_or_rgba() -> None:
    rgb = Image.fromarray(smooth_image(16, 16, 3))
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    assert to_array(palette).shape == (16, 16, 3)
    assert np.array_equal(to_array(palette), np.asarray(palette.convert("RGB")))
    palette.info["transparency"] = 0
    assert to_array(palette).shape == (16, 16, 4)


def test_invalid_compression_rejected() -> None:
    with pytest.raises(ConfigError, match="invalid compression 'fastest'"):
        encode_png(np.zeros((2, 2), np.uint8), compression="fastest")  # type: ignore[arg-type]


def _encode_in_child(pixels: Array, results: Any) -> None:
    results.put(encode_png(pixels))


def test_forked_child_encodes_large_image() -> None:
    # The parent's thread pool exists before the fork, and the child must not reuse it.
    import multiprocessing

    pixels = smooth_image(700, 700, 3)
    expected = encode_png(pixels)
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    child = context.Process(target=_encode_in_child, args=(pixels, results))
    child.start()
    try:
        assert results.get(timeout=60) == expected
    finally:
        child.join(10)
        if child.is_alive():
            child.kill()
            child.join()
    assert child.exitcode == 0


@pytest.mark.parametrize(("budget", "expected"), [("1", 1), ("3", 3), ("64", 8)])
def test_thread_budget_from_environment(
    monkeypatch: pytest.MonkeyPatch, budget: str, expected: int
) -> None:
    monkeypatch.setenv("SAFEINFER_THREADS", budget)
    assert thread_count() == expected


@pytest.mark.parametrize("budget", ["", "0", "-2", "many"])
def test_invalid_thread_budget_ignored(monkeypatch: pytest.MonkeyPatch, budget: str) -> None:
    monkeypatch.setenv("SAFEINFER_THREADS", budget)
    assert 1 <= thread_count() <= min(8, len(os.sched_getaffinity(0)))
