"""``DigitsPipeline``: a class-conditional DDPM for 8x8 handwritten digits.

The UNet was trained by ``scripts/train_digits.py`` on scikit-learn's bundled copy of
the UCI optical recognition of handwritten digits data. The prompt names the digit;
sampling uses classifier-free guidance against the unconditional class.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, Final

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput, SchedulerMixin, UNet2DModel
from diffusers.utils.torch_utils import randn_tensor

from safeinfer.errors import ConfigError
from safeinfer.tiny._digit_prompts import NULL_CLASS, parse_digit_prompt

#: Side of the square output image in pixels. The model samples 8x8 images, which are
#: too small to see, so they are enlarged with nearest-neighbour sampling.
DEFAULT_IMAGE_SIZE: Final = 64
DEFAULT_STEPS: Final = 50
DEFAULT_GUIDANCE: Final = 2.0

OUTPUT_TYPES: Final = ("pil", "np", "pt")


#: diffusers has no complete type hints, so the base class is typed as Any.
_PipelineBase: Any = DiffusionPipeline


class DigitsPipeline(_PipelineBase):  # type: ignore[misc]
    """Generate handwritten digits from prompts such as ``"7"`` or ``"a handwritten seven"``.

    >>> import safeinfer.tiny
    >>> pipe = safeinfer.tiny.load("tiny-digits")                      # doctest: +SKIP
    >>> images = pipe(["3", "seven"], num_inference_steps=20).images   # doctest: +SKIP
    """

    unet: Any
    scheduler: Any
    model_cpu_offload_seq = "unet"

    def __init__(
        self,
        unet: UNet2DModel,
        scheduler: SchedulerMixin,
        image_size: int = DEFAULT_IMAGE_SIZE,
    ) -> None:
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)
        # Stored in model_index.json, so a saved pipeline keeps its output size.
        self.register_to_config(image_size=image_size)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | Sequence[str] | None = None,
        negative_prompt: str | Sequence[str] | None = None,
        *,
        num_inference_steps: int = DEFAULT_STEPS,
        guidance_scale: float = DEFAULT_GUIDANCE,
        height: int | None = None,
        width: int | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple[Any]:
        """Sample one image per prompt (times ``num_images_per_prompt``).

        A negative prompt names a digit to steer away from; without one, guidance
        pushes away from the unconditional model. ``guidance_scale=1`` turns guidance
        off, which halves the work. ``height`` and ``width`` set the output size in
        pixels (default ``image_size`` from the config).
        """
        if num_images_per_prompt < 1:
            raise ConfigError(
                f"num_images_per_prompt must be at least 1, got {num_images_per_prompt}"
            )
        prompts: list[str | None] = (
            [prompt] if prompt is None or isinstance(prompt, str) else list(prompt)
        )
        positives = [parse_digit_prompt(text) for text in prompts]
        negatives = self._negative_labels(negative_prompt, len(positives))
        labels = [label for label in positives for _ in range(num_images_per_prompt)]
        negative_labels = [label for label in negatives for _ in range(num_images_per_prompt)]
        height = self._check_size("height", height)
        width = self._check_size("width", width)
        if output_type not in OUTPUT_TYPES:
            raise ConfigError(f"invalid output_type {output_type!r}; use one of {OUTPUT_TYPES}")
        if isinstance(generator, list) and len(generator) != len(labels):
            raise ConfigError(
                f"got {len(generator)} generators for {len(labels)} images; "
                "pass one generator per image, or a single one"
            )

        device = self._execution_device
        config = self.unet.config
        shape = (len(labels), config.in_channels, config.sample_size, config.sample_size)
        sample = randn_tensor(shape, generator=generator, device=device, dtype=self.unet.dtype)
        sample = sample * self.scheduler.init_noise_sigma
        label_tensor = torch.tensor(labels, device=device)
        negative_tensor = torch.tensor(negative_labels, device=device)
        guided = guidance_scale != 1.0
        # Ancestral schedulers (DDPM, Euler a) draw fresh noise in every step. That noise
        # must come from the per-image generators, or image k would depend on its batch.
        step_options: dict[str, Any] = {}
        if "generator" in inspect.signature(self.scheduler.step).parameters:
            step_options["generator"] = generator

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        for timestep in self.progress_bar(self.scheduler.timesteps):
            model_input = self.scheduler.scale_model_input(sample, timestep)
            if guided:
                both = self.unet(
                    torch.cat([model_input, model_input]),
                    timestep,
                    class_labels=torch.cat([label_tensor, negative_tensor]),
                ).sample
                conditional, negative = both.chunk(2)
                noise = negative + guidance_scale * (conditional - negative)
            else:
                noise = self.unet(model_input, timestep, class_labels=label_tensor).sample
            sample = self.scheduler.step(noise, timestep, sample, **step_options).prev_sample

        images = (sample / 2 + 0.5).clamp(0, 1)
        images = torch.nn.functional.interpolate(
            images.float(), size=(height, width), mode="nearest"
        )
        output: Any = images
        if output_type != "pt":
            output = images.cpu().permute(0, 2, 3, 1).numpy()
            if output_type == "pil":
                output = self.numpy_to_pil(output)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (output,)
        return ImagePipelineOutput(images=output)  # type: ignore[no-untyped-call]

    @staticmethod
    def _negative_labels(negative_prompt: str | Sequence[str] | None, count: int) -> list[int]:
        if negative_prompt is None:
            return [NULL_CLASS] * count
        if isinstance(negative_prompt, str):
            return [parse_digit_prompt(negative_prompt)] * count
        negatives = [parse_digit_prompt(text) for text in negative_prompt]
        if len(negatives) != count:
            raise ConfigError(
                f"got {len(negatives)} negative prompts for {count} prompts; "
                "pass one per prompt, or a single string"
            )
        return negatives

    def _check_size(self, name: str, value: int | None) -> int:
        if value is None:
            size: int = self.config.image_size
            return size
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"invalid {name} {value!r}: use a positive number of pixels")
        return value
