"""The GPU choice for every launcher scheme, computed by the pure planner."""

from __future__ import annotations

import logging

import pytest

from safeinfer.errors import GpuBindingError, InvalidTypeError
from safeinfer.gpu import GpuBinding, parse_visible_devices, plan_gpu

UUID_A = "GPU-5ce4a1b2-0d2f-3c4e-8a9b-1f2e3d4c5b6a"
UUID_B = "GPU-77aa01cd-9e8f-4a3b-b2c1-0a9b8c7d6e5f"
MIG_A = "MIG-4b1e3c2d-6f5a-5b7c-9d8e-2a3b4c5d6e7f"
MIG_B = "MIG-GPU-5ce4a1b2-0d2f-3c4e-8a9b-1f2e3d4c5b6a/1/0"


def gpu(physical_id: str, source: str) -> GpuBinding:
    return GpuBinding("cuda:0", 0, physical_id, source, physical_id)


def cpu(source: str) -> GpuBinding:
    return GpuBinding("cpu", None, None, source, "")


@pytest.mark.parametrize(
    ("env", "device_count", "expected"),
    [
        # torchrun and Accelerate: LOCAL_RANK indexes the visible GPUs.
        ({"LOCAL_RANK": "0"}, 4, gpu("0", "LOCAL_RANK")),
        ({"LOCAL_RANK": "3", "RANK": "7", "WORLD_SIZE": "8"}, 4, gpu("3", "LOCAL_RANK")),
        ({"LOCAL_RANK": "1", "CUDA_VISIBLE_DEVICES": "3,5"}, 8, gpu("5", "LOCAL_RANK")),
        ({"LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}, 2, gpu("1", "LOCAL_RANK")),
        # SLURM: SLURM_LOCALID, also when LOCAL_RANK is absent.
        ({"SLURM_LOCALID": "1", "SLURM_PROCID": "5"}, 2, gpu("1", "SLURM_LOCALID")),
        ({"SLURM_LOCALID": "1", "CUDA_VISIBLE_DEVICES": "2,6"}, None, gpu("6", "SLURM_LOCALID")),
        (
            {"SLURM_LOCALID": "3", "SLURM_GPUS_PER_TASK": "1", "CUDA_VISIBLE_DEVICES": "6"},
            8,
            gpu("6", "SLURM_LOCALID"),
        ),
        # torchrun started by srun: torchrun's LOCAL_RANK wins over SLURM_LOCALID.
        ({"LOCAL_RANK": "1", "SLURM_LOCALID": "0"}, 2, gpu("1", "LOCAL_RANK")),
        # MPI launchers.
        (
            {"OMPI_COMM_WORLD_LOCAL_RANK": "1", "OMPI_COMM_WORLD_RANK": "9"},
            2,
            gpu("1", "OMPI_COMM_WORLD_LOCAL_RANK"),
        ),
        ({"MPI_LOCALRANKID": "1", "PMI_RANK": "5"}, 2, gpu("1", "MPI_LOCALRANKID")),
        ({"MV2_COMM_WORLD_LOCAL_RANK": "1"}, 2, gpu("1", "MV2_COMM_WORLD_LOCAL_RANK")),
        # Ray narrows the list to the actor's GPUs, so the actor's device is the first.
        ({"RAY_RAYLET_PID": "123", "CUDA_VISIBLE_DEVICES": "5"}, 8, gpu("5", "ray")),
        ({"RAY_RAYLET_PID": "123", "CUDA_VISIBLE_DEVICES": "2,7"}, 8, gpu("2", "ray")),
        ({"RAY_RAYLET_PID": "123", "CUDA_VISIBLE_DEVICES": ""}, 8, cpu("no-gpu")),
        # Ray told not to narrow the list: the list is the node's, not the worker's.
        (
            {
                "RAY_RAYLET_PID": "1",
                "RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES": "1",
                "CUDA_VISIBLE_DEVICES": "2,7",
            },
            8,
            gpu("2", "default"),
        ),
        ({"RAY_RAYLET_PID": "123"}, 2, gpu("0", "default")),
        # Ray Train sets LOCAL_RANK over a shared list; the local rank wins.
        (
            {"RAY_RAYLET_PID": "1", "LOCAL_RANK": "1", "CUDA_VISIBLE_DEVICES": "4,5"},
            8,
            gpu("5", "LOCAL_RANK"),
        ),
        # This project's launcher: SAFEINFER_GPU plus a narrowed list.
        ({"SAFEINFER_GPU": "5", "CUDA_VISIBLE_DEVICES": "5"}, 8, gpu("5", "SAFEINFER_GPU")),
        (
            {"SAFEINFER_GPU": "5", "CUDA_VISIBLE_DEVICES": "5", "LOCAL_RANK": "3"},
            8,
            gpu("5", "SAFEINFER_GPU"),
        ),
        ({"SAFEINFER_GPU": "cpu", "CUDA_VISIBLE_DEVICES": ""}, 8, cpu("SAFEINFER_GPU")),
        (
            {"SAFEINFER_GPU": UUID_B, "CUDA_VISIBLE_DEVICES": UUID_B},
            None,
            gpu(UUID_B, "SAFEINFER_GPU"),
        ),
        # UUIDs and MIG ids in the list.
        (
            {"LOCAL_RANK": "1", "CUDA_VISIBLE_DEVICES": f"{UUID_A},{UUID_B}"},
            None,
            gpu(UUID_B, "LOCAL_RANK"),
        ),
        ({"LOCAL_RANK": "0", "CUDA_VISIBLE_DEVICES": MIG_A}, None, gpu(MIG_A, "LOCAL_RANK")),
        ({"CUDA_VISIBLE_DEVICES": f"{MIG_B},{MIG_A}"}, None, gpu(MIG_B, "default")),
        # Default and no GPU.
        ({}, 2, gpu("0", "default")),
        ({"CUDA_VISIBLE_DEVICES": "7,1"}, 8, gpu("7", "default")),
        ({}, 0, cpu("no-gpu")),
        ({}, None, cpu("no-gpu")),
        ({"CUDA_VISIBLE_DEVICES": ""}, 4, cpu("no-gpu")),
        ({"CUDA_VISIBLE_DEVICES": "-1"}, 4, cpu("no-gpu")),
        ({"LOCAL_RANK": "3"}, 0, cpu("no-gpu")),
    ],
)
def test_plan_matrix(env: dict[str, str], device_count: int | None, expected: GpuBinding) -> None:
    assert plan_gpu(env, device_count=device_count) == expected


@pytest.mark.parametrize(
    ("gpu_argument", "env", "device_count", "expected"),
    [
        (1, {}, 2, gpu("1", "argument")),
        (1, {"CUDA_VISIBLE_DEVICES": "3,5"}, 8, gpu("5", "argument")),
        ("5", {"CUDA_VISIBLE_DEVICES": "3,5"}, 8, gpu("5", "argument")),
        (UUID_A, {"CUDA_VISIBLE_DEVICES": f"{UUID_B},{UUID_A}"}, None, gpu(UUID_A, "argument")),
        ("cpu", {"LOCAL_RANK": "1"}, 2, cpu("argument")),
        (UUID_A, {}, 2, gpu(UUID_A, "argument")),
        (0, {"LOCAL_RANK": "1", "SAFEINFER_GPU": "1"}, 2, gpu("0", "argument")),
    ],
)
def test_plan_explicit_argument(
    gpu_argument: int | str, env: dict[str, str], device_count: int | None, expected: GpuBinding
) -> None:
    assert plan_gpu(env, gpu=gpu_argument, device_count=device_count) == expected


def test_plan_global_rank_never_indexes() -> None:
    env = {"RANK": "5", "WORLD_SIZE": "8"}
    binding = plan_gpu(env, device_count=8)
    assert binding.physical_id == "0"
    assert binding.source == "default"


def test_plan_global_rank_alone_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="safeinfer.gpu"):
        plan_gpu({"RANK": "5"}, device_count=8)
    assert "RANK=5" in caplog.text
    assert "not a device index" in caplog.text


def test_plan_more_ranks_than_gpus_raises() -> None:
    env = {"LOCAL_RANK": "2", "CUDA_VISIBLE_DEVICES": "3,5"}
    with pytest.raises(GpuBindingError) as caught:
        plan_gpu(env, device_count=8)
    message = str(caught.value)
    assert "LOCAL_RANK=2" in message
    assert "only 2 GPU(s)" in message
    assert "CUDA_VISIBLE_DEVICES=3,5" in message


def test_plan_oversized_local_world_raises() -> None:
    env = {"LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "4"}
    with pytest.raises(GpuBindingError, match=r"LOCAL_WORLD_SIZE=4 .* only 2 GPU"):
        plan_gpu(env, device_count=2)


def test_plan_slurm_more_tasks_than_gpus_raises() -> None:
    with pytest.raises(GpuBindingError, match=r"SLURM_LOCALID=2 but only 2 GPU"):
        plan_gpu({"SLURM_LOCALID": "2"}, device_count=2)


def test_plan_not_strict_wraps_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    env = {"LOCAL_RANK": "3", "LOCAL_WORLD_SIZE": "4"}
    with caplog.at_level(logging.WARNING, logger="safeinfer.gpu"):
        binding = plan_gpu(env, device_count=2, strict=False)
    assert binding == gpu("1", "LOCAL_RANK")
    assert "LOCAL_RANK=3" in caplog.text
    assert "strict=False" in caplog.text


@pytest.mark.parametrize(
    ("gpu_argument", "env", "device_count", "fragment"),
    [
        (2, {}, 2, "GPU index 2"),
        ("4", {"CUDA_VISIBLE_DEVICES": "3,5"}, 8, "not among the visible GPUs"),
        (0, {}, 0, "no GPU is visible"),
        (UUID_A, {"CUDA_VISIBLE_DEVICES": UUID_B}, None, "not among the visible GPUs"),
    ],
)
def test_plan_impossible_request_raises(
    gpu_argument: int | str, env: dict[str, str], device_count: int | None, fragment: str
) -> None:
    with pytest.raises(GpuBindingError, match=fragment):
        plan_gpu(env, gpu=gpu_argument, device_count=device_count)


def test_plan_safeinfer_gpu_not_visible_raises() -> None:
    env = {"SAFEINFER_GPU": "6", "CUDA_VISIBLE_DEVICES": "3,5"}
    with pytest.raises(GpuBindingError, match=r"SAFEINFER_GPU"):
        plan_gpu(env, device_count=8)


@pytest.mark.parametrize("value", ["-1", "one", "1.5", ""])
def test_plan_invalid_local_rank_raises(value: str) -> None:
    env = {"LOCAL_RANK": " ", "OMPI_COMM_WORLD_LOCAL_RANK": value}
    if value == "":
        assert plan_gpu(env, device_count=2).source == "default"
        return
    with pytest.raises(GpuBindingError, match="OMPI_COMM_WORLD_LOCAL_RANK"):
        plan_gpu(env, device_count=2)


def test_plan_rejects_bool_gpu() -> None:
    with pytest.raises(InvalidTypeError, match="invalid gpu True: expected an int index"):
        plan_gpu({}, gpu=True, device_count=2)


@pytest.mark.parametrize(
    ("value", "device_count", "expected"),
    [
        (None, None, None),
        ("", None, []),
        ("0,1", None, ["0", "1"]),
        (" 3 , 05 ", None, ["3", "5"]),
        ("0,-1,1", None, ["0"]),
        ("-1", None, []),
        ("2,9,1", 4, ["2"]),
        ("1,1,2", None, ["1"]),
        (f"{UUID_A},bogus,{UUID_B}", None, [UUID_A]),
        (f"{MIG_A},{MIG_B}", None, [MIG_A, MIG_B]),
        ("GPU-", None, []),
    ],
)
def test_parse_visible_devices(
    value: str | None, device_count: int | None, expected: list[str] | None
) -> None:
    assert parse_visible_devices(value, device_count=device_count) == expected


def test_plan_is_pure() -> None:
    env = {"LOCAL_RANK": "1", "CUDA_VISIBLE_DEVICES": "3,5"}
    before = dict(env)
    plan_gpu(env, device_count=8)
    assert env == before
