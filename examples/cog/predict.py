"""A Cog model that draws handwritten digits with safeinfer's embedded tiny-digits model.

Every output goes through SafeOutputMixin, so several copies of this server on one host
(``safeinfer launch --gpus auto``) never return each other's images.
"""

import torch
from cog import BaseRunner, Input, Path

import safeinfer.tiny
from safeinfer.cog import SafeOutputMixin

MODEL = "tiny-digits"


class Runner(SafeOutputMixin, BaseRunner):
    def setup(self) -> None:
        # Bind before the first CUDA call. Under safeinfer launch this picks the GPU that
        # the launcher gave this server, and on a machine without a GPU it returns "cpu".
        self.device = self.bind_gpu().device
        self.pipe = safeinfer.tiny.load(MODEL).to(self.device)
        self.configure_outputs()

    def run(
        self,
        prompt: str = Input(
            default="a handwritten seven", description="the digit to draw, as a word or numeral"
        ),
        seed: int = Input(default=0, description="random seed; the same seed gives the same image"),
        steps: int = Input(default=20, ge=1, le=200, description="denoising steps"),
    ) -> Path:
        generator = torch.Generator(device="cpu").manual_seed(seed)
        image = self.pipe(prompt, num_inference_steps=steps, generator=generator).images[0]
        return self.save_output(
            image,
            name=f"digit-seed{seed}",
            metadata={"model": MODEL, "prompt": prompt, "seed": seed, "steps": steps},
        )
