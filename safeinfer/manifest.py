"""The manifest: an append-only JSON Lines record of published files.

One JSON object per line and per published file::

    {"path": "images/cat.png", "bytes": 183512, "sha256": "9f1c…", "seed": 7, "worker": 2}

``path`` is relative to the manifest's directory and uses ``/``; ``bytes`` and ``sha256``
describe exactly the published bytes, so a later check catches a truncated file and also a
valid PNG that contains another request's image. Producers add any further fields (item id,
prompt, seed, worker, device, seconds). A job writes ``manifest.jsonl``, or
``manifest-<rank>.jsonl`` per rank or worker, in its output root; readers take every
``manifest*.jsonl`` there.

Several processes may append to one manifest at once. Each line goes out in a single
``write()`` on a descriptor opened with ``O_APPEND``, and Linux serialises such writes to
a regular file on a local file system, so lines never interleave.

A crash or a full disk can leave a torn line: the beginning of a JSON object without its
end. A writer that opens a manifest whose last line is torn first ends that line, so its
own lines stay whole, and readers skip torn lines with a warning wherever they are. Any
other invalid line raises :class:`~safeinfer.errors.ManifestError` with the file and the
line number.

NOTE: ``O_APPEND`` is not atomic across NFS clients; give each host its own manifest
(``manifest-<rank>.jsonl``) on shared storage.

>>> from safeinfer.manifest import Manifest, read_manifests
>>> with Manifest("outputs/manifest.jsonl") as manifest:           # doctest: +SKIP
...     manifest.record(safeinfer.save_png(image, "outputs/"), seed=7)
>>> [entry.absolute_path for entry in read_manifests("outputs")]   # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from types import TracebackType
from typing import Any, Final

from safeinfer.errors import ConfigError, ManifestError, WriteError
from safeinfer.writer._errors import describe_os_error
from safeinfer.writer._fs import fsync_directory, make_directories
from safeinfer.writer._result import DURABILITIES, Durability, WriteResult

__all__ = [
    "DEFAULT_MANIFEST_DURABILITY",
    "MANIFEST_GLOB",
    "MANIFEST_NAME",
    "Manifest",
    "ManifestEntry",
    "find_manifests",
    "read_manifest",
    "read_manifests",
]

logger = logging.getLogger(__name__)

#: The manifest a single-process producer writes in its output root.
MANIFEST_NAME: Final = "manifest.jsonl"
#: Every manifest of an output root: ``manifest.jsonl`` and ``manifest-<rank>.jsonl``.
MANIFEST_GLOB: Final = "manifest*.jsonl"

#: fsync after every line, so a recorded file is never lost from the manifest by a power
#: loss. The directory entry is fsynced only for "full", once, when the file is created.
DEFAULT_MANIFEST_DURABILITY: Final[Durability] = "file"

_REQUIRED: Final = ("path", "bytes", "sha256")
_SHA256_HEX: Final = re.compile(r"[0-9a-f]{64}")

#: Characters of a JSON token that a cut can leave unparsed at the end of a torn line:
#: "fals" of false is the longest.
_LONGEST_CUT_TOKEN: Final = 4


@dataclass(frozen=True)
class ManifestEntry:
    """One line of a manifest."""

    path: str  #: relative to the manifest's directory, with ``/`` separators
    bytes: int
    sha256: str  #: lowercase hex
    fields: dict[str, Any] = field(default_factory=dict)  #: every other key of the line
    manifest: Path = Path(MANIFEST_NAME)  #: the manifest file this line came from
    line: int = 0  #: 1-based line number in ``manifest``, 0 when not read from a file

    @property
    def absolute_path(self) -> Path:
        """The recorded file's path: ``path`` resolved against the manifest's directory.

        Raises ManifestError when ``path`` leads out of that directory: an absolute path,
        ``..`` above it, or a symbolic link on the way that points outside. Anyone who can
        write a manifest controls its paths, so following such a path could make a reader
        hash or open any file on the machine (``../../etc/shadow``).

        >>> entry.absolute_path                           # doctest: +SKIP
        PosixPath('outputs/images/20261204T204512123456Z-9f1c2a7be04d3316.png')
        """
        folder = self.manifest.parent
        target = folder / self.path
        if not _stays_inside(self.path, target, folder):
            where = f"{self.manifest}, line {self.line}" if self.line else str(self.manifest)
            raise ManifestError(
                f"invalid manifest entry in {where}: path {self.path!r} escapes the manifest "
                f"folder {folder}; an entry may only name a file inside that folder"
            )
        return target

    def to_dict(self) -> dict[str, Any]:
        """Return the line's object: path, bytes and sha256 first, then the other fields."""
        return {"path": self.path, "bytes": self.bytes, "sha256": self.sha256, **self.fields}


