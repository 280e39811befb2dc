"""Ranks under torchrun, Accelerate, SLURM and MPI: who this process is, and its share.

A launcher starts the same command once per rank and passes each copy its global rank
and the world size in environment variables. The job reads them here, runs as one
worker of its share, and never starts child processes of its own.

The global rank numbers processes across every node, so it never picks a GPU. The GPU
follows the local rank (the process's number on its own node) through
:func:`~safeinfer.gpu.bind_gpu`.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from safeinfer.errors import ConfigError
from safeinfer.gpu import LOCAL_RANK_VARIABLES, SAFEINFER_GPU_ENV
from safeinfer.jobs._items import shard

__all__ = ["LAUNCHERS", "Launcher", "RankInfo", "detect_ranks", "gpu_request", "rank_threads"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")


@dataclass(frozen=True)
class Launcher:
    """The variables through which one launcher names the ranks.

    ``world_size`` lists candidates in priority order. ``marker`` must be set too, when
    the rank variables alone also appear outside a launch.
    """

    name: str
    rank: str
    world_size: tuple[str, ...]
    local_rank: str | None
    local_world_size: str | None
    marker: str | None = None


#: Launchers in priority order. The innermost launcher comes first: torchrun started by
#: srun inherits both sets of variables, and only torchrun's describe its own processes.
#: MPI comes before SLURM because mpirun in a batch script inherits the batch step's
#: ``SLURM_*`` variables, which describe the script and not the MPI ranks.
LAUNCHERS: Final = (
    # torchrun (torch.distributed.run), and accelerate launch --multi_gpu, which runs it.
    Launcher("torchrun", "RANK", ("WORLD_SIZE",), "LOCAL_RANK", "LOCAL_WORLD_SIZE"),
    Launcher(
        "openmpi",
        "OMPI_COMM_WORLD_RANK",
        ("OMPI_COMM_WORLD_SIZE",),
        "OMPI_COMM_WORLD_LOCAL_RANK",
        "OMPI_COMM_WORLD_LOCAL_SIZE",
    ),
    # MPICH's Hydra, Intel MPI and srun --mpi=pmi2 set the PMI variables.
    Launcher("mpich", "PMI_RANK", ("PMI_SIZE",), "MPI_LOCALRANKID", "MPI_LOCALNRANKS"),
    # srun sets SLURM_STEP_ID for its tasks. A batch script itself runs outside any srun
    # step, and a job started there directly must keep every GPU of the allocation.
    # NOTE: follows the srun documentation; not run on a real SLURM cluster.
    Launcher(
        "slurm",
        "SLURM_PROCID",
        ("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS"),
        "SLURM_LOCALID",
        None,
        marker="SLURM_STEP_ID",
    ),
)


@dataclass(frozen=True)
class RankInfo:
    """This process's place in a launch: global rank, world size and local rank.

    ``local_rank`` and ``local_world_size`` are None where the launcher does not set them.
    """

    launcher: str
    rank: int
    world_size: int
    local_rank: int | None = None
    local_world_size: int | None = None
    local_rank_variable: str | None = None

    @property
    def worker(self) -> str:
        """The worker name in manifest lines and the summary, such as ``rank3``."""
        return f"rank{self.rank}"

    @property
    def manifest_name(self) -> str:
        """The manifest this rank appends to, directly in the output root."""
        return f"manifest-{self.worker}.jsonl"

    def peer_manifest_names(self) -> set[str]:
        """Return the manifest names of the other ranks of this launch."""
        return {f"manifest-rank{rank}.jsonl" for rank in range(self.world_size)} - {
            self.manifest_name
        }

    def share(self, items: Sequence[_T]) -> list[_T]:
        """Return the items this rank makes: a split of the whole list by global rank.

        Split the job's full item list, never the list left after a resume: every rank
        reads the manifests at its own moment, while the others already write, so
        shares of "what is left" would overlap or leave gaps.
        """
        return shard(items, self.rank, self.world_size)


def detect_ranks(env: Mapping[str, str] | None = None) -> RankInfo | None:
    """Return the rank of this process when a launcher started it, else None.

    ``env`` defaults to ``os.environ``. The first launcher of :data:`LAUNCHERS` whose
    rank and world-size variables are both set decides. Accelerate needs no variables of
    its own: ``accelerate launch --multi_gpu`` runs torchrun's launcher, which sets
    ``RANK`` and ``WORLD_SIZE``, and with an MPI host file it runs mpirun. Reading the
    variables here matters on CPU-only hosts, where Accelerate's ``PartialState()``
    without ``cpu=True`` reports every rank as the only process.

    >>> detect_ranks({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    RankInfo(launcher='torchrun', rank=1, world_size=2, local_rank=1, \
local_world_size=None, local_rank_variable='LOCAL_RANK')
    >>> detect_ranks({}) is None
    True

    Raises:
        ConfigError: a variable is not a whole number, or the rank is not below the
            world size.
    """
    env = os.environ if env is None else env
    for launcher in LAUNCHERS:
        if launcher.marker is not None and launcher.marker not in env:
            continue
        size_variable = next((name for name in launcher.world_size if _is_set(env, name)), None)
        if not _is_set(env, launcher.rank) or size_variable is None:
            continue
        rank = _whole_number(env, launcher.rank)
        world_size = _whole_number(env, size_variable)
        if world_size < 1 or rank >= world_size:
            raise ConfigError(
                f"invalid launch: {launcher.rank}={rank} and {size_variable}={world_size}; "
                "the rank must be below the world size. Start the job through the launcher "
                "instead of setting these variables by hand"
            )
        local_rank = _optional_number(env, launcher.local_rank)
        return RankInfo(
            launcher=launcher.name,
            rank=rank,
            world_size=world_size,
            local_rank=local_rank,
            local_world_size=_optional_number(env, launcher.local_world_size),
            local_rank_variable=launcher.local_rank if local_rank is not None else None,
        )
    return None


def gpu_request(ranks: RankInfo, env: Mapping[str, str] | None = None) -> int | None:
    """Return the ``gpu`` argument for :func:`~safeinfer.gpu.bind_gpu` in this rank.

    None lets ``bind_gpu`` follow its own rules: ``SAFEINFER_GPU`` when set, else the
    first local-rank variable it finds, which is this launcher's own in every usual
    launch. When another launcher's local rank comes first there (mpirun in a SLURM
    batch script passes the script's ``SLURM_LOCALID=0`` to every rank), this returns the
    launcher's local rank as an index into the visible GPUs, so the ranks of a node do
    not all land on the same GPU.

    >>> ranks = detect_ranks({"OMPI_COMM_WORLD_RANK": "5", "OMPI_COMM_WORLD_SIZE": "8",
    ...                       "OMPI_COMM_WORLD_LOCAL_RANK": "1"})
    >>> gpu_request(ranks, {"SLURM_LOCALID": "0", "OMPI_COMM_WORLD_LOCAL_RANK": "1"})
    1
    """
    env = os.environ if env is None else env
    if _is_set(env, SAFEINFER_GPU_ENV) or ranks.local_rank is None:
        return None
    first = next((name for name, _ in LOCAL_RANK_VARIABLES if _is_set(env, name)), None)
    if first == ranks.local_rank_variable:
        return None
    return ranks.local_rank


def rank_threads(ranks: RankInfo, threads_per_worker: int | None) -> int:
    """Return the CPU threads of this rank: the option, else a share of this node's cores.

    The cores are shared by the ranks of the node when the launcher sets their number
    (torchrun, Open MPI, MPICH). srun binds each task to its own cores, which
    :func:`~safeinfer.gpu.available_cores` already sees through the CPU affinity.
    """
    if threads_per_worker is not None:
        return threads_per_worker
    from safeinfer.gpu import thread_budget

    return thread_budget(ranks.local_world_size or 1)


def process_group() -> Any:
    """Return ``torch.distributed`` when a process group is initialised here, else None.

    Never imports torch: a process without torch cannot have a process group.
    """
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    distributed = getattr(torch, "distributed", None)
    if distributed is None or not distributed.is_available() or not distributed.is_initialized():
        return None
    return distributed


def _is_set(env: Mapping[str, str], name: str) -> bool:
    return bool(env.get(name, "").strip())


def _whole_number(env: Mapping[str, str], name: str) -> int:
    text = env[name].strip()
    if not (text.isdigit() and text.isascii()):
        raise ConfigError(f"invalid {name}={text!r}: expected a whole number of at least 0")
    return int(text)


def _optional_number(env: Mapping[str, str], name: str | None) -> int | None:
    if name is None or not _is_set(env, name):
        return None
    return _whole_number(env, name)
