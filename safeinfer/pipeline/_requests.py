"""Expand a call's prompts, seeds and names into one request per image."""

from __future__ import annotations

import contextlib
import secrets
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from safeinfer.errors import ConfigError, InvalidNameError
from safeinfer.naming import sanitize_stem

#: Seeds are unsigned 64-bit integers, the range ``torch.Generator.manual_seed`` takes.
MAX_SEED: Final = 2**64 - 1

#: Random seeds are drawn below this bound, the 32-bit range most image tools show and
#: accept, so a seed copied from a file's metadata works elsewhere too.
RANDOM_SEED_BOUND: Final = 2**32

#: Maximum length, in UTF-8 bytes, of the prompt prefix in a generated file name.
PROMPT_STEM_BYTES: Final = 48


@dataclass(frozen=True)
class ImageRequest:
    """One image to make: its prompt, seed and (optional) relative file name."""

    prompt: str | None
    negative_prompt: str | None
    seed: int
    name: str | None  #: safe relative path without suffix, such as "cats/tabby"

    def file_stem(self) -> str:
        """Return the stem for a generated unique name: a prompt prefix and the seed."""
        prompt_part = "image"
        # A prompt of only punctuation or emoji has no usable stem and keeps "image".
        if self.prompt:
            with contextlib.suppress(InvalidNameError):
                prompt_part = sanitize_stem(self.prompt, max_length=PROMPT_STEM_BYTES)
        return f"{prompt_part}-{self.seed}"


def plan_requests(
    prompt: str | Sequence[str] | None,
    *,
    negative_prompt: str | Sequence[str | None] | None,
    seeds: int | Sequence[int] | None,
    names: Sequence[str] | None,
    images_per_prompt: int,
    takes_prompts: bool,
    pipeline_name: str,
) -> list[ImageRequest]:
    """Return one request per image, in order: each prompt repeated ``images_per_prompt`` times.

    Without prompts, the seeds set the count (one image when ``seeds`` is an int or None).
    An int seed ``s`` gives image k the seed ``s + k``; None draws random seeds.
    """
    if isinstance(images_per_prompt, bool) or not isinstance(images_per_prompt, int):
        raise ConfigError(f"invalid num_images_per_prompt {images_per_prompt!r}: use an int")
    if images_per_prompt < 1:
        raise ConfigError(f"invalid num_images_per_prompt {images_per_prompt}: use 1 or more")

    prompts = _prompts(prompt, seeds, images_per_prompt)
    negatives = _negative_prompts(negative_prompt, len(prompts))
    if not takes_prompts and (any(p is not None for p in prompts) or negative_prompt is not None):
        warnings.warn(
            f"{pipeline_name} is unconditional and ignores prompts; the images follow "
            "only their seeds",
            UserWarning,
            stacklevel=4,
        )
        prompts = [None] * len(prompts)
        negatives = [None] * len(prompts)

    expanded = [
        (text, negative)
        for text, negative in zip(prompts, negatives, strict=True)
        for _ in range(images_per_prompt)
    ]
    image_seeds = _seeds(seeds, len(expanded))
    image_names = _names(names, len(expanded))
    return [
        ImageRequest(prompt=text, negative_prompt=negative, seed=seed, name=name)
        for (text, negative), seed, name in zip(expanded, image_seeds, image_names, strict=True)
    ]


def _prompts(
    prompt: str | Sequence[str] | None, seeds: int | Sequence[int] | None, per_prompt: int
) -> list[str | None]:
    if prompt is None:
        if seeds is None or isinstance(seeds, int):
            return [None]
        if len(seeds) % per_prompt:
            raise ConfigError(
                f"got {len(seeds)} seeds for num_images_per_prompt={per_prompt} without "
                "prompts; pass a multiple of it"
            )
        return [None] * (len(seeds) // per_prompt)
    if isinstance(prompt, str):
        return [prompt]
    prompts = list(prompt)
    if not prompts:
        raise ConfigError("no prompts given: pass a prompt string or a non-empty list")
    for index, text in enumerate(prompts):
        if not isinstance(text, str):
            raise ConfigError(
                f"invalid prompt at index {index}: expected str, got {type(text).__name__}"
            )
    return list(prompts)


def _negative_prompts(
    negative_prompt: str | Sequence[str | None] | None, count: int
) -> list[str | None]:
    if negative_prompt is None or isinstance(negative_prompt, str):
        return [negative_prompt] * count
    negatives = list(negative_prompt)
    if len(negatives) != count:
        raise ConfigError(
            f"got {len(negatives)} negative prompts for {count} prompts; pass one per "
            "prompt, or a single string"
        )
    for index, text in enumerate(negatives):
        if text is not None and not isinstance(text, str):
            raise ConfigError(
                f"invalid negative prompt at index {index}: expected str or None, "
                f"got {type(text).__name__}"
            )
    return negatives


def _seeds(seeds: int | Sequence[int] | None, count: int) -> list[int]:
    if seeds is None:
        return [secrets.randbelow(RANDOM_SEED_BOUND) for _ in range(count)]
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        _check_seed(seeds, "seeds")
        _check_seed(seeds + count - 1, f"seeds={seeds} plus the image index {count - 1}")
        return [seeds + index for index in range(count)]
    if isinstance(seeds, str | bytes) or not isinstance(seeds, Sequence):
        raise ConfigError(f"invalid seeds {seeds!r}: use an int, a list of ints, or None")
    values = list(seeds)
    if len(values) != count:
        raise ConfigError(f"got {len(values)} seeds for {count} images; pass one per image")
    for index, seed in enumerate(values):
        _check_seed(seed, f"seeds[{index}]")
    return values


def _check_seed(seed: object, where: str) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"invalid {where} {seed!r}: a seed is an int from 0 to 2**64 - 1")


def _names(names: Sequence[str] | None, count: int) -> list[str | None]:
    if names is None:
        return [None] * count
    if isinstance(names, str):
        raise ConfigError("invalid names: pass a list with one name per image, not a string")
    values = list(names)
    if len(values) != count:
        raise ConfigError(f"got {len(values)} names for {count} images; pass one per image")
    safe = [safe_relative_name(name) for name in values]
    seen: dict[str, int] = {}
    for index, name in enumerate(safe):
        if name in seen:
            raise ConfigError(
                f"names[{seen[name]}] and names[{index}] both become {name!r}; every image "
                "needs its own file"
            )
        seen[name] = index
    return list(safe)


def safe_relative_name(name: str) -> str:
    """Make a user-supplied relative file name safe: each part sanitised, no suffix.

    ``"cats/Tabby cat.png"`` becomes ``"cats/Tabby_cat"``. Absolute paths and ``..``
    parts are rejected, so a name never leaves the output directory.

    >>> safe_relative_name("run 1/cat.png")
    'run_1/cat'
    """
    if not isinstance(name, str):
        raise InvalidNameError(f"invalid name {name!r}: expected str, got {type(name).__name__}")
    text = name.replace("\\", "/")
    if text.startswith("/") or (len(text) > 1 and text[1] == ":"):
        raise InvalidNameError(
            f"invalid name {name!r}: names are relative to output_dir; remove the leading "
            "'/' or drive"
        )
    parts = [part for part in text.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise InvalidNameError(
            f"invalid name {name!r}: '..' would leave output_dir; use a plain relative path"
        )
    if not parts:
        raise InvalidNameError(f"invalid name {name!r}: it names no file")
    if parts[-1].lower().endswith(".png") and len(parts[-1]) > len(".png"):
        parts[-1] = parts[-1][: -len(".png")]
    return "/".join(sanitize_stem(part) for part in parts)
