"""Train the embedded tiny-digits model: a class-conditional DDPM on 8x8 digits.

The data is scikit-learn's bundled copy of the UCI optical recognition of handwritten
digits set (1797 images, 8x8 pixels, 17 grey levels; CC BY 4.0). The script writes a
``DigitsPipeline`` folder with ``save_pretrained`` (safetensors) and, with ``--preview``,
a grid of samples.

Reproduce the shipped weights from the repository root::

    python scripts/train_digits.py --out safeinfer/tiny/models/tiny-digits

Defaults: seed 0, one CPU thread, 8000 steps of batch 64. On one thread of a shared
2-core machine (torch 2.13.0 CPU, diffusers 0.42.1) it took 457 s, and 868 s while other
jobs loaded the machine. Both runs wrote identical weights. The run is deterministic for
a fixed torch build, seed and thread count; another build or thread count may change
the weights slightly.
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import DDPMScheduler, UNet2DModel
from PIL import Image
from sklearn.datasets import load_digits

from safeinfer.tiny._digit_prompts import NULL_CLASS
from safeinfer.tiny._digits import DigitsPipeline

#: Share of training samples whose label is replaced by the unconditional class, so one
#: network learns both the conditional and the unconditional model for guidance.
UNCONDITIONAL_SHARE = 0.1
EMA_DECAY = 0.995
WARMUP_STEPS = 200
TRAIN_TIMESTEPS = 1000


def build_unet() -> UNet2DModel:
    """Build the untrained UNet (about 280 thousand parameters)."""
    return UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(16, 32, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        num_class_embeds=NULL_CLASS + 1,
        norm_num_groups=8,
        attention_head_dim=16,
    )


def load_data() -> tuple[torch.Tensor, torch.Tensor]:
    """Return the digit images scaled to [-1, 1] as (N, 1, 8, 8) and their labels."""
    pixels, labels = load_digits(return_X_y=True)
    images = torch.from_numpy(pixels.astype(np.float32) / 16.0 * 2.0 - 1.0)
    return images.reshape(-1, 1, 8, 8), torch.from_numpy(labels.astype(np.int64))


def learning_rate(step: int, steps: int, peak: float) -> float:
    warmup = min(1.0, (step + 1) / WARMUP_STEPS)
    return peak * warmup * 0.5 * (1.0 + math.cos(math.pi * step / steps))


def train(args: argparse.Namespace) -> UNet2DModel:
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    images, labels = load_data()
    unet = build_unet()
    ema = copy.deepcopy(unet).requires_grad_(False)
    noise_scheduler = DDPMScheduler(
        num_train_timesteps=TRAIN_TIMESTEPS, beta_schedule="squaredcos_cap_v2"
    )
    optimizer = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=0.0)
    print(f"UNet parameters: {sum(p.numel() for p in unet.parameters())}")

    started = time.monotonic()
    running_loss = 0.0
    for step in range(args.steps):
        index = torch.randint(0, len(images), (args.batch_size,), generator=generator)
        clean = images[index]
        label = labels[index].clone()
        drop = torch.rand(args.batch_size, generator=generator) < UNCONDITIONAL_SHARE
        label[drop] = NULL_CLASS
        noise = torch.randn(clean.shape, generator=generator)
        timesteps = torch.randint(0, TRAIN_TIMESTEPS, (args.batch_size,), generator=generator)
        noisy = noise_scheduler.add_noise(clean, noise, timesteps)

        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args.steps, args.lr)
        loss = torch.nn.functional.mse_loss(
            unet(noisy, timesteps, class_labels=label).sample, noise
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        with torch.no_grad():
            for average, current in zip(ema.parameters(), unet.parameters(), strict=True):
                average.lerp_(current, 1.0 - EMA_DECAY)

        running_loss += loss.item()
        if (step + 1) % args.log_every == 0:
            elapsed = time.monotonic() - started
            print(
                f"step {step + 1}/{args.steps}  loss {running_loss / args.log_every:.4f}  "
                f"{elapsed:.0f} s",
                flush=True,
            )
            running_loss = 0.0
    print(f"trained in {time.monotonic() - started:.0f} s")
    return ema


def save_preview(pipe: DigitsPipeline, path: Path, *, seed: int) -> None:
    """Write a 10x8 grid: one row per digit, eight seeds per row."""
    prompts = [str(digit) for digit in range(10) for _ in range(8)]
    generators = [torch.Generator().manual_seed(seed + i) for i in range(len(prompts))]
    images = pipe(prompts, generator=generators, height=32, width=32).images
    grid = Image.new("L", (8 * 34, 10 * 34), color=255)
    for i, image in enumerate(images):
        grid.paste(image, ((i % 8) * 34 + 1, (i // 8) * 34 + 1))
    grid.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="pipeline folder to write")
    parser.add_argument("--preview", type=Path, help="also write a grid of samples to this PNG")
    parser.add_argument("--steps", type=int, default=8000, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--log-every", type=int, default=500, help="steps between log lines")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    unet = train(args)
    # Ancestral DDPM sampling: with deterministic DDIM sampling this small model leaves
    # speckles of noise in the background.
    scheduler = DDPMScheduler(
        num_train_timesteps=TRAIN_TIMESTEPS,
        beta_schedule="squaredcos_cap_v2",
        timestep_spacing="trailing",
    )
    pipe = DigitsPipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(args.out, safe_serialization=True)
    print(f"wrote {args.out}")
    if args.preview:
        save_preview(pipe, args.preview, seed=args.seed)
        print(f"wrote {args.preview}")


if __name__ == "__main__":
    main()
