"""A deterministic generator of damaged PNG files, and of valid files that look odd.

``corruptions(png, seed=...)`` yields ``(case name, bytes)`` pairs, each a way that real
files break: crashes, torn or interleaved writes, bit rot, buggy encoders. Every case is
invalid, so a verifier must flag every one; the cases in :data:`FULL_LEVEL_ONLY` keep a
valid chunk structure and need a check of the image data to be caught.
``valid_variants(png)`` yields valid files that a careless checker flags.

The generator parses chunks with its own few lines of ``struct`` code, not with the
parser under test, and compresses with the standard ``zlib``.
"""

from __future__ import annotations

import io
import random
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = [
    "FULL_LEVEL_ONLY",
    "corruptions",
    "needs_full_level",
    "sample_png",
    "valid_variants",
]

SIGNATURE = b"\x89PNG\r\n\x1a\n"

#: Name prefixes of cases whose chunk structure is intact: only inflating the image data
#: reveals them.
FULL_LEVEL_ONLY = (
    "interleaved-at-chunk-boundary",
    "repeated-last-idat",
    "second-zlib-stream",
    "scanline-too-many",
    "scanline-too-few",
    "zlib-corrupt-crc-ok",
    "adler32-wrong-crc-ok",
    "ihdr-taller-than-data",
    "bad-filter-type",
    "zlib-header-corrupt-crc-ok",
    "zlib-stream-cut-to-a-third",
)

#: Samples per pixel for each colour type.
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


@dataclass(frozen=True)
class RawChunk:
    type: bytes
    data: bytes
    offset: int

    @property
    def end(self) -> int:
        return self.offset + 12 + len(self.data)


