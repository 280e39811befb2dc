"""File-system faults in the middle of a generate job.

The output directory is made read-only (``chattr +i``, which binds root too, where mode
bits do not), removed, or replaced by a file while a worker writes into it. The job must
fail with a clear error or recreate what it owns, publish nothing partial, and keep every
file its manifests list. Once the fault is undone, a resume completes the job.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from safeinfer.manifest import read_manifests
from stress.harness import (
    Command,
    Commands,
    Ledger,
    Watcher,
    check_at_rest,
    check_complete,
    expected_ids,
    published_files,
    storm_prompts,
    wait_until,
    write_prompts,
)

#: Items of the job: enough that it is still running when each fault comes.
ITEMS = 200
#: Files a worker may have between publishing and recording, which a removal of the
#: tree can catch halfway: the one it records and the next one being written.
RACE_WINDOW = 2
#: Seconds the test waits for the job to record its first images.
START_TIMEOUT = 180.0


def _recorded(out: Path) -> int:
    try:
        return len(read_manifests(out))
    except (OSError, ValueError):
        return 0


def _chattr(flag: str, *paths: Path) -> None:
    subprocess.run(["chattr", flag, *map(str, paths)], check=True, timeout=30)


@dataclass
class FaultJob:
    """One job that the faults hit in turn, each in a new run of it."""

    commands: Commands
    model: tuple[str, ...]
    prompts: Path
    out: Path
    ledger: Ledger
    runs: int = 0
    #: Set once files were removed under the job, which can leave repeated lines.
    repeats: bool = False

    def start(self, after: int) -> Command:
        """Start a run and return once it recorded ``after`` more images."""
        baseline = _recorded(self.out)
        job = self.commands.generate(self.prompts, self.out, model=self.model, resume=self.runs > 0)
        self.runs += 1
        reached = wait_until(
            lambda: _recorded(self.out) >= baseline + after or job.process.poll() is not None,
            START_TIMEOUT,
        )
        assert reached, "the job recorded nothing in time"
        assert job.process.poll() is None, job.output()[1][-3000:]
        return job

    def complete(self) -> None:
        """Resume the job to its end and check the finished tree."""
        job = self.commands.generate(self.prompts, self.out, model=self.model, resume=True)
        with Watcher(self.out, self.ledger):
            code, _, stderr = job.finish()
        assert code == 0, stderr[-3000:]
        code, _, stderr = self.commands.run(["clean", str(self.out)])
        assert code == 0, stderr
        check_complete(self.out, expected_ids(self.prompts), self.ledger, repeats=self.repeats)


@pytest.fixture
def fault_job(tmp_path: Path, commands: Commands, model_args: tuple[str, ...]) -> FaultJob:
    prompts = write_prompts(tmp_path / "prompts.txt", storm_prompts(ITEMS))
    return FaultJob(commands, model_args, prompts, tmp_path / "out", Ledger(tmp_path / "published"))


def read_only_mid_job(job: FaultJob, after: int) -> None:
    """Make the output folders immutable mid-run: items fail with EPERM, records stay."""
    if shutil.which("chattr") is None:
        pytest.skip("chattr is not installed")
    run = job.start(after)
    folders = [job.out, *sorted(path for path in job.out.iterdir() if path.is_dir())]
    _chattr("+i", *folders)
    try:
        with Watcher(job.out, job.ledger):
            code, stdout, stderr = run.finish()
        entries = check_at_rest(job.out, job.ledger)
    finally:
        _chattr("-i", *folders)

    output = stdout + stderr
    assert code == 1, output[-3000:]
    assert "items failed" in output
    assert "operation not permitted" in output.lower()
    assert len(entries) >= after


def replaced_by_file_mid_job(job: FaultJob, after: int) -> None:
    """Swap the output directory for a file mid-run: items fail, the moved work is intact."""
    run = job.start(after)
    moved = job.out.with_name("moved-away")
    os.rename(job.out, moved)
    job.out.write_bytes(b"a file where the output directory was\n")
    with Watcher(moved, job.ledger):
        code, stdout, stderr = run.finish()

    output = stdout + stderr
    assert code == 1, output[-3000:]
    assert "not a directory" in output.lower()
    assert job.out.read_bytes() == b"a file where the output directory was\n"
    assert len(check_at_rest(moved, job.ledger)) >= after
    job.out.unlink()
    os.rename(moved, job.out)


def removed_mid_job(job: FaultJob, after: int) -> None:
    """Remove the output tree mid-run: the job recreates it and records what it makes."""
    run = job.start(after)
    # The worker recreates folders while rmtree runs, so some entries may survive.
    shutil.rmtree(job.out, ignore_errors=True)
    # The user removed those files: they no longer count as recorded.
    job.ledger.recorded.clear()
    with Watcher(job.out, job.ledger):
        code, _, stderr = run.finish()

    assert code == 0, stderr[-3000:]
    # What the job wrote after the removal must be recorded in a manifest on disk, not
    # in the removed one: every published file is listed, and every listed file matches.
    # Only the files in flight while rmtree ran may differ: published before and
    # recorded after it (the line names a removed file), or the other way round.
    entries = check_at_rest(job.out, job.ledger, repeats=True, missing=RACE_WINDOW)
    assert entries, "nothing was recorded after the removal"
    recorded = {entry.absolute_path.resolve() for entry in entries}
    unrecorded = [str(p) for p in published_files(job.out) if p.resolve() not in recorded]
    assert len(unrecorded) <= RACE_WINDOW, f"files missing from the manifests: {unrecorded}"
    job.repeats = True


FAULTS = {
    "read-only": read_only_mid_job,
    "replaced-by-file": replaced_by_file_mid_job,
    "removed": removed_mid_job,
}


def test_faults_hit_one_job_in_turn(fault_job: FaultJob, tally: Counter[str]) -> None:
    for name, inject in FAULTS.items():
        inject(fault_job, 3)
        tally[f"faults: output directory {name}"] += 1

    fault_job.complete()


@pytest.mark.stress
@pytest.mark.parametrize("round_", range(2))
@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_fault_rounds(fault_job: FaultJob, tally: Counter[str], fault: str, round_: int) -> None:
    after = random.Random(f"{fault}-{round_}").randint(1, 40)
    FAULTS[fault](fault_job, after)
    tally[f"faults: output directory {fault}"] += 1

    fault_job.complete()
