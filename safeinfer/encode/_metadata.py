"""Generation metadata to PNG text chunks: safeinfer's JSON and the A1111 ``parameters`` text.

Only the caller's values are stored. Nothing adds a time, host name or path, so the same
image with the same metadata encodes to the same bytes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, Final

from safeinfer.errors import InvalidMetadataError, InvalidTypeError
from safeinfer.png._text import (
    PARAMETERS_KEYWORD,
    SAFEINFER_KEYWORD,
    build_itxt,
    build_text_chunk,
)

#: Settings of the last ``parameters`` line, in A1111's order: (label, metadata keys).
#: The first key present gives the value. "Size" is built from width and height.
PARAMETER_FIELDS: Final[tuple[tuple[str, tuple[str, ...]], ...]] = (
    ("Steps", ("steps", "num_inference_steps")),
    ("Sampler", ("sampler", "scheduler")),
    ("CFG scale", ("guidance", "guidance_scale", "cfg_scale")),
    ("Seed", ("seed",)),
    ("Size", ()),
    ("Model", ("model",)),
    ("Denoising strength", ("strength", "denoising_strength")),
)

_PROMPT_KEY: Final = "prompt"
_NEGATIVE_PROMPT_KEY: Final = "negative_prompt"


def metadata_chunks(metadata: Mapping[str, Any]) -> list[bytes]:
    """Build the ``safeinfer`` iTXt chunk and, when there is something to show, the
    ``parameters`` text chunk (tEXt for Latin-1 text, else iTXt)."""
    check_metadata(metadata)
    chunks = [build_itxt(SAFEINFER_KEYWORD, metadata_json(metadata))]
    parameters = format_parameters(metadata)
    if parameters:
        chunks.append(build_text_chunk(PARAMETERS_KEYWORD, parameters))
    return chunks


def metadata_json(metadata: Mapping[str, Any]) -> str:
    """Serialise metadata as compact JSON with sorted keys, so equal dicts give equal text."""
    try:
        return json.dumps(
            dict(metadata),
            sort_keys=True,
            ensure_ascii=False,
            separators=(",", ":"),
            allow_nan=False,
            default=_to_json_value,
        )
    except (TypeError, ValueError) as error:
        raise InvalidMetadataError(
            f"metadata cannot be stored as JSON: {error}; use str keys and str, int, float "
            "(finite), bool, None, list or dict values"
        ) from None


def _to_json_value(value: Any) -> Any:
    # numpy and torch scalars (a seed from a generator, a float32 guidance) expose .item().
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "ndim", 0) == 0:
        return item()
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, tuple | set | frozenset):
        return sorted(value) if isinstance(value, set | frozenset) else list(value)
    raise TypeError(f"value {value!r} of type {type(value).__name__} is not JSON-serialisable")


def check_metadata(metadata: object) -> None:
    """Raise unless ``metadata`` is a mapping whose strings hold no NUL character."""
    if not isinstance(metadata, Mapping):
        raise InvalidTypeError(
            f"invalid metadata {metadata!r}: expected a dict such as "
            f"{{'prompt': 'a cat', 'seed': 7}}, got {type(metadata).__name__}"
        )
    reject_nul(metadata, "metadata")


def reject_nul(value: Any, where: str) -> None:
    if isinstance(value, str):
        if "\x00" in value:
            raise InvalidMetadataError(
                f"invalid {where}: NUL character at index {value.index(chr(0))}; "
                "PNG text cannot contain NUL, so remove it"
            )
    elif isinstance(value, Mapping):
        for key, item in value.items():
            reject_nul(key, f"key {key!r} in {where}")
            reject_nul(item, f"{where}[{key!r}]")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            reject_nul(item, f"{where}[{index}]")


def format_parameters(metadata: Mapping[str, Any]) -> str:
    """Format metadata as the A1111 ``parameters`` text that image browsers parse.

    The layout: the prompt, then ``Negative prompt: ...`` when there is one, then one line
    of ``Label: value`` settings. Returns "" when the metadata has none of these fields.

    >>> format_parameters({"prompt": "a cat", "steps": 4, "seed": 1, "width": 512,
    ...                    "height": 512, "guidance": 7.0})
    'a cat\\nSteps: 4, CFG scale: 7, Seed: 1, Size: 512x512'
    """
    settings = []
    for label, keys in PARAMETER_FIELDS:
        value = _size(metadata) if label == "Size" else _first_present(metadata, keys)
        if value is not None:
            settings.append(f"{label}: {_format_value(value)}")
    prompt = metadata.get(_PROMPT_KEY)
    negative = metadata.get(_NEGATIVE_PROMPT_KEY)
    lines = []
    if prompt is not None:
        lines.append(str(prompt))
    if negative:
        lines.append(f"Negative prompt: {negative}")
    if settings:
        lines.append(", ".join(settings))
    return "\n".join(lines)


def _first_present(metadata: Mapping[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        if metadata.get(key) is not None:
            return metadata[key]
    return None


def _size(metadata: Mapping[str, Any]) -> str | None:
    width, height = metadata.get("width"), metadata.get("height")
    if width is not None and height is not None:
        return f"{width}x{height}"
    return None


def _format_value(value: Any) -> str:
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        text = str(int(value))
    else:
        text = str(value)
    # A1111 quotes values that would break its "Label: value, ..." parser.
    if any(mark in text for mark in (",", ":", "\n", '"')):
        return json.dumps(text, ensure_ascii=False)
    return text
