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
from generate_checks import assert_job_consistent

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
        assert time.monotonic() < deadline, "job did not reach the expected state"
        time.sleep(0.05)


def _recorded(out: Path) -> int:
    try:
        return len(read_manifests(out))
    except FileNotFoundError:
        return 0


def _worker_pids(parent: int) -> list[int]:
    pids = []
    for task in Path(f"/proc/{parent}/task").iterdir():
        children = (task / "children").read_text().split()
        pids.extend(int(pid) for pid in children)
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
    job = _start_job(_write_prompts(tmp_path), out, "--workers", "2")
    _wait_for(lambda: _recorded(out) >= 2, job)
    victims = _worker_pids(job.pid)
    assert len(victims) == 2

    os.kill(victims[0], signal.SIGKILL)
    code, stdout, stderr = _finish(job)

    assert code == 0, stderr
    assert "10 images written, 0 failed" in stdout
    assert "putting them back in the queue" in stderr or "exited with code -9" in stderr
    assert_job_consistent(out, _expected_ids())


def test_killed_job_resumes(tmp_path: Path) -> None:
    out = tmp_path / "out"
    prompts = _write_prompts(tmp_path)
    job = _start_job(prompts, out, "--workers", "2")
    _wait_for(lambda: _recorded(out) >= 3, job)

    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    done_before = _recorded(out)
    assert 3 <= done_before < len(PROMPTS)
    refused = _start_job(prompts, out)
    code, _, stderr = _finish(refused)
    assert code == 2
    assert "--resume" in stderr

    resumed = _start_job(prompts, out, "--resume")
    code, stdout, stderr = _finish(resumed)

    assert code == 0, stderr
    assert f"{len(PROMPTS) - done_before} images written" in stdout
    assert f"{done_before} skipped" in stdout
    assert_job_consistent(out, _expected_ids())


def test_sigterm_leaves_resumable_job(tmp_path: Path) -> None:
    out = tmp_path / "out"
    prompts = _write_prompts(tmp_path)
    job = _start_job(prompts, out)
    _wait_for(lambda: _recorded(out) >= 2, job)

    job.send_signal(signal.SIGTERM)
    code, _, stderr = _finish(job)

    assert code == 128 + signal.SIGTERM, stderr
    assert "--resume" in stderr
    done_before = _recorded(out)
    assert done_before < len(PROMPTS)
    assert _worker_pids(job.pid) == [] if Path(f"/proc/{job.pid}").exists() else True
    resumed = _start_job(prompts, out, "--resume")
    code, stdout, stderr = _finish(resumed)
    assert code == 0, stderr
    assert f"{done_before} skipped" in stdout
    assert_job_consistent(out, _expected_ids())
