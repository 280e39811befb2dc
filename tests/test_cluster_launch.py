"""The generate job under real launchers: torchrun, accelerate launch and srun's variables.

torchrun and accelerate run in a private network namespace (``unshare -rn``) with only
the loopback interface: the store that torchrun's agent starts listens on every
interface (torch 2.13), and the namespace keeps it unreachable from outside.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from generate_checks import assert_job_consistent
from process_tree import descendants

from safeinfer.jobs import make_items, read_prompts, shard
from safeinfer.manifest import read_manifests

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
SBATCH = REPO / "examples" / "slurm.sbatch"
TORCHRUN_EXAMPLE = REPO / "examples" / "torchrun.sh"
PROMPTS = [f"a handwritten number {index}" for index in range(10)]
#: Options every run shares, so all runs make the same bytes: the same model, steps,
#: seed and thread count.
JOB_OPTIONS = ["--model", "tiny-sd", "--steps", "2", "--seed", "11", "--threads-per-worker", "1"]
#: Seconds one launch of two ranks may take on a loaded 2-core machine.
LAUNCH_TIMEOUT = 240
#: Seconds to wait for the first manifest line before killing a rank.
FIRST_LINE_TIMEOUT = 120


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def netns() -> list[str]:
    """Return the command prefix that runs a command in a loopback-only network namespace."""
    prefix = ["unshare", "-rn", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"]
    try:
        probe = subprocess.run([*prefix, "true"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as error:
        pytest.skip(f"no private network namespace for torchrun's store: {error}")
    if probe.returncode != 0:
        pytest.skip(f"no private network namespace for torchrun's store: {probe.stderr!r}")
    return prefix


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n")
    return path


@pytest.fixture(scope="module")
def item_ids() -> list[str]:
    return [item.id for item in make_items(read_prompts(PROMPTS), seed=11)]


def _torchrun(netns: list[str], *args: str, ranks: int = 2) -> list[str]:
    return [
        *netns,
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(ranks),
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(_free_port()),
        *args,
    ]


def _generate_args(prompts: Path, out: Path, *extra: str) -> list[str]:
    command = ["-m", "safeinfer", "generate", str(prompts), "--out", str(out), "--no-progress"]
    return [*command, *JOB_OPTIONS, *extra]


def _run(command: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT, cwd=REPO, env=env
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def _assert_split_by_rank(out: Path, item_ids: list[str]) -> None:
    by_worker: dict[str, list[str]] = {}
    for entry in read_manifests(out):
        by_worker.setdefault(entry.fields["worker"], []).append(entry.fields["item"])
    assert sorted(by_worker) == ["rank0", "rank1"]
    for rank in range(2):
        assert sorted(by_worker[f"rank{rank}"]) == sorted(shard(item_ids, rank, 2))
    assert sorted(path.name for path in out.glob("manifest*.jsonl")) == [
        "manifest-rank0.jsonl",
        "manifest-rank1.jsonl",
    ]


@pytest.fixture(scope="module")
def clean_run(
    netns: list[str],
    prompts_file: Path,
    item_ids: list[str],
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, dict[str, bytes], str]:
    """Run the job once with the torchrun example; return the output, its files, stdout."""
    out = tmp_path_factory.mktemp("torchrun") / "out"
    env = {
        **os.environ,
        "NPROC_PER_NODE": "2",
        "MASTER_PORT": str(_free_port()),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    options = ["--no-progress", *JOB_OPTIONS]
    command = [*netns, "bash", str(TORCHRUN_EXAMPLE), str(prompts_file), str(out), *options]
    result = _run(command, env)
    return out, assert_job_consistent(out, item_ids), result.stdout


def test_torchrun_each_item_once(
    clean_run: tuple[Path, dict[str, bytes], str], item_ids: list[str]
) -> None:
    out, contents, stdout = clean_run

    assert sorted(contents) == sorted(item_ids)
    _assert_split_by_rank(out, item_ids)
    # No process group: each rank prints the summary of its own share.
    assert "5 images written, 0 failed" in stdout
    assert "workers: rank0 on cpu" in stdout
    assert "workers: rank1 on cpu" in stdout


def _rank_pid(launcher_pid: int, rank: int) -> int | None:
    for pid in descendants(launcher_pid):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ and b"TORCHELASTIC_RUN_ID" in b" ".join(environ):
            return pid
    return None


def _recorded_lines(out: Path) -> int:
    return sum(
        len(path.read_bytes().splitlines()) for path in out.glob("manifest*.jsonl") if path.exists()
    )


def test_torchrun_rank_killed_then_resumed(
    netns: list[str],
    prompts_file: Path,
    item_ids: list[str],
    clean_run: tuple[Path, dict[str, bytes], str],
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    launch = subprocess.Popen(
        _torchrun(netns, *_generate_args(prompts_file, out)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        deadline = time.monotonic() + FIRST_LINE_TIMEOUT
        while _recorded_lines(out) == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        victim = _rank_pid(launch.pid, 1)
        assert victim is not None, "rank 1 not found among the launcher's processes"
        os.kill(victim, signal.SIGKILL)
        _, stderr = launch.communicate(timeout=LAUNCH_TIMEOUT)
    finally:
        if launch.poll() is None:
            launch.kill()
            launch.wait()

    assert launch.returncode != 0, stderr[-3000:]
    recorded = {entry.fields["item"] for entry in read_manifests(out)}
    assert 0 < len(recorded) < len(item_ids), "the kill came too late to leave work undone"

    _run(_torchrun(netns, *_generate_args(prompts_file, out, "--resume")))

    contents = assert_job_consistent(out, item_ids)
    assert contents == clean_run[1]


def test_accelerate_launch_each_item_once(
    netns: list[str],
    prompts_file: Path,
    item_ids: list[str],
    clean_run: tuple[Path, dict[str, bytes], str],
    tmp_path: Path,
) -> None:
    # accelerate launch --cpu starts one process (Accelerate 1.16); --multi_gpu runs
    # torchrun's launcher, which starts CPU ranks on a host without GPUs.
    accelerate = Path(sys.executable).parent / "accelerate"
    if not accelerate.exists():
        pytest.skip("accelerate is not installed")
    out = tmp_path / "out"
    command = [
        *netns,
        str(accelerate),
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_ip",
        "127.0.0.1",
        "--main_process_port",
        str(_free_port()),
        *_generate_args(prompts_file, out),
    ]

    _run(command)

    contents = assert_job_consistent(out, item_ids)
    _assert_split_by_rank(out, item_ids)
    assert contents == clean_run[1]


def _srun_command() -> str:
    """Return the command that the example batch script's srun line starts in each task."""
    text = SBATCH.read_text().replace("\\\n", " ")
    line = next(line for line in text.splitlines() if line.lstrip().startswith("srun "))
    words = shlex.split(line, posix=False)
    start = next(index for index, word in enumerate(words[1:], 1) if not word.startswith("-"))
    return " ".join(words[start:])


