"""Generation metadata: the safeinfer iTXt JSON, the parameters text, and reading text
chunks written by other tools."""

from __future__ import annotations

import io
import json
import zlib
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from safeinfer.encode import encode_png, format_parameters, metadata_json
from safeinfer.errors import CorruptPngError, InvalidMetadataError, UnsupportedPngError
from safeinfer.png import (
    PNG_SIGNATURE,
    Ihdr,
    build_text_chunk,
    iter_chunks,
    read_metadata,
    read_text,
    write_chunk,
)

PIXELS = np.zeros((8, 8, 3), np.uint8)

GENERATION = {
    "prompt": "一只在月光下的猫 🐱🌙, watercolor",
    "negative_prompt": "模糊, blurry 😞",
    "seed": 1234,
    "steps": 20,
    "guidance": 7.0,
    "width": 512,
    "height": 512,
    "model": "tiny-sd",
    "scheduler": "EulerDiscreteScheduler",
    "versions": {"safeinfer": "0.1.0", "diffusers": "0.42.1"},
}


def chunk_types(data: bytes) -> list[bytes]:
    return [chunk.type for chunk in iter_chunks(data)]


def text_chunk_types(data: bytes) -> dict[str, str]:
    return {entry.keyword: entry.chunk_type for entry in read_text(data)}


def raw_png(*ancillary: bytes, after_idat: tuple[bytes, ...] = ()) -> bytes:
    """A 1x1 grey PNG assembled chunk by chunk, independent of the encoder."""
    header = Ihdr(width=1, height=1, bit_depth=8, colour_type=0)
    return b"".join(
        (
            PNG_SIGNATURE,
            write_chunk(b"IHDR", header.pack()),
            *ancillary,
            write_chunk(b"IDAT", zlib.compress(b"\x00\x80")),
            *after_idat,
            write_chunk(b"IEND"),
        )
    )


def test_round_trip_chinese_and_emoji() -> None:
    data = encode_png(PIXELS, metadata=GENERATION)
    metadata = read_metadata(data)
    assert metadata["safeinfer"] == GENERATION
    assert metadata["text"]["safeinfer"] == metadata_json(GENERATION)
    assert text_chunk_types(data) == {"safeinfer": "iTXt", "parameters": "iTXt"}


def test_parameters_text_layout() -> None:
    expected = (
        "一只在月光下的猫 🐱🌙, watercolor\n"
        "Negative prompt: 模糊, blurry 😞\n"
        "Steps: 20, Sampler: EulerDiscreteScheduler, CFG scale: 7, Seed: 1234, "
        "Size: 512x512, Model: tiny-sd"
    )
    assert format_parameters(GENERATION) == expected
    data = encode_png(PIXELS, metadata=GENERATION)
    assert read_metadata(data)["text"]["parameters"] == expected


def test_parameters_quotes_values_with_commas() -> None:
    text = format_parameters({"prompt": "p", "model": "a, b: c", "guidance": 4.5})
    assert text == 'p\nCFG scale: 4.5, Model: "a, b: c"'


def test_latin1_text_goes_into_text_chunk() -> None:
    metadata = {"prompt": "café au lait, naïve style", "seed": 1}
    data = encode_png(PIXELS, metadata=metadata)
    assert text_chunk_types(data) == {"safeinfer": "iTXt", "parameters": "tEXt"}
    assert read_metadata(data)["text"]["parameters"] == "café au lait, naïve style\nSeed: 1"


def test_metadata_chunks_precede_image_data() -> None:
    types = chunk_types(encode_png(PIXELS, metadata={"seed": 3}))
    assert types[0] == b"IHDR"
    assert types.index(b"iTXt") < types.index(b"IDAT")
    assert types[-1] == b"IEND"


def test_no_metadata_writes_no_text() -> None:
    assert read_metadata(encode_png(PIXELS)) == {"text": {}}


def test_json_is_sorted_and_compact() -> None:
    assert metadata_json({"b": 1, "a": [1, 2], "c": {"z": None, "y": "猫"}}) == (
        '{"a":[1,2],"b":1,"c":{"y":"猫","z":null}}'
    )


