"""bind_gpu, claim_gpu, worker environments and thread budgets, with real processes."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from safeinfer.errors import ConfigError, GpuBindingError
from safeinfer.gpu import (
    THREAD_ENV_VARS,
    CudaState,
    apply_thread_budget,
    available_cores,
    bind_gpu,
    count_gpus,
    cuda_state,
    thread_budget,
    worker_env,
)

#: Variables that would steer a child's binding; each test sets the ones it means.
STEERING = (
    "CUDA_VISIBLE_DEVICES",
    "SAFEINFER_GPU",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "SLURM_LOCALID",
    "OMPI_COMM_WORLD_LOCAL_RANK",
    "MPI_LOCALRANKID",
    "MV2_COMM_WORLD_LOCAL_RANK",
    "RAY_RAYLET_PID",
    "RANK",
)

CHILD_TIMEOUT = 60


def clean_env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in STEERING}
    env.update(extra)
    return env


def run_child(code: str, env: Mapping[str, str]) -> dict[str, object]:
    completed = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    result: dict[str, object] = json.loads(completed.stdout.strip().splitlines()[-1])
    return result


@pytest.fixture
def bind_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Clear the steering variables in this process; monkeypatch restores them after the test."""
    for name in STEERING:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def stub_torch(*, initialized: bool) -> types.ModuleType:
    """A stand-in for torch whose ``cuda.is_initialized()`` returns ``initialized``.

    A CPU build of torch never reports CUDA as initialised, so this stub drives the
    late-binding path. The detection reads nothing else from torch.
    """
    module = types.ModuleType("torch")
    module.cuda = types.SimpleNamespace(is_initialized=lambda: initialized)  # type: ignore[attr-defined]
    return module


# Binding in a real child process.


def test_child_imports_torch_after_binding() -> None:
    result = run_child(
        """
        import json, os
        from safeinfer.gpu import apply_thread_budget, bind_gpu
        binding = bind_gpu(device_count=8)
        import torch
        apply_thread_budget(1)
        print(json.dumps({
            "visible": os.environ["CUDA_VISIBLE_DEVICES"],
            "assigned": os.environ["SAFEINFER_GPU"],
            "torch_count": torch.cuda.device_count(),
            "device": binding.device,
            "physical_id": binding.physical_id,
            "source": binding.source,
            "torch_threads": torch.get_num_threads(),
            "omp": os.environ["OMP_NUM_THREADS"],
        }))
        """,
        clean_env(LOCAL_RANK="1", CUDA_VISIBLE_DEVICES="3,5"),
    )
    assert result["visible"] == "5"
    assert result["assigned"] == "5"
    assert result["physical_id"] == "5"
    assert result["source"] == "LOCAL_RANK"
    assert result["device"] == "cuda:0"
    # At most the one narrowed GPU; none on a host without a GPU.
    assert result["torch_count"] in (0, 1)
    assert result["torch_threads"] == 1
    assert result["omp"] == "1"


def test_child_is_available_before_bind() -> None:
    # torch.cuda.is_available() loads the CUDA driver where one exists, which cuda_state
    # reports as DRIVER_LOADED; a CPU build loads none, so binding still works here.
    result = run_child(
        """
        import json, os
        import torch
        available = torch.cuda.is_available()
        from safeinfer.gpu import CudaState, bind_gpu, cuda_state
        state = cuda_state()
        try:
            binding = bind_gpu()
            outcome = binding.physical_id
        except Exception as error:
            outcome = type(error).__name__
        print(json.dumps({
            "available": available,
            "initialized": torch.cuda.is_initialized(),
            "state": state.value,
            "outcome": outcome,
            "visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
        }))
        """,
        clean_env(SLURM_LOCALID="1", CUDA_VISIBLE_DEVICES="0,1"),
    )
    assert result["initialized"] is False
    if result["available"]:
        assert result["state"] == "driver-loaded"
        assert result["outcome"] == "GpuBindingError"
        assert result["visible"] == "0,1"
    else:
        assert result["state"] == "untouched"
        assert result["outcome"] == "1"
        assert result["visible"] == "1"


