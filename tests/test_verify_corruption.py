"""Every case of the corruption generator is flagged; every valid oddity passes."""

from __future__ import annotations

from pathlib import Path

import pytest
from corruption import corruptions, needs_full_level, sample_png, valid_variants

from safeinfer.png import _report as codes
from safeinfer.png import verify_png

PNGSUITE = Path(__file__).parent / "data" / "pngsuite"

#: Base images: a Pillow RGB file, and PngSuite files with a palette, 16-bit samples,
#: greyscale with alpha, and a palette with tRNS.
BASES = {
    "pillow-rgb": lambda: sample_png(),
    "palette": lambda: (PNGSUITE / "basn3p08.png").read_bytes(),
    "grey-16-bit": lambda: (PNGSUITE / "basn0g16.png").read_bytes(),
    "grey-alpha": lambda: (PNGSUITE / "basn4a08.png").read_bytes(),
    "palette-trns": lambda: (PNGSUITE / "tbbn3p08.png").read_bytes(),
}

#: The first problem that specific cases must produce at the full level.
EXPECTED_FIRST_CODE = {
    "empty-file": codes.TRUNCATED,
    "truncated-after-signature": codes.MISSING_IEND,
    "truncated-inside-iend": codes.TRUNCATED,
    "bit-flip-in-IHDR-crc": codes.CRC_MISMATCH,
    "bit-flip-in-IDAT-crc": codes.CRC_MISMATCH,
    "bit-flip-in-IEND-crc": codes.CRC_MISMATCH,
    "duplicated-ihdr": codes.DUPLICATE_CHUNK,
    "duplicated-gama": codes.DUPLICATE_CHUNK,
    "duplicated-iend": codes.DATA_AFTER_IEND,
    "ihdr-not-first": codes.MISSING_IHDR,
    "iend-before-idat": codes.MISSING_IDAT,
    "missing-idat": codes.MISSING_IDAT,
    "wrong-ihdr-length-over-2-31": codes.BAD_LENGTH,
    "data-after-iend-random": codes.DATA_AFTER_IEND,
    "data-after-iend-old-file-tail": codes.DATA_AFTER_IEND,
    "data-after-iend-one-zero-byte": codes.DATA_AFTER_IEND,
    "iend-with-data": codes.BAD_IEND,
    "repeated-last-idat": codes.DATA_AFTER_ZLIB,
    "second-zlib-stream": codes.DATA_AFTER_ZLIB,
    "scanline-too-many": codes.TOO_MUCH_DATA,
    "scanline-too-few": codes.NOT_ENOUGH_DATA,
    "bad-filter-type-mid-image": codes.BAD_FILTER,
    "adler32-wrong-crc-ok": codes.ADLER32_MISMATCH,
    "zlib-header-corrupt-crc-ok": codes.BAD_ZLIB,
    "zlib-stream-cut-to-a-third": codes.TRUNCATED_ZLIB,
    "oversized-ihdr-65535x65535": codes.LIMIT_EXCEEDED,
    "ihdr-taller-than-data": codes.NOT_ENOUGH_DATA,
    "ihdr-zero-width": codes.BAD_IHDR,
    "ihdr-bit-depth-3": codes.BAD_IHDR,
    "unknown-critical-chunk": codes.UNKNOWN_CRITICAL_CHUNK,
}


def _cases(base: str, seed: int = 7) -> list[tuple[str, bytes]]:
    return list(corruptions(BASES[base](), seed=seed))


@pytest.mark.parametrize("base", sorted(BASES))
def test_every_corruption_flagged_at_full_level(base: str) -> None:
    missed = [name for name, data in _cases(base) if verify_png(data).ok]
    assert missed == []


@pytest.mark.parametrize("base", sorted(BASES))
def test_structural_corruptions_flagged_at_structure_level(base: str) -> None:
    cases = [(name, data) for name, data in _cases(base) if not needs_full_level(name)]
    missed = [name for name, data in cases if verify_png(data, level="structure").ok]
    assert missed == []


@pytest.mark.parametrize("base", sorted(BASES))
def test_image_data_corruptions_keep_valid_structure(base: str) -> None:
    # These cases only prove the full level works if the structure level sees nothing.
    cases = [(name, data) for name, data in _cases(base) if needs_full_level(name)]
    assert len(cases) >= 10
    seen = {name: verify_png(data, level="structure").problems for name, data in cases}
    assert {name: problems for name, problems in seen.items() if problems} == {}


def test_specific_cases_give_expected_code() -> None:
    cases = dict(_cases("pillow-rgb"))
    found = {name: verify_png(cases[name]).problems[0].code for name in EXPECTED_FIRST_CODE}
    assert found == EXPECTED_FIRST_CODE


def test_zero_filled_tails_flagged() -> None:
    tails = [data for name, data in _cases("pillow-rgb") if name.startswith("zero-filled-tail")]
    assert len(tails) == 4
    for data in tails:
        report = verify_png(data)
        assert not report.ok
        assert report.corrupt


def test_generator_is_deterministic() -> None:
    assert _cases("pillow-rgb", seed=3) == _cases("pillow-rgb", seed=3)
    assert _cases("pillow-rgb", seed=3) != _cases("pillow-rgb", seed=4)


def test_generator_covers_each_kind() -> None:
    names = [name for name, _ in _cases("pillow-rgb")]
    kinds = (
        "truncated-at-",
        "truncated-after-",
        "zero-filled-tail",
        "bit-flip-in-ihdr",
        "bit-flip-in-idat",
        "bit-flip-in-IDAT-crc",
        "interleaved-writers",
        "interleaved-at-chunk-boundary",
        "duplicated-",
        "idat-not-consecutive",
        "plte-after-idat",
        "wrong-idat-length",
        "data-after-iend",
        "repeated-last-idat",
        "second-zlib-stream",
        "scanline-too-many",
        "scanline-too-few",
        "zlib-corrupt-crc-ok",
        "oversized-ihdr",
    )
    assert [kind for kind in kinds if not any(n.startswith(kind) for n in names)] == []
    assert len(names) == len(set(names))


@pytest.mark.parametrize("base", sorted(BASES))
@pytest.mark.parametrize("level", ["structure", "full"])
def test_valid_variants_pass(base: str, level: str) -> None:
    flagged = {
        name: [str(p) for p in report.problems]
        for name, data in valid_variants(BASES[base]())
        if not (report := verify_png(data, level=level)).ok  # type: ignore[arg-type]
    }
    assert flagged == {}


@pytest.mark.parametrize(
    "name",
    [
        "basi0g16.png",
        "basi2c16.png",
        "basi3p01.png",
        "basi6a16.png",
        "tbrn2c08.png",
        "s01i3p01.png",
    ],
)
def test_interlaced_and_16_bit_pngsuite_pass(name: str) -> None:
    report = verify_png(PNGSUITE / name)
    assert report.ok, report.problems
