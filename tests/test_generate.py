"""The generate job through its Python API, with real pipelines and worker processes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from generate_checks import TEST_STEPS, assert_job_consistent, png_files

import safeinfer
from safeinfer.errors import ConfigError, JobError, ModelError, WriteError
from safeinfer.jobs import make_items, read_prompts
from safeinfer.manifest import read_manifests

DIGIT_PROMPTS = ["a handwritten seven", "3", "the number one", "zero"]


def _ids(prompts: list[str], images_per_prompt: int = 1) -> list[str]:
    return [
        item.id for item in make_items(read_prompts(prompts), images_per_prompt=images_per_prompt)
    ]


def test_same_bytes_across_workers_and_batches(tmp_path: Path) -> None:
    options = {"steps": TEST_STEPS, "images_per_prompt": 2, "seed": 5, "progress": False}
    ids = _ids(DIGIT_PROMPTS, images_per_prompt=2)

    one = safeinfer.generate(
        DIGIT_PROMPTS, tmp_path / "one", workers=1, threads_per_worker=1, **options
    )
    two = safeinfer.generate(
        DIGIT_PROMPTS, tmp_path / "two", workers=2, threads_per_worker=1, batch_size=3, **options
    )

    assert (one.written, one.failed, one.skipped) == (8, {}, 0)
    assert (two.written, two.failed, two.skipped) == (8, {}, 0)
    assert sorted(two.workers) == ["cpu0", "cpu1"]
    first = assert_job_consistent(tmp_path / "one", ids)
    second = assert_job_consistent(tmp_path / "two", ids)
    assert first == second
    names_one = sorted(path.relative_to(tmp_path / "one") for path in png_files(tmp_path / "one"))
    names_two = sorted(path.relative_to(tmp_path / "two") for path in png_files(tmp_path / "two"))
    assert names_one == names_two
    # Which worker makes which batch depends on timing; each item is recorded once.
    workers_used = {entry.fields["worker"] for entry in read_manifests(tmp_path / "two")}
    assert workers_used <= {"cpu0", "cpu1"}


def test_saved_pipeline_folder(tmp_path: Path) -> None:
    from safeinfer.tiny import load

    folder = tmp_path / "my-pipeline"
    pipe = load("tiny-sd")
    pipe.save_pretrained(folder)
    assert type(pipe).__name__ == "StableDiffusionPipeline"

    summary = safeinfer.generate(
        ["a red fox", "a blue whale"],
        tmp_path / "out",
        model=folder,
        steps=TEST_STEPS,
        progress=False,
    )

    assert summary.written == 2
    assert_job_consistent(tmp_path / "out", _ids(["a", "b"]))
    entry = read_manifests(tmp_path / "out")[0]
    assert entry.fields["model"] == "my-pipeline"


def test_failures_and_parameters_recorded(tmp_path: Path) -> None:
    # The digits model rejects a prompt that names no digit with a ConfigError.
    prompts = tmp_path / "prompts.jsonl"
    rows = [{"prompt": "7", "seed": 41}, {"prompt": "a cat"}, {"prompt": "8", "steps": 3}]
    prompts.write_text("".join(json.dumps(row) + "\n" for row in rows))

    with pytest.raises(JobError, match="1 of 3 items failed") as caught:
        safeinfer.generate(prompts, tmp_path / "out", steps=TEST_STEPS, retries=1, progress=False)

    error = caught.value
    assert error.failed == ["000001-00"]
    summary = error.summary
    assert summary is not None
    assert (summary.written, summary.not_started) == (2, 0)
    assert "ConfigError: invalid digit prompt 'a cat'" in summary.failed["000001-00"]
    assert summary.manifests == ["manifest-cpu0.jsonl"]
    assert_job_consistent(tmp_path / "out", ["000000-00", "000002-00"])
    entries = {entry.fields["item"]: entry for entry in read_manifests(tmp_path / "out")}
    seven = entries["000000-00"]
    assert seven.path == "0000/000000-00-41-7.png"
    assert (seven.fields["prompt"], seven.fields["seed"]) == ("7", 41)
    assert seven.fields["steps"] == TEST_STEPS
    assert seven.fields["model"] == "tiny-digits"
    assert (seven.fields["worker"], seven.fields["device"]) == ("cpu0", "cpu")
    assert seven.fields["attempt"] == 1
    eight = entries["000002-00"]
    assert eight.fields["steps"] == 3
    assert eight.fields["seed"] == make_items(read_prompts(["7", "a cat", "8"]))[2].seed


def test_unknown_model_name(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="tiny-digits"):
        safeinfer.generate(["7"], tmp_path / "out", model="no such model", progress=False)

    assert not (tmp_path / "out").exists()


def test_offline_hub_id_not_in_cache(tmp_path: Path) -> None:
    with pytest.raises(ModelError) as caught:
        safeinfer.generate(
            ["7"], tmp_path / "out", model="nobody/no-model", local_files_only=True, progress=False
        )

    message = str(caught.value)
    assert message.startswith("model 'nobody/no-model' is not an embedded model (tiny-digits")
    assert "not in the Hugging Face cache" in message
    assert "drop --offline" in message
    assert "local_files_only=False" not in message
    assert ".." not in message
    assert not (tmp_path / "out").exists()


def test_model_that_cannot_load_stops_job(tmp_path: Path) -> None:
    # A folder whose weights are cut short fails in the worker, on every restart alike.
    folder = _broken_model(tmp_path)

    with pytest.raises(ModelError, match=f"cannot start workers with model '{folder}'"):
        safeinfer.generate(["7"], tmp_path / "out", model=folder, progress=False)

    assert png_files(tmp_path / "out") == []


def _broken_model(tmp_path: Path) -> Path:
    from safeinfer.tiny import load

    folder = tmp_path / "broken-model"
    load("tiny-sd").save_pretrained(folder)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    return folder


def test_output_path_through_a_file(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")

    with pytest.raises(WriteError, match="is a file, not a directory") as caught:
        safeinfer.generate(["7"], blocker / "out" / "sub", progress=False)
    assert str(caught.value).startswith(f"{blocker} in the output directory path ")

    with pytest.raises(WriteError, match="is a file, not a directory") as caught:
        safeinfer.generate(["7"], blocker, progress=False)
    assert str(caught.value).startswith(f"{blocker} is a file")
    assert blocker.read_text() == "not a directory"


def test_unwritable_output_directory(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root can write to a read-only directory")
    out = tmp_path / "read-only"
    out.mkdir(mode=0o500)

    with pytest.raises(WriteError, match="is not writable"):
        safeinfer.generate(["7"], out, progress=False)


def test_bad_prompt_file_names_line(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "7"}\n{"prompt": "8", "steps": "many"}\n')

    with pytest.raises(ConfigError, match=r"prompts\.jsonl:2: invalid steps 'many'"):
        safeinfer.generate(prompts, tmp_path / "out", progress=False)

    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"workers": 0}, "invalid worker count 0"),
        ({"threads_per_worker": 0}, "invalid threads per worker 0"),
        ({"steps": 0}, "invalid steps 0"),
        ({"size": "64"}, "invalid size '64'"),
        ({"seed": -1}, "invalid seed -1"),
        ({"seed": 2**64}, r"invalid seed 18446744073709551616: expected a whole number from 0"),
        ({"images_per_prompt": 0}, "invalid images_per_prompt 0"),
        ({"batch_size": 0}, "invalid batch size 0"),
        ({"dtype": "float8"}, "invalid dtype 'float8'"),
        ({"gpus": "0,,1"}, "invalid GPU list"),
        ({"gpus": "abc"}, "invalid GPU id 'abc': expected indices like 0,1, UUIDs"),
        ({"gpus": ["0", "-1"]}, "invalid GPU id '-1'"),
        ({"retries": -1}, "invalid retries -1"),
        ({"guidance": float("nan")}, "invalid guidance nan: expected a finite number"),
        ({"guidance": float("inf")}, "invalid guidance inf: expected a finite number"),
        ({"guidance": "7.5"}, "invalid guidance '7.5'"),
        ({"stop_timeout": float("nan")}, "invalid stop_timeout nan"),
        ({"stop_timeout": -1.0}, "invalid stop_timeout -1.0"),
    ],
)
def test_invalid_options(tmp_path: Path, options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        safeinfer.generate(["7"], tmp_path / "out", progress=False, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize("batch_size", [1, 2])
def test_prompt_the_model_rejects_is_not_retried(tmp_path: Path, batch_size: int) -> None:
    from safeinfer.jobs import run_items
    from safeinfer.manifest import Manifest
    from safeinfer.pipeline import SafePipeline

    items = make_items(read_prompts(["7", "digit 4 number 14"]), steps=TEST_STEPS)
    pipe = SafePipeline.from_pretrained("tiny-digits", output_dir=tmp_path, if_exists="replace")
    with pipe, Manifest(tmp_path / "manifest-test.jsonl") as manifest:
        outcomes = run_items(
            items, pipe, manifest=manifest, worker="test", batch_size=batch_size, retries=3
        )

    by_id = {outcome.item_id: outcome for outcome in outcomes}
    bad = by_id[items[1].id]
    assert bad.error is not None
    assert "ConfigError: invalid digit prompt 'digit 4 number 14'" in bad.error
    # A batch is split first: the item's second call is its first one alone.
    assert bad.attempts == batch_size
    assert by_id[items[0].id].ok


def test_manifest_records_pipeline_defaults(tmp_path: Path) -> None:
    out = tmp_path / "out"
    safeinfer.generate(["7"], out, size="32x32", progress=False)

    (entry,) = read_manifests(out)
    # tiny-digits defaults to 50 steps and guidance 2.0.
    assert entry.fields["steps"] == 50
    assert entry.fields["guidance"] == 2.0
    assert (entry.fields["width"], entry.fields["height"]) == (32, 32)
    assert entry.fields["defaults"] == ["steps", "guidance"]

    again = safeinfer.generate(["7"], out, size="32x32", resume=True, progress=False)

    assert (again.skipped, again.written) == (1, 0)
