"""The embedded models: small diffusers pipelines shipped as package data, usable offline.

- ``tiny-digits``: a class-conditional DDPM trained on 8x8 handwritten digits; the
  prompt names the digit (``"7"``, ``"a handwritten seven"``). The default model of
  ``safeinfer generate``, because it draws recognisable pictures.
- ``tiny-sd``: a ``StableDiffusionPipeline`` with small random weights: the full
  text-to-image path (tokenizer, text encoder, UNet, VAE, scheduler), drawing noise.

Both load through diffusers' own ``from_pretrained`` from folders in this package.

>>> import safeinfer.tiny
>>> safeinfer.tiny.MODELS
('tiny-digits', 'tiny-sd')
>>> pipe = safeinfer.tiny.load("tiny-sd")                          # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from safeinfer.tiny._digit_prompts import (
    ACCEPTED_FORMS,
    DIGIT_WORDS,
    NULL_CLASS,
    parse_digit_prompt,
)
from safeinfer.tiny._load import load, own_weights, pipeline_class
from safeinfer.tiny._registry import (
    DEFAULT_MODEL,
    MODELS,
    MODELS_DIR,
    ModelKind,
    embedded_name,
    model_path,
    resolve_model,
)

if TYPE_CHECKING:
    from safeinfer.tiny._digits import DigitsPipeline

__all__ = [
    "ACCEPTED_FORMS",
    "DEFAULT_MODEL",
    "DIGIT_WORDS",
    "MODELS",
    "MODELS_DIR",
    "NULL_CLASS",
    "DigitsPipeline",
    "ModelKind",
    "embedded_name",
    "load",
    "model_path",
    "own_weights",
    "parse_digit_prompt",
    "pipeline_class",
    "resolve_model",
]


def __getattr__(name: str) -> Any:
    # DigitsPipeline subclasses a diffusers class, so importing it imports torch.
    if name == "DigitsPipeline":
        from safeinfer.tiny._digits import DigitsPipeline

        return DigitsPipeline
    raise AttributeError(f"module 'safeinfer.tiny' has no attribute {name!r}")
