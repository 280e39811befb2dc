"""Load embedded models and saved safeinfer pipelines through diffusers' ``from_pretrained``."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

from safeinfer.errors import ModelError
from safeinfer.tiny._registry import model_path

logger = logging.getLogger(__name__)

#: Pipeline classes that safeinfer defines, by the ``_class_name`` in model_index.json.
#: diffusers looks ``_class_name`` up in its own module, where these are not found.
_OWN_PIPELINES = frozenset({"DigitsPipeline"})

#: The transformers logger that warns, once per class, when diffusers looks up an image
#: processor such as ``CLIPImageProcessor`` without torchvision installed (transformers
#: 5.x, ``transformers/utils/import_utils.py``). No embedded model has an image processor.
_TRANSFORMERS_IMPORT_LOGGER: Final = "transformers.utils.import_utils"
_TORCHVISION_FALLBACK_TEXT: Final = "requires torchvision (not installed)"


def _is_not_torchvision_fallback(record: logging.LogRecord) -> bool:
    return _TORCHVISION_FALLBACK_TEXT not in record.getMessage()


@contextmanager
def _without_torchvision_fallback_warnings() -> Iterator[None]:
    """Drop transformers' torchvision fallback warnings, and only those, while loading.

    The filter sits on the one transformers logger and is removed afterwards, so other
    transformers warnings still appear. NOTE: transformers' ``warning_once`` remembers a
    dropped message, so the same class's fallback stays silent for the rest of the process.
    """
    source = logging.getLogger(_TRANSFORMERS_IMPORT_LOGGER)
    source.addFilter(_is_not_torchvision_fallback)
    try:
        yield
    finally:
        source.removeFilter(_is_not_torchvision_fallback)


def load(name: str, **kwargs: Any) -> Any:
    """Load an embedded model as a diffusers pipeline, offline.

    ``kwargs`` go to ``from_pretrained`` (for example ``dtype``). The weights are
    read from the package folder; nothing is downloaded.

    >>> import safeinfer.tiny
    >>> pipe = safeinfer.tiny.load("tiny-digits")                 # doctest: +SKIP
    >>> pipe("a handwritten seven").images[0].size                # doctest: +SKIP
    (64, 64)

    Raises :class:`~safeinfer.errors.ModelError` for an unknown name or a damaged folder.
    """
    folder = model_path(name)
    kwargs["local_files_only"] = True
    try:
        with _without_torchvision_fallback_warnings():
            pipe = pipeline_class(folder).from_pretrained(str(folder), **kwargs)
    except (OSError, ValueError, KeyError) as error:
        raise ModelError(
            f"cannot load the embedded model {name!r} from {folder}: {error}; "
            "reinstall safeinfer to restore its files"
        ) from error
    own_weights(pipe)
    return pipe


def pipeline_class(folder: str | os.PathLike[str]) -> Any:
    """Return the class that loads the pipeline saved in ``folder``.

    That is ``DiffusionPipeline`` (which then picks the class named in model_index.json),
    or safeinfer's own class for pipelines that safeinfer defines.
    """
    from diffusers import DiffusionPipeline

    index = Path(folder) / "model_index.json"
    try:
        class_name = json.loads(index.read_text(encoding="utf-8")).get("_class_name")
    except (OSError, ValueError, AttributeError):
        # Let from_pretrained report a missing or broken index in its own words.
        return DiffusionPipeline
    if class_name in _OWN_PIPELINES:
        from safeinfer.tiny._digits import DigitsPipeline

        return DigitsPipeline
    return DiffusionPipeline


def own_weights(pipe: Any) -> None:
    """Copy every parameter and buffer of ``pipe``'s networks into memory of its own.

    Tensors loaded from safetensors are views into the file at its byte offsets, which
    are not 64-byte aligned. Vectorised CPU kernels can take a different path for such
    memory and round differently, so an image could depend on the file layout. A copy
    gets an aligned allocation.
    """
    import torch

    for component in pipe.components.values():
        if not isinstance(component, torch.nn.Module):
            continue
        with torch.no_grad():
            for parameter in component.parameters():
                parameter.data = parameter.data.clone()
            for buffer in component.buffers():
                buffer.data = buffer.data.clone()