def _stays_inside(path: str, target: Path, folder: Path) -> bool:
    # The lexical check catches "..", absolute and drive paths even when nothing exists
    # on disk. The resolved check catches a symbolic link (a file or a directory on the
    # way) that points outside the folder.
    pure = PurePosixPath(path)
    if pure.is_absolute() or PureWindowsPath(path).is_absolute() or "\0" in path:
        return False
    if os.path.normpath(pure).split(os.sep, 1)[0] == os.pardir:
        return False
    real_folder = os.path.realpath(folder)
    real_target = os.path.realpath(target)
    return os.path.commonpath([real_folder, real_target]) == real_folder


def _entry_problem(entry: Mapping[str, Any]) -> str | None:
    """Describe what makes ``entry`` invalid, or return None when it is valid."""
    path = entry.get("path")
    if not isinstance(path, str) or not path:
        return f"'path' must be a non-empty string, got {path!r}"
    if PurePosixPath(path).is_absolute() or PureWindowsPath(path).is_absolute() or "\0" in path:
        return f"'path' must be relative to the manifest's directory, got {path!r}"
    size = entry.get("bytes")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        return f"'bytes' must be a non-negative integer, got {size!r}"
    digest = entry.get("sha256")
    if not isinstance(digest, str) or not _SHA256_HEX.fullmatch(digest):
        return f"'sha256' must be 64 lowercase hex digits, got {digest!r}"
    return None


