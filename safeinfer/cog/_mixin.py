"""``SafeOutputMixin``: helper methods that give a Cog predictor safe output files."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final

import cog

from safeinfer.cog._outputs import OutputDirectory, resolve_keep, resolve_root
from safeinfer.errors import ConfigError, InvalidNameError

if TYPE_CHECKING:
    from safeinfer.gpu import GpuBinding

#: Output format -> file suffix. Cog derives the MIME type of an output from its suffix.
SUFFIXES: Final[Mapping[str, str]] = {
    "png": ".png",
    "jpeg": ".jpg",
    "jpg": ".jpg",
    "webp": ".webp",
}

#: The Cog server reads an output moments after ``predict()`` returns. The file only has
#: to survive that read, not a power cut, so outputs skip fsync.
OUTPUT_DURABILITY: Final = "none"

# One directory per process, shared by every predictor instance in it. A forked child
# finds the parent's entry under the parent's pid and so creates its own.
_directories: dict[int, OutputDirectory] = {}
_directories_lock = threading.Lock()


class SafeOutputMixin:
    """Give a Cog predictor collision-free output files that are deleted safely later.

    Add it to the bases of a predictor, in either position, and return what
    :meth:`save_output` returns. The mixin only adds helper methods: it defines no
    ``setup``, ``predict``, ``run`` or ``__init__``, so Cog's inspection of the class and
    its ``Input(default=...)`` handling are unchanged. Its only attributes start with
    ``_safeinfer_``.

    Every server process writes into its own mode-0700 directory under
    ``SAFEINFER_OUTPUT_DIR`` (or the temp dir), through the atomic writer, with a unique
    name. The last ``keep`` outputs (default 16, or ``SAFEINFER_KEEP_OUTPUTS``) stay on
    disk, so Cog can read each one after ``predict()`` returns. Older ones are deleted
    when new ones arrive, and the directory is removed at exit. All helpers are safe to
    call from several threads or coroutines at once.

    >>> from cog import BaseRunner
    >>> class Runner(SafeOutputMixin, BaseRunner):             # doctest: +SKIP
    ...     def run(self, seed: int = 0) -> cog.Path:
    ...         return self.save_output(make_image(seed), metadata={"seed": seed})
    """

    _safeinfer_keep: int | None = None
    _safeinfer_root: str | os.PathLike[str] | None = None

    def configure_outputs(
        self, *, keep: int | None = None, root: str | os.PathLike[str] | None = None
    ) -> Path:
        """Set how many outputs to keep and where, and create the directory now.

        Call it from ``setup`` to fail early on a bad setting; without it the defaults
        apply on the first save. Returns the private output directory.

        >>> def setup(self):                                        # doctest: +SKIP
        ...     self.configure_outputs(keep=32)
        """
        self._safeinfer_keep = resolve_keep(keep)
        self._safeinfer_root = root
        with _directories_lock:
            existing = _directories.get(os.getpid())
        if existing is not None:
            if root is not None and resolve_root(root) != existing.root:
                raise ConfigError(
                    f"the output directory already exists under {existing.root}; call "
                    f"configure_outputs(root={str(root)!r}) before the first output is saved"
                )
            existing.keep = self._safeinfer_keep
        return self._safeinfer_directory().path

    def save_output(
        self,
        image: Any,
        *,
        name: str | None = None,
        format: str = "png",
        metadata: Mapping[str, Any] | None = None,
    ) -> cog.Path:
        """Write ``image`` atomically to a new file and return it as a ``cog.Path``.

        ``image`` is anything the writer accepts (PIL image, numpy array, torch
        tensor). ``name`` becomes part of the file name after sanitising; ``format`` is
        ``"png"`` (lossless, with ``metadata`` in an iTXt chunk), ``"jpeg"`` or ``"webp"``.

        >>> return self.save_output(image, name="portrait", metadata={"seed": 7})  # doctest: +SKIP
        """
        image_format = format.lower()
        suffix = _suffix_for(image_format)
        directory = self._safeinfer_directory()
        path = directory.new_path(name, suffix)
        from safeinfer.writer import save_image

        result = save_image(
            image,
            path,
            format=image_format,
            metadata=metadata,
            durability=OUTPUT_DURABILITY,
            if_exists="error",
        )
        directory.publish(Path(result.path))
        return cog.Path(result.path)

    def reserve_output(self, suffix: str, *, name: str | None = None) -> cog.Path:
        """Return a new unique path in the private directory for a file you write yourself.

        Use it for outputs that are not images (audio, video, JSON). The path counts
        towards the kept outputs from now on. Write the file atomically, for example with
        :meth:`open_output`, or with ``safeinfer.atomic_open(path)``.

        >>> path = self.reserve_output(".mp4")                    # doctest: +SKIP
        >>> encode_video(frames, path)                             # doctest: +SKIP
        >>> return path                                            # doctest: +SKIP
        """
        directory = self._safeinfer_directory()
        path = directory.new_path(name, _check_suffix(suffix))
        directory.publish(path)
        return cog.Path(path)

    @contextlib.contextmanager
    def open_output(self, suffix: str, *, name: str | None = None) -> Iterator[OutputFile]:
        """Open a new output for binary writing; it appears complete when the block ends.

        The yielded object has ``file`` (the open binary file) and ``path`` (a
        ``cog.Path`` to return). If the block raises, no file is published.

        >>> with self.open_output(".json") as output:            # doctest: +SKIP
        ...     output.file.write(json.dumps(result).encode())
        >>> return output.path                                     # doctest: +SKIP
        """
        from safeinfer.writer import atomic_open

        directory = self._safeinfer_directory()
        path = directory.new_path(name, _check_suffix(suffix))
        with atomic_open(path, durability=OUTPUT_DURABILITY, if_exists="error") as file:
            yield OutputFile(file, cog.Path(path))
        directory.publish(path)

    def bind_gpu(self, gpu: int | str | None = None, *, strict: bool = True) -> GpuBinding:
        """Bind this server process to its GPU; call it first thing in ``setup``.

        Runs :func:`safeinfer.bind_gpu` with the same arguments and returns its result.
        Under ``safeinfer launch`` each server already sees only its own GPU, and this
        picks it up from ``SAFEINFER_GPU``.

        >>> def setup(self):                                        # doctest: +SKIP
        ...     binding = self.bind_gpu()
        ...     self.pipe = load_pipeline().to(binding.device)
        """
        from safeinfer.gpu import bind_gpu

        return bind_gpu(gpu, strict=strict)

    def output_directory(self) -> Path:
        """Return this process's private output directory, creating it if needed."""
        return self._safeinfer_directory().path

    def _safeinfer_directory(self) -> OutputDirectory:
        pid = os.getpid()
        with _directories_lock:
            directory = _directories.get(pid)
            if directory is None:
                root = resolve_root(self._safeinfer_root)
                directory = OutputDirectory(root, keep=resolve_keep(self._safeinfer_keep))
                _directories.clear()
                _directories[pid] = directory
            return directory


class OutputFile:
    """An output being written by :meth:`SafeOutputMixin.open_output`."""

    def __init__(self, file: IO[bytes], path: cog.Path) -> None:
        self.file = file
        self.path = path


def _suffix_for(format: str) -> str:
    suffix = SUFFIXES.get(format)
    if suffix is None:
        raise ConfigError(
            f"unsupported output format {format!r}; use one of {', '.join(sorted(SUFFIXES))}"
        )
    return suffix


def _check_suffix(suffix: str) -> str:
    if not suffix.startswith(".") or len(suffix) < 2 or "/" in suffix or "\\" in suffix:
        raise InvalidNameError(
            f"invalid output suffix {suffix!r}; pass an extension with its dot, like '.mp4'"
        )
    return suffix
