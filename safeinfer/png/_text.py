"""Textual chunks: building and parsing tEXt, zTXt and iTXt, and reading a file's metadata.

The layouts follow the PNG specification (W3C PNG Third Edition), section 11.3.3:

- ``tEXt``: keyword, NUL, Latin-1 text.
- ``zTXt``: keyword, NUL, compression method (0 = zlib), zlib-compressed Latin-1 text.
- ``iTXt``: keyword, NUL, compression flag, compression method, language tag, NUL,
  translated keyword (UTF-8), NUL, UTF-8 text (zlib-compressed when the flag is 1).
"""

from __future__ import annotations

import json
import logging
import os
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final, TypeAlias

from safeinfer.errors import CorruptPngError, InvalidMetadataError, UnsupportedPngError
from safeinfer.png._chunks import ITXT, TEXT, ZTXT, Chunk, iter_chunks, write_chunk

logger = logging.getLogger(__name__)

#: Keyword of the iTXt chunk that contains safeinfer's generation metadata as UTF-8 JSON.
SAFEINFER_KEYWORD: Final = "safeinfer"

#: Keyword of the A1111-style text that image browsers (A1111, Civitai, InvokeAI) read.
PARAMETERS_KEYWORD: Final = "parameters"

#: Keywords are 1 to 79 bytes of printable Latin-1 (section 11.3.3.2).
MAX_KEYWORD_LENGTH: Final = 79

#: zlib compression method, the only one the specification defines (section 10.1).
COMPRESSION_METHOD_ZLIB: Final = 0

#: Upper bound on one decompressed text, so a small zTXt or iTXt cannot expand into
#: gigabytes in memory (a "zip bomb"). Generation metadata is a few kilobytes.
DEFAULT_MAX_TEXT_BYTES: Final = 16 * 1024 * 1024

#: Level for compressed text: fixed, so the same text gives the same bytes.
_TEXT_COMPRESSION_LEVEL: Final = 9

PngSource: TypeAlias = "str | os.PathLike[str] | bytes | bytearray | memoryview | IO[bytes]"


@dataclass(frozen=True, slots=True)
class TextEntry:
    """One decoded textual chunk."""

    keyword: str
    text: str
    chunk_type: str
    compressed: bool
    language: str = ""
    translated_keyword: str = ""


def _check_keyword(keyword: str) -> bytes:
    try:
        encoded = keyword.encode("latin-1")
    except UnicodeEncodeError:
        raise InvalidMetadataError(
            f"invalid PNG text keyword {keyword!r}: keywords must be Latin-1; "
            "put non-Latin-1 words in the text instead"
        ) from None
    if not 1 <= len(encoded) <= MAX_KEYWORD_LENGTH:
        raise InvalidMetadataError(
            f"invalid PNG text keyword {keyword!r}: expected 1 to {MAX_KEYWORD_LENGTH} bytes, "
            f"got {len(encoded)}"
        )
    printable = all(32 <= byte <= 126 or 161 <= byte <= 255 for byte in encoded)
    if not printable or keyword != keyword.strip() or "  " in keyword:
        raise InvalidMetadataError(
            f"invalid PNG text keyword {keyword!r}: use printable Latin-1 characters with no "
            "leading, trailing or consecutive spaces"
        )
    return encoded


def _check_no_nul(keyword: str, text: str) -> None:
    if "\x00" in text:
        raise InvalidMetadataError(
            f"invalid text for PNG keyword {keyword!r}: NUL character at index "
            f"{text.index(chr(0))}; PNG text cannot contain NUL, so remove it"
        )


def is_latin1(text: str) -> bool:
    """Return whether ``text`` can be stored in tEXt or zTXt, which hold Latin-1 only."""
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


def build_text_chunk(
    keyword: str, text: str, *, compress: bool = False, international: bool = False
) -> bytes:
    """Build a serialised textual chunk, choosing its type from the text.

    Latin-1 text goes into tEXt (or zTXt with ``compress``); any other text, or
    ``international=True``, goes into iTXt as UTF-8. NUL in the text and invalid keywords
    raise :class:`~safeinfer.errors.InvalidMetadataError`.

    >>> build_text_chunk("Title", "Astronaut")[4:8]
    b'tEXt'
    >>> build_text_chunk("Title", "宇航员")[4:8]
    b'iTXt'
    """
    if international or not is_latin1(text):
        return build_itxt(keyword, text, compress=compress)
    if compress:
        return build_ztxt(keyword, text)
    return build_text(keyword, text)


