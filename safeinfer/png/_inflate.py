"""Fast raw inflate, CRC-32 and Adler-32, with the standard ``zlib`` module as fallback.

Decompression dominates a full PNG check. Measured on one 512x512 RGB photo-like PNG
(508 KB, 2-core x86-64 build machine, ``/tmp`` microbenchmark, best of 5): raw inflate in
32 KiB input pieces took 1.22 ms with ``isal.isal_zlib`` (python-isal), 1.97 ms with
``zlib_ng.zlib_ng`` and 2.49 ms with the standard ``zlib`` (zlib 1.2.13). CRC-32 over the
file took 9 us with zlib-ng or isal and 119 us with zlib 1.2.13; Adler-32 over the 787 KB
of image data took 11 us with zlib-ng, 41 us with isal and 219 us with zlib. So inflate
prefers isal, the checksums prefer zlib-ng, and each falls back to the next one installed.

Set the environment variable ``SAFEINFER_INFLATE`` to ``isal``, ``zlib-ng`` or ``zlib``
to force one backend for everything (for comparisons and bug reports).
"""

from __future__ import annotations

import importlib
import os
import zlib
from collections.abc import Callable
from types import ModuleType
from typing import Final, Protocol

#: Module name of each backend, in the order the inflate prefers them.
_INFLATE_ORDER: Final = ("isal", "zlib-ng", "zlib")
#: The checksum order: zlib-ng's SIMD Adler-32 is about four times isal's.
_CHECKSUM_ORDER: Final = ("zlib-ng", "isal", "zlib")
_MODULES: Final = {"isal": "isal.isal_zlib", "zlib-ng": "zlib_ng.zlib_ng", "zlib": "zlib"}

#: Negative window bits select a raw deflate stream: the checker parses the zlib header and
#: Adler-32 trailer itself, so every backend reports them the same way.
_RAW_DEFLATE_WBITS: Final = -15


class Decompressor(Protocol):
    """The part of ``zlib.Decompress`` that the checker uses."""

    @property
    def eof(self) -> bool: ...
    @property
    def unconsumed_tail(self) -> bytes: ...
    @property
    def unused_data(self) -> bytes: ...
    def decompress(self, data: bytes | memoryview, max_length: int = 0) -> bytes: ...


def _load(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(_MODULES[name])
    except ImportError:
        return None


def _first_available(order: tuple[str, ...]) -> tuple[str, ModuleType]:
    forced = os.environ.get("SAFEINFER_INFLATE")
    if forced in _MODULES:
        order = (forced, "zlib")
    for name in order:
        module = _load(name)
        if module is not None:
            return name, module
    return "zlib", zlib


INFLATE_BACKEND, _inflate_module = _first_available(_INFLATE_ORDER)
CHECKSUM_BACKEND, _checksum_module = _first_available(_CHECKSUM_ORDER)

#: The exception classes that a decoding failure raises, for ``except`` clauses.
ZLIB_ERRORS: Final[tuple[type[Exception], ...]] = tuple(
    {zlib.error, _inflate_module.error, _checksum_module.error}
)

crc32: Callable[[bytes | memoryview, int], int] = _checksum_module.crc32
adler32: Callable[[bytes | memoryview, int], int] = _checksum_module.adler32


def raw_decompressobj() -> Decompressor:
    """Return a decompressor for raw deflate data from the fastest backend installed."""
    decompressor: Decompressor = _inflate_module.decompressobj(_RAW_DEFLATE_WBITS)
    return decompressor
