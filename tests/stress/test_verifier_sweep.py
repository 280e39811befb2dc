"""The verifier over the job's real output and over every kind of damage done to it.

Every file a small generate job publishes is valid. Every case that the corruption
generator derives from those files is flagged, by :func:`verify_png` and by ``safeinfer
verify`` over a directory, and valid variants stay valid. ``safeinfer verify --manifest``
names the files that were damaged in place after the job recorded them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from corruption import corruptions, valid_variants

from safeinfer.manifest import read_manifests
from safeinfer.png import verify_png
from stress.harness import Commands, published_files, storm_prompts, write_prompts

#: Seeds of the corruption generator: the short run and the long one.
SHORT_SEEDS = range(2)
LONG_SEEDS = range(2, 40)


@pytest.fixture(scope="module")
def job_output(
    tmp_path_factory: pytest.TempPathFactory, model_args: tuple[str, ...]
) -> Iterator[Path]:
    """Run one small job; return its output directory."""
    root = tmp_path_factory.mktemp("sweep")
    commands = Commands(root / "logs")
    prompts = write_prompts(root / "prompts.txt", storm_prompts(6))
    out = root / "out"
    try:
        job = commands.generate(prompts, out, model=model_args)
        code, _, stderr = job.finish()
        assert code == 0, stderr[-3000:]
        yield out
    finally:
        assert commands.cleanup() == []


def _sweep(job_output: Path, target: Path, seeds: range, commands: Commands) -> int:
    target.mkdir()
    cases = 0
    for source in published_files(job_output):
        data = source.read_bytes()
        assert verify_png(data).ok, source
        for seed in seeds:
            for case, damaged in corruptions(data, seed=seed):
                path = target / f"{source.stem}-{seed}-{case}.png"
                path.write_bytes(damaged)
                assert not verify_png(damaged).ok, f"{case} (seed {seed}) of {source.name}"
                cases += 1
    code, stdout, stderr = commands.run(["verify", str(target)])
    assert code == 1, stderr
    flagged = {line.split(": ", 1)[0] for line in stdout.splitlines() if ": " in line}
    missed = sorted(str(path) for path in target.iterdir() if str(path) not in flagged)
    assert missed == [], f"safeinfer verify passed damaged files: {missed[:10]}"
    return cases


@pytest.mark.parametrize(
    "seeds",
    [
        pytest.param(SHORT_SEEDS, id="short"),
        pytest.param(LONG_SEEDS, id="long", marks=pytest.mark.stress),
    ],
)
def test_every_corruption_of_job_files_is_flagged(
    job_output: Path, tmp_path: Path, commands: Commands, tally: Counter[str], seeds: range
) -> None:
    cases = _sweep(job_output, tmp_path / "damaged", seeds, commands)

    tally["corrupted files flagged"] += cases
    tally["published files verified"] += len(published_files(job_output))


def test_valid_variants_of_job_files_pass(job_output: Path, tally: Counter[str]) -> None:
    checked = 0
    for source in published_files(job_output):
        for case, variant in valid_variants(source.read_bytes()):
            report = verify_png(variant)
            assert report.ok, f"{case} of {source.name}: {report.summary()}"
            checked += 1

    assert checked > 0
    tally["valid variants passed"] += checked


def test_manifest_check_names_damaged_files(
    job_output: Path, tmp_path: Path, commands: Commands, tally: Counter[str]
) -> None:
    copy = tmp_path / "out"
    copy.mkdir()
    for manifest in job_output.glob("manifest*.jsonl"):
        (copy / manifest.name).write_bytes(manifest.read_bytes())
    for source in published_files(job_output):
        target = copy / source.relative_to(job_output)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.read_bytes())
    entries = read_manifests(copy)
    flipped, truncated = entries[0].absolute_path, entries[1].absolute_path
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0x01  # same size: only the SHA-256 can tell
    flipped.write_bytes(bytes(data))
    truncated.write_bytes(truncated.read_bytes()[:-20])

    code, stdout, stderr = commands.run(["verify", "--manifest", str(copy)])

    assert code == 1, stdout + stderr
    problems = [line for line in stdout.splitlines() if line.startswith(str(copy))]
    named = sorted({line.split(": ", 1)[0] for line in problems})
    assert named == sorted([str(flipped), str(truncated)])
    tally["corrupted files flagged"] += 2
