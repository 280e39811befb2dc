"""The generation metadata written into every PNG: parameters, model and versions.

It contains what is needed to reproduce an image and nothing that differs between two
runs of the same request (no time, host name or path), so it never makes equal requests
give different bytes.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from safeinfer.errors import ConfigError
from safeinfer.tiny import embedded_name


@functools.cache
def library_versions() -> dict[str, str]:
    """Return the versions of safeinfer, diffusers and torch."""
    import diffusers
    import torch

    from safeinfer._version import __version__

    return {
        "safeinfer": __version__,
        "diffusers": diffusers.__version__,
        "torch": torch.__version__,
    }


def model_label(pipe: Any) -> str | None:
    """Name the model a pipeline came from, without a local path.

    That is the embedded name, the Hub id, or the last component of a local folder.
    """
    source = getattr(pipe, "name_or_path", None)
    if not isinstance(source, str) or not source:
        return None
    name = embedded_name(source) if os.path.isdir(source) else None
    if name is not None:
        return name
    if os.path.isabs(source) or os.path.isdir(source):
        return Path(source).name
    return source


def pipeline_settings(pipe: Any, *, model: str | None) -> dict[str, Any]:
    """Return the metadata fields shared by every image of ``pipe``."""
    scheduler = getattr(pipe, "scheduler", None)
    dtype = getattr(pipe, "dtype", None)
    return {
        "model": model,
        "pipeline": type(pipe).__name__,
        "scheduler": None if scheduler is None else type(scheduler).__name__,
        "dtype": None if dtype is None else str(dtype).removeprefix("torch."),
        "versions": library_versions(),
    }


#: Fields that SafePipeline fills in; caller metadata may not redefine them, because the
#: file would then describe another image than it holds.
GENERATED_KEYS: Final = frozenset(
    {
        "prompt",
        "negative_prompt",
        "seed",
        "steps",
        "guidance",
        "width",
        "height",
        "model",
        "pipeline",
        "scheduler",
        "dtype",
        "versions",
    }
)


def check_extra_metadata(extra: Mapping[str, Any] | None) -> None:
    """Raise ConfigError when caller metadata redefines a generated field."""
    clashes = sorted(set(extra or ()) & GENERATED_KEYS)
    if clashes:
        raise ConfigError(
            f"metadata keys {clashes} clash with the generated metadata; rename them, "
            f"for example to {['user_' + key for key in clashes]}"
        )


def image_metadata(
    settings: Mapping[str, Any],
    *,
    prompt: str | None,
    negative_prompt: str | None,
    seed: int,
    steps: int | None,
    guidance: float | None,
    width: int,
    height: int,
    extra: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """Build one image's metadata; fields whose value is None are left out.

    ``settings`` comes from :func:`pipeline_settings`; ``extra`` adds the caller's own
    fields, checked beforehand by :func:`check_extra_metadata`.
    """
    generated: dict[str, Any] = {
        "prompt": prompt,
        "negative_prompt": negative_prompt,
        "seed": seed,
        "steps": steps,
        "guidance": guidance,
        "width": width,
        "height": height,
        **settings,
    }
    metadata = {key: value for key, value in generated.items() if value is not None}
    if extra:
        metadata.update(extra)
    return metadata
