"""The generate job through its Python API, with real pipelines and worker processes."""

from __future__ import annotations

import json
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


def test_same_bytes_with_one_and_two_workers(tmp_path: Path) -> None:
    options = {"steps": TEST_STEPS, "images_per_prompt": 2, "seed": 5, "progress": False}
    ids = _ids(DIGIT_PROMPTS, images_per_prompt=2)

    one = safeinfer.generate(
        DIGIT_PROMPTS, tmp_path / "one", workers=1, threads_per_worker=1, **options
    )
    two = safeinfer.generate(
        DIGIT_PROMPTS, tmp_path / "two", workers=2, threads_per_worker=1, **options
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
    workers_used = {entry.fields["worker"] for entry in read_manifests(tmp_path / "two")}
    assert workers_used == {"cpu0", "cpu1"}


def test_manifest_records_item_parameters(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        json.dumps({"prompt": "7", "seed": 41}) + "\n" + json.dumps({"prompt": "8"}) + "\n"
    )

    summary = safeinfer.generate(prompts, tmp_path / "out", steps=TEST_STEPS, progress=False)

    assert summary.written == 2
    entries = {entry.fields["item"]: entry for entry in read_manifests(tmp_path / "out")}
    seven = entries["000000-00"]
    assert seven.fields["seed"] == 41
    assert seven.fields["prompt"] == "7"
    assert seven.fields["steps"] == TEST_STEPS
    assert seven.fields["model"] == "tiny-digits"
    assert seven.fields["worker"] == "cpu0"
    assert seven.fields["device"] == "cpu"
    assert seven.path == "0000/000000-00-41-7.png"
    assert entries["000001-00"].fields["seed"] == make_items(read_prompts(["7", "8"]))[1].seed
    assert summary.manifests == ["manifest-cpu0.jsonl"]


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


def test_failed_items_are_retried_then_reported(tmp_path: Path) -> None:
    # The digits model rejects a prompt that names no digit, on every attempt.
    prompts = ["a handwritten two", "a cat", "nine"]

    with pytest.raises(JobError, match="1 of 3 items failed") as caught:
        safeinfer.generate(prompts, tmp_path / "out", steps=TEST_STEPS, retries=1, progress=False)

    error = caught.value
    assert error.failed == ["000001-00"]
    summary = error.summary
    assert summary is not None
    assert summary.written == 2
    assert "names no digit" in summary.failed["000001-00"]
    assert_job_consistent(tmp_path / "out", ["000000-00", "000002-00"])


def test_resume_skips_finished_items(tmp_path: Path) -> None:
    out = tmp_path / "out"
    safeinfer.generate(DIGIT_PROMPTS[:2], out, steps=TEST_STEPS, progress=False)
    kept = {path: path.stat().st_mtime_ns for path in png_files(out)}
    damaged = sorted(kept)[0]
    damaged.write_bytes(damaged.read_bytes()[:-20])

    with pytest.raises(ConfigError, match="already contains a job"):
        safeinfer.generate(DIGIT_PROMPTS, out, steps=TEST_STEPS, progress=False)
    summary = safeinfer.generate(DIGIT_PROMPTS, out, steps=TEST_STEPS, resume=True, progress=False)

    assert (summary.skipped, summary.written) == (1, 3)
    contents = assert_job_consistent_last(out, _ids(DIGIT_PROMPTS))
    assert damaged in contents
    untouched = [path for path in kept if path != damaged]
    assert [path.stat().st_mtime_ns for path in untouched] == [kept[path] for path in untouched]


def assert_job_consistent_last(root: Path, expected_ids: list[str]) -> dict[Path, bytes]:
    """Like assert_job_consistent, but an item redone after damage may have two lines."""
    entries = read_manifests(root)
    latest = {entry.fields["item"]: entry for entry in entries}
    assert sorted(latest) == sorted(expected_ids)
    files = {}
    for entry in latest.values():
        data = entry.absolute_path.read_bytes()
        assert len(data) == entry.bytes
        files[entry.absolute_path] = data
    assert sorted(files) == png_files(root)
    return files


def test_unknown_model_name(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="tiny-digits"):
        safeinfer.generate(["7"], tmp_path / "out", model="no such model", progress=False)

    assert not (tmp_path / "out").exists()


def test_unwritable_output_directory(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")

    with pytest.raises(WriteError, match="not writable"):
        safeinfer.generate(["7"], blocker / "out", progress=False)


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
        ({"images_per_prompt": 0}, "invalid images_per_prompt 0"),
        ({"batch_size": 0}, "invalid batch size 0"),
        ({"dtype": "float8"}, "invalid dtype 'float8'"),
        ({"gpus": "0,,1"}, "invalid GPU list"),
        ({"retries": -1}, "invalid retries -1"),
    ],
)
def test_invalid_options(tmp_path: Path, options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        safeinfer.generate(["7"], tmp_path / "out", progress=False, **options)  # type: ignore[arg-type]
