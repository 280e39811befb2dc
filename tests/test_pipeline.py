"""SafePipeline with real diffusers pipelines: seeds, batches, names, writes, metadata, loading."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline
from PIL import Image

import safeinfer
import safeinfer.tiny
from safeinfer.errors import (
    ClosedError,
    ConfigError,
    FileExistsConflict,
    InvalidNameError,
    ModelError,
    WriteError,
)
from safeinfer.pipeline import (
    GenerationResult,
    Results,
    SafePipeline,
    WriterPool,
    safe_relative_name,
)
from safeinfer.png import read_metadata, verify_png

STEPS = 2


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


@pytest.fixture(scope="module")
def ddpm_pipe() -> Any:
    """A real unconditional DDPMPipeline with a tiny random UNet."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    )
    pipe = DDPMPipeline(unet=unet.eval(), scheduler=DDPMScheduler(num_train_timesteps=100))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Any:
    # On a busy shared machine, several torch threads spin against each other and run
    # many times slower. One thread keeps the suite fast and its results fixed.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _wrap(pipe: Any, output_dir: Path, **options: Any) -> SafePipeline:
    options.setdefault("device", "cpu")
    options.setdefault("durability", "none")
    return SafePipeline(pipe, output_dir=output_dir, **options)


# --- loading -------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["tiny-sd", "tiny-digits"])
def test_from_pretrained_embedded_generates(model: str, tmp_path: Path) -> None:
    with SafePipeline.from_pretrained(model, output_dir=tmp_path, device="cpu") as pipe:
        pipe.pipe.set_progress_bar_config(disable=True)
        results = pipe(["3", "seven"], seeds=[1, 2], num_inference_steps=STEPS)

    assert pipe.model_name == model
    assert isinstance(results, Results)
    assert [result.seed for result in results] == [1, 2]
    for result in results:
        assert result.path.parent == tmp_path
        assert result.path.suffix == ".png"
        assert result.bytes == result.path.stat().st_size
        assert result.sha256 == _sha256(result.path)
        assert verify_png(result.path, level="full").ok
        assert result.image.size == (64, 64)
        assert result.seconds_inference > 0
        assert result.seconds_write > 0
    assert results.paths == [result.path for result in results]


def test_from_pretrained_saved_folder(sd_pipe: Any, tmp_path: Path) -> None:
    folder = tmp_path / "my-model"
    sd_pipe.save_pretrained(folder)

    pipe = SafePipeline.from_pretrained(folder, output_dir=tmp_path / "out", device="cpu")
    results = pipe("a red car", seeds=4, num_inference_steps=STEPS)

    assert type(pipe.pipe).__name__ == "StableDiffusionPipeline"
    assert pipe.model_name == "my-model"
    assert results[0].metadata["model"] == "my-model"
    # Same weights, same seed: the saved copy draws the embedded model's image.
    embedded_pipe = _wrap(sd_pipe, tmp_path / "embedded")
    embedded = embedded_pipe("a red car", seeds=4, num_inference_steps=STEPS)
    assert np.array_equal(np.asarray(results[0].image), np.asarray(embedded[0].image))


def test_from_pretrained_folder_without_index(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"no model_index\.json"):
        SafePipeline.from_pretrained(tmp_path, output_dir=tmp_path / "out", device="cpu")


def test_from_pretrained_hub_id_offline(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="cannot load 'nobody/no-such-model'") as raised:
        SafePipeline.from_pretrained(
            "nobody/no-such-model", output_dir=tmp_path, device="cpu", local_files_only=True
        )
    assert "local Hugging Face cache" in str(raised.value)


def test_from_pretrained_dtype_and_scheduler(tmp_path: Path) -> None:
    pipe = SafePipeline.from_pretrained(
        "tiny-digits",
        output_dir=tmp_path,
        device="cpu",
        torch_dtype="float64",
        scheduler="DDIMScheduler",
    )
    results = pipe("5", seeds=0, num_inference_steps=STEPS)
    assert pipe.pipe.unet.dtype == torch.float64
    assert results[0].metadata["scheduler"] == "DDIMScheduler"
    assert results[0].metadata["dtype"] == "float64"


