"""atomic_write and atomic_open: write a temp file beside the target, then publish it.

The sequence, and what a crash at each point leaves behind:

1. create the missing directories, then a temp file in the target's directory with
   O_EXCL. A rename is only atomic within one file system, which is why the temp file
   never lives in /tmp. A crash leaves an empty or partial temp file, and no target.
2. write the bytes, set the mode, fsync (durability "file" and "full"). A crash leaves
   the temp file and the old target untouched.
3. optionally check the temp file (save_png's ``verify``).
4. publish: ``os.replace`` for "replace", a no-clobber rename for "error" and "unique".
   This is the commit point: readers see the old file or the new one, never a mix.
5. fsync the directory (durability "full"), so the new name survives a power loss.

Any exception in steps 1 to 4, KeyboardInterrupt and SystemExit included, removes the
temp file before it propagates. Temp files of a process killed with SIGKILL stay behind,
named after their owner, until :func:`clean_stale_temps` removes them.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import BinaryIO, Final

from safeinfer.errors import (
    ConfigError,
    FileExistsConflict,
    InvalidTypeError,
    SafeInferError,
    WriteError,
)
from safeinfer.naming import unique_name
from safeinfer.writer._errors import write_error
from safeinfer.writer._fs import fsync_directory, fsync_file, make_directories, rename_no_replace
from safeinfer.writer._result import (
    DEFAULT_DURABILITY,
    DURABILITIES,
    IF_EXISTS_CHOICES,
    Durability,
    IfExists,
    WriteResult,
)
from safeinfer.writer._temps import create_temp

logger = logging.getLogger(__name__)

#: Default of atomic_write and atomic_open: a plain file path must not silently replace
#: an existing file.
DEFAULT_IF_EXISTS: Final[IfExists] = "error"

#: Chunk size for copying streams and for hashing a file back; large enough that the
#: per-call overhead vanishes, small enough to keep memory flat.
_CHUNK: Final = 1 << 20

#: Fresh names to try with if_exists="unique" before giving up. Each carries 64 random
#: bits, so a second conflict means a file system that does not keep names apart.
_UNIQUE_ATTEMPTS: Final = 8

#: A check run on the finished temp file before it is published; it raises to stop.
TempCheck = Callable[[Path], None]

#: The largest ``mode``: read, write and execute bits. Setuid, setgid and sticky bits
#: are rejected, because an output file never needs them.
MAX_MODE: Final = 0o777

BytesLike = bytes | bytearray | memoryview


def validate_options(durability: str, if_exists: str) -> None:
    """Raise ConfigError unless both options are among their allowed values."""
    if durability not in DURABILITIES:
        raise ConfigError(f"invalid durability {durability!r}: expected one of {DURABILITIES}")
    if if_exists not in IF_EXISTS_CHOICES:
        raise ConfigError(f"invalid if_exists {if_exists!r}: expected one of {IF_EXISTS_CHOICES}")


def validate_mode(mode: int | None) -> None:
    """Raise unless ``mode`` is None or permission bits from 0 to 0o777."""
    if mode is None:
        return
    if isinstance(mode, bool) or not isinstance(mode, int):
        raise InvalidTypeError(
            f"invalid mode {mode!r}: expected an int such as 0o644, got {type(mode).__name__}"
        )
    if not 0 <= mode <= MAX_MODE:
        raise ConfigError(
            f"invalid mode {mode:#o}: expected permission bits from 0o000 to 0o777; "
            "setuid, setgid and sticky bits are not allowed"
        )


def _describe_data_type(data: object) -> str:
    if isinstance(data, str):
        return "got str; encode it first, such as text.encode()"
    return f"got {type(data).__name__}"


def _first_chunk(data: object) -> BytesLike:
    """Return the data itself, or the first chunk of a stream, checking the type.

    Reading the first chunk before anything is created means that text, None or a text
    stream fails without leaving a directory or temp file behind.
    """
    if isinstance(data, BytesLike):
        return data
    if isinstance(data, io.TextIOBase):
        raise InvalidTypeError(
            f"invalid data: a text stream {data!r} was given; "
            "open the file in binary mode ('rb') or pass bytes"
        )
    read = getattr(data, "read", None)
    if not callable(read):
        raise InvalidTypeError(
            f"invalid data: expected bytes or a readable binary stream, {_describe_data_type(data)}"
        )
    chunk = read(_CHUNK)
    if not isinstance(chunk, BytesLike):
        raise InvalidTypeError(
            "invalid data: the stream's read() returned "
            f"{type(chunk).__name__}, not bytes; open it in binary mode ('rb')"
        )
    return chunk


class AtomicFile(io.BufferedWriter):
    """The writable file that :func:`atomic_open` yields.

    ``result`` is None until the ``with`` block ends without an exception and the file
    is published; then it holds the :class:`WriteResult`.
    """

    result: WriteResult | None = None
    #: The path to publish at. With if_exists="unique", the final name may differ.
    target: Path
    temp_path: Path


class _Transaction:
    """One temp file on its way to becoming the target; see the module docstring."""

    def __init__(
        self, target: Path, *, durability: Durability, if_exists: IfExists, mode: int | None
    ) -> None:
        validate_options(durability, if_exists)
        validate_mode(mode)
        self.target = target
        self.durability = durability
        self.if_exists = if_exists
        self.mode = mode
        self.fd: int | None = None
        self.temp: Path | None = None
        self.step = "creating the temp file"

    def begin(self) -> int:
        if self.target.is_dir():
            raise WriteError(
                f"cannot write {self.target}: it is a directory; pass a file path, or use "
                "save_png, which picks a file name inside a directory",
                path=str(self.target),
            )
        self.step = "creating the directory"
        make_directories(self.target.parent, durable=self.durability == "full")
        self.step = "creating the temp file"
        self.fd, self.temp = create_temp(self.target)
        self.step = "writing the temp file"
        return self.fd

    def finish(self, sha256: str, size: int, check: TempCheck | None) -> WriteResult:
        fd, temp = self._open_parts()
        self.step = "setting the file mode"
        self._apply_mode(fd)
        if self.durability != "none":
            self.step = "fsync of the temp file"
            fsync_file(fd)
        self.step = "closing the temp file"
        self.fd = None
        os.close(fd)
        if check is not None:
            self.step = "checking the temp file"
            check(temp)
        self.step = "publishing"
        published = self._publish(temp)
        self.temp = None
        if self.durability == "full":
            self._fsync_published_directory(published)
        return WriteResult(path=published, bytes=size, sha256=sha256)

    def abort(self) -> None:
        """Close and remove the temp file; safe to call twice and after a publish."""
        if self.fd is not None:
            fd, self.fd = self.fd, None
            with suppress(OSError):
                os.close(fd)
        if self.temp is not None:
            temp, self.temp = self.temp, None
            try:
                os.unlink(temp)
            except FileNotFoundError:
                pass  # already renamed: an interrupt arrived just after the publish
            except OSError as error:
                logger.warning("cannot remove temp file %s: %s", temp, error)

    def _open_parts(self) -> tuple[int, Path]:
        assert self.fd is not None, "begin() was not called"
        assert self.temp is not None, "begin() was not called"
        return self.fd, self.temp

    def _apply_mode(self, fd: int) -> None:
        if self.mode is not None:
            os.fchmod(fd, self.mode)
            return
        if self.if_exists != "replace":
            return  # the temp file was created 0o666 minus the umask
        try:
            old = os.stat(self.target)
        except FileNotFoundError:
            return
        os.fchmod(fd, stat.S_IMODE(old.st_mode))

    def _publish(self, temp: Path) -> Path:
        if self.if_exists == "replace":
            os.replace(temp, self.target)
            return self.target
        candidate = self.target
        for _ in range(_UNIQUE_ATTEMPTS):
            try:
                rename_no_replace(temp, candidate)
                return candidate
            except FileExistsError:
                if self.if_exists == "error":
                    raise FileExistsConflict(
                        f"cannot write {self.target}: the file exists; pass "
                        "if_exists='replace' to replace it, or 'unique' to choose a free name",
                        path=str(self.target),
                    ) from None
            candidate = self.target.with_name(
                f"{self.target.stem}-{unique_name(suffix=self.target.suffix)}"
            )
        raise WriteError(
            f"cannot write {self.target}: {_UNIQUE_ATTEMPTS} fresh names were all taken; "
            "check that the file system keeps distinct names apart",
            path=str(self.target),
        )

    def _fsync_published_directory(self, published: Path) -> None:
        try:
            fsync_directory(published.parent)
        except OSError as error:
            raise WriteError(
                f"{published} was published, but fsync of its directory failed: "
                f"{error.strerror} [errno {error.errno}]. The file is complete, but its "
                "name may not survive a power loss.",
                path=str(published),
                errno=error.errno,
            ) from error


@contextmanager
def _guarded(transaction: _Transaction) -> Iterator[None]:
    """Remove the temp file on any exception; turn OSError into a WriteError."""
    try:
        yield
    except SafeInferError:
        transaction.abort()
        raise
    except OSError as error:
        transaction.abort()
        raise write_error(error, target=transaction.target, step=transaction.step) from error
    except BaseException:
        transaction.abort()
        raise


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data).cast("B")
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _copy_stream(fd: int, first: BytesLike, stream: BinaryIO) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    chunk: BytesLike = first
    while chunk:
        if not isinstance(chunk, BytesLike):
            raise InvalidTypeError(
                f"invalid data: the stream's read() returned {type(chunk).__name__}, not bytes"
            )
        digest.update(chunk)
        _write_all(fd, chunk)
        size += memoryview(chunk).nbytes
        chunk = stream.read(_CHUNK)
    return digest.hexdigest(), size


def _hash_file(fd: int) -> tuple[str, int]:
    digest = hashlib.sha256()
    offset = 0
    while chunk := os.pread(fd, _CHUNK, offset):
        digest.update(chunk)
        offset += len(chunk)
    return digest.hexdigest(), offset


def write_checked(
    path: str | os.PathLike[str],
    data: bytes | bytearray | memoryview | BinaryIO,
    *,
    durability: Durability,
    if_exists: IfExists,
    mode: int | None = None,
    check: TempCheck | None = None,
) -> WriteResult:
    """Run atomic_write, with ``check`` run on the finished temp file before publishing."""
    transaction = _Transaction(Path(path), durability=durability, if_exists=if_exists, mode=mode)
    first = _first_chunk(data)
    with _guarded(transaction):
        fd = transaction.begin()
        if isinstance(data, BytesLike):
            sha256 = hashlib.sha256(data).hexdigest()
            size = memoryview(data).nbytes
            _write_all(fd, data)
        else:
            sha256, size = _copy_stream(fd, first, data)
        return transaction.finish(sha256, size, check)
    raise AssertionError("unreachable")  # _guarded re-raises every exception


def atomic_write(
    path: str | os.PathLike[str],
    data: bytes | bytearray | memoryview | BinaryIO,
    *,
    durability: Durability = DEFAULT_DURABILITY,
    if_exists: IfExists = DEFAULT_IF_EXISTS,
    mode: int | None = None,
) -> WriteResult:
    """Write ``data`` to ``path`` so that readers only ever see a complete file.

    ``data`` is a bytes-like object or a readable binary stream (read to its end). The
    bytes go to a temp file in the same directory, which is then published under
    ``path`` in one atomic step; missing directories are created.

    ``durability``: "none" (atomic visibility only), "file" (fsync the file before
    publishing) or "full" (also fsync the directory afterwards; the default).
    ``if_exists``: "error" (the default) raises FileExistsConflict. "replace" replaces
    the file atomically and keeps the old file's permission bits. "unique" keeps the old
    file and publishes as ``<stem>-<unique name><suffix>`` instead. ``mode`` sets the permission
    bits exactly, from 0 to 0o777, so setuid, setgid and sticky bits raise ConfigError.
    By default a new file gets 0o666 minus the umask, like ``open()``.

    Returns a WriteResult with the final path, the size and the SHA-256 of the bytes.
    Raises InvalidTypeError (a TypeError) for text, None or a text stream, before any
    directory or file is created.
    Raises WriteError naming the path and the cause (read-only file system, permission
    denied, no space left, file too large); the old file then stays as it was and no temp
    file is left, also after KeyboardInterrupt.

    >>> from safeinfer import atomic_write
    >>> result = atomic_write("out/config.json", b"{}", if_exists="replace")  # doctest: +SKIP
    >>> result.bytes
    2
    """
    return write_checked(path, data, durability=durability, if_exists=if_exists, mode=mode)


@contextmanager
def atomic_open(
    path: str | os.PathLike[str],
    *,
    durability: Durability = DEFAULT_DURABILITY,
    if_exists: IfExists = DEFAULT_IF_EXISTS,
    mode: int | None = None,
) -> Iterator[AtomicFile]:
    """Open a temp file for writing, and publish it under ``path`` when the block succeeds.

    The options are those of :func:`atomic_write`. The yielded file may be written,
    flushed and seeked freely, because its contents are hashed back from the file at the
    end of the block. So ``result.sha256`` always matches what was published. If the block raises
    (KeyboardInterrupt and SystemExit included), the temp file is removed, the target is
    left as it was, and the exception propagates.

    >>> from safeinfer import atomic_open
    >>> with atomic_open("out/image.png", if_exists="replace") as file:   # doctest: +SKIP
    ...     pil_image.save(file, format="PNG")
    >>> file.result.path                                                   # doctest: +SKIP
    PosixPath('out/image.png')
    """
    transaction = _Transaction(Path(path), durability=durability, if_exists=if_exists, mode=mode)
    with _guarded(transaction):
        fd = transaction.begin()
        # closefd=False: the descriptor stays with the transaction, which fsyncs it.
        file = AtomicFile(io.FileIO(fd, "w", closefd=False), buffer_size=_CHUNK)
        file.target = transaction.target
        file.temp_path = transaction._open_parts()[1]
    try:
        yield file
    except BaseException:
        # Errors of the caller's block propagate unchanged; only the temp file goes.
        with suppress(Exception):
            file.close()
        transaction.abort()
        raise
    with _guarded(transaction):
        file.close()
        sha256, size = _hash_file(fd)
        file.result = transaction.finish(sha256, size, check=None)
