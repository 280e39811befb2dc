"""Embedded model names, their package folders, and the model resolver.

Nothing here imports torch or diffusers, so the command line can resolve and check a
model argument before it starts workers.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Final, Literal

from safeinfer.errors import ModelError

#: The source of a model: shipped with safeinfer, a local folder, or the Hugging Face Hub.
ModelKind = Literal["embedded", "local", "hub"]

#: Embedded model names, in the order the docs list them.
MODELS: Final[tuple[str, ...]] = ("tiny-digits", "tiny-sd")

#: The model ``safeinfer generate`` uses without ``--model``. The digits model draws
#: recognisable pictures, so a first run shows that the whole path works; tiny-sd has
#: random weights and draws coloured noise.
DEFAULT_MODEL: Final = "tiny-digits"

MODELS_DIR: Final = Path(__file__).parent / "models"

#: A Hub repository id: ``name`` or ``owner/name`` with letters, digits, ``-``, ``_``, ``.``.
_HUB_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")


def model_path(name: str) -> Path:
    """Return the package folder of an embedded model.

    >>> model_path("tiny-sd").name
    'tiny-sd'

    Raises :class:`~safeinfer.errors.ModelError` for a name that is not embedded.
    """
    if name not in MODELS:
        raise ModelError(
            f"unknown embedded model {name!r}; embedded models are: {', '.join(MODELS)}"
        )
    return MODELS_DIR / name


def resolve_model(model: str | os.PathLike[str]) -> tuple[ModelKind, str]:
    """Decide where ``model`` comes from; return the kind and what to load.

    - an embedded name (``"tiny-digits"``) gives ``("embedded", <package folder>)``;
    - an existing folder gives ``("local", <absolute path>)``;
    - a Hub id (``"owner/name"``) gives ``("hub", <id>)``. Loading it needs the network or
      a filled Hugging Face cache.

    The embedded name wins over a folder of the same name in the current directory;
    pass ``./tiny-sd`` for the folder.

    >>> resolve_model("tiny-digits")[0]
    'embedded'
    >>> resolve_model("stabilityai/sd-turbo")
    ('hub', 'stabilityai/sd-turbo')

    Raises :class:`~safeinfer.errors.ModelError` for a path that does not exist or is
    not a folder, and for text that is neither a name, a path nor a Hub id.
    """
    text = os.fspath(model)
    if not text.strip():
        raise ModelError(
            f"invalid model {text!r}: pass an embedded name ({', '.join(MODELS)}), a "
            "folder or a Hub id"
        )
    if text in MODELS:
        return "embedded", str(model_path(text))
    path = Path(text).expanduser()
    if path.is_dir():
        return "local", str(path.resolve())
    if path.exists():
        raise ModelError(
            f"invalid model {text!r}: it is a file, but a model is a folder written by "
            "save_pretrained (with model_index.json), an embedded name or a Hub id"
        )
    if _looks_like_path(text):
        raise ModelError(
            f"model folder {text!r} not found; pass an existing folder, an embedded name "
            f"({', '.join(MODELS)}) or a Hub id such as 'owner/name'"
        )
    if not _HUB_ID.fullmatch(text):
        raise ModelError(
            f"invalid model {text!r}: not an embedded name ({', '.join(MODELS)}), an "
            "existing folder, or a Hub id such as 'owner/name'"
        )
    return "hub", text


def embedded_name(folder: str | os.PathLike[str]) -> str | None:
    """Return the embedded model name when ``folder`` is one of the package folders."""
    path = Path(folder).resolve()
    for name in MODELS:
        if path == (MODELS_DIR / name).resolve():
            return name
    return None


def _looks_like_path(text: str) -> bool:
    # Hub ids have at most one slash and never start with one of these characters, so
    # anything else was meant as a folder.
    return text.startswith(("/", ".", "~")) or text.count("/") > 1 or "\\" in text