class Manifest:
    """An open manifest that this process appends to; safe with other appending processes.

    ``durability``: "none" (no fsync), "file" (fsync after every line; the default) or
    "full" (also fsync the directory when the manifest is created). Missing directories
    are created. Use it as a context manager, or call :meth:`close`.

    >>> with Manifest("outputs/manifest-0.jsonl") as manifest:      # doctest: +SKIP
    ...     result = safeinfer.save_png(image, "outputs/images/")
    ...     manifest.record(result, prompt="a cat", seed=7)
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        durability: Durability = DEFAULT_MANIFEST_DURABILITY,
    ) -> None:
        if durability not in DURABILITIES:
            raise ConfigError(f"invalid durability {durability!r}: expected one of {DURABILITIES}")
        self.path = Path(path)
        self.durability = durability
        try:
            self._fd = self._open()
        except OSError as error:
            raise self._error("cannot open", error) from error

    def _open(self) -> int:
        full = self.durability == "full"
        make_directories(self.path.parent, durable=full)
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(self.path, flags | os.O_EXCL, 0o666)
        except FileExistsError:
            fd = os.open(self.path, flags | os.O_NONBLOCK, 0o666)
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                # A FIFO here would take the lines and lose them, and then block the
                # process that reads the manifest back.
                os.close(fd)
                raise WriteError(
                    f"cannot open manifest {self.path}: it is not a regular file; "
                    "remove it, or write the job to another directory",
                    path=str(self.path),
                ) from None
            os.set_blocking(fd, True)
        else:
            if full:
                fsync_directory(self.path.parent)
            return fd
        try:
            self._end_torn_line(fd)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _end_torn_line(self, fd: int) -> None:
        # A line that a crashed writer left without its newline would swallow the first
        # line appended after it; ending it keeps the new lines whole.
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            logger.warning(
                "manifest %s ends with a torn line; ending it before appending", self.path
            )
            os.write(fd, b"\n")

    def _error(self, action: str, error: OSError) -> WriteError:
        cause = describe_os_error(error, self.path.parent)
        return WriteError(
            f"{action} manifest {self.path}: {cause} [errno {error.errno}]",
            path=str(self.path),
            errno=error.errno,
        )

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._fd < 0

    def append(self, entry: Mapping[str, Any]) -> None:
        """Append ``entry`` as one line; it needs ``path``, ``bytes`` and ``sha256``.

        Raises ManifestError for an invalid entry (nothing is written) and WriteError when
        the write or the fsync fails.
        """
        if self.closed:
            raise ManifestError(f"cannot append to manifest {self.path}: it is closed")
        problem = _entry_problem(entry)
        if problem is None and os.pardir in PurePosixPath(entry["path"]).parts:
            # Readers refuse to follow such entries, so writing one would only hide a file.
            problem = f"'path' must stay inside the manifest's directory, got {entry['path']!r}"
        if problem is not None:
            raise ManifestError(f"invalid manifest entry for {self.path}: {problem}")
        ordered = {key: entry[key] for key in _REQUIRED} | dict(entry)
        try:
            line = json.dumps(ordered, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as error:
            raise ManifestError(f"invalid manifest entry for {self.path}: {error}") from error
        data = line.encode("utf-8") + b"\n"
        try:
            self._reopen_if_removed()
            # One write() per line: with O_APPEND this is what keeps lines of several
            # processes from interleaving.
            written = os.write(self._fd, data)
            if self.durability != "none":
                os.fsync(self._fd)
        except OSError as error:
            raise self._error("cannot append to", error) from error
        if written != len(data):
            # NOTE: a short write (the disk filled up mid-line) leaves a torn line that the
            # next writer to open this manifest ends, and readers skip.
            raise WriteError(
                f"cannot append to manifest {self.path}: wrote {written} of {len(data)} "
                "bytes; the device is probably full",
                path=str(self.path),
            )

    def _reopen_if_removed(self) -> None:
        # Lines appended to a manifest that was removed (with its directory, say) go to
        # an unlinked file and vanish with it; a new manifest at the same path keeps them.
        if os.fstat(self._fd).st_nlink > 0:
            return
        logger.warning("manifest %s was removed; creating it again", self.path)
        old, self._fd = self._fd, -1
        os.close(old)
        self._fd = self._open()

    def record(self, result: WriteResult, **fields: Any) -> dict[str, Any]:
        """Append a line for a published file and return the entry that was written.

        The path is stored relative to the manifest's directory, so the file must lie inside
        that directory: readers reject entries that point outside it. ``fields`` are added
        as they are and may not be named path, bytes or sha256.

        >>> manifest.record(result, prompt="a cat", seed=7)["path"]  # doctest: +SKIP
        'images/20261204T204512123456Z-9f1c2a7be04d3316.png'
        """
        clashing = sorted(set(fields) & set(_REQUIRED))
        if clashing:
            raise ManifestError(f"fields {clashing} are set from the WriteResult; rename them")
        relative = os.path.relpath(os.path.abspath(result.path), os.path.abspath(self.path.parent))
        if relative == os.pardir or relative.startswith(os.pardir + os.sep):
            raise ManifestError(
                f"{result.path} is outside the manifest's folder {self.path.parent}; "
                "keep the manifest in the output root or above it"
            )
        entry = {
            "path": PurePosixPath(Path(relative)).as_posix(),
            "bytes": result.bytes,
            "sha256": result.sha256,
            **fields,
        }
        self.append(entry)
        return entry

    def close(self) -> None:
        """Close the manifest; further appends raise ManifestError. Safe to call twice."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def __enter__(self) -> Manifest:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Manifest({str(self.path)!r}, durability={self.durability!r})"