def build_text(keyword: str, text: str) -> bytes:
    """Build a tEXt chunk. The text must be Latin-1 without NUL."""
    encoded_keyword = _check_keyword(keyword)
    _check_no_nul(keyword, text)
    return write_chunk(TEXT, encoded_keyword + b"\x00" + _encode_latin1(keyword, text))


def build_ztxt(keyword: str, text: str) -> bytes:
    """Build a zTXt chunk: Latin-1 text without NUL, zlib-compressed."""
    encoded_keyword = _check_keyword(keyword)
    _check_no_nul(keyword, text)
    compressed = zlib.compress(_encode_latin1(keyword, text), _TEXT_COMPRESSION_LEVEL)
    return write_chunk(ZTXT, encoded_keyword + bytes((0, COMPRESSION_METHOD_ZLIB)) + compressed)


def build_itxt(
    keyword: str,
    text: str,
    *,
    compress: bool = False,
    language: str = "",
    translated_keyword: str = "",
) -> bytes:
    """Build an iTXt chunk holding UTF-8 text, optionally zlib-compressed."""
    encoded_keyword = _check_keyword(keyword)
    _check_no_nul(keyword, text)
    _check_no_nul(keyword, translated_keyword)
    if not language.isascii() or "\x00" in language:
        raise InvalidMetadataError(
            f"invalid iTXt language tag {language!r}: use an ASCII tag such as 'en' or 'zh-CN'"
        )
    body = text.encode("utf-8")
    if compress:
        body = zlib.compress(body, _TEXT_COMPRESSION_LEVEL)
    header = b"".join(
        (
            encoded_keyword,
            b"\x00",
            bytes((int(compress), COMPRESSION_METHOD_ZLIB)),
            language.encode("ascii"),
            b"\x00",
            translated_keyword.encode("utf-8"),
            b"\x00",
        )
    )
    return write_chunk(ITXT, header + body)


def _encode_latin1(keyword: str, text: str) -> bytes:
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError as error:
        raise InvalidMetadataError(
            f"text for PNG keyword {keyword!r} is not Latin-1 (character "
            f"{text[error.start]!r} at index {error.start}): store it in iTXt instead"
        ) from None


def parse_text_chunk(chunk: Chunk, *, max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES) -> TextEntry:
    """Decode a tEXt, zTXt or iTXt chunk.

    Raises :class:`~safeinfer.errors.CorruptPngError` when the layout is broken (no
    keyword separator, bad compressed data, invalid UTF-8), and
    :class:`~safeinfer.errors.UnsupportedPngError` for an unknown compression method or
    a text that decompresses to more than ``max_text_bytes``.
    """
    where = f"{chunk.name} chunk at offset {chunk.offset}"
    keyword_bytes, separator, rest = chunk.data.partition(b"\x00")
    if not separator or not keyword_bytes:
        raise CorruptPngError(f"missing keyword or NUL separator in {where}")
    keyword = keyword_bytes.decode("latin-1")
    if chunk.type == TEXT:
        return TextEntry(keyword, rest.decode("latin-1"), chunk.name, compressed=False)
    if chunk.type == ZTXT:
        if not rest:
            raise CorruptPngError(f"missing compression method in {where}")
        _check_method(rest[0], where)
        text = _decompress(rest[1:], where, max_text_bytes).decode("latin-1")
        return TextEntry(keyword, text, chunk.name, compressed=True)
    if chunk.type == ITXT:
        return _parse_itxt(keyword, rest, where, max_text_bytes)
    raise ValueError(f"{where} is not a textual chunk: expected tEXt, zTXt or iTXt")