def test_from_pretrained_bad_dtype_and_scheduler(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="invalid torch_dtype 'float8'"):
        SafePipeline.from_pretrained(
            "tiny-digits", output_dir=tmp_path, device="cpu", torch_dtype="float8"
        )
    with pytest.raises(ConfigError, match="unknown scheduler 'Nope'") as raised:
        SafePipeline.from_pretrained(
            "tiny-digits", output_dir=tmp_path, device="cpu", scheduler="Nope"
        )
    assert "DDIMScheduler" in str(raised.value)


def test_wraps_only_diffusion_pipelines(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="DiffusionPipeline, got str"):
        SafePipeline("tiny-sd", output_dir=tmp_path)


def test_device_auto_binds_cpu(
    digits_pipe: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # bind_gpu writes these variables. Setting them first makes monkeypatch record their
    # original state, so it restores that after the test.
    for variable in ("CUDA_VISIBLE_DEVICES", "SAFEINFER_GPU"):
        monkeypatch.setenv(variable, "")
        monkeypatch.delenv(variable)
    pipe = SafePipeline(digits_pipe, output_dir=tmp_path, device="auto")
    assert pipe.device == "cpu"
    assert pipe.pipe.device.type == "cpu"


def test_device_invalid(digits_pipe: Any, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="invalid device 'gpu0'"):
        SafePipeline(digits_pipe, output_dir=tmp_path, device="gpu0")


# --- seeds and reproducibility ----------------------------------------------------


@pytest.mark.parametrize("fixture", ["sd_pipe", "digits_pipe"])
def test_same_seed_same_bytes_across_calls(
    fixture: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    pipe = _wrap(request.getfixturevalue(fixture), tmp_path)
    first = pipe(["1", "2"], seeds=[11, 12], num_inference_steps=STEPS)
    second = pipe(["1", "2"], seeds=[11, 12], num_inference_steps=STEPS)
    other = pipe(["1"], seeds=[13], num_inference_steps=STEPS)

    assert [r.sha256 for r in first] == [r.sha256 for r in second]
    assert [r.path for r in first] != [r.path for r in second]
    for a, b in zip(first, second, strict=True):
        assert a.path.read_bytes() == b.path.read_bytes()
    assert other[0].sha256 != first[0].sha256


@pytest.mark.parametrize("fixture", ["sd_pipe", "digits_pipe"])
def test_image_k_alone_reproduces(
    fixture: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    pipe = _wrap(request.getfixturevalue(fixture), tmp_path)
    prompts = ["a red car 1", "a blue boat 2", "a green tree 3"]
    options = {"negative_prompt": "blurry 4", "num_inference_steps": STEPS}
    together = pipe(prompts, seeds=[7, 8, 9], **options)
    alone = pipe(prompts[2], seeds=9, **options)
    assert alone[0].sha256 == together[2].sha256
    assert len({r.sha256 for r in together}) == len(prompts)


@pytest.mark.parametrize("fixture", ["sd_pipe", "digits_pipe"])
def test_larger_batches_keep_seeds_and_pixels(
    fixture: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    pipe = _wrap(request.getfixturevalue(fixture), tmp_path)
    prompts = ["a cat 1", "a dog 2", "a fox 3", "a owl 4"]
    single = pipe(prompts, seeds=100, batch_size=1, num_inference_steps=STEPS)
    pairs = pipe(prompts, seeds=100, batch_size=2, num_inference_steps=STEPS)
    pairs_again = pipe(prompts, seeds=100, batch_size=2, num_inference_steps=STEPS)

    assert [r.seed for r in pairs] == [r.seed for r in single]
    assert [r.sha256 for r in pairs] == [r.sha256 for r in pairs_again]
    # Same noise, so the pictures agree. Batched kernels may round the last float
    # bits differently, which can move a pixel by at most one level.
    for a, b in zip(single, pairs, strict=True):
        difference = np.abs(np.asarray(a.image, np.int16) - np.asarray(b.image, np.int16))
        assert difference.max() <= 1


def test_int_seed_counts_up_per_image(digits_pipe: Any, tmp_path: Path) -> None:
    pipe = _wrap(digits_pipe, tmp_path)
    results = pipe(["1", "2"], seeds=40, num_images_per_prompt=2, num_inference_steps=STEPS)
    assert [r.seed for r in results] == [40, 41, 42, 43]
    assert [r.prompt for r in results] == ["1", "1", "2", "2"]
    assert [r.metadata["seed"] for r in results] == [40, 41, 42, 43]


def test_random_seeds_are_recorded(digits_pipe: Any, tmp_path: Path) -> None:
    pipe = _wrap(digits_pipe, tmp_path)
    first = pipe("4", num_inference_steps=STEPS)[0]
    replay = pipe("4", seeds=first.seed, num_inference_steps=STEPS)[0]
    assert 0 <= first.seed < 2**32
    assert read_metadata(first.path)["safeinfer"]["seed"] == first.seed
    assert replay.sha256 == first.sha256


@pytest.mark.parametrize(
    ("seeds", "message"),
    [
        ([1], "1 seeds for 2 images"),
        ([1, -1], r"invalid seeds\[1\] -1"),
        ([1, 2.5], r"invalid seeds\[1\] 2.5"),
        (True, "invalid seeds True"),
        ("12", "invalid seeds '12'"),
        (2**64 - 1, "plus the image index 1"),
    ],
)
def test_invalid_seeds(digits_pipe: Any, tmp_path: Path, seeds: Any, message: str) -> None:
    pipe = _wrap(digits_pipe, tmp_path)
    with pytest.raises(ConfigError, match=message):
        pipe(["1", "2"], seeds=seeds, num_inference_steps=STEPS)
    assert list(tmp_path.iterdir()) == []


# --- pipelines of other shapes -----------------------------------------------------


def test_unconditional_pipeline_warns_on_prompts(ddpm_pipe: Any, tmp_path: Path) -> None:
    pipe = _wrap(ddpm_pipe, tmp_path)
    with pytest.warns(UserWarning, match="DDPMPipeline is unconditional and ignores prompts"):
        results = pipe(["a cat", "a dog"], seeds=[1, 2], num_inference_steps=STEPS)
    assert len(results) == 2
    assert [r.prompt for r in results] == [None, None]
    assert "prompt" not in results[0].metadata
    assert results[0].image.size == (8, 8)


def test_unconditional_pipeline_counts_seeds(ddpm_pipe: Any, tmp_path: Path) -> None:
    pipe = _wrap(ddpm_pipe, tmp_path)
    results = pipe(seeds=[5, 6, 7], num_inference_steps=STEPS, batch_size=2)
    alone = pipe(seeds=[7], num_inference_steps=STEPS)
    assert [r.seed for r in results] == [5, 6, 7]
    assert alone[0].sha256 == results[2].sha256


def test_unconditional_pipeline_rejects_size(ddpm_pipe: Any, tmp_path: Path) -> None:
    pipe = _wrap(ddpm_pipe, tmp_path)
    with pytest.raises(ConfigError, match="DDPMPipeline does not take height"):
        pipe(seeds=[1], height=16, num_inference_steps=STEPS)


class _ToneAudioPipeline(DiffusionPipeline):  # type: ignore[misc]
    """A real DiffusionPipeline subclass whose output is audio, not images."""

    def __init__(self) -> None:
        super().__init__()

    def __call__(self, generator: Any = None, batch_size: int = 1) -> Any:
        from diffusers import AudioPipelineOutput

        return AudioPipelineOutput(audios=np.zeros((batch_size, 1, 16), np.float32))


class _ShortPipeline(safeinfer.tiny.DigitsPipeline):
    """The digits pipeline, but it drops the last image of every batch."""

    def __call__(
        self, prompt: Any = None, *, generator: Any = None, num_inference_steps: int = 50
    ) -> Any:
        output = super().__call__(
            prompt, generator=generator, num_inference_steps=num_inference_steps
        )
        output.images = output.images[:-1]
        return output


def test_non_image_output_is_an_error(tmp_path: Path) -> None:
    pipe = _wrap(_ToneAudioPipeline(), tmp_path)
    with pytest.raises(ModelError, match="_ToneAudioPipeline returned AudioPipelineOutput"):
        pipe(seeds=[1])


def test_missing_images_are_an_error(digits_pipe: Any, tmp_path: Path) -> None:
    short = _ShortPipeline(unet=digits_pipe.unet, scheduler=digits_pipe.scheduler)
    short.set_progress_bar_config(disable=True)
    with pytest.raises(ModelError, match="returned 1 images for 2 requests"):
        _wrap(short, tmp_path)(["1", "2"], seeds=0, batch_size=2, num_inference_steps=STEPS)


def test_numpy_output_is_converted(digits_pipe: Any, tmp_path: Path) -> None:
    pipe = _wrap(digits_pipe, tmp_path)
    as_pil = pipe("6", seeds=3, num_inference_steps=STEPS)[0]
    as_numpy = pipe("6", seeds=3, num_inference_steps=STEPS, output_type="np")[0]
    assert isinstance(as_numpy.image, Image.Image)
    assert as_numpy.sha256 == as_pil.sha256


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"generator": None}, "pass seeds"),
        ({"latents": None}, "replace the seeded noise"),
        ({"prompt_embeds": None, "return_dict": False}, "reads the pipeline's output"),
    ],
)
def test_reserved_pipeline_kwargs(
    sd_pipe: Any, tmp_path: Path, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        _wrap(sd_pipe, tmp_path)("a cat", seeds=1, **kwargs)


def test_pipeline_kwargs_pass_through(sd_pipe: Any, tmp_path: Path) -> None:
    pipe = _wrap(sd_pipe, tmp_path)
    plain = pipe("a cat", seeds=1, num_inference_steps=STEPS)[0]
    with_eta = pipe("a cat", seeds=1, num_inference_steps=STEPS, eta=1.0)[0]
    assert plain.sha256 != with_eta.sha256


def test_digit_prompt_errors_reach_the_caller(digits_pipe: Any, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="Accepted forms"):
        _wrap(digits_pipe, tmp_path)("a cat", seeds=1, num_inference_steps=STEPS)


# --- names, if_exists and writer errors ---------------------------------------------


def test_names_with_subfolders(digits_pipe: Any, tmp_path: Path) -> None:
    pipe = _wrap(digits_pipe, tmp_path, if_exists="replace")
    results = pipe(
        ["1", "2"],
        seeds=[1, 2],
        names=["run 1/ones/one.png", "run 1/two"],
        num_inference_steps=STEPS,
    )
    assert results[0].path == tmp_path / "run_1" / "ones" / "one.png"
    assert results[1].path == tmp_path / "run_1" / "two.png"
    assert results[0].path.is_file()


def test_names_replace_for_resume(digits_pipe: Any, tmp_path: Path) -> None:
    pipe = _wrap(digits_pipe, tmp_path, if_exists="replace")
    first = pipe("1", seeds=1, names=["item.png"], num_inference_steps=STEPS)[0]
    second = pipe("2", seeds=2, names=["item.png"], num_inference_steps=STEPS)[0]
    assert first.path == second.path
    assert _sha256(second.path) == second.sha256
    assert [path.name for path in tmp_path.iterdir()] == ["item.png"]


def test_names_error_policy(digits_pipe: Any, tmp_path: Path) -> None:
    pipe = _wrap(digits_pipe, tmp_path, if_exists="error")
    kept = pipe("1", seeds=1, names=["item"], num_inference_steps=STEPS)[0]
    with pytest.raises(FileExistsConflict):
        pipe("2", seeds=2, names=["item"], num_inference_steps=STEPS)
    assert _sha256(kept.path) == kept.sha256


def test_names_unique_policy_keeps_both(digits_pipe: Any, tmp_path: Path) -> None:
    pipe = _wrap(digits_pipe, tmp_path)
    first = pipe("1", seeds=1, names=["item"], num_inference_steps=STEPS)[0]
    second = pipe("1", seeds=1, names=["item"], num_inference_steps=STEPS)[0]
    assert first.path != second.path
    assert first.path.name.endswith("-item.png")
    assert second.path.is_file()


def test_default_names_hold_prompt_and_seed(sd_pipe: Any, tmp_path: Path) -> None:
    results = _wrap(sd_pipe, tmp_path)(
        ["a handwritten 7", "?!"], seeds=[5, 6], num_inference_steps=STEPS
    )
    assert results[0].path.name.endswith("-a_handwritten_7-5.png")
    assert results[1].path.name.endswith("-image-6.png")


@pytest.mark.parametrize(
    ("name", "error", "message"),
    [
        ("../escape", InvalidNameError, "would leave output_dir"),
        ("/etc/x", InvalidNameError, "relative to output_dir"),
        ("C:/x", InvalidNameError, "relative to output_dir"),
        ("./", InvalidNameError, "names no file"),
    ],
)
def test_unsafe_names_rejected(
    digits_pipe: Any, tmp_path: Path, name: str, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        _wrap(digits_pipe, tmp_path)("1", seeds=1, names=[name], num_inference_steps=STEPS)


def test_safe_relative_name_cleans_parts() -> None:
    assert safe_relative_name("a b/./c:d.PNG") == "a_b/c_d"
    assert safe_relative_name("x\\y") == "x/y"


def test_duplicate_and_miscounted_names(digits_pipe: Any, tmp_path: Path) -> None:
    pipe = _wrap(digits_pipe, tmp_path)
    with pytest.raises(ConfigError, match=r"names\[0\] and names\[1\] both become 'a_b'"):
        pipe(["1", "2"], seeds=1, names=["a b", "a_b.png"], num_inference_steps=STEPS)
    with pytest.raises(ConfigError, match="1 names for 2 images"):
        pipe(["1", "2"], seeds=1, names=["a"], num_inference_steps=STEPS)


def test_output_dir_that_is_a_file(digits_pipe: Any, tmp_path: Path) -> None:
    blocker = tmp_path / "out"
    blocker.write_text("not a directory")
    with pytest.raises(WriteError, match="is a file"):
        SafePipeline(digits_pipe, output_dir=blocker, device="cpu")


@pytest.mark.parametrize("threads", [0, 2])
def test_writer_error_surfaces_after_other_writes(
    digits_pipe: Any, tmp_path: Path, threads: int
) -> None:
    (tmp_path / "blocked").write_text("a file where a folder must go")
    pipe = _wrap(digits_pipe, tmp_path, if_exists="replace", writer_threads=threads)
    with pytest.raises(WriteError, match="a part of the path is a file") as raised:
        pipe(
            ["1", "2", "3"],
            seeds=1,
            names=["ok-1", "blocked/x", "ok-3"],
            batch_size=1,
            num_inference_steps=STEPS,
        )
    assert "blocked" in str(raised.value)
    # The good images of the call were published in full before the error was raised.
    for name in ("ok-1.png", "ok-3.png"):
        assert verify_png(tmp_path / name, level="full").ok
    assert sorted(path.name for path in tmp_path.iterdir()) == ["blocked", "ok-1.png", "ok-3.png"]


def test_inference_error_waits_for_queued_writes(digits_pipe: Any, tmp_path: Path) -> None:
    pipe = _wrap(digits_pipe, tmp_path, if_exists="replace")
    with pytest.raises(ConfigError, match="'a cat'"):
        pipe(
            ["1", "a cat"],
            seeds=1,
            names=["first", "second"],
            batch_size=1,
            num_inference_steps=STEPS,
        )
    assert verify_png(tmp_path / "first.png", level="full").ok
    assert not (tmp_path / "second.png").exists()


def test_invalid_options(digits_pipe: Any, tmp_path: Path) -> None:
    for options, message in [
        ({"durability": "always"}, "invalid durability"),
        ({"if_exists": "skip"}, "invalid if_exists"),
        ({"compression": "max"}, "invalid compression"),
        ({"writer_threads": -1}, "invalid writer_threads"),
        ({"max_pending": 0}, "invalid max_pending"),
    ]:
        with pytest.raises(ConfigError, match=message):
            _wrap(digits_pipe, tmp_path, **options)
    with pytest.raises(ConfigError, match="invalid batch_size 0"):
        _wrap(digits_pipe, tmp_path)("1", seeds=1, batch_size=0)


@pytest.mark.parametrize("steps", [0, -1, 2.5, True])
def test_invalid_inference_steps(digits_pipe: Any, tmp_path: Path, steps: Any) -> None:
    pipe = _wrap(digits_pipe, tmp_path)
    with pytest.raises(ConfigError, match=f"invalid num_inference_steps {steps!r}"):
        pipe("1", seeds=1, num_inference_steps=steps)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("writer_threads", [0, 2])
def test_call_after_close(digits_pipe: Any, tmp_path: Path, writer_threads: int) -> None:
    with _wrap(digits_pipe, tmp_path, writer_threads=writer_threads) as pipe:
        pipe("1", seeds=1, num_inference_steps=STEPS)
    for call in (pipe, pipe.submit):
        with pytest.raises(ClosedError, match="SafePipeline is closed"):
            call("1", seeds=2, num_inference_steps=STEPS)
    assert len(list(tmp_path.iterdir())) == 1


def test_largest_seed_accepted(digits_pipe: Any, tmp_path: Path) -> None:
    pipe = _wrap(digits_pipe, tmp_path)
    (result,) = pipe("1", seeds=2**64 - 1, num_inference_steps=STEPS)
    assert read_metadata(result.path)["safeinfer"]["seed"] == 2**64 - 1
    with pytest.raises(ConfigError, match=r"from 0 to 2\*\*64 - 1"):
        pipe("1", seeds=2**64, num_inference_steps=STEPS)


# --- writer pool ---------------------------------------------------------------------


def test_writer_pool_blocks_when_full() -> None:
    pool = WriterPool(threads=1, max_pending=1)
    release = threading.Event()
    pool.submit(release.wait)
    second_queued = threading.Event()

    def submit_second() -> None:
        pool.submit(lambda: None)
        second_queued.set()

    producer = threading.Thread(target=submit_second)
    producer.start()
    assert not second_queued.wait(timeout=0.3)
    release.set()
    assert second_queued.wait(timeout=30)
    producer.join(timeout=30)
    pool.close()


def test_writer_pool_inline_captures_errors() -> None:
    pool = WriterPool(threads=0)
    future = pool.submit(lambda: 1 / 0)
    assert isinstance(future.exception(), ZeroDivisionError)
    assert pool.submit(lambda: 5).result() == 5


def test_submit_returns_pending_results(digits_pipe: Any, tmp_path: Path) -> None:
    pipe = _wrap(digits_pipe, tmp_path)
    pending = pipe.submit(["1", "2", "3"], seeds=1, num_inference_steps=STEPS)
    assert len(pending) == 3
    results = pending.result()
    assert pending.done()
    assert [r.seed for r in results] == [1, 2, 3]
    assert all(r.path.is_file() for r in results)
    pipe.close()
    with pytest.raises(RuntimeError):
        pipe("1", seeds=1, num_inference_steps=STEPS)


# --- metadata and display ------------------------------------------------------------


def test_metadata_in_png(sd_pipe: Any, tmp_path: Path) -> None:
    pipe = _wrap(sd_pipe, tmp_path)
    result = pipe(
        "a red car",
        negative_prompt="blurry",
        seeds=21,
        num_inference_steps=STEPS,
        guidance_scale=5.0,
        metadata={"item": "row-7"},
    )[0]
    stored = read_metadata(result.path)
    generation = stored["safeinfer"]
    assert generation == result.metadata
    assert generation["prompt"] == "a red car"
    assert generation["negative_prompt"] == "blurry"
    assert generation["seed"] == 21
    assert generation["steps"] == STEPS
    assert generation["guidance"] == 5.0
    assert (generation["width"], generation["height"]) == (64, 64)
    assert generation["model"] == "tiny-sd"
    assert generation["pipeline"] == "StableDiffusionPipeline"
    assert generation["scheduler"] == "DDIMScheduler"
    assert generation["item"] == "row-7"
    assert set(generation["versions"]) == {"safeinfer", "diffusers", "torch"}
    assert generation["versions"]["safeinfer"] == safeinfer.__version__
    assert "Negative prompt: blurry" in stored["text"]["parameters"]
    assert "Seed: 21" in stored["text"]["parameters"]
    raw = json.dumps(generation)
    assert str(tmp_path) not in raw
    assert "/" not in generation["model"]


def test_metadata_defaults_come_from_the_pipeline(digits_pipe: Any, tmp_path: Path) -> None:
    result = _wrap(digits_pipe, tmp_path)("2", seeds=1, num_inference_steps=STEPS)[0]
    assert result.metadata["guidance"] == 2.0
    assert result.metadata["scheduler"] == "DDPMScheduler"
    assert "negative_prompt" not in result.metadata


def test_metadata_clash_rejected(digits_pipe: Any, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"metadata keys \['seed'\] clash"):
        _wrap(digits_pipe, tmp_path)("2", seeds=1, metadata={"seed": 3})
    assert list(tmp_path.iterdir()) == []


def test_results_render_in_jupyter(digits_pipe: Any, tmp_path: Path) -> None:
    results = _wrap(digits_pipe, tmp_path)(
        ["digit 1", "digit 2"], seeds=[8, 9], num_inference_steps=STEPS
    )
    grid = results._repr_html_()
    assert grid.count("<img") == 2
    assert "digit 1" in grid
    assert "seed 9" in grid
    single = results[0]
    assert isinstance(single, GenerationResult)
    html = single._repr_html_()
    assert html.count("<img") == 1
    assert single.path.name in html
    assert "seed 8" in html