def test_child_with_worker_env_binds_assigned_gpu() -> None:
    env = worker_env(gpu="GPU-77aa01cd", threads=2, base=clean_env(LOCAL_RANK="3"))
    result = run_child(
        """
        import json, os
        from safeinfer.gpu import bind_gpu
        first = bind_gpu()
        second = bind_gpu()
        print(json.dumps({
            "source": first.source,
            "physical_id": first.physical_id,
            "same": first == second,
            "visible": os.environ["CUDA_VISIBLE_DEVICES"],
            "threads": os.environ["SAFEINFER_THREADS"],
        }))
        """,
        env,
    )
    assert result["source"] == "SAFEINFER_GPU"
    assert result["physical_id"] == "GPU-77aa01cd"
    assert result["same"] is True
    assert result["visible"] == "GPU-77aa01cd"
    assert result["threads"] == "2"


# Binding in this process: environment changes and late binding.


def test_bind_narrows_environment(bind_env: pytest.MonkeyPatch) -> None:
    bind_env.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    bind_env.setenv("OMPI_COMM_WORLD_LOCAL_RANK", "1")
    binding = bind_gpu(device_count=8)
    assert binding.physical_id == "5"
    assert binding.device == "cuda:0"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "5"
    assert os.environ["SAFEINFER_GPU"] == "5"


def test_bind_without_driver_keeps_plan(bind_env: pytest.MonkeyPatch) -> None:
    if count_gpus({}).driver is not False:
        pytest.skip("NVML is missing or found a driver on this host")
    bind_env.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    bind_env.setenv("LOCAL_RANK", "1")
    binding = bind_gpu()
    assert binding.device == "cpu"
    assert binding.ordinal is None
    assert binding.physical_id == "5"
    assert binding.visible_devices == "5"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "5"


def test_bind_without_gpu_sets_empty_list(bind_env: pytest.MonkeyPatch) -> None:
    binding = bind_gpu(device_count=0)
    assert binding.device == "cpu"
    assert binding.source == "no-gpu"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""
    assert os.environ["SAFEINFER_GPU"] == "cpu"


def test_bind_after_cuda_init_raises(bind_env: pytest.MonkeyPatch) -> None:
    bind_env.setitem(sys.modules, "torch", stub_torch(initialized=True))
    bind_env.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    bind_env.setenv("LOCAL_RANK", "1")
    with pytest.raises(GpuBindingError) as caught:
        bind_gpu(device_count=8)
    message = str(caught.value)
    assert "already initialised CUDA" in message
    assert "before the first CUDA call" in message
    assert "CUDA_VISIBLE_DEVICES=5" in message
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3,5"
    assert "SAFEINFER_GPU" not in os.environ


def test_bind_after_cuda_init_not_strict_warns(
    bind_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    bind_env.setitem(sys.modules, "torch", stub_torch(initialized=True))
    bind_env.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    bind_env.setenv("LOCAL_RANK", "1")
    with caplog.at_level(logging.WARNING, logger="safeinfer.gpu"):
        binding = bind_gpu(strict=False, device_count=8)
    assert "already initialised CUDA" in caplog.text
    assert binding.device == "cuda:1"
    assert binding.ordinal == 1
    assert binding.physical_id == "5"
    assert binding.visible_devices == "3,5"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3,5"


def test_bind_after_cuda_init_already_narrowed(bind_env: pytest.MonkeyPatch) -> None:
    # A launcher that set the list before start-up leaves nothing to change.
    bind_env.setitem(sys.modules, "torch", stub_torch(initialized=True))
    bind_env.setenv("CUDA_VISIBLE_DEVICES", "5")
    bind_env.setenv("SAFEINFER_GPU", "5")
    binding = bind_gpu(device_count=8)
    assert binding.device == "cuda:0"
    assert binding.physical_id == "5"


def test_cuda_state_reads_torch_flag() -> None:
    assert cuda_state(torch_module=stub_torch(initialized=True)) is CudaState.INITIALIZED
    assert cuda_state(torch_module=stub_torch(initialized=False), proc_maps="") is (
        CudaState.UNTOUCHED
    )


def test_cuda_state_sees_driver_library() -> None:
    maps = (
        "7f0000000000-7f0000100000 r-xp 00000000 08:01 1234 /usr/lib/libcudart.so.12\n"
        "7f1000000000-7f1000200000 r-xp 00000000 08:01 5678 "
        "/usr/lib/x86_64-linux-gnu/libcuda.so.550.54.15\n"
    )
    state = cuda_state(torch_module=stub_torch(initialized=False), proc_maps=maps)
    assert state is CudaState.DRIVER_LOADED
    runtime_only = maps.splitlines()[0]
    assert cuda_state(torch_module=None, proc_maps=runtime_only) is CudaState.UNTOUCHED


def test_cuda_state_of_this_process() -> None:
    # This test process may have imported the CPU build of torch; it has no CUDA driver.
    if Path("/dev/nvidiactl").exists():
        pytest.skip("a host with an NVIDIA driver may have loaded it")
    assert cuda_state() is CudaState.UNTOUCHED


# Counting GPUs.


def test_count_gpus_trusts_visible_list_without_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)
    inventory = count_gpus({"CUDA_VISIBLE_DEVICES": "3,5"})
    assert inventory.count is None
    assert inventory.source == "CUDA_VISIBLE_DEVICES"


