"""File names that are unique without coordination, and safe stems from user text.

Unique names start with a UTC timestamp in microseconds followed by 64 random bits:

    20261204T204512123456Z-9f1c2a7be04d3316
    20261204T204512123456Z-9f1c2a7be04d3316-black-square.png

Names sort by creation time, as text and in ``ls``. They stay unique across threads,
processes and hosts without a counter, a lock or a directory listing, because two names
can only meet when they share the microsecond and all 64 random bits. Within one process
the names are strictly increasing: a name made in the same microsecond as the previous
one (or after the clock stepped back) reuses that timestamp and adds one to its random
part, as ULIDs do.

>>> from safeinfer.naming import sanitize_stem, unique_name
>>> unique_name("cat")                                 # doctest: +SKIP
'20261204T204512123456Z-9f1c2a7be04d3316-cat.png'
>>> sanitize_stem("../../etc/passwd")
'etc_passwd'
"""

from __future__ import annotations

import re
import secrets
import threading
import time
import unicodedata
from datetime import UTC, datetime
from typing import Final

from safeinfer.errors import InvalidNameError

__all__ = ["DEFAULT_MAX_STEM_BYTES", "DEFAULT_SUFFIX", "sanitize_stem", "unique_name"]

#: The suffix of generated names unless the caller gives another one.
DEFAULT_SUFFIX: Final = ".png"

#: Upper bound of a sanitised stem in UTF-8 bytes. File systems allow 255 bytes per name,
#: so this leaves room for the 39-byte unique prefix and a suffix. The writer's temp-file
#: name embeds the target name and cuts it to fit.
DEFAULT_MAX_STEM_BYTES: Final = 100

#: Random bits per name. Two names collide only if they share the microsecond and all of
#: these bits. Even then no data is lost, because the writer publishes without clobbering.
_RANDOM_BITS: Final = 64
_RANDOM_MASK: Final = (1 << _RANDOM_BITS) - 1

#: Characters that survive sanitising besides Unicode letters and digits.
_KEPT_PUNCTUATION: Final = frozenset("-_.+")

#: Separators trimmed from both ends of a stem: a leading dot hides a file, Windows drops
#: a trailing dot, and leading dashes read as command-line options.
_TRIMMED: Final = "._-"

#: Device names that Windows reserves in every directory, with or without an extension.
_WINDOWS_DEVICE_NAMES: Final = frozenset(
    ["CON", "PRN", "AUX", "NUL"]
    + [f"{prefix}{digit}" for prefix in ("COM", "LPT") for digit in "0123456789¹²³"]
)

_DOT_RUN: Final = re.compile(r"\.{2,}")

_lock = threading.Lock()
_last_micros = 0
_last_random = 0


def _next_stamp() -> tuple[int, int]:
    """Return (microseconds since the epoch, random bits), strictly increasing per process."""
    global _last_micros, _last_random
    micros = time.time_ns() // 1000
    with _lock:
        if micros > _last_micros:
            _last_micros = micros
            _last_random = secrets.randbits(_RANDOM_BITS)
        else:
            # Same microsecond, or the wall clock stepped back: keep the order anyway.
            _last_random = (_last_random + 1) & _RANDOM_MASK
            if _last_random == 0:
                _last_micros += 1
        return _last_micros, _last_random


def unique_name(stem: str | None = None, *, suffix: str = DEFAULT_SUFFIX) -> str:
    """Make a new file name that sorts by creation time and is unique without coordination.

    ``stem``, when given, is passed through :func:`sanitize_stem` and appended after the
    unique part, so the name stays sortable and recognisable. ``suffix`` is appended as is
    (use ``""`` for none).

    >>> unique_name("portrait 1", suffix=".webp")      # doctest: +SKIP
    '20261204T204512123456Z-9f1c2a7be04d3316-portrait_1.webp'
    """
    micros, random_bits = _next_stamp()
    seconds, fraction = divmod(micros, 1_000_000)
    timestamp = datetime.fromtimestamp(seconds, UTC).strftime("%Y%m%dT%H%M%S")
    name = f"{timestamp}{fraction:06d}Z-{random_bits:016x}"
    if stem is not None:
        name = f"{name}-{sanitize_stem(stem)}"
    return name + suffix


def sanitize_stem(text: str, *, max_length: int = DEFAULT_MAX_STEM_BYTES) -> str:
    """Turn user-supplied text into a file stem that is safe on Linux, macOS and Windows.

    The rule, applied in this order:

    1. Normalise to Unicode NFC, so one visible name has one spelling.
    2. Keep Unicode letters, digits and ``- _ . +``. Replace every run of other characters
       (path separators, whitespace, control characters including NUL, and the characters
       Windows forbids: ``< > : " | ? *``) with one ``_``.
    3. Collapse runs of dots to one dot, so no ``..`` remains.
    4. Trim ``.``, ``_`` and ``-`` from both ends (no hidden files, no trailing dot, no
       leading dash).
    5. Cut to ``max_length`` bytes of UTF-8 at a character boundary, then trim again.
    6. If the part before the first dot is a reserved Windows device name (``CON``,
       ``NUL``, ``COM1``, ``LPT1``, ... in any case), append ``_`` to that part.

    Raises :class:`~safeinfer.errors.InvalidNameError` when nothing usable remains.

    >>> sanitize_stem("a/b\\\\c:d")
    'a_b_c_d'
    >>> sanitize_stem("con.txt")
    'con_.txt'
    """
    if not isinstance(text, str):
        raise InvalidNameError(
            f"invalid file stem {text!r}: expected str, got {type(text).__name__}"
        )
    if max_length < 1:
        raise InvalidNameError(f"invalid max_length {max_length}: must be at least 1 byte")

    normalized = unicodedata.normalize("NFC", text)
    pieces: list[str] = []
    for char in normalized:
        if char.isalnum() or char in _KEPT_PUNCTUATION:
            pieces.append(char)
        elif not pieces or pieces[-1] != "_":
            pieces.append("_")
    stem = _DOT_RUN.sub(".", "".join(pieces)).strip(_TRIMMED)
    stem = _truncate_utf8(stem, max_length).strip(_TRIMMED)

    base, dot, rest = stem.partition(".")
    if base.upper() in _WINDOWS_DEVICE_NAMES:
        stem = _truncate_utf8(base, max_length - 1) + "_" + dot + rest
        stem = _truncate_utf8(stem, max_length)

    if not stem:
        raise InvalidNameError(
            f"invalid file stem {text!r}: nothing usable remains after removing separators, "
            "control characters and dots; pass a name with letters or digits"
        )
    return stem


def _truncate_utf8(text: str, max_bytes: int) -> str:
    encoded = text.encode("utf-8")
    if len(encoded) <= max_bytes:
        return text
    return encoded[:max_bytes].decode("utf-8", errors="ignore")
