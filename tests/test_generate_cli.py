"""The generate command as a real process: output-directory lock, option checks, exits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from generate_checks import TEST_STEPS, assert_job_consistent

from safeinfer.jobs import make_items, read_prompts

pytestmark = pytest.mark.slow

#: Steps per image of tiny-sd that keep the first job running while the second starts.
SLOW_STEPS = 20
PROMPTS = [f"a red fox number {index}" for index in range(6)]
#: Seconds a test waits for a job or for the state it needs.
WAIT_SECONDS = 120.0


def _command(prompts: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "safeinfer",
        "generate",
        str(prompts),
        "--out",
        str(out),
        "--threads-per-worker",
        "1",
        "--no-progress",
        *extra,
    ]


def _run(prompts: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _command(prompts, out, *extra),
        capture_output=True,
        text=True,
        timeout=WAIT_SECONDS,
        check=False,
    )


def _write_prompts(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_second_job_in_same_out_exits(tmp_path: Path) -> None:
    prompts = _write_prompts(tmp_path, PROMPTS)
    out = tmp_path / "out"
    first = subprocess.Popen(
        _command(prompts, out, "--model", "tiny-sd", "--steps", str(SLOW_STEPS)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        lock_file = out / "safeinfer-job.lock"
        deadline = time.monotonic() + WAIT_SECONDS
        # The holder writes its pid into the lock file once it holds the lock.
        while not (lock_file.exists() and lock_file.stat().st_size > 0):
            assert first.poll() is None, first.communicate()[1]
            assert time.monotonic() < deadline, "first job never took the lock"
            time.sleep(0.05)

        second = _run(prompts, out, "--model", "tiny-sd", "--steps", str(SLOW_STEPS))
        first_code = first.wait(timeout=WAIT_SECONDS)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        first.communicate()

    assert second.returncode == 2, second.stderr
    assert f"another job is running in {out} (pid {first.pid} on host" in second.stderr
    assert "wait for it or use another --out" in second.stderr
    assert first_code == 0
    expected = [item.id for item in make_items(read_prompts(PROMPTS))]
    assert_job_consistent(out, expected)


def test_lock_released_for_resume(tmp_path: Path) -> None:
    prompts = _write_prompts(tmp_path, ["7", "3"])
    out = tmp_path / "out"

    first = _run(prompts, out, "--steps", str(TEST_STEPS))
    again = _run(prompts, out, "--steps", str(TEST_STEPS), "--resume")

    assert first.returncode == 0, first.stderr
    assert again.returncode == 0, again.stderr
    assert "2 skipped" in again.stdout


def test_signal_after_last_item_succeeds(tmp_path: Path) -> None:
    prompts = _write_prompts(tmp_path, ["7", "3"])
    out = tmp_path / "out"
    job = subprocess.Popen(
        _command(prompts, out, "--steps", str(TEST_STEPS)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + WAIT_SECONDS
        while _recorded(out) < 2:
            assert job.poll() is None, job.communicate()[1]
            assert time.monotonic() < deadline, "job never recorded its items"
            time.sleep(0.01)
        # The job may exit before the signal lands; either way it made every item.
        if job.poll() is None:
            os.kill(job.pid, signal.SIGINT)
        stdout, stderr = job.communicate(timeout=WAIT_SECONDS)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.communicate()

    assert job.returncode == 0, stderr
    assert "stopped by signal" not in stderr
    assert "2 images written" in stdout


def _recorded(out: Path) -> int:
    manifest = out / "manifest-cpu0.jsonl"
    try:
        return len(manifest.read_text().splitlines())
    except FileNotFoundError:
        return 0


def test_invalid_gpu_id_exits_before_workers(tmp_path: Path) -> None:
    prompts = _write_prompts(tmp_path, ["7"])

    result = _run(prompts, tmp_path / "out", "--gpus", "abc")

    assert result.returncode == 2
    assert (
        "invalid GPU id 'abc': expected indices like 0,1, UUIDs, 'auto' or 'cpu'" in result.stderr
    )
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_gpu_on_host_without_gpus(tmp_path: Path) -> None:
    from safeinfer.gpu import count_gpus

    environment = {key: value for key, value in os.environ.items() if key != "CUDA_VISIBLE_DEVICES"}
    if count_gpus(environment).count != 0:
        pytest.skip("this host has GPUs")
    prompts = _write_prompts(tmp_path, ["7"])

    result = subprocess.run(
        _command(prompts, tmp_path / "out", "--gpus", "0"),
        capture_output=True,
        text=True,
        timeout=WAIT_SECONDS,
        check=False,
        env=environment,
    )

    assert result.returncode == 2
    assert "no GPU found on this host" in result.stderr
    assert "use --gpus cpu" in result.stderr


def test_gpu_with_cpu_build_of_torch(tmp_path: Path) -> None:
    import torch

    if torch.version.cuda is not None:
        pytest.skip("torch is built with CUDA")
    prompts = _write_prompts(tmp_path, ["7"])
    # With CUDA_VISIBLE_DEVICES set the job cannot count GPUs itself, so the worker
    # finds out when it binds its GPU.
    environment = {**os.environ, "CUDA_VISIBLE_DEVICES": "0"}

    result = subprocess.run(
        _command(prompts, tmp_path / "out", "--gpus", "0", "--steps", str(TEST_STEPS)),
        capture_output=True,
        text=True,
        timeout=WAIT_SECONDS,
        check=False,
        env=environment,
    )

    assert result.returncode == 2
    assert f"GPU 0 is not usable: torch {torch.__version__} is built without CUDA" in result.stderr
    assert "use --gpus cpu" in result.stderr
    assert "AssertionError" not in result.stderr


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_guidance_must_be_finite(tmp_path: Path, value: str) -> None:
    prompts = _write_prompts(tmp_path, ["7"])

    result = _run(prompts, tmp_path / "out", f"--guidance={value}")

    assert result.returncode == 2
    assert f"invalid guidance {float(value)!r}: expected a finite number" in result.stderr
    assert not (tmp_path / "out").exists()


def test_worker_that_cannot_load_exits_quietly(tmp_path: Path) -> None:
    from safeinfer.tiny import load

    folder = tmp_path / "broken-model"
    load("tiny-sd").save_pretrained(folder)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    prompts = _write_prompts(tmp_path, ["7"])

    # The parent sends SIGTERM while the worker exits, and whether it lands during
    # interpreter teardown is a matter of timing, so the test runs the job twice.
    for attempt in range(2):
        result = _run(prompts, tmp_path / f"out{attempt}", "--model", str(folder))

        assert result.returncode == 2
        assert f"cannot start workers with model '{folder}'" in result.stderr
        assert "Exception ignored" not in result.stderr
        assert "Traceback" not in result.stderr