def test_read_only_mappings_accepted() -> None:
    metadata = MappingProxyType({"seed": 2, "extra": MappingProxyType({"lora": "x"})})
    parsed = read_metadata(encode_png(PIXELS, metadata=metadata))["safeinfer"]
    assert parsed == {"seed": 2, "extra": {"lora": "x"}}


def test_numpy_scalars_stored_as_numbers() -> None:
    metadata = {"seed": np.int64(42), "guidance": np.float32(2.5), "size": (64, 32)}
    parsed = read_metadata(encode_png(PIXELS, metadata=metadata))["safeinfer"]
    assert parsed == {"seed": 42, "guidance": 2.5, "size": [64, 32]}


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"prompt": "a cat\x00"}, r"metadata\['prompt'\]: NUL character at index 5"),
        ({"negative_prompt": "\x00"}, r"metadata\['negative_prompt'\]: NUL"),
        ({"loras": ["ok", "bad\x00"]}, r"metadata\['loras'\]\[1\]: NUL"),
        ({"extra": {"k\x00": 1}}, r"key 'k\\x00'.*NUL"),
    ],
)
def test_nul_rejected(metadata: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidMetadataError, match=message):
        encode_png(PIXELS, metadata=metadata)


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"guidance": float("nan")}, r"cannot be stored as JSON.*finite"),
        ({"generator": object()}, r"object is not JSON-serialisable"),
        ({1: "int key", "a": 2}, r"cannot be stored as JSON"),
    ],
)
def test_unserialisable_metadata_rejected(metadata: dict[Any, Any], message: str) -> None:
    with pytest.raises(InvalidMetadataError, match=message):
        encode_png(PIXELS, metadata=metadata)


def test_pillow_reads_our_metadata() -> None:
    with Image.open(io.BytesIO(encode_png(PIXELS, metadata=GENERATION))) as image:
        image.load()
        text = dict(image.text)  # type: ignore[attr-defined]
    assert json.loads(text["safeinfer"]) == GENERATION
    assert text["parameters"] == format_parameters(GENERATION)


def test_reads_pillow_pnginfo_chunks() -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("Title", "plain latin-1 é")
    info.add_text("Comment", "compressed " * 50, zip=True)
    info.add_itxt("Description", "猫の絵 🐈", lang="ja", tkey="説明")
    info.add_itxt("Software", "compressed international 🐈 " * 20, zip=True)
    info.add_itxt("safeinfer", json.dumps({"seed": 5, "prompt": "猫"}))
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="PNG", pnginfo=info)
    data = buffer.getvalue()

    entries = {entry.keyword: entry for entry in read_text(data)}
    assert entries["Title"].chunk_type == "tEXt"
    assert entries["Comment"].chunk_type == "zTXt"
    assert entries["Comment"].compressed
    assert entries["Description"].chunk_type == "iTXt"
    assert entries["Description"].language == "ja"
    assert entries["Description"].translated_keyword == "説明"
    assert entries["Software"].compressed

    metadata = read_metadata(data)
    assert metadata["text"]["Title"] == "plain latin-1 é"
    assert metadata["text"]["Comment"] == "compressed " * 50
    assert metadata["text"]["Description"] == "猫の絵 🐈"
    assert metadata["text"]["Software"] == "compressed international 🐈 " * 20
    assert metadata["safeinfer"] == {"seed": 5, "prompt": "猫"}


def test_reads_raw_chunk_writer_output() -> None:
    itxt_body = b"prompt\x00\x01\x00zh\x00\xe6\x8f\x90\xe7\xa4\xba\x00" + zlib.compress(
        "一只猫".encode()
    )
    data = raw_png(
        write_chunk(b"tEXt", b"parameters\x00first wins"),
        write_chunk(b"iTXt", itxt_body),
        after_idat=(
            write_chunk(b"tEXt", b"parameters\x00second"),
            write_chunk(b"zTXt", b"late\x00\x00" + zlib.compress(b"after IDAT")),
        ),
    )
    metadata = read_metadata(data)
    assert metadata["text"] == {
        "parameters": "first wins",
        "prompt": "一只猫",
        "late": "after IDAT",
    }
    assert "safeinfer" not in metadata
    prompt = next(entry for entry in read_text(data) if entry.keyword == "prompt")
    assert prompt.language == "zh"
    assert prompt.translated_keyword == "提示"


