"""Build the embedded tiny-sd model: a StableDiffusionPipeline with seeded random weights.

Every component is a real diffusers or transformers class (UNet2DConditionModel,
AutoencoderKL, CLIPTextModel, CLIPTokenizer, DDIMScheduler), just very small, so the
whole text-to-image path runs offline in well under a second per image on one CPU
thread. The weights are random: the images are coloured noise, not pictures.

Rebuild the shipped folder from the repository root (a few seconds)::

    python scripts/build_tiny_sd.py --out safeinfer/tiny/models/tiny-sd

The build is deterministic for a fixed torch version: the test suite rebuilds the
pipeline in memory and checks that the shipped weights are identical.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

SEED = 0
#: Width of the text embeddings, shared by the text encoder and the UNet's cross-attention.
TEXT_WIDTH = 32
MAX_TOKENS = 77
#: Latent side: the VAE halves the size twice, so the default image is 64x64 pixels.
LATENT_SIZE = 16

#: Words that get whole-word tokens, by theme. Any other text still tokenizes, into
#: single bytes.
WORD_GROUPS = (
    "a an the of and with in on at by for from to into over under near",
    "photo painting drawing sketch render portrait landscape picture illustration",
    "cat dog bird horse fish cow fox owl bear lion tiger rabbit",
    "tree flower forest mountain river lake sea ocean beach sky cloud sun moon star",
    "city street house castle bridge road car boat train ship tower garden field",
    "red orange yellow green blue purple pink brown black white gray grey gold silver",
    "big small tall old young happy dark bright light night day morning evening winter",
    "summer autumn spring snow rain fog storm fire water stone wood glass metal",
    "man woman child people face hand eye hair",
    "detailed beautiful sharp soft high quality style art digital oil watercolor",
    "blurry ugly low bad",
)
WORDS = [word for group in WORD_GROUPS for word in group.split()]


def _byte_alphabet() -> list[str]:
    """Return the 256 printable characters that byte-level BPE uses for the 256 bytes.

    Bytes that are printable Latin-1 characters stand for themselves. The others are
    shifted to code points from 256 upwards, so no token contains whitespace or a
    control character.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    alphabet: dict[int, str] = {byte: chr(byte) for byte in printable}
    shifted = 0
    for byte in range(256):
        if byte not in alphabet:
            alphabet[byte] = chr(256 + shifted)
            shifted += 1
    return [alphabet[byte] for byte in range(256)]


def build_vocabulary() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Return a CLIP-style vocabulary and merge list in which every word of ``WORDS`` is one token.

    Like CLIP's, the vocabulary contains every byte symbol alone and with the end-of-word
    marker ``</w>``, then one token per merge, then the two special tokens. For each
    word, the merges so far are applied as the tokenizer will apply them, then new
    merges join what is left from left to right. New merges rank after all older ones,
    so they never change how an earlier word splits.
    """
    symbols = _byte_alphabet()
    tokens = symbols + [symbol + "</w>" for symbol in symbols]
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in WORDS:
        pieces = _apply_merges([*word[:-1], word[-1] + "</w>"], ranks)
        while len(pieces) > 1:
            pair = (pieces[0], pieces[1])
            ranks[pair] = len(merges)
            merges.append(pair)
            tokens.append(pair[0] + pair[1])
            pieces = [pair[0] + pair[1], *pieces[2:]]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(tokens)}, merges


def _apply_merges(pieces: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Merge adjacent pieces the way byte-pair encoding does: lowest rank first."""
    while len(pieces) > 1:
        candidates = [
            (ranks[pair], index)
            for index, pair in enumerate(itertools.pairwise(pieces))
            if pair in ranks
        ]
        if not candidates:
            break
        _, index = min(candidates)
        pieces = [*pieces[:index], pieces[index] + pieces[index + 1], *pieces[index + 2 :]]
    return pieces


def build_tokenizer() -> CLIPTokenizer:
    vocab, merges = build_vocabulary()
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_TOKENS)


def build_text_encoder(tokenizer: CLIPTokenizer) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_WIDTH,
        intermediate_size=2 * TEXT_WIDTH,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=MAX_TOKENS,
        projection_dim=TEXT_WIDTH,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


def build_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=LATENT_SIZE,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=8,
        norm_num_groups=8,
    )


def build_vae() -> AutoencoderKL:
    return AutoencoderKL(
        block_out_channels=(16, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=16,
        sample_size=LATENT_SIZE * 4,
    )


def build_scheduler() -> DDIMScheduler:
    # The noise schedule of Stable Diffusion 1.x.
    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def build_pipeline(seed: int = SEED) -> StableDiffusionPipeline:
    """Build the pipeline in memory. Each network gets its own seed, in a fixed order.

    The networks are put in eval mode, as ``from_pretrained`` does: in training mode
    the VAE's attention takes another kernel and a batch differs in the last float bits.
    """
    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    text_encoder = build_text_encoder(tokenizer)
    torch.manual_seed(seed + 1)
    unet = build_unet()
    torch.manual_seed(seed + 2)
    vae = build_vae()
    for network in (text_encoder, unet, vae):
        network.eval()
    components: dict[str, Any] = {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "scheduler": build_scheduler(),
        "safety_checker": None,
        "feature_extractor": None,
        "requires_safety_checker": False,
    }
    return StableDiffusionPipeline(**components)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="pipeline folder to write")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args()
    pipe = build_pipeline(args.seed)
    pipe.save_pretrained(args.out, safe_serialization=True)
    sizes = {
        name: sum(p.numel() for p in getattr(pipe, name).parameters())
        for name in ("unet", "vae", "text_encoder")
    }
    print(f"wrote {args.out}; parameters: {sizes}")


if __name__ == "__main__":
    main()
