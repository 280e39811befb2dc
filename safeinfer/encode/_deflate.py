"""The deflate library behind the encoder: zlib-ng when installed, else the standard zlib.

Every backend writes a standard zlib stream (RFC 1950 around RFC 1951 deflate data), so
the choice changes speed and size, never what decoders accept.
"""

from __future__ import annotations

import importlib
import logging
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any, Final

from safeinfer.encode._pool import map_in_threads, thread_count

logger = logging.getLogger(__name__)

#: Input of at least :data:`PARALLEL_MIN_SIZE` bytes is deflated in independent blocks of
#: this size, which threads can compress at once. Block layout depends on the input size
#: only, never on the thread count, so machines with the same deflate library and version
#: write the same bytes.
PARALLEL_BLOCK_SIZE: Final = 512 * 1024

#: Smaller inputs are deflated as one stream on the calling thread. The threshold is an
#: estimate of where a pool starts to pay, not a measured optimum.
PARALLEL_MIN_SIZE: Final = 2 * PARALLEL_BLOCK_SIZE

#: The deflate window (RFC 1951, section 2): each block is primed with this many bytes of
#: the input before it, so matches that cross a block boundary are still found.
_WINDOW_SIZE: Final = 32 * 1024

_RAW_DEFLATE_WBITS: Final = -15

#: zlib's largest internal state (its default is 8): zlib documents 9 as the setting for
#: best speed, and the extra memory is a few hundred KiB per compressor.
_MEM_LEVEL: Final = 9

#: The zlib header's FLEVEL field (RFC 1950, section 2.2) for levels 1, 2-5, 6 and 7-9.
_ZLIB_HEADERS: Final = {1: b"\x78\x01", 5: b"\x78\x5e", 6: b"\x78\x9c", 9: b"\x78\xda"}


@dataclass(frozen=True, slots=True)
class DeflateBackend:
    """A deflate library: its name, version and ``compressobj`` (the standard zlib's API)."""

    name: str
    version: str
    compressobj: Callable[..., Any]
    #: Whether ``strategy`` (Z_RLE, Z_FILTERED) is honoured. isal ignores it.
    supports_strategy: bool = True
    #: Highest compression level. isal accepts 0 to 3, so higher levels are capped.
    max_level: int = 9


def _standard_zlib() -> DeflateBackend:
    return DeflateBackend("zlib", zlib.ZLIB_RUNTIME_VERSION, zlib.compressobj)


def _load_zlib_ng() -> DeflateBackend | None:
    try:
        module = importlib.import_module("zlib_ng.zlib_ng")
    except ImportError:
        return None
    return DeflateBackend("zlib-ng", str(module.ZLIBNG_VERSION), module.compressobj)


def _load_isal() -> DeflateBackend | None:
    try:
        module = importlib.import_module("isal.isal_zlib")
    except ImportError:
        return None
    version = str(getattr(importlib.import_module("isal"), "__version__", "unknown"))
    return DeflateBackend("isal", version, module.compressobj, supports_strategy=False, max_level=3)


@cache
def available_backends() -> dict[str, DeflateBackend]:
    """Return the installed deflate backends by name; "zlib" is always present."""
    backends = {"zlib": _standard_zlib()}
    for loader in (_load_zlib_ng, _load_isal):
        backend = loader()
        if backend is not None:
            backends[backend.name] = backend
    return backends


@cache
def default_backend() -> DeflateBackend:
    """Return zlib-ng when installed (the ``fast`` extra), else the standard zlib."""
    backends = available_backends()
    backend = backends.get("zlib-ng", backends["zlib"])
    logger.debug("deflate backend: %s %s", backend.name, backend.version)
    return backend


def deflate(
    data: bytes | memoryview,
    *,
    level: int,
    strategy: int = zlib.Z_DEFAULT_STRATEGY,
    backend: DeflateBackend | None = None,
    threads: int | None = None,
) -> bytes:
    """Compress ``data`` into one zlib stream.

    Inputs of :data:`PARALLEL_MIN_SIZE` bytes or more are compressed in blocks, on up to
    ``threads`` threads (``None``: one per usable CPU, at most 8). The output does not
    depend on ``threads``.
    """
    backend = backend or default_backend()
    level = min(level, backend.max_level)
    strategy = strategy if backend.supports_strategy else zlib.Z_DEFAULT_STRATEGY
    view = memoryview(data).cast("B")
    threads = thread_count() if threads is None else max(1, threads)
    if len(view) < PARALLEL_MIN_SIZE:
        compressor = backend.compressobj(level, zlib.DEFLATED, zlib.MAX_WBITS, _MEM_LEVEL, strategy)
        return bytes(compressor.compress(view) + compressor.flush())
    return _deflate_parallel(view, level, strategy, backend, threads)


def _deflate_parallel(
    view: memoryview, level: int, strategy: int, backend: DeflateBackend, threads: int
) -> bytes:
    # Each block is an independent raw deflate stream ended by a sync flush (an empty
    # stored block that byte-aligns the output), and only the last one sets the final-block
    # bit, so the concatenation is one valid deflate stream. The zlib header and the
    # Adler-32 of the whole input wrap it into a zlib stream.
    starts = range(0, len(view), PARALLEL_BLOCK_SIZE)
    last = starts[-1]

    def compress_block(start: int) -> bytes:
        window = bytes(view[max(0, start - _WINDOW_SIZE) : start])
        options: dict[str, Any] = {"zdict": window} if window else {}
        compressor = backend.compressobj(
            level, zlib.DEFLATED, _RAW_DEFLATE_WBITS, _MEM_LEVEL, strategy, **options
        )
        body = compressor.compress(view[start : start + PARALLEL_BLOCK_SIZE])
        mode = zlib.Z_FINISH if start == last else zlib.Z_SYNC_FLUSH
        return bytes(body + compressor.flush(mode))

    blocks = map_in_threads(compress_block, starts, threads)
    checksum = zlib.adler32(view)
    return b"".join((_zlib_header(level), *blocks, struct.pack(">I", checksum)))


def _zlib_header(level: int) -> bytes:
    if level <= 1:
        return _ZLIB_HEADERS[1]
    if level <= 5:
        return _ZLIB_HEADERS[5]
    if level == 6:
        return _ZLIB_HEADERS[6]
    return _ZLIB_HEADERS[9]
