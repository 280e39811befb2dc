"""Rank detection, the split by rank and GPU binding under each launcher's variables."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from safeinfer.errors import ConfigError
from safeinfer.gpu import plan_gpu
from safeinfer.jobs import JobSummary, make_items, read_prompts
from safeinfer.jobs._cluster import launch_ranks
from safeinfer.jobs._job import _check_root
from safeinfer.jobs._rank_engine import merge_summaries
from safeinfer.jobs._ranks import RankInfo, detect_ranks, gpu_request, rank_threads

TORCHRUN = {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4"}
ACCELERATE = {**TORCHRUN, "ACCELERATE_MIXED_PRECISION": "no", "ACCELERATE_DYNAMO_BACKEND": "NO"}
SRUN = {
    "SLURM_PROCID": "6",
    "SLURM_NTASKS": "8",
    "SLURM_STEP_NUM_TASKS": "8",
    "SLURM_LOCALID": "2",
    "SLURM_STEP_ID": "0",
    "SLURM_JOB_ID": "4242",
}
OPEN_MPI = {
    "OMPI_COMM_WORLD_RANK": "7",
    "OMPI_COMM_WORLD_SIZE": "8",
    "OMPI_COMM_WORLD_LOCAL_RANK": "3",
    "OMPI_COMM_WORLD_LOCAL_SIZE": "4",
}
MPICH = {"PMI_RANK": "4", "PMI_SIZE": "8", "MPI_LOCALRANKID": "0", "MPI_LOCALNRANKS": "4"}
#: The variables of a SLURM batch script itself, outside any srun step.
BATCH_SCRIPT = {"SLURM_PROCID": "0", "SLURM_NTASKS": "8", "SLURM_LOCALID": "0", "SLURM_JOB_ID": "1"}


@pytest.mark.parametrize(
    ("env", "launcher", "rank", "world_size", "local_rank"),
    [
        (TORCHRUN, "torchrun", 5, 8, 1),
        (ACCELERATE, "torchrun", 5, 8, 1),
        (SRUN, "slurm", 6, 8, 2),
        (OPEN_MPI, "openmpi", 7, 8, 3),
        (MPICH, "mpich", 4, 8, 0),
        # torchrun started by srun: torchrun's variables describe the ranks.
        ({**SRUN, "RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "0"}, "torchrun", 3, 4, 0),
        # mpirun in a batch script: the script's SLURM variables must not win.
        ({**BATCH_SCRIPT, **OPEN_MPI}, "openmpi", 7, 8, 3),
        # srun --mpi=pmi2 sets PMI_RANK without a local rank of its own.
        ({**SRUN, "PMI_RANK": "6", "PMI_SIZE": "8"}, "mpich", 6, 8, None),
    ],
)
def test_detect_ranks_per_launcher(
    env: dict[str, str], launcher: str, rank: int, world_size: int, local_rank: int | None
) -> None:
    ranks = detect_ranks(env)

    assert ranks is not None
    assert ranks.launcher == launcher
    assert ranks.rank == rank
    assert ranks.world_size == world_size
    assert ranks.local_rank == local_rank


@pytest.mark.parametrize(
    "env",
    [
        {},
        BATCH_SCRIPT,
        {"RANK": "0"},  # no world size
        {"RAY_RAYLET_PID": "1234", "CUDA_VISIBLE_DEVICES": "2"},
        {"RANK": " ", "WORLD_SIZE": "2"},
    ],
    ids=["nothing", "batch-script", "rank-only", "ray-worker", "blank-rank"],
)
def test_detect_ranks_without_launcher(env: dict[str, str]) -> None:
    assert detect_ranks(env) is None


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"RANK": "one", "WORLD_SIZE": "2"}, "RANK"),
        ({"RANK": "-1", "WORLD_SIZE": "2"}, "RANK"),
        ({"RANK": "2", "WORLD_SIZE": "2"}, "RANK=2"),
        ({"RANK": "0", "WORLD_SIZE": "0"}, "WORLD_SIZE=0"),
        ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "x"}, "LOCAL_RANK"),
    ],
)
def test_detect_ranks_invalid_values(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        detect_ranks(env)


#: Launcher environments on a host with 4 GPUs, and the physical GPU each process gets.
#: The global ranks (5, 6, 7, 4) are all valid GPU indices too, so a binding that used
#: them would pick a different GPU and fail here.
GPU_MATRIX = [
    pytest.param(TORCHRUN, "1", "LOCAL_RANK", id="torchrun"),
    pytest.param(ACCELERATE, "1", "LOCAL_RANK", id="accelerate"),
    pytest.param(SRUN, "2", "SLURM_LOCALID", id="srun"),
    pytest.param(
        {**SRUN, "SLURM_LOCALID": "3", "SLURM_GPUS_PER_TASK": "1", "CUDA_VISIBLE_DEVICES": "3"},
        "3",
        "SLURM_LOCALID",
        id="srun-gpus-per-task",
    ),
    pytest.param(OPEN_MPI, "3", "OMPI_COMM_WORLD_LOCAL_RANK", id="openmpi"),
    pytest.param(MPICH, "0", "MPI_LOCALRANKID", id="mpich"),
    pytest.param({**BATCH_SCRIPT, **OPEN_MPI}, "3", "argument", id="mpirun-in-batch-script"),
    pytest.param({**SRUN, "PMI_RANK": "6", "PMI_SIZE": "8"}, "2", "SLURM_LOCALID", id="srun-pmi2"),
    pytest.param(
        {**SRUN, "RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "0"}, "0", "LOCAL_RANK", id="nested"
    ),
    pytest.param({**TORCHRUN, "SAFEINFER_GPU": "2"}, "2", "SAFEINFER_GPU", id="explicit-gpu"),
    pytest.param(
        {**TORCHRUN, "CUDA_VISIBLE_DEVICES": "4,5,6,7"}, "5", "LOCAL_RANK", id="narrowed-list"
    ),
]


@pytest.mark.parametrize(("env", "physical_id", "source"), GPU_MATRIX)
def test_gpu_binding_per_launcher(env: dict[str, str], physical_id: str, source: str) -> None:
    ranks = detect_ranks(env)
    assert ranks is not None

    binding = plan_gpu(env, gpu=gpu_request(ranks, env), device_count=8)

    assert binding.physical_id == physical_id
    assert binding.source == source
    assert binding.device == "cuda:0"
    assert binding.visible_devices == physical_id


@pytest.mark.parametrize("env", [TORCHRUN, SRUN, OPEN_MPI, MPICH], ids=lambda env: next(iter(env)))
def test_gpu_binding_cpu_host(env: dict[str, str]) -> None:
    ranks = detect_ranks(env)
    assert ranks is not None

    binding = plan_gpu(env, gpu=gpu_request(ranks, env), device_count=0)

    assert binding.device == "cpu"
    assert binding.physical_id is None


def test_gpu_binding_ray_worker() -> None:
    env = {"RAY_RAYLET_PID": "1234", "CUDA_VISIBLE_DEVICES": "2"}

    binding = plan_gpu(env, device_count=4)

    assert detect_ranks(env) is None
    assert (binding.physical_id, binding.source, binding.device) == ("2", "ray", "cuda:0")


def test_gpu_binding_too_many_local_ranks() -> None:
    env = {"RANK": "2", "WORLD_SIZE": "3", "LOCAL_RANK": "2", "LOCAL_WORLD_SIZE": "3"}
    ranks = detect_ranks(env)
    assert ranks is not None

    from safeinfer.errors import GpuBindingError

    with pytest.raises(GpuBindingError, match="LOCAL_WORLD_SIZE=3"):
        plan_gpu(env, gpu=gpu_request(ranks, env), device_count=2)


@given(
    count=st.integers(min_value=0, max_value=200),
    world_size=st.integers(min_value=1, max_value=17),
)
def test_share_partitions_items(count: int, world_size: int) -> None:
    items = list(range(count))
    shares = [RankInfo("torchrun", rank, world_size).share(items) for rank in range(world_size)]

    flat = [item for share in shares for item in share]
    assert sorted(flat) == items
    assert max(len(share) for share in shares) - min(len(share) for share in shares) <= 1


def test_share_same_after_resume() -> None:
    items = make_items(
        read_prompts([f"prompt {index}" for index in range(10)]), images_per_prompt=2
    )
    again = make_items(
        read_prompts([f"prompt {index}" for index in range(10)]), images_per_prompt=2
    )
    ranks = RankInfo("slurm", 1, 3)

    first = [item.id for item in ranks.share(items)]
    second = [item.id for item in ranks.share(again)]

    assert first == second
    assert first == [item.id for item in items[1::3]]


def test_manifest_names_per_rank() -> None:
    ranks = RankInfo("torchrun", 1, 3)

    assert ranks.worker == "rank1"
    assert ranks.manifest_name == "manifest-rank1.jsonl"
    assert ranks.peer_manifest_names() == {"manifest-rank0.jsonl", "manifest-rank2.jsonl"}


def test_check_root_ignores_peer_manifests(tmp_path: Path) -> None:
    ranks = RankInfo("torchrun", 1, 2)
    (tmp_path / "manifest-rank0.jsonl").write_text("")

    _check_root(tmp_path, resume=False, ignore=ranks.peer_manifest_names())


@pytest.mark.parametrize("name", ["manifest-rank1.jsonl", "manifest-rank2.jsonl", "manifest.jsonl"])
def test_check_root_rejects_other_jobs(tmp_path: Path, name: str) -> None:
    ranks = RankInfo("torchrun", 1, 2)
    (tmp_path / name).write_text("")

    with pytest.raises(ConfigError, match=name):
        _check_root(tmp_path, resume=False, ignore=ranks.peer_manifest_names())


def test_launch_ranks_needs_two_ranks(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SLURM_PROCID", "OMPI_COMM_WORLD_RANK", "PMI_RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert launch_ranks("local") is None

    monkeypatch.setenv("WORLD_SIZE", "2")
    ranks = launch_ranks("local")
    assert ranks is not None
    assert ranks.world_size == 2
    assert launch_ranks("ray") is None

    with pytest.raises(ConfigError, match="invalid engine 'spark'"):
        launch_ranks("spark")


def test_rank_threads_share_the_node() -> None:
    from safeinfer.gpu import available_cores

    cores = available_cores()
    assert rank_threads(RankInfo("torchrun", 0, 4, 0, 2), None) == max(1, cores // 2)
    assert rank_threads(RankInfo("slurm", 0, 4, 0, None), None) == cores
    assert rank_threads(RankInfo("torchrun", 0, 4, 0, 2), 3) == 3


def test_merge_summaries_adds_ranks(tmp_path: Path) -> None:
    (tmp_path / "manifest-rank0.jsonl").write_text("")
    (tmp_path / "manifest-rank1.jsonl").write_text("")
    first = JobSummary(
        out=tmp_path,
        total=3,
        skipped=1,
        written=2,
        failed={},
        not_started=0,
        seconds=4.0,
        workers={"rank0": "cuda:0"},
    )
    second = JobSummary(
        out=tmp_path,
        total=2,
        skipped=0,
        written=1,
        failed={"000003-00": "RuntimeError: out of memory"},
        not_started=0,
        seconds=6.5,
        workers={"rank1": "cuda:0"},
        interrupted=15,
    )

    merged = merge_summaries([first, second])

    assert (merged.total, merged.skipped, merged.written) == (5, 1, 3)
    assert merged.failed == {"000003-00": "RuntimeError: out of memory"}
    assert merged.seconds == 6.5
    assert merged.workers == {"rank0": "cuda:0", "rank1": "cuda:0"}
    assert merged.manifests == ["manifest-rank0.jsonl", "manifest-rank1.jsonl"]
    assert merged.interrupted == 15
