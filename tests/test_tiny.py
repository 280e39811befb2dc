"""The embedded models: names, resolver, loading through from_pretrained, and their output."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import safeinfer.tiny
from safeinfer.errors import ConfigError, ModelError
from safeinfer.tiny import (
    DEFAULT_MODEL,
    MODELS,
    NULL_CLASS,
    model_path,
    parse_digit_prompt,
    resolve_model,
)

REPO = Path(__file__).resolve().parents[1]

#: The wheel ships these weights, so they must stay small.
MAX_WEIGHT_BYTES = 5 * 1024 * 1024


def _load_script(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Any:
    # On a busy shared machine, several torch threads spin against each other and run
    # many times slower. One thread keeps the suite fast and its results fixed.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def sd_pipe() -> Any:
    pipe = safeinfer.tiny.load("tiny-sd")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def digits_pipe() -> Any:
    pipe = safeinfer.tiny.load("tiny-digits")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _generators(seeds: list[int]) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed) for seed in seeds]


# --- names and folders -------------------------------------------------------------


def test_models_have_package_folders() -> None:
    assert MODELS == ("tiny-digits", "tiny-sd")
    assert DEFAULT_MODEL in MODELS
    for name in MODELS:
        folder = model_path(name)
        assert folder.is_dir()
        assert (folder / "model_index.json").is_file()
        assert folder.parent == safeinfer.tiny.MODELS_DIR


def test_weights_are_safetensors_and_small() -> None:
    weights = sorted(safeinfer.tiny.MODELS_DIR.rglob("*.safetensors"))
    assert {path.relative_to(safeinfer.tiny.MODELS_DIR).parts[0] for path in weights} == set(MODELS)
    assert not list(safeinfer.tiny.MODELS_DIR.rglob("*.bin"))
    assert sum(path.stat().st_size for path in weights) < MAX_WEIGHT_BYTES


def test_model_path_unknown_name() -> None:
    with pytest.raises(ModelError, match="tiny-digits, tiny-sd"):
        model_path("tiny-cat")


# --- resolver ------------------------------------------------------------------------


def test_resolve_embedded_name() -> None:
    kind, location = resolve_model("tiny-sd")
    assert kind == "embedded"
    assert Path(location) == model_path("tiny-sd")


def test_resolve_local_folder(tmp_path: Path) -> None:
    kind, location = resolve_model(tmp_path)
    assert kind == "local"
    assert location == str(tmp_path.resolve())


def test_resolve_hub_ids() -> None:
    assert resolve_model("stabilityai/sd-turbo") == ("hub", "stabilityai/sd-turbo")
    assert resolve_model("gpt2") == ("hub", "gpt2")


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("./no-such-folder", "not found"),
        ("/no/such/folder", "not found"),
        ("a/b/c", "not found"),
        ("owner/has space", "invalid model"),
        ("", "invalid model"),
    ],
)
def test_resolve_rejects_bad_models(model: str, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        resolve_model(model)


def test_resolve_rejects_file(tmp_path: Path) -> None:
    file = tmp_path / "model.safetensors"
    file.write_bytes(b"")
    with pytest.raises(ModelError, match="is a file"):
        resolve_model(file)


# --- digit prompts -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "digit"),
    [
        ("7", 7),
        ("digit 7", 7),
        ("a handwritten seven", 7),
        ("the number 3", 3),
        ("Zero", 0),
        ("NINE!", 9),
        ("a 4, please", 4),
        ("seven 7", 7),
        ("", NULL_CLASS),
        ("   ", NULL_CLASS),
        (None, NULL_CLASS),
    ],
)
def test_digit_prompt_accepted(prompt: str | None, digit: int) -> None:
    assert parse_digit_prompt(prompt) == digit


@pytest.mark.parametrize(
    ("prompt", "reason"),
    [
        ("a cat", "names no digit"),
        ("seventy", "names no digit"),
        ("10", "not a single digit"),
        ("3 and 4", r"several digits \[3, 4\]"),
        ("one or two", r"several digits \[1, 2\]"),
    ],
)
def test_digit_prompt_rejected(prompt: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason) as raised:
        parse_digit_prompt(prompt)
    assert "Accepted forms" in str(raised.value)
    assert repr(prompt) in str(raised.value)


# --- tiny-sd -------------------------------------------------------------------------


def test_tiny_sd_is_a_real_stable_diffusion_pipeline(sd_pipe: Any) -> None:
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    assert type(sd_pipe) is StableDiffusionPipeline
    assert isinstance(sd_pipe.unet, UNet2DConditionModel)
    assert isinstance(sd_pipe.vae, AutoencoderKL)
    assert isinstance(sd_pipe.text_encoder, CLIPTextModel)
    assert isinstance(sd_pipe.tokenizer, CLIPTokenizer)
    assert sd_pipe.safety_checker is None
    assert sd_pipe.tokenizer.model_max_length == 77
    unet_parameters = sum(p.numel() for p in sd_pipe.unet.parameters())
    assert 100_000 < unet_parameters < 1_000_000


def test_tiny_sd_tokenizer_has_whole_words(sd_pipe: Any) -> None:
    tokenizer = sd_pipe.tokenizer
    ids = tokenizer("a photo of a cat").input_ids
    assert ids[0] == tokenizer.bos_token_id
    assert ids[-1] == tokenizer.eos_token_id
    words = ["a</w>", "photo</w>", "of</w>", "a</w>", "cat</w>"]
    assert tokenizer.convert_ids_to_tokens(ids[1:-1]) == words
    # A word outside the vocabulary still tokenizes, into smaller known pieces.
    zebra = tokenizer("zebra").input_ids
    assert len(zebra) > 3
    assert tokenizer.decode(zebra, skip_special_tokens=True) == "zebra"


def test_tiny_sd_weights_are_own_aligned_memory(sd_pipe: Any) -> None:
    for name in ("unet", "vae", "text_encoder"):
        for key, tensor in getattr(sd_pipe, name).state_dict().items():
            assert tensor.data_ptr() % 64 == 0, f"{name}.{key} is not 64-byte aligned"


def test_tiny_sd_matches_build_script(sd_pipe: Any) -> None:
    built = _load_script("build_tiny_sd").build_pipeline()
    built.set_progress_bar_config(disable=True)
    for name in ("unet", "vae", "text_encoder"):
        shipped = getattr(sd_pipe, name).state_dict()
        rebuilt = getattr(built, name).state_dict()
        assert shipped.keys() == rebuilt.keys()
        for key in shipped:
            assert torch.equal(shipped[key], rebuilt[key]), f"{name}.{key} differs"

    prompts = ["a photo of a cat", "red car"]
    options = {"num_inference_steps": 3, "output_type": "np"}
    shipped_images = sd_pipe(prompts, generator=_generators([1, 2]), **options).images
    built_images = built(prompts, generator=_generators([1, 2]), **options).images
    assert np.array_equal(shipped_images, built_images)


def test_tiny_sd_generates_64px_images(sd_pipe: Any) -> None:
    images = sd_pipe("a red house", num_inference_steps=2, generator=_generators([0])).images
    assert len(images) == 1
    assert images[0].size == (64, 64)
    assert images[0].mode == "RGB"


# --- tiny-digits ---------------------------------------------------------------------


def test_tiny_digits_is_class_conditional(digits_pipe: Any) -> None:
    from diffusers import UNet2DModel

    from safeinfer.tiny import DigitsPipeline

    assert type(digits_pipe) is DigitsPipeline
    assert isinstance(digits_pipe.unet, UNet2DModel)
    assert digits_pipe.unet.config.num_class_embeds == NULL_CLASS + 1
    assert digits_pipe.unet.config.sample_size == 8


def test_tiny_digits_draws_the_prompted_digits(digits_pipe: Any) -> None:
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    neighbors = pytest.importorskip("sklearn.neighbors")
    pixels, labels = sklearn_datasets.load_digits(return_X_y=True)
    classifier = neighbors.KNeighborsClassifier(n_neighbors=3).fit(pixels / 16.0, labels)

    digits = [digit for digit in range(10) for _ in range(3)]
    prompts = [f"a handwritten {safeinfer.tiny.DIGIT_WORDS[digit]}" for digit in digits]
    images = digits_pipe(
        prompts, generator=_generators(list(range(len(prompts)))), output_type="np"
    ).images
    # The 64x64 output is the 8x8 sample enlarged 8 times; every 8th pixel recovers it.
    samples = images[:, ::8, ::8, 0].reshape(len(prompts), 64)
    predicted = classifier.predict(samples)
    correct = int((predicted == np.array(digits)).sum())
    assert correct >= 24, f"only {correct} of 30 digits recognised: {predicted.tolist()}"


def test_tiny_digits_output_size_and_modes(digits_pipe: Any) -> None:
    result = digits_pipe("3", num_inference_steps=2, generator=_generators([0]))
    assert result.images[0].size == (64, 64)
    assert result.images[0].mode == "L"
    sized = digits_pipe(
        "3", num_inference_steps=2, height=16, width=24, generator=_generators([0])
    ).images[0]
    assert sized.size == (24, 16)
    tensor = digits_pipe(
        ["1", "2"], num_inference_steps=2, output_type="pt", generator=_generators([0, 1])
    ).images
    assert tuple(tensor.shape) == (2, 1, 64, 64)


def test_tiny_digits_images_per_prompt_and_negative(digits_pipe: Any) -> None:
    images = digits_pipe(
        ["1", "2"],
        negative_prompt=["7", None],
        num_images_per_prompt=2,
        num_inference_steps=2,
        generator=_generators([0, 1, 2, 3]),
    ).images
    assert len(images) == 4


def test_tiny_digits_same_generator_same_image(digits_pipe: Any) -> None:
    options = {"num_inference_steps": 4, "output_type": "np"}
    first = digits_pipe(["5"], generator=_generators([3]), **options).images
    again = digits_pipe(["5"], generator=_generators([3]), **options).images
    other = digits_pipe(["5"], generator=_generators([4]), **options).images
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        ({"prompt": "a cat"}, "names no digit"),
        ({"prompt": "3", "output_type": "latent"}, "invalid output_type"),
        ({"prompt": "3", "height": 0}, "invalid height"),
        ({"prompt": ["1", "2"], "negative_prompt": ["3"]}, "1 negative prompts for 2"),
        ({"prompt": "3", "num_images_per_prompt": 0}, "at least 1"),
    ],
)
def test_tiny_digits_rejects_bad_calls(
    digits_pipe: Any, call: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        digits_pipe(num_inference_steps=2, **call)


def test_tiny_digits_rejects_generator_count(digits_pipe: Any) -> None:
    with pytest.raises(ConfigError, match="2 generators for 1 images"):
        digits_pipe("3", num_inference_steps=2, generator=_generators([0, 1]))


def test_load_passes_dtype() -> None:
    pipe = safeinfer.tiny.load("tiny-digits", dtype=torch.float64)
    assert pipe.unet.dtype == torch.float64


def test_import_tiny_does_not_import_torch() -> None:
    import subprocess

    code = (
        "import sys, safeinfer.tiny, safeinfer.pipeline; "
        "safeinfer.tiny.resolve_model('tiny-sd'); "
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))"
    )
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert output.strip() == "[]"


LOAD_TINY_SD_CHILD = """
import logging, safeinfer.tiny
safeinfer.tiny.load("tiny-sd")
source = logging.getLogger("transformers.utils.import_utils")
print("filters after load:", len(source.filters))
source.warning("another transformers warning")
"""


def test_tiny_sd_load_hides_only_torchvision_fallback() -> None:
    import subprocess

    # A fresh interpreter, because transformers warns about the fallback once per process.
    child = subprocess.run(
        [sys.executable, "-c", LOAD_TINY_SD_CHILD],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "TQDM_DISABLE": "1"},
    )
    assert "torchvision" not in child.stderr
    assert "another transformers warning" in child.stderr
    assert "filters after load: 0" in child.stdout