def _is_torn(raw: bytes) -> bool:
    """Tell whether ``raw`` looks like the start of a JSON object whose end is missing."""
    if not raw.strip(b"\0"):
        return True  # a zero-filled tail, as some file systems leave after a power loss
    try:
        text = raw.decode("utf-8").rstrip()
    except UnicodeDecodeError as error:
        return error.end >= len(raw)  # cut inside a multi-byte character
    if not text.startswith("{"):
        return False
    try:
        json.loads(text)
    except json.JSONDecodeError as error:
        if error.msg.startswith("Unterminated string"):
            return True
        # A cut inside a literal or a number ("tru", "1.") fails a few characters before
        # the end; "Extra data" means the object ended and garbage followed.
        return error.msg != "Extra data" and error.pos >= len(text) - _LONGEST_CUT_TOKEN
    return False


def _parse_line(raw: bytes, *, manifest: Path, number: int) -> ManifestEntry:
    where = f"{manifest}, line {number}"
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ManifestError(f"invalid manifest line in {where}: {error}") from error
    if not isinstance(value, dict):
        raise ManifestError(f"invalid manifest line in {where}: expected a JSON object")
    problem = _entry_problem(value)
    if problem is not None:
        raise ManifestError(f"invalid manifest line in {where}: {problem}")
    fields = {key: item for key, item in value.items() if key not in _REQUIRED}
    return ManifestEntry(
        path=value["path"],
        bytes=value["bytes"],
        sha256=value["sha256"],
        fields=fields,
        manifest=manifest,
        line=number,
    )


def read_manifest(path: str | os.PathLike[str]) -> list[ManifestEntry]:
    """Read every entry of one manifest, in file order.

    A torn line (a JSON object cut short by a crash) is skipped with a warning. Any other
    invalid line raises ManifestError naming the file and the line number, and so does
    a path that is not a regular file (reading a FIFO would block). Empty lines are
    ignored.

    >>> entries = read_manifest("outputs/manifest.jsonl")   # doctest: +SKIP
    >>> entries[0].absolute_path                            # doctest: +SKIP
    PosixPath('outputs/images/20261204T204512123456Z-9f1c2a7be04d3316.png')
    """
    manifest = Path(path)
    data = _read_regular(manifest)
    lines = data.split(b"\n")
    entries: list[ManifestEntry] = []
    for index, raw in enumerate(lines):
        number = index + 1
        if not raw.strip():
            continue
        # A last line without its newline was cut short by definition; elsewhere a torn
        # line is one that a later writer ended before appending.
        is_last = index == len(lines) - 1
        if (is_last or _is_torn(raw)) and not _parses(raw):
            logger.warning("skipping torn line %d of manifest %s", number, manifest)
            continue
        entries.append(_parse_line(raw, manifest=manifest, number=number))
    return entries


def _read_regular(path: Path) -> bytes:
    # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ManifestError(f"cannot read manifest {path}: it is not a regular file")
        return file.read()


def _parses(raw: bytes) -> bool:
    try:
        json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False
    return True


def find_manifests(root: str | os.PathLike[str]) -> list[Path]:
    """Return every ``manifest*.jsonl`` file directly in ``root``, sorted by name."""
    return sorted(path for path in Path(root).glob(MANIFEST_GLOB) if path.is_file())


def read_manifests(
    root_or_files: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
) -> list[ManifestEntry]:
    """Read the entries of several manifests: all of an output root, or the files given.

    A directory stands for every ``manifest*.jsonl`` directly in it.

    >>> total = sum(entry.bytes for entry in read_manifests("outputs"))  # doctest: +SKIP
    """
    sources = [root_or_files] if isinstance(root_or_files, str | os.PathLike) else root_or_files
    entries: list[ManifestEntry] = []
    for source in sources:
        path = Path(source)
        files = find_manifests(path) if path.is_dir() else [path]
        for manifest in files:
            entries.extend(read_manifest(manifest))
    return entries
