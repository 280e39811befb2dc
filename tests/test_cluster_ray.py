"""The generate job on a local Ray instance bound to the loopback interface, with CPU actors.

One Ray instance serves the whole module, because starting Ray takes several seconds.
It is started with ``_node_ip_address="127.0.0.1"``, no dashboard and
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, which kept every Ray listener on 127.0.0.1 in a
check with ``ss -ltnp`` (Ray 2.60). Its teardown checks that no Ray process outlives it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from generate_checks import assert_job_consistent, png_files
from process_tree import command_line, descendants, is_alive

import safeinfer
from safeinfer.jobs import make_items, read_prompts
from safeinfer.manifest import read_manifests

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
PROMPTS = [f"a handwritten number {index}" for index in range(8)]
#: Options every run shares, so all runs make the same bytes.
JOB_OPTIONS: dict[str, Any] = {
    "model": "tiny-sd",
    "steps": 2,
    "seed": 11,
    "threads_per_worker": 1,
    "progress": False,
}
#: Seconds that Ray's processes get to exit after ``ray.shutdown()``.
SHUTDOWN_TIMEOUT = 30.0
#: Seconds to wait for the first manifest line before killing an actor.
FIRST_LINE_TIMEOUT = 120.0
#: The LISTEN state in /proc/net/tcp, and 127.0.0.1 as IPv4 and IPv4-mapped IPv6 there.
LISTEN_STATE = "0A"
LOOPBACK_HEX = ("0100007F", "0000000000000000FFFF00000100007F")


def _listening_addresses(pids: list[int]) -> dict[str, int]:
    """Map each TCP address that one of ``pids`` listens on to that pid."""
    inodes: dict[str, int] = {}
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").glob("*"):
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes[target[len("socket:[") : -1]] = pid
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == LISTEN_STATE and inode in inodes:
                found[local] = inodes[inode]
    return found


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """Start Ray for the module; return its GCS address. Tear down and check for leftovers."""
    with pytest.MonkeyPatch.context() as patch:
        # Ray reads the variable into a constant when it is first imported, and its
        # own processes read it from the environment they inherit.
        patch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        patch.setattr(ray._private.ray_constants, "ENABLE_RAY_CLUSTER", False)
        context = ray.init(
            num_cpus=2,
            num_gpus=0,
            _node_ip_address="127.0.0.1",
            include_dashboard=False,
            log_to_driver=False,
        )
        try:
            yield context.address_info["gcs_address"]
        finally:
            started = descendants(os.getpid())
            ray.shutdown()
            deadline = time.monotonic() + SHUTDOWN_TIMEOUT
            while any(is_alive(pid) for pid in started) and time.monotonic() < deadline:
                time.sleep(0.2)
            left = {pid: command_line(pid) for pid in started if is_alive(pid)}
            assert left == {}, f"Ray processes left after shutdown: {left}"


@pytest.fixture(scope="module")
def item_ids() -> list[str]:
    return [item.id for item in make_items(read_prompts(PROMPTS), seed=JOB_OPTIONS["seed"])]


@pytest.fixture(scope="module")
def ray_run(
    ray_cluster: str, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, safeinfer.jobs.JobSummary]:
    out = tmp_path_factory.mktemp("ray") / "out"
    summary = safeinfer.generate(PROMPTS, out, engine="ray", gpus="cpu", workers=2, **JOB_OPTIONS)
    return out, summary


def test_ray_two_cpu_actors_each_item_once(
    ray_run: tuple[Path, safeinfer.jobs.JobSummary], item_ids: list[str]
) -> None:
    out, summary = ray_run

    assert (summary.total, summary.written, summary.failed) == (len(item_ids), len(item_ids), {})
    assert summary.workers
    assert set(summary.workers) <= {"ray0", "ray1"}
    assert set(summary.workers.values()) == {"cpu"}
    assert_job_consistent(out, item_ids)
    manifests = {entry.manifest.name for entry in read_manifests(out)}
    assert manifests <= {"manifest-ray0.jsonl", "manifest-ray1.jsonl"}
    assert {entry.fields["device"] for entry in read_manifests(out)} == {"cpu"}


def test_ray_resume_remakes_missing_files(
    ray_run: tuple[Path, safeinfer.jobs.JobSummary], item_ids: list[str], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    shutil.copytree(ray_run[0], out)
    before = assert_job_consistent(out, item_ids)
    # Leave the state of a job stopped before two items: no file and no manifest line.
    removed = set(png_files(out)[:2])
    for manifest in out.glob("manifest*.jsonl"):
        lines = manifest.read_bytes().splitlines(keepends=True)
        kept = [line for line in lines if out / json.loads(line)["path"] not in removed]
        manifest.write_bytes(b"".join(kept))
    for path in removed:
        path.unlink()

    summary = safeinfer.generate(
        PROMPTS, out, engine="ray", gpus="cpu", workers=2, resume=True, **JOB_OPTIONS
    )

    assert (summary.skipped, summary.written) == (len(item_ids) - 2, 2)
    after = assert_job_consistent(out, item_ids)
    assert after == before


def test_ray_listens_on_loopback_only(ray_run: tuple[Path, safeinfer.jobs.JobSummary]) -> None:
    listeners = _listening_addresses([*descendants(os.getpid()), os.getpid()])

    assert listeners, "no Ray listener found"
    outside = {
        address: command_line(pid)
        for address, pid in listeners.items()
        if address.rsplit(":", 1)[0] not in LOOPBACK_HEX
    }
    assert outside == {}


def _ray_worker_pids() -> list[int]:
    return [
        pid for pid in descendants(os.getpid()) if command_line(pid).startswith("ray::RayWorker")
    ]


def test_ray_actor_killed_mid_job(ray_cluster: str, tmp_path: Path) -> None:
    prompts = [f"the digit {index % 10}, number {index}" for index in range(16)]
    ids = [item.id for item in make_items(read_prompts(prompts), seed=JOB_OPTIONS["seed"])]
    out = tmp_path / "out"
    killed: list[int] = []

    def kill_one_actor() -> None:
        deadline = time.monotonic() + FIRST_LINE_TIMEOUT
        while time.monotonic() < deadline:
            lines = sum(len(path.read_bytes().splitlines()) for path in out.glob("manifest*"))
            workers = _ray_worker_pids()
            if lines and workers:
                os.kill(workers[0], signal.SIGKILL)
                killed.append(workers[0])
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_one_actor)
    killer.start()
    try:
        summary = safeinfer.generate(
            prompts, out, engine="ray", gpus="cpu", workers=2, **JOB_OPTIONS
        )
    finally:
        killer.join()

    assert killed, "no Ray actor was found to kill"
    assert summary.failed == {}
    assert summary.written == len(ids)
    assert_job_consistent(out, ids)


def test_ray_example_script(ray_cluster: str, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a handwritten seven\nzero\n")
    out = tmp_path / "out"
    command = [
        sys.executable,
        str(REPO / "examples" / "ray_generate.py"),
        str(prompts),
        str(out),
        "--address",
        ray_cluster,
        "--cpu",
        "--workers",
        "1",
        "--model",
        "tiny-sd",
        "--steps",
        "2",
    ]

    result = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=REPO)

    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert "2 images written, 0 failed" in result.stdout
    assert "workers: ray0 on cpu" in result.stdout
    ids = [item.id for item in make_items(read_prompts(prompts))]
    assert_job_consistent(out, ids)
