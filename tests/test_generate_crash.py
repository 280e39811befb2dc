"""The generate command under SIGKILL and SIGTERM: workers replaced, jobs resumable."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from generate_checks import assert_job_consistent, png_files

from safeinfer.jobs import make_items, read_prompts
from safeinfer.manifest import read_manifests

pytestmark = pytest.mark.slow

#: Steps per image of the tiny-sd model: slow enough (about 0.3 s per image on one
#: thread) that a kill lands in the middle of the job.
SLOW_STEPS = 20
PROMPTS = [f"a red fox number {index}" for index in range(10)]
#: Seconds a test waits for the job to reach the state it needs.
WAIT_SECONDS = 120.0


def _write_prompts(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n")
    return path


def _expected_ids() -> list[str]:
    return [item.id for item in make_items(read_prompts(PROMPTS))]


def _start_job(prompts: Path, out: Path, *extra: str) -> subprocess.Popen[str]:
    command = [
        sys.executable,
        "-m",
        "safeinfer",
        "generate",
        str(prompts),
        "--out",
        str(out),
        "--model",
        "tiny-sd",
        "--steps",
        str(SLOW_STEPS),
        "--threads-per-worker",
        "1",
        "--no-progress",
        *extra,
    ]
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )


def _finish(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    try:
        stdout, stderr = process.communicate(timeout=WAIT_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        raise AssertionError(f"job did not finish; stderr:\n{stderr}") from None
    return process.returncode, stdout, stderr


def _wait_for(condition: Callable[[], bool], process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"job exited early:\n{process.communicate()[1]}")
        if time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            raise AssertionError("job did not reach the expected state in time")
        time.sleep(0.05)


def _recorded(out: Path) -> int:
    try:
        return len(read_manifests(out))
    except FileNotFoundError:
        return 0


def _worker_pids(parent: int) -> list[int]:
    pids = []
    for task in Path(f"/proc/{parent}/task").iterdir():
        pids.extend(int(pid) for pid in (task / "children").read_text().split())
    workers = []
    for pid in pids:
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if b"spawn_main" in command:
            workers.append(pid)
    return workers


def test_killed_worker_is_replaced(tmp_path: Path) -> None:
    out = tmp_path / "out"
    job = _start_job(_write_prompts(tmp_path), out, "--workers", "1")
    _wait_for(lambda: _recorded(out) >= 2, job)
    victims = _worker_pids(job.pid)
    assert len(victims) == 1

    os.kill(victims[0], signal.SIGKILL)
    code, stdout, stderr = _finish(job)

    assert code == 0, stderr
    assert "10 images written, 0 failed" in stdout
    assert "exited with code -9" in stderr
    assert_job_consistent(out, _expected_ids())


def test_stopped_and_killed_job_resumes(tmp_path: Path) -> None:
    out = tmp_path / "out"
    prompts = _write_prompts(tmp_path)

    # SIGTERM: the worker records what it made, and nothing half-done is left.
    first = _start_job(prompts, out)
    _wait_for(lambda: _recorded(out) >= 2, first)
    first.send_signal(signal.SIGTERM)
    code, _, stderr = _finish(first)
    assert code == 128 + signal.SIGTERM, stderr
    assert "--resume" in stderr
    after_stop = _recorded(out)
    assert after_stop < len(PROMPTS)
    assert_job_consistent(out, None)

    # Without --resume the directory is rejected, before any worker starts.
    code, _, stderr = _finish(_start_job(prompts, out))
    assert code == 2
    assert "already contains a job" in stderr

    # SIGKILL of the whole job in the middle of a resumed run.
    second = _start_job(prompts, out, "--resume")
    _wait_for(lambda: _recorded(out) >= after_stop + 2, second)
    os.killpg(second.pid, signal.SIGKILL)
    second.wait()
    after_kill = read_manifests(out)
    assert len(after_kill) < len(PROMPTS)
    damaged = after_kill[0].absolute_path
    damaged.write_bytes(damaged.read_bytes()[:-30])

    third = _start_job(prompts, out, "--resume")
    code, stdout, stderr = _finish(third)

    assert code == 0, stderr
    assert f"{len(after_kill) - 1} skipped" in stdout
    assert f"{len(PROMPTS) - len(after_kill) + 1} images written" in stdout
    assert_job_consistent(out, _expected_ids())
    assert len(png_files(out)) == len(PROMPTS)
