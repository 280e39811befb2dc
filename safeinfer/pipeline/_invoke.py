"""Call a diffusers pipeline for one batch of requests, and take the images out of its output.

Pipelines differ in what ``__call__`` takes: text-to-image pipelines take ``prompt``,
unconditional ones (DDPMPipeline, DDIMPipeline) take ``batch_size`` instead, and some
take neither. :class:`CallSpec` reads the signature once and builds arguments that fit.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from safeinfer.errors import ConfigError, InvalidImageError, ModelError
from safeinfer.pipeline._requests import ImageRequest

#: Arguments that SafePipeline sets itself. Passing them through ``**pipeline_kwargs``
#: would break the one-seed-per-image rule or the image count.
RESERVED_KWARGS: Final[dict[str, str]] = {
    "prompt": "pass prompts as the first argument",
    "negative_prompt": "pass negative_prompt=... to SafePipeline",
    "generator": "pass seeds=...: SafePipeline makes one generator per image",
    "latents": "initial latents would replace the seeded noise; pass seeds=...",
    "batch_size": "pass batch_size=... to SafePipeline",
    "return_dict": "SafePipeline reads the pipeline's output itself",
}

#: Options that map to pipeline arguments of the same name.
SIZE_AND_STEP_OPTIONS: Final = ("num_inference_steps", "guidance_scale", "height", "width")


@dataclass(frozen=True)
class CallSpec:
    """The arguments of one pipeline's ``__call__``, and its default steps and guidance."""

    pipeline_name: str
    parameters: frozenset[str]
    takes_any_keyword: bool
    defaults: Mapping[str, Any]

    @classmethod
    def of(cls, pipe: Any) -> CallSpec:
        signature = inspect.signature(pipe.__call__)
        parameters = signature.parameters
        return cls(
            pipeline_name=type(pipe).__name__,
            parameters=frozenset(parameters),
            takes_any_keyword=any(
                p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()
            ),
            defaults={
                name: p.default
                for name, p in parameters.items()
                if p.default is not inspect.Parameter.empty
            },
        )

    def takes(self, name: str) -> bool:
        # A pipeline with **kwargs may pass anything on to another pipeline.
        return name in self.parameters or self.takes_any_keyword

    @property
    def takes_prompts(self) -> bool:
        return self.takes("prompt")

    @property
    def max_batch(self) -> int | None:
        """Images one call can make: None for any number, 1 without prompt or batch_size."""
        return None if self.takes("prompt") or self.takes("batch_size") else 1

    def effective(self, name: str, value: Any) -> Any:
        """Return ``value``, or the pipeline's default for ``name`` when value is None."""
        if value is not None:
            return value
        default = self.defaults.get(name)
        if isinstance(default, bool) or not isinstance(default, int | float):
            return None
        return default

    def check(self, options: Mapping[str, Any], pipeline_kwargs: Mapping[str, Any]) -> None:
        """Raise ConfigError for an option this pipeline does not take, or a reserved kwarg."""
        if not self.takes("generator"):
            raise ConfigError(
                f"{self.pipeline_name}.__call__ takes no generator, so SafePipeline cannot "
                "seed its images; use a pipeline with a generator argument"
            )
        for name in SIZE_AND_STEP_OPTIONS:
            if options.get(name) is not None and not self.takes(name):
                raise ConfigError(
                    f"{self.pipeline_name} does not take {name}; leave it unset for this model"
                )
        for name in pipeline_kwargs:
            if name in RESERVED_KWARGS:
                raise ConfigError(f"invalid pipeline argument {name!r}: {RESERVED_KWARGS[name]}")

    def arguments(
        self,
        batch: Sequence[ImageRequest],
        *,
        device: str,
        options: Mapping[str, Any],
        pipeline_kwargs: Mapping[str, Any],
    ) -> dict[str, Any]:
        """Build the keyword arguments that make exactly the images of ``batch``."""
        import torch

        arguments: dict[str, Any] = {
            "generator": [
                torch.Generator(device=device).manual_seed(request.seed) for request in batch
            ]
        }
        if self.takes_prompts:
            # An absent prompt is the empty text, which is what text encoders condition
            # on for "no prompt"; a list keeps one prompt per generator.
            arguments["prompt"] = [request.prompt or "" for request in batch]
            if any(request.negative_prompt for request in batch):
                arguments["negative_prompt"] = [request.negative_prompt or "" for request in batch]
        elif self.takes("batch_size"):
            arguments["batch_size"] = len(batch)
        for name in SIZE_AND_STEP_OPTIONS:
            if options.get(name) is not None:
                arguments[name] = options[name]
        if self.takes("output_type") and "output_type" not in pipeline_kwargs:
            arguments["output_type"] = "pil"
        arguments.update(pipeline_kwargs)
        return arguments


def output_images(output: Any, *, expected: int, pipeline_name: str) -> list[Any]:
    """Return the images of a pipeline output as PIL images, checked against the count.

    Accepts an output object with ``.images`` or a tuple whose first item contains them, as
    a list of PIL images or arrays, or one stacked array or tensor (N, ...).
    """
    from PIL import Image

    images = getattr(output, "images", None)
    if images is None and isinstance(output, tuple) and output:
        images = output[0]
    if images is None:
        raise ModelError(
            f"{pipeline_name} returned {type(output).__name__} without images; SafePipeline "
            "needs a pipeline whose output has .images (a list of PIL images or arrays)"
        )
    if not isinstance(images, list | tuple):
        if getattr(images, "ndim", None) == 4:
            images = list(images)  # a stacked numpy array or torch tensor
        else:
            raise ModelError(
                f"{pipeline_name} returned images as {type(images).__name__}; expected a list "
                "of PIL images or arrays, or one array of shape (N, H, W, C)"
            )
    if len(images) != expected:
        raise ModelError(
            f"{pipeline_name} returned {len(images)} images for {expected} requests; "
            "it must return one image per generator"
        )
    return [image if isinstance(image, Image.Image) else _to_pil(image) for image in images]


def _to_pil(image: Any) -> Any:
    from PIL import Image

    from safeinfer.encode import to_array

    try:
        array = to_array(image)
    except InvalidImageError as error:
        raise ModelError(
            f"the pipeline returned an image that cannot be encoded: {error}"
        ) from error
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    return Image.fromarray(array)