def test_sources_path_bytes_and_stream(tmp_path: Path) -> None:
    data = encode_png(PIXELS, metadata={"seed": 9})
    path = tmp_path / "image.png"
    path.write_bytes(data)
    expected = read_metadata(data)
    assert read_metadata(path) == expected
    assert read_metadata(str(path)) == expected
    assert read_metadata(bytearray(data)) == expected
    assert read_metadata(memoryview(data)) == expected
    with path.open("rb") as stream:
        assert read_metadata(stream) == expected


def test_invalid_safeinfer_json_kept_as_text() -> None:
    data = raw_png(build_text_chunk("safeinfer", "{not json"))
    metadata = read_metadata(data)
    assert metadata == {"text": {"safeinfer": "{not json"}}
    data = raw_png(build_text_chunk("safeinfer", "[1, 2]"))
    assert "safeinfer" not in read_metadata(data)


@pytest.mark.parametrize(
    ("chunk", "message"),
    [
        (write_chunk(b"tEXt", b"no separator"), r"missing keyword or NUL separator in tEXt"),
        (write_chunk(b"zTXt", b"k\x00\x00not zlib"), r"bad compressed text in zTXt"),
        (write_chunk(b"zTXt", b"k\x00\x00" + zlib.compress(b"x" * 100)[:-6]), r"truncated"),
        (write_chunk(b"iTXt", b"k\x00\x02\x00\x00\x00text"), r"bad compression flag 2"),
        (write_chunk(b"iTXt", b"k\x00\x00\x00en"), r"missing language tag"),
        (write_chunk(b"iTXt", b"k\x00\x00\x00\x00\x00\xff\xfe"), r"invalid UTF-8 in iTXt"),
    ],
)
def test_corrupt_text_chunk_rejected(chunk: bytes, message: str) -> None:
    with pytest.raises(CorruptPngError, match=message):
        read_metadata(raw_png(chunk))


def test_crc_mismatch_rejected() -> None:
    chunk = bytearray(build_text_chunk("Title", "x"))
    chunk[-1] ^= 0xFF
    with pytest.raises(CorruptPngError, match="CRC mismatch in tEXt chunk at offset 33"):
        read_metadata(raw_png(bytes(chunk)))


def test_decompression_limit() -> None:
    bomb = write_chunk(b"zTXt", b"bomb\x00\x00" + zlib.compress(b"a" * 1_000_000))
    with pytest.raises(UnsupportedPngError, match="more than 1000 bytes"):
        read_metadata(raw_png(bomb), max_text_bytes=1000)
    assert len(read_metadata(raw_png(bomb))["text"]["bomb"]) == 1_000_000


def test_unknown_compression_method_unsupported() -> None:
    chunk = write_chunk(b"zTXt", b"k\x00\x07" + zlib.compress(b"x"))
    with pytest.raises(UnsupportedPngError, match="unknown compression method 7"):
        read_metadata(raw_png(chunk))


@pytest.mark.parametrize(
    ("keyword", "message"),
    [
        ("", r"expected 1 to 79 bytes, got 0"),
        ("k" * 80, r"got 80"),
        (" lead", r"no\s+leading, trailing or consecutive spaces"),
        ("two  spaces", r"consecutive spaces"),
        ("tab\tkey", r"printable Latin-1"),
        ("猫", r"keywords must be Latin-1"),
    ],
)
def test_invalid_keywords_rejected(keyword: str, message: str) -> None:
    with pytest.raises(InvalidMetadataError, match=message):
        build_text_chunk(keyword, "text")


def test_text_chunk_type_choice() -> None:
    assert build_text_chunk("Title", "plain")[4:8] == b"tEXt"
    assert build_text_chunk("Title", "plain", compress=True)[4:8] == b"zTXt"
    assert build_text_chunk("Title", "猫")[4:8] == b"iTXt"
    assert build_text_chunk("Title", "plain", international=True)[4:8] == b"iTXt"
    with pytest.raises(InvalidMetadataError, match="NUL character at index 1"):
        build_text_chunk("Title", "a\x00b")