def _parse_itxt(keyword: str, rest: bytes, where: str, max_text_bytes: int) -> TextEntry:
    if len(rest) < 2:
        raise CorruptPngError(f"missing compression flag or method in {where}")
    flag, method = rest[0], rest[1]
    if flag not in (0, 1):
        raise CorruptPngError(f"bad compression flag {flag} in {where}: expected 0 or 1")
    fields = rest[2:].split(b"\x00", 2)
    if len(fields) != 3:
        raise CorruptPngError(f"missing language tag or translated keyword separator in {where}")
    language_bytes, translated_bytes, body = fields
    if flag:
        _check_method(method, where)
        body = _decompress(body, where, max_text_bytes)
    try:
        text = body.decode("utf-8")
        translated = translated_bytes.decode("utf-8")
    except UnicodeDecodeError as error:
        raise CorruptPngError(f"invalid UTF-8 in {where}: {error.reason}") from None
    return TextEntry(
        keyword,
        text,
        "iTXt",
        compressed=bool(flag),
        language=language_bytes.decode("latin-1"),
        translated_keyword=translated,
    )


def _check_method(method: int, where: str) -> None:
    if method != COMPRESSION_METHOD_ZLIB:
        raise UnsupportedPngError(f"unknown compression method {method} in {where}")


def _decompress(data: bytes, where: str, max_text_bytes: int) -> bytes:
    decompressor = zlib.decompressobj()
    try:
        text = decompressor.decompress(data, max_text_bytes)
    except zlib.error as error:
        raise CorruptPngError(f"bad compressed text in {where}: {error}") from None
    if decompressor.unconsumed_tail:
        raise UnsupportedPngError(
            f"text in {where} decompresses to more than {max_text_bytes} bytes: "
            "raise max_text_bytes if the file is trusted"
        )
    if not decompressor.eof:
        raise CorruptPngError(f"truncated compressed text in {where}")
    return text


def read_png_bytes(source: PngSource) -> bytes:
    """Return the bytes of a PNG given as a path, a bytes-like object or a binary stream."""
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source)
    if isinstance(source, str | os.PathLike):
        return Path(source).read_bytes()
    return source.read()


def read_text(
    source: PngSource, *, max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES
) -> list[TextEntry]:
    """Return every textual chunk of a PNG, in file order.

    >>> [entry.keyword for entry in read_text("image.png")]          # doctest: +SKIP
    ['safeinfer', 'parameters']
    """
    chunks = iter_chunks(read_png_bytes(source))
    return [
        parse_text_chunk(chunk, max_text_bytes=max_text_bytes)
        for chunk in chunks
        if chunk.type in (TEXT, ZTXT, ITXT)
    ]


def read_metadata(
    source: PngSource, *, max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES
) -> dict[str, Any]:
    """Read the text metadata of a PNG written by safeinfer or any other tool.

    ``source`` is a path, the file's bytes, or a binary stream positioned at its start.
    Returns a dict with:

    - ``"text"``: ``{keyword: text}`` for every tEXt, zTXt and iTXt chunk, compressed or
      not. When a keyword appears more than once, the first chunk wins.
    - ``"safeinfer"``: the generation metadata parsed from the ``safeinfer`` iTXt JSON.
      The key is absent when the file has no such chunk or its text is not a JSON object.

    Raises :class:`~safeinfer.errors.CorruptPngError` when the chunks cannot be read
    (bad signature, truncation, CRC mismatch, broken text chunk).

    >>> read_metadata("outputs/cat.png")["safeinfer"]["seed"]         # doctest: +SKIP
    1234
    """
    return metadata_from_entries(read_text(source, max_text_bytes=max_text_bytes))


def metadata_from_entries(entries: Iterable[TextEntry]) -> dict[str, Any]:
    """Build the :func:`read_metadata` dict from decoded text entries."""
    text: dict[str, str] = {}
    for entry in entries:
        text.setdefault(entry.keyword, entry.text)
    metadata: dict[str, Any] = {"text": text}
    raw = text.get(SAFEINFER_KEYWORD)
    if raw is not None:
        try:
            parsed = json.loads(raw)
        except json.JSONDecodeError as error:
            logger.warning("ignoring invalid JSON in the %r text: %s", SAFEINFER_KEYWORD, error)
        else:
            if isinstance(parsed, dict):
                metadata[SAFEINFER_KEYWORD] = parsed
            else:
                logger.warning("ignoring the %r text: not a JSON object", SAFEINFER_KEYWORD)
    return metadata