def test_srun_command_each_item_once(
    prompts_file: Path,
    item_ids: list[str],
    clean_run: tuple[Path, dict[str, bytes], str],
    tmp_path: Path,
) -> None:
    command = _srun_command()
    assert re.match(r"python -m safeinfer generate ", command), command
    out = tmp_path / "out"
    tasks = []
    for task in range(2):
        env = {
            **os.environ,
            "SLURM_JOB_ID": "4242",
            "SLURM_STEP_ID": "0",
            "SLURM_PROCID": str(task),
            "SLURM_LOCALID": str(task),
            "SLURM_NODEID": "0",
            "SLURM_NTASKS": "2",
            "SLURM_STEP_NUM_TASKS": "2",
            "SLURM_CPUS_PER_TASK": "1",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        }
        script = f"set -- {shlex.join(JOB_OPTIONS)}; PROMPTS={prompts_file}; OUT={out}; {command}"
        tasks.append(
            subprocess.Popen(
                ["bash", "-c", script],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=REPO,
            )
        )
    outputs = [task.communicate(timeout=LAUNCH_TIMEOUT) for task in tasks]

    for task, (stdout, stderr) in zip(tasks, outputs, strict=True):
        assert task.returncode == 0, stdout[-2000:] + stderr[-4000:]
    contents = assert_job_consistent(out, item_ids)
    _assert_split_by_rank(out, item_ids)
    assert contents == clean_run[1]


def test_process_group_summary_from_all_ranks(
    netns: list[str], prompts_file: Path, item_ids: list[str], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    script = tmp_path / "job.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import json, os
            import torch.distributed as dist
            import safeinfer

            if __name__ == "__main__":
                dist.init_process_group("gloo")
                summary = safeinfer.generate(
                    {str(prompts_file)!r}, {str(out)!r}, model="tiny-sd", steps=2, seed=11,
                    threads_per_worker=1, progress=False,
                )
                print("SUMMARY", json.dumps({{
                    "rank": dist.get_rank(), "total": summary.total,
                    "written": summary.written, "workers": sorted(summary.workers),
                    "manifests": summary.manifests,
                }}), flush=True)
                dist.destroy_process_group()
            """
        )
    )

    result = _run(_torchrun(netns, str(script)))

    reports = [
        json.loads(line.split(" ", 1)[1])
        for line in result.stdout.splitlines()
        if line.startswith("SUMMARY ")
    ]
    assert sorted(report["rank"] for report in reports) == [0, 1]
    for report in reports:
        assert report["total"] == len(item_ids)
        assert report["written"] == len(item_ids)
        assert report["workers"] == ["rank0", "rank1"]
        assert report["manifests"] == ["manifest-rank0.jsonl", "manifest-rank1.jsonl"]
    assert_job_consistent(out, item_ids)


@pytest.mark.stress
def test_resume_with_more_ranks(
    netns: list[str],
    prompts_file: Path,
    item_ids: list[str],
    clean_run: tuple[Path, dict[str, bytes], str],
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    shutil.copytree(clean_run[0], out)
    # Leave the state of a job stopped before three items: no file and no manifest line.
    forgotten = {item_ids[1], item_ids[4], item_ids[8]}
    for manifest in out.glob("manifest*.jsonl"):
        lines = manifest.read_bytes().splitlines(keepends=True)
        kept = [line for line in lines if json.loads(line)["item"] not in forgotten]
        manifest.write_bytes(b"".join(kept))
    for entry in read_manifests(clean_run[0]):
        if entry.fields["item"] in forgotten:
            (out / entry.path).unlink()

    _run(_torchrun(netns, *_generate_args(prompts_file, out, "--resume"), ranks=3))

    contents = assert_job_consistent(out, item_ids)
    assert contents == clean_run[1]
    remade = {
        entry.fields["item"]
        for entry in read_manifests(out)
        if entry.manifest.name == "manifest-rank2.jsonl"
    }
    assert remade == {item_id for item_id in forgotten if item_ids.index(item_id) % 3 == 2}
