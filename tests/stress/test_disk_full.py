"""The generate job on a full disk: failing items reported, nothing partial, resume completes.

As root the output directory sits on a small tmpfs that a filler file has nearly filled,
so the kernel itself returns ENOSPC part way through the job. Where mounting is not
allowed, a file-size limit (RLIMIT_FSIZE) below one image's size makes every image
write fail with EFBIG instead.
"""

from __future__ import annotations

import re
import resource
from collections import Counter
from pathlib import Path

import pytest

from stress.conftest import tmpfs
from stress.harness import (
    Commands,
    Ledger,
    Watcher,
    check_at_rest,
    check_complete,
    expected_ids,
    published_files,
    storm_prompts,
    temp_files,
    write_prompts,
)

#: Size of the small file system, and the room left beside the filler: a few pages of
#: 4 KiB, so the two manifests and a few images fit, but not all of them.
TMPFS_SIZE = "1m"
ROOM_BYTES = 6 * 4096
#: File-size limit of the fallback: below the size of one image of either embedded model.
FILE_SIZE_LIMIT = 256
ITEMS = 16

_FAILED_LINE = re.compile(r"^failed (\d{6}-\d{2}): (.*)$", re.MULTILINE)


def _limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))


def _fill(root: Path, room: int) -> Path:
    filler = root / "filler"
    with open(filler, "wb") as file:
        block = b"\0" * 65536
        try:
            while True:
                file.write(block)
                file.flush()
        except OSError:
            pass  # the file system is full
    # Give back ``room`` bytes, so the job fills the rest.
    size = filler.stat().st_size
    with open(filler, "r+b") as file:
        file.truncate(max(0, size - room))
    return filler


def _check_failed_run(code: int, stdout: str, stderr: str, ids: list[str], cause: str) -> list[str]:
    output = stdout + stderr
    assert code == 1, output[-3000:]
    failed = dict(_FAILED_LINE.findall(output))
    assert failed, f"no failed items listed:\n{output[-3000:]}"
    assert set(failed) <= set(ids)
    causes = " ".join(failed.values()).lower()
    assert cause in causes or cause in output.lower(), output[-3000:]
    assert "resume" in output
    return sorted(failed)


def _run_full_disk(
    tmp_path: Path,
    commands: Commands,
    model_args: tuple[str, ...],
    tally: Counter[str],
    *,
    use_mount: bool,
    workers: int = 1,
) -> None:
    prompts = write_prompts(tmp_path / "prompts.txt", storm_prompts(ITEMS))
    ids = expected_ids(prompts)
    ledger = Ledger(tmp_path / "published")
    if use_mount:
        with tmpfs(tmp_path / "fs", TMPFS_SIZE) as root:
            out = root / "out"
            filler = _fill(root, ROOM_BYTES)
            job = commands.generate(prompts, out, model=model_args, workers=workers)
            with Watcher(out, ledger):
                code, stdout, stderr = job.finish()
            failed = _check_failed_run(code, stdout, stderr, ids, "no space left")
            check_at_rest(out, ledger)
            tally["faults: disk full (tmpfs)"] += 1

            filler.unlink()
            job = commands.generate(prompts, out, model=model_args, workers=workers, resume=True)
            with Watcher(out, ledger):
                code, stdout, stderr = job.finish()
            assert code == 0, stderr[-3000:]
            assert f"{len(failed)} images written" in stdout or "images written" in stdout
            code, _, stderr = commands.run(["clean", str(out)])
            assert code == 0, stderr
            check_complete(out, ids, ledger)
        return

    out = tmp_path / "out"
    # The limit binds every file the job writes, its log files too, so its output
    # goes through pipes.
    job = commands.generate(
        prompts,
        out,
        model=model_args,
        workers=workers,
        preexec_fn=_limit_file_size,
        through_pipes=True,
    )
    with Watcher(out, ledger):
        code, stdout, stderr = job.finish()
    failed = _check_failed_run(code, stdout, stderr, ids, "too large")
    assert set(failed) <= set(ids)
    assert f"{len(ids)} of {len(ids)} items failed" in stderr
    check_at_rest(out, ledger)
    assert published_files(out) == []
    assert temp_files(out) == []
    tally["faults: disk full (file-size limit)"] += 1

    job = commands.generate(prompts, out, model=model_args, workers=workers, resume=True)
    code, _, stderr = job.finish()
    assert code == 0, stderr[-3000:]
    code, _, stderr = commands.run(["clean", str(out)])
    assert code == 0, stderr
    check_complete(out, ids, ledger)


def test_disk_full_then_resume(
    tmp_path: Path,
    commands: Commands,
    model_args: tuple[str, ...],
    tally: Counter[str],
    mount_allowed: bool,
) -> None:
    _run_full_disk(tmp_path, commands, model_args, tally, use_mount=mount_allowed)


@pytest.mark.stress
@pytest.mark.parametrize("use_mount", [True, False], ids=["tmpfs", "file-size-limit"])
@pytest.mark.parametrize("round_", range(2))
def test_disk_full_rounds(
    tmp_path: Path,
    commands: Commands,
    model_args: tuple[str, ...],
    tally: Counter[str],
    mount_allowed: bool,
    use_mount: bool,
    round_: int,
) -> None:
    if use_mount and not mount_allowed:
        pytest.skip("mounting a tmpfs needs root with CAP_SYS_ADMIN")
    _run_full_disk(tmp_path, commands, model_args, tally, use_mount=use_mount, workers=2)