def test_count_gpus_from_device_nodes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)
    for name in ("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm", "nvidia-caps"):
        (tmp_path / name).touch()
    inventory = count_gpus({}, dev_dir=str(tmp_path))
    assert inventory.count == 2
    assert inventory.driver is None


def test_count_gpus_on_this_host() -> None:
    inventory = count_gpus({})
    if inventory.source == "nvml":
        assert inventory.driver is not None
    assert inventory.count is not None
    assert inventory.count >= 0


# Claiming GPUs across processes.

CLAIM_CHILD = """
import json, os, sys
from safeinfer.errors import LockTimeout
from safeinfer.gpu import claim_gpu
try:
    claim = claim_gpu(lock_dir=sys.argv[1], timeout=float(sys.argv[2]), device_count=2)
except LockTimeout as error:
    print(json.dumps({"error": str(error)}), flush=True)
    sys.exit(3)
print(json.dumps({
    "physical_id": claim.binding.physical_id,
    "visible": os.environ["CUDA_VISIBLE_DEVICES"],
    "source": claim.binding.source,
}), flush=True)
sys.stdin.read()
claim.release()
"""


def start_claimer(lock_dir: Path, timeout: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CLAIM_CHILD, str(lock_dir), str(timeout)],
        env=clean_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def first_line(process: subprocess.Popen[str]) -> dict[str, str]:
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line, process.stderr.read() if process.stderr else ""
    result: dict[str, str] = json.loads(line)
    return result


def test_claim_spreads_three_processes_over_two_gpus(tmp_path: Path) -> None:
    processes = []
    try:
        first = start_claimer(tmp_path, 20)
        processes.append(first)
        first_claim = first_line(first)
        second = start_claimer(tmp_path, 20)
        processes.append(second)
        second_claim = first_line(second)
        assert {first_claim["physical_id"], second_claim["physical_id"]} == {"0", "1"}
        assert first_claim["visible"] == first_claim["physical_id"]
        assert first_claim["source"] == "claim"

        # With both GPUs taken a short wait times out and names the holders.
        late = start_claimer(tmp_path, 0.3)
        processes.append(late)
        refusal = first_line(late)
        assert late.wait(CHILD_TIMEOUT) == 3
        assert "all 2 visible GPU(s) are claimed" in refusal["error"]
        assert f"pid {first.pid}" in refusal["error"]
        assert f"pid {second.pid}" in refusal["error"]

        # A third process waits; killing a holder hands it that holder's GPU.
        third = start_claimer(tmp_path, 30)
        processes.append(third)
        first.send_signal(signal.SIGKILL)
        first.wait(CHILD_TIMEOUT)
        third_claim = first_line(third)
        assert third_claim["physical_id"] == first_claim["physical_id"]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait(CHILD_TIMEOUT)
            for stream in (process.stdin, process.stdout, process.stderr):
                if stream is not None:
                    stream.close()


