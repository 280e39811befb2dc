"""Turn save_png's ``dest`` and ``name`` into a target path and an if_exists policy."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

from safeinfer.errors import InvalidNameError, InvalidTypeError
from safeinfer.naming import sanitize_stem, unique_name
from safeinfer.writer._result import IfExists

#: Every suffix that save_png and save_image write. A destination named only one of them,
#: such as ".png", has no suffix to pathlib, so it would become a hidden folder.
IMAGE_SUFFIXES: Final = (".png", ".jpg", ".jpeg", ".webp")


def _reject_suffix_only_name(dest: str | os.PathLike[str]) -> None:
    text = os.fspath(dest)
    separators = tuple(sep for sep in (os.sep, os.altsep) if sep)
    name = Path(text).name
    if text.endswith(separators) or name.lower() not in IMAGE_SUFFIXES or Path(text).is_dir():
        return
    raise InvalidNameError(
        f"invalid destination {text!r}: {name!r} has no file name; give a name like "
        f"out{name.lower()} or a folder like out/"
    )


def is_directory_destination(dest: str | os.PathLike[str]) -> bool:
    """Tell whether ``dest`` is a directory, ends with a separator, or has no suffix."""
    text = os.fspath(dest)
    separators = tuple(sep for sep in (os.sep, os.altsep) if sep)
    path = Path(text)
    return text.endswith(separators) or path.is_dir() or not path.suffix


def _stem_of(name: str, suffixes: tuple[str, ...]) -> str:
    # name="cat.png" means the stem "cat", not a file "cat.png.png".
    for suffix in suffixes:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def resolve_destination(
    dest: str | os.PathLike[str],
    *,
    name: str | None,
    suffixes: tuple[str, ...],
    if_exists: IfExists | None,
) -> tuple[Path, IfExists]:
    """Return the target path and the if_exists policy for a save into ``dest``.

    ``suffixes`` are the accepted file suffixes in lower case, the first being the one
    given to generated names. In a directory, if_exists defaults to "unique" and the name
    is ``unique_name(name)``; with "replace" or "error" the file is ``<name><suffix>``, so
    ``name`` is then required. For a file path, if_exists defaults to "error" and the
    suffix must be one of ``suffixes``. A destination named only an image suffix, such
    as ``.png``, raises InvalidNameError unless it ends with a separator or is an existing
    directory.
    """
    if name is not None and not isinstance(name, str):
        raise InvalidTypeError(
            f"invalid name {name!r}: expected a str such as 'cat', got {type(name).__name__}"
        )
    if not isinstance(dest, str | os.PathLike):
        raise InvalidTypeError(
            f"invalid dest {dest!r}: expected a str or path such as 'outputs/', "
            f"got {type(dest).__name__}"
        )
    _reject_suffix_only_name(dest)
    path = Path(dest)
    if is_directory_destination(dest):
        policy: IfExists = if_exists or "unique"
        if policy == "unique":
            stem = None if name is None else _stem_of(name, suffixes)
            return path / unique_name(stem, suffix=suffixes[0]), policy
        if name is None:
            raise InvalidNameError(
                f"if_exists={policy!r} with the directory {str(dest)!r} needs name=...: "
                "only 'unique' chooses a file name by itself"
            )
        return path / (sanitize_stem(_stem_of(name, suffixes)) + suffixes[0]), policy

    if name is not None:
        raise InvalidNameError(
            f"name={name!r} applies only when dest is a directory, but {str(dest)!r} is a "
            "file path; end dest with '/' to mean a directory"
        )
    if path.suffix.lower() not in suffixes:
        raise InvalidNameError(
            f"invalid destination {str(dest)!r}: expected a file name ending in "
            f"{' or '.join(suffixes)}, or a directory (end it with '/')"
        )
    return path, if_exists or "error"
