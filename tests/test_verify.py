"""verify_png and check_png: PngSuite, the report, sources, limits and the chunk reader."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import pytest
from corruption import build, parse, sample_png

import safeinfer
from safeinfer.errors import CorruptPngError
from safeinfer.png import (
    Limits,
    PngReport,
    Problem,
    check_png,
    iter_chunks,
    verify_png,
    write_chunk,
)
from safeinfer.png import _report as codes
from safeinfer.png._chunks import ChunkFramingError, ChunkReader

PNGSUITE = Path(__file__).parent / "data" / "pngsuite"


@pytest.fixture(scope="module")
def png() -> bytes:
    return sample_png()


@pytest.mark.parametrize("level", ["structure", "full"])
def test_pngsuite_valid_files_pass(pngsuite: dict[str, dict[str, object]], level: str) -> None:
    valid = [name for name, entry in pngsuite.items() if entry["valid"]]
    assert len(valid) == 161
    flagged = {}
    for name in valid:
        report = verify_png(PNGSUITE / name, level=level)  # type: ignore[arg-type]
        if not report.ok:
            flagged[name] = [str(problem) for problem in report.problems]
    assert flagged == {}


@pytest.mark.parametrize("level", ["structure", "full"])
def test_pngsuite_broken_files_flagged(pngsuite: dict[str, dict[str, object]], level: str) -> None:
    broken = [name for name, entry in pngsuite.items() if not entry["valid"]]
    assert len(broken) == 14
    missed = [name for name in broken if verify_png(PNGSUITE / name, level=level).ok]  # type: ignore[arg-type]
    assert missed == []


def test_pngsuite_broken_files_codes() -> None:
    expected = {
        "xc1n0g08.png": codes.BAD_IHDR,
        "xc9n2c08.png": codes.BAD_IHDR,
        "xd0n2c08.png": codes.BAD_IHDR,
        "xd3n2c08.png": codes.BAD_IHDR,
        "xd9n2c08.png": codes.BAD_IHDR,
        "xcrn0g04.png": codes.BAD_SIGNATURE,
        "xlfn0g04.png": codes.BAD_SIGNATURE,
        "xs1n0g01.png": codes.BAD_SIGNATURE,
        "xs2n0g01.png": codes.BAD_SIGNATURE,
        "xs4n0g01.png": codes.BAD_SIGNATURE,
        "xs7n0g01.png": codes.BAD_SIGNATURE,
        "xcsn0g01.png": codes.CRC_MISMATCH,
        "xhdn0g08.png": codes.CRC_MISMATCH,
        "xdtn0g01.png": codes.MISSING_IDAT,
    }
    found = {name: verify_png(PNGSUITE / name).problems[0].code for name in expected}
    assert found == expected


def test_pngsuite_header_fields() -> None:
    report = verify_png(PNGSUITE / "basi3p04.png")
    assert (report.width, report.height) == (32, 32)
    assert report.colour_type == 3
    assert report.bit_depth == 4
    assert report.interlace == 1
    assert report.chunks[0].type == "IHDR"
    assert report.chunks[-1].type == "IEND"
    assert report.bytes == (PNGSUITE / "basi3p04.png").stat().st_size


def test_sources_give_same_report(png: bytes, tmp_path: Path) -> None:
    path = tmp_path / "image.png"
    path.write_bytes(png)
    from_path = verify_png(path)
    from_str = verify_png(str(path))
    from_bytes = verify_png(png)
    from_memoryview = verify_png(memoryview(png))
    with path.open("rb") as file:
        from_file = verify_png(file)
    assert from_path.ok
    assert from_path.path == str(path)
    assert from_bytes.path is None
    assert from_file.path == str(path)
    for other in (from_str, from_bytes, from_memoryview, from_file):
        assert other.ok
        assert other.chunks == from_path.chunks
        assert other.bytes == len(png)


def test_missing_path_raises_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        verify_png(tmp_path / "absent.png")


def test_unknown_level_raises() -> None:
    with pytest.raises(ValueError, match="invalid level 'fast'"):
        verify_png(b"", level="fast")  # type: ignore[arg-type]


def test_default_level_is_full(png: bytes) -> None:
    assert verify_png(png).level == "full"


def test_check_png_raises_with_report(png: bytes) -> None:
    assert check_png(png).ok
    with pytest.raises(CorruptPngError) as caught:
        check_png(png + b"junk")
    report = caught.value.report
    assert isinstance(report, PngReport)
    assert report.problems[0].code == codes.DATA_AFTER_IEND
    assert "after the IEND chunk" in str(caught.value)


def test_public_names_from_top_package() -> None:
    assert safeinfer.verify_png is verify_png
    assert safeinfer.check_png is check_png
    assert safeinfer.PngReport is PngReport
    assert callable(safeinfer.scan)


def test_report_to_dict_is_json(png: bytes) -> None:
    report = verify_png(png[:-12])
    data = json.loads(json.dumps(report.to_dict()))
    assert data["ok"] is False
    assert data["width"] == 64
    assert data["problems"][0]["code"] == codes.MISSING_IEND
    assert data["problems"][0]["kind"] == "corrupt"
    assert data["chunks"][0] == {"type": "IHDR", "offset": 8, "length": 13}


def test_report_html_lists_problems(png: bytes) -> None:
    page = verify_png(png + b"<script>")._repr_html_()
    assert "data-after-iend" in page
    assert "<script>" not in page
    assert "64 x 48" in page
    assert "ok" in verify_png(png)._repr_html_()


def test_report_summary(png: bytes) -> None:
    assert verify_png(png).summary() == "<PNG data>: ok"
    summary = verify_png(png[:100]).summary()
    assert summary.startswith("<PNG data>: truncated: truncated IDAT chunk at offset 33")


def test_problem_kinds() -> None:
    assert Problem(codes.CRC_MISMATCH, "IDAT", 33, "").kind == "corrupt"
    assert Problem(codes.UNKNOWN_CRITICAL_CHUNK, "ABCD", 33, "").kind == "unsupported"
    assert Problem(codes.LIMIT_EXCEEDED, "IHDR", 8, "").kind == "limit"
    assert Problem(codes.SHA256_MISMATCH, None, None, "").kind == "mismatch"
    assert Problem(codes.READ_ERROR, None, None, "").kind == "io"


def test_unknown_critical_chunk_is_unsupported_not_corrupt(png: bytes) -> None:
    pairs = [(c.type, c.data) for c in parse(png)]
    report = verify_png(build([pairs[0], (b"ABCD", b""), *pairs[1:]]))
    assert not report.ok
    assert not report.corrupt
    assert report.problems[0].kind == "unsupported"


def test_messages_name_chunk_and_offset(png: bytes) -> None:
    damaged = bytearray(png)
    damaged[45] ^= 0x01
    problem = verify_png(bytes(damaged)).problems[0]
    assert problem.code == codes.CRC_MISMATCH
    assert problem.chunk == "IDAT"
    assert problem.offset == 33
    assert "IDAT chunk at offset 33" in problem.message


def test_limit_max_bytes_skips_reading(png: bytes) -> None:
    report = verify_png(png, limits=Limits(max_bytes=len(png) - 1))
    assert [p.code for p in report.problems] == [codes.LIMIT_EXCEEDED]
    assert report.bytes == 0


def test_limit_max_bytes_on_stream(png: bytes) -> None:
    report = verify_png(io.BytesIO(png), limits=Limits(max_bytes=100))
    assert [p.code for p in report.problems] == [codes.LIMIT_EXCEEDED]
    assert report.problems[0].chunk == "IDAT"


def test_limit_max_chunks(png: bytes) -> None:
    report = verify_png(png, limits=Limits(max_chunks=2))
    assert [p.code for p in report.problems] == [codes.LIMIT_EXCEEDED]
    assert "more than 2 chunks" in report.problems[0].message


@pytest.mark.parametrize(
    ("limits", "field"),
    [
        (Limits(max_width=63), "max_width"),
        (Limits(max_height=47), "max_height"),
        (Limits(max_pixels=64 * 48 - 1), "max_pixels"),
    ],
)
def test_limit_dimensions_from_ihdr(png: bytes, limits: Limits, field: str) -> None:
    report = verify_png(png, limits=limits)
    assert [p.code for p in report.problems] == [codes.LIMIT_EXCEEDED]
    assert field in report.problems[0].message


def test_limit_skips_inflate_of_bomb() -> None:
    # The stream contains 2 bytes for a claimed 65535x65535 image: inflating would find
    # "not enough image data", so the limit code proves no inflate ran.
    ihdr = struct.pack(">IIBBBBB", 65535, 65535, 8, 0, 0, 0, 0)
    bomb = build([(b"IHDR", ihdr), (b"IDAT", zlib.compress(b"\x00\x00")), (b"IEND", b"")])
    codes_found = [p.code for p in verify_png(bomb).problems]
    assert codes_found == [codes.LIMIT_EXCEEDED]
    roomy = Limits(max_pixels=65535 * 65535)
    assert [p.code for p in verify_png(bomb, limits=roomy).problems] == [codes.NOT_ENOUGH_DATA]


def test_problem_cap_stops_check(png: bytes) -> None:
    chunks = parse(png)
    bad_text = write_chunk(b"tEXt", b"a\x00b")[:-4] + b"\x00\x00\x00\x00"
    damaged = png[: chunks[1].offset] + bad_text * 500 + png[chunks[1].offset :]
    report = verify_png(damaged)
    assert len(report.problems) == 65
    assert report.problems[-1].code == codes.TOO_MANY_PROBLEMS


def test_iter_chunks_reads_files_and_bytes(png: bytes) -> None:
    from_bytes = list(iter_chunks(png))
    from_file = list(iter_chunks(io.BytesIO(png)))
    assert [c.type for c in from_bytes] == [b"IHDR", b"IDAT", b"IEND"]
    assert from_file == from_bytes
    assert all(c.crc_ok for c in from_bytes)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda data: b"x" + data[1:], "bad signature at offset 0"),
        (lambda data: data[:60], "truncated IDAT chunk at offset 33"),
        (lambda data: data[:-12], "missing IEND chunk"),
        (lambda data: data[:45] + bytes([data[45] ^ 1]) + data[46:], "CRC mismatch in IDAT"),
    ],
)
def test_iter_chunks_raises_corrupt(png: bytes, damage: object, message: str) -> None:
    with pytest.raises(CorruptPngError, match=message):
        list(iter_chunks(damage(png)))  # type: ignore[operator]


def test_chunk_reader_small_pieces_and_offsets(png: bytes) -> None:
    seen = bytearray()
    reader = ChunkReader(io.BytesIO(png), piece_size=5, on_read=seen.extend)
    assert reader.read_signature() == b"\x89PNG\r\n\x1a\n"
    offsets = []
    while (header := reader.next_header()) is not None:
        offsets.append(header.offset)
        sizes: list[int] = []
        _, crc_ok = reader.read_data(header, lambda piece, sizes=sizes: sizes.append(len(piece)))
        assert crc_ok
        assert sum(sizes) == header.length
        assert max(sizes, default=0) <= 5
        assert reader.offset == header.end
    assert offsets == [c.offset for c in parse(png)]
    assert bytes(seen) == png


def test_chunk_reader_zero_tail_message() -> None:
    reader = ChunkReader(b"\x89PNG\r\n\x1a\n" + bytes(16))
    reader.read_signature()
    with pytest.raises(ChunkFramingError, match="zero-filled") as caught:
        reader.next_header()
    assert caught.value.code == codes.BAD_CHUNK_TYPE
    assert caught.value.offset == 8