def test_claim_release_frees_gpu(bind_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from safeinfer.gpu import claim_gpu

    with claim_gpu(lock_dir=tmp_path, timeout=1, device_count=1) as claim:
        assert claim.binding.physical_id == "0"
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "0"
    bind_env.delenv("CUDA_VISIBLE_DEVICES")
    bind_env.delenv("SAFEINFER_GPU")
    again = claim_gpu(lock_dir=tmp_path, timeout=0, device_count=1)
    assert again.binding.physical_id == "0"
    again.release()
    again.release()


def test_claim_without_gpu_binds_cpu(bind_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from safeinfer.gpu import claim_gpu

    claim = claim_gpu(lock_dir=tmp_path, device_count=0)
    assert claim.binding.device == "cpu"
    assert claim.lock_file is None
    assert list(tmp_path.iterdir()) == []


# Worker environments and thread budgets.


def test_worker_env_gpu_worker() -> None:
    base = {"PATH": "/usr/bin", "OPENBLAS_CORETYPE": "Haswell", "CUDA_VISIBLE_DEVICES": "3,5"}
    env = worker_env(gpu="5", threads=3, base=base)
    assert env["CUDA_VISIBLE_DEVICES"] == "5"
    assert env["SAFEINFER_GPU"] == "5"
    for name in THREAD_ENV_VARS:
        assert env[name] == "3", name
    assert env["OPENBLAS_CORETYPE"] == "Haswell"
    assert env["PATH"] == "/usr/bin"
    assert base["CUDA_VISIBLE_DEVICES"] == "3,5"


def test_worker_env_cpu_worker() -> None:
    env = worker_env(gpu=None, threads=None, base={"OMP_NUM_THREADS": "8"})
    assert env["CUDA_VISIBLE_DEVICES"] == ""
    assert env["SAFEINFER_GPU"] == "cpu"
    assert env["OMP_NUM_THREADS"] == "8"
    assert "MKL_NUM_THREADS" not in env


@pytest.mark.parametrize("gpu", ["0,1", "bogus", "abc", "", "-1", 3])
def test_worker_env_rejects_bad_gpu_id(gpu: Any) -> None:
    with pytest.raises(ConfigError, match="invalid GPU id") as raised:
        worker_env(gpu=gpu, threads=None, base={})
    assert repr(gpu) in str(raised.value)
    assert "index, GPU- UUID or MIG- id" in str(raised.value)


def test_worker_env_rejects_bad_threads() -> None:
    with pytest.raises(ConfigError, match="invalid thread count 0"):
        worker_env(gpu="0", threads=0, base={})


@pytest.mark.parametrize(
    ("workers", "cores", "expected"),
    [(1, 16, 16), (4, 16, 4), (3, 8, 2), (8, 2, 1), (2, 1, 1)],
)
def test_thread_budget(workers: int, cores: int, expected: int) -> None:
    assert thread_budget(workers, cores=cores) == expected


@pytest.mark.parametrize(("workers", "cores"), [(0, 4), (-1, 4), (2, 0)])
def test_thread_budget_rejects_bad_counts(workers: int, cores: int) -> None:
    with pytest.raises(ConfigError, match="invalid"):
        thread_budget(workers, cores=cores)


def test_thread_budget_defaults_to_affinity() -> None:
    assert thread_budget(1) == available_cores()
    assert available_cores() <= len(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    ("cpu_max", "cap"),
    [("150000 100000\n", 2), ("50000 100000\n", 1), ("max 100000\n", None), ("garbage", None)],
)
def test_available_cores_honours_cgroup_quota(
    tmp_path: Path, cpu_max: str, cap: int | None
) -> None:
    path = tmp_path / "cpu.max"
    path.write_text(cpu_max)
    affinity = len(os.sched_getaffinity(0))
    expected = affinity if cap is None else min(affinity, cap)
    assert available_cores(cgroup_cpu_max=str(path)) == expected


def test_apply_thread_budget_sets_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (*THREAD_ENV_VARS, "OPENBLAS_CORETYPE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    apply_thread_budget(2)
    for name in THREAD_ENV_VARS:
        assert os.environ[name] == "2", name
    assert os.environ["OPENBLAS_CORETYPE"] == "Haswell"
    with pytest.raises(ConfigError, match="invalid thread count"):
        apply_thread_budget(0)