def sample_png(width: int = 64, height: int = 48, *, seed: int = 0) -> bytes:
    """Return a valid RGB PNG of a noisy gradient, written by Pillow."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    gradient = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], -1)
    pixels = np.clip(gradient + rng.normal(0, 6, gradient.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def needs_full_level(case: str) -> bool:
    """Return True when the case can only be caught by inflating the image data."""
    return case.startswith(FULL_LEVEL_ONLY)


def chunk(chunk_type: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(data, zlib.crc32(chunk_type))
    return struct.pack(">I4s", len(data), chunk_type) + data + struct.pack(">I", crc)


def parse(png: bytes) -> list[RawChunk]:
    """Split a valid PNG into its chunks."""
    assert png[:8] == SIGNATURE, "the input must be a valid PNG"
    chunks = []
    offset = 8
    while offset < len(png):
        length, chunk_type = struct.unpack_from(">I4s", png, offset)
        chunks.append(RawChunk(chunk_type, png[offset + 8 : offset + 8 + length], offset))
        offset += 12 + length
    return chunks


def build(chunks: list[tuple[bytes, bytes]]) -> bytes:
    return SIGNATURE + b"".join(chunk(chunk_type, data) for chunk_type, data in chunks)


def _pairs(chunks: list[RawChunk]) -> list[tuple[bytes, bytes]]:
    return [(c.type, c.data) for c in chunks]


def _with_image_data(chunks: list[RawChunk], zdata: bytes, pieces: int = 1) -> bytes:
    """Rebuild the PNG with ``zdata`` as its image data, split into ``pieces`` IDAT chunks."""
    size = max(1, -(-len(zdata) // pieces))
    idats = [(b"IDAT", zdata[i : i + size]) for i in range(0, len(zdata), size)] or [(b"IDAT", b"")]
    before = [(c.type, c.data) for c in chunks if c.type not in (b"IDAT", b"IEND")]
    return build([*before, *idats, (b"IEND", b"")])


def _image_data(chunks: list[RawChunk]) -> bytes:
    return b"".join(c.data for c in chunks if c.type == b"IDAT")


def _row_stride(ihdr: bytes) -> int:
    width, _height, depth, colour_type = struct.unpack(">IIBB", ihdr[:10])
    return 1 + (width * _CHANNELS[colour_type] * depth + 7) // 8


def _other_pixels(raw: bytes, stride: int) -> bytes:
    """Return the scanlines of another image: every sample changed, filter types kept."""
    return bytes(value if index % stride == 0 else value ^ 0x55 for index, value in enumerate(raw))


def _flip_bit(data: bytes, position: int, bit: int) -> bytes:
    damaged = bytearray(data)
    damaged[position] ^= 1 << bit
    return bytes(damaged)


def _second_png(chunks: list[RawChunk]) -> bytes:
    """Return another valid PNG of the same image with different bytes and offsets."""
    raw = zlib.decompress(_image_data(chunks))
    other = [(c.type, c.data) for c in chunks if c.type not in (b"IDAT", b"IEND")]
    other.insert(1, (b"tEXt", b"Comment\x00written by the other process"))
    return build([*other, (b"IDAT", zlib.compress(raw, 1)), (b"IEND", b"")])


def corruptions(
    valid_png: bytes, *, seed: int, other_png: bytes | None = None
) -> Iterator[tuple[str, bytes]]:
    """Yield ``(case name, damaged bytes)`` for every kind of damage, deterministically.

    ``valid_png`` must be a valid, non-interlaced PNG whose image data is at least a few
    hundred bytes. ``other_png`` is the second writer's file for the interleaving cases
    (default: the same image, compressed differently and with an extra chunk). The same
    ``seed`` gives the same cases in the same order.
    """
    rng = random.Random(seed)
    chunks = parse(valid_png)
    other = other_png if other_png is not None else _second_png(chunks)
    ihdr = chunks[0]
    idats = [c for c in chunks if c.type == b"IDAT"]
    iend = chunks[-1]
    size = len(valid_png)

    for number in range(8):
        cut = rng.randrange(1, size)
        yield f"truncated-at-{cut}-case-{number}", valid_png[:cut]
    for c in chunks[:-1]:
        yield f"truncated-after-{c.type.decode()}-at-{c.end}", valid_png[: c.end]
    yield "truncated-after-signature", valid_png[:8]
    yield "truncated-inside-iend", valid_png[: size - 2]
    yield "empty-file", b""

    for number in range(4):
        cut = rng.randrange(8, size - 12)
        yield f"zero-filled-tail-from-{cut}-case-{number}", valid_png[:cut] + bytes(size - cut)

    for number in range(4):
        position = ihdr.offset + 8 + rng.randrange(13)
        yield f"bit-flip-in-ihdr-case-{number}", _flip_bit(valid_png, position, rng.randrange(8))
    for number in range(4):
        idat = rng.choice(idats)
        position = idat.offset + 8 + rng.randrange(len(idat.data))
        yield f"bit-flip-in-idat-case-{number}", _flip_bit(valid_png, position, rng.randrange(8))
    for target in (ihdr, idats[-1], iend):
        position = target.end - 4 + rng.randrange(4)
        yield (
            f"bit-flip-in-{target.type.decode()}-crc",
            _flip_bit(valid_png, position, rng.randrange(8)),
        )

    first_idat = idats[0].offset
    for number in range(4):
        cut = rng.randrange(first_idat + 8, min(size, len(other)) - 12)
        yield f"interleaved-writers-at-{cut}-case-{number}", valid_png[:cut] + other[cut:]
    # Two writers whose chunks line up leave a file with intact framing and CRCs: the
    # first IDAT of one image's stream, then the rest of another image's stream. The cut
    # lies past the first data byte where the two streams differ, so the result is never
    # just one of the two valid streams.
    zdata = _image_data(chunks)
    other_stream = zlib.compress(_other_pixels(zlib.decompress(zdata), _row_stride(ihdr.data)))
    differ = next(
        i for i, (a, b) in enumerate(zip(zdata[2:], other_stream[2:], strict=False), 2) if a != b
    )
    cut = min(max(len(zdata) // 2, differ + 1), len(other_stream) - 1)
    before = [(c.type, c.data) for c in chunks if c.type not in (b"IDAT", b"IEND")]
    spliced = [*before, (b"IDAT", zdata[:cut]), (b"IDAT", other_stream[cut:]), (b"IEND", b"")]
    yield "interleaved-at-chunk-boundary", build(spliced)

    pairs = _pairs(chunks)
    yield "duplicated-ihdr", build([pairs[0], *pairs])
    gama = (b"gAMA", struct.pack(">I", 45455))
    yield "duplicated-gama", build([pairs[0], gama, gama, *pairs[1:]])
    yield "duplicated-iend", valid_png + chunk(b"IEND", b"")
    yield "ihdr-not-first", build([(b"tEXt", b"Title\x00first"), *pairs])
    yield "idat-not-consecutive", _split_idat_run(chunks)
    yield "plte-after-idat", build([*pairs[:-1], (b"PLTE", bytes(range(9))), pairs[-1]])
    yield "iend-before-idat", build([pairs[0], (b"IEND", b""), *pairs[1:-1]])
    yield "missing-idat", build([p for p in pairs if p[0] != b"IDAT"])

    idat = idats[0]
    for delta, label in ((1, "plus-one"), (-1, "minus-one"), (0x7FFFFFFF, "past-eof")):
        length = len(idat.data) + delta if delta != 0x7FFFFFFF else delta
        damaged = bytearray(valid_png)
        struct.pack_into(">I", damaged, idat.offset, length)
        yield f"wrong-idat-length-{label}", bytes(damaged)
    damaged = bytearray(valid_png)
    struct.pack_into(">I", damaged, ihdr.offset, 0xFFFFFFF0)
    yield "wrong-ihdr-length-over-2-31", bytes(damaged)
    damaged = bytearray(valid_png)
    struct.pack_into(">I", damaged, ihdr.offset, 14)
    yield "wrong-ihdr-length-14", bytes(damaged)

    yield "data-after-iend-random", valid_png + rng.randbytes(100)
    old_tail = other[size:] if len(other) > size else other[-64:]
    yield "data-after-iend-old-file-tail", valid_png + old_tail
    yield "data-after-iend-one-zero-byte", valid_png + b"\x00"
    yield "iend-with-data", valid_png[: iend.offset] + chunk(b"IEND", b"\x00\x00\x00\x00")

    yield (
        "repeated-last-idat",
        (
            valid_png[: idats[-1].end]
            + valid_png[idats[-1].offset : idats[-1].end]
            + chunk(b"IEND", b"")
        ),
    )
    yield "second-zlib-stream", _with_extra_idat(pairs, zlib.compress(b""))

    raw = zlib.decompress(_image_data(chunks))
    stride = _row_stride(ihdr.data)
    yield "scanline-too-many", _with_image_data(chunks, zlib.compress(raw + bytes(stride)))
    yield "scanline-too-few", _with_image_data(chunks, zlib.compress(raw[:-stride]))
    bad_filter = bytearray(raw)
    bad_filter[(len(raw) // stride // 2) * stride] = 5 + rng.randrange(251)
    yield "bad-filter-type-mid-image", _with_image_data(chunks, zlib.compress(bytes(bad_filter)))

    for number in range(3):
        damaged_stream = _damage_stream(zdata, raw, rng)
        yield f"zlib-corrupt-crc-ok-case-{number}", _with_image_data(chunks, damaged_stream)
    wrong_adler = zdata[:-4] + struct.pack(">I", (zlib.adler32(raw) + 1) & 0xFFFFFFFF)
    yield "adler32-wrong-crc-ok", _with_image_data(chunks, wrong_adler)
    yield "zlib-header-corrupt-crc-ok", _with_image_data(chunks, b"\x78\x00" + zdata[2:])
    yield "zlib-stream-cut-to-a-third", _with_image_data(chunks, zdata[: len(zdata) // 3])

    width, height = struct.unpack(">II", ihdr.data[:8])
    huge = struct.pack(">II", 65535, 65535) + ihdr.data[8:]
    yield "oversized-ihdr-65535x65535", build([(b"IHDR", huge), *pairs[1:]])
    taller = struct.pack(">II", width, height * 2) + ihdr.data[8:]
    yield "ihdr-taller-than-data", build([(b"IHDR", taller), *pairs[1:]])
    zero = struct.pack(">II", 0, height) + ihdr.data[8:]
    yield "ihdr-zero-width", build([(b"IHDR", zero), *pairs[1:]])
    bad_depth = ihdr.data[:8] + b"\x03" + ihdr.data[9:]
    yield "ihdr-bit-depth-3", build([(b"IHDR", bad_depth), *pairs[1:]])
    yield "unknown-critical-chunk", build([pairs[0], (b"ABCD", b"x"), *pairs[1:]])


def _damage_stream(zdata: bytes, raw: bytes, rng: random.Random) -> bytes:
    # A flipped byte can leave an equivalent stream, one that still inflates to the same
    # bytes with the right Adler-32; only damage that changes the output counts.
    while True:
        position = 2 + rng.randrange(len(zdata) - 6)
        damaged = bytearray(zdata)
        damaged[position] ^= 0xFF
        try:
            if zlib.decompress(bytes(damaged)) != raw:
                return bytes(damaged)
        except zlib.error:
            return bytes(damaged)


def _split_idat_run(chunks: list[RawChunk]) -> bytes:
    zdata = _image_data(chunks)
    half = len(zdata) // 2
    before = [(c.type, c.data) for c in chunks if c.type not in (b"IDAT", b"IEND")]
    return build(
        [
            *before,
            (b"IDAT", zdata[:half]),
            (b"tEXt", b"Comment\x00between"),
            (b"IDAT", zdata[half:]),
            (b"IEND", b""),
        ]
    )


def _with_extra_idat(pairs: list[tuple[bytes, bytes]], data: bytes) -> bytes:
    return build([*pairs[:-1], (b"IDAT", data), pairs[-1]])


def valid_variants(valid_png: bytes) -> Iterator[tuple[str, bytes]]:
    """Yield ``(case name, bytes)`` of valid PNGs with the oddities real files have.

    ``valid_png`` must be a valid PNG whose image data is a few hundred bytes or more.
    """
    chunks = parse(valid_png)
    pairs = _pairs(chunks)
    zdata = _image_data(chunks)
    yield "many-small-idat-chunks", _with_image_data(chunks, zdata, pieces=len(zdata))
    half = len(zdata) // 2
    before = [p for p in pairs if p[0] not in (b"IDAT", b"IEND")]
    yield (
        "zero-length-idat-among-others",
        build(
            [*before, (b"IDAT", zdata[:half]), (b"IDAT", b""), (b"IDAT", zdata[half:]), pairs[-1]]
        ),
    )
    yield (
        "zero-length-idat-first-and-last",
        build([*before, (b"IDAT", b""), (b"IDAT", zdata), (b"IDAT", b""), pairs[-1]]),
    )
    yield (
        "unknown-ancillary-chunks",
        build([pairs[0], (b"vpAg", bytes(9)), *pairs[1:-1], (b"zzZz", b"private"), pairs[-1]]),
    )
    text = "Prompt: ein Hund im Schnee, 雪の中の犬, собака".encode()
    itxt = b"Description\x00\x00\x00en\x00Beschreibung\x00" + text
    itxt_compressed = b"Comment\x00\x01\x00ja\x00\x00" + zlib.compress(text)
    yield "itxt-utf8", build([*pairs[:-1], (b"iTXt", itxt), (b"iTXt", itxt_compressed), pairs[-1]])
    yield (
        "time-1970",
        build([pairs[0], (b"tIME", struct.pack(">HBBBBB", 1970, 1, 1, 0, 0, 0)), *pairs[1:]]),
    )
    yield (
        "time-year-0",
        build([pairs[0], (b"tIME", struct.pack(">HBBBBB", 0, 1, 1, 0, 0, 0)), *pairs[1:]]),
    )
    yield "text-after-idat", build([*pairs[:-1], (b"tEXt", b"Author\x00late"), pairs[-1]])
    yield "recompressed-level-0", _with_image_data(chunks, zlib.compress(zlib.decompress(zdata), 0))
    yield (
        "recompressed-level-9-small-window",
        _with_image_data(chunks, _compress_with_window(zlib.decompress(zdata), 9)),
    )


def _compress_with_window(data: bytes, window_bits: int) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, window_bits)
    return compressor.compress(data) + compressor.flush()
