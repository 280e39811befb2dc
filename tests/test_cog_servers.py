"""Real Cog servers (``python -m cog.server.http``) on 127.0.0.1, started by the launcher.

Every returned image is decoded and compared pixel by pixel with the image of its own
request, so a valid PNG that contains another request's image counts as a failure too.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from cog_predictors.client import (
    READY_TIMEOUT,
    Tally,
    decode_data_url,
    free_port_range,
    free_ports,
    log_tail,
    predict,
    run_load,
)

from safeinfer.cog import DEFAULT_KEEP_OUTPUTS
from safeinfer.errors import LaunchError
from safeinfer.launch import Health, Launcher, probe

pytestmark = pytest.mark.slow

PREDICTORS = Path(__file__).parent / "cog_predictors"
COG_SERVER = [sys.executable, "-m", "cog.server.http", "--host", "127.0.0.1"]
HEALTH_URL = "http://127.0.0.1:{port}/health-check"
#: Requests of the main zero-failure run, over two servers.
LOAD_REQUESTS = 300
#: Requests of the fixed-path control; enough to see corruption many times over.
CONTROL_REQUESTS = 150
#: Requests and slots of the async predictor run.
ASYNC_REQUESTS = 200
ASYNC_SLOTS = 4

INTROSPECTION_CLASSES = (
    "MixinFirstRunner",
    "MixinLastRunner",
    "MixinFirstPredictor",
    "MixinLastPredictor",
)


@contextlib.contextmanager
def cog_servers(
    tmp_path: Path,
    command: list[str],
    *,
    count: int,
    env: Mapping[str, str],
    max_restarts: int = 0,
) -> Iterator[tuple[Launcher, Path]]:
    """Start ``count`` Cog servers through the launcher; yield it and the log path."""
    log_path = tmp_path / "servers.log"
    with open(log_path, "w", buffering=1) as log:
        launcher = Launcher(
            command,
            workers=count,
            ports=free_ports(count),
            run_dir=tmp_path / "run",
            health=HEALTH_URL,
            health_timeout=READY_TIMEOUT,
            max_restarts=max_restarts,
            backoff=(0.1, 0.5),
            env={**os.environ, **env},
            cwd=PREDICTORS,
            log_stream=log,
        )
        try:
            launcher.start(timeout=READY_TIMEOUT)
        except LaunchError as error:
            pytest.fail(f"Cog servers did not start: {error}\nserver log:\n{log_tail(log_path)}")
        try:
            yield launcher, log_path
        finally:
            launcher.stop()


def output_files(output_dir: Path) -> list[Path]:
    """Every file under a worker's SAFEINFER_OUTPUT_DIR (finished outputs and temp files)."""
    return [path for path in output_dir.rglob("*") if path.is_file()]


def private_dirs(output_dir: Path) -> list[Path]:
    return [path for path in output_dir.iterdir() if path.is_dir()]


def sample_max_files(output_dirs: list[Path], maximum: dict[Path, int]) -> None:
    for directory in output_dirs:
        maximum[directory] = max(maximum.get(directory, 0), len(output_files(directory)))


def start_cli_launcher(
    tmp_path: Path, stub: str, *, workers: int, log_path: Path
) -> tuple[subprocess.Popen[bytes], list[int]]:
    """Run ``safeinfer launch`` as a command, the way an operator would."""
    base = free_port_range(workers)
    command = [
        sys.executable,
        "-m",
        "safeinfer",
        "launch",
        "--workers",
        str(workers),
        "--base-port",
        str(base),
        "--run-dir",
        str(tmp_path / "run"),
        "--health",
        HEALTH_URL,
        "--max-restarts",
        "0",
        "--",
        *COG_SERVER,
    ]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command,
            cwd=PREDICTORS,
            env={**os.environ, "COG_PREDICT_TYPE_STUB": stub},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return process, list(range(base, base + workers))


def wait_ready(process: subprocess.Popen[bytes], ports: list[int], log_path: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    pending = set(ports)
    while pending:
        if process.poll() is not None:
            pytest.fail(f"safeinfer launch exited with {process.returncode}\n{log_tail(log_path)}")
        if time.monotonic() > deadline:
            pytest.fail(f"servers on {sorted(pending)} not ready\n{log_tail(log_path)}")
        for port in list(pending):
            if probe(HEALTH_URL.format(port=port))[0] is Health.READY:
                pending.discard(port)
        time.sleep(0.2)


def max_overlap(log_path: Path) -> int:
    """Return the most predictions that Cog's log shows running at the same time."""
    running = 0
    most = 0
    for line in log_path.read_text().splitlines():
        if '"message":"Starting prediction"' in line:
            running += 1
            most = max(most, running)
        elif '"message":"Prediction worker completed"' in line:
            running -= 1
    return most


def test_two_servers_mixin_zero_failures(tmp_path: Path) -> None:
    log_path = tmp_path / "launch.log"
    process, ports = start_cli_launcher(
        tmp_path, "mixin_sync.py:Predictor", workers=2, log_path=log_path
    )
    try:
        wait_ready(process, ports, log_path)
        output_dirs = [tmp_path / "run" / f"worker-{index}" / "outputs" for index in range(2)]
        maximum: dict[Path, int] = {}
        tally = run_load(
            [f"http://127.0.0.1:{port}" for port in ports],
            requests=LOAD_REQUESTS,
            on_response=lambda: sample_max_files(output_dirs, maximum),
        )
        left = {directory: output_files(directory) for directory in output_dirs}
        privates = {directory: private_dirs(directory) for directory in output_dirs}
    finally:
        process.send_signal(signal.SIGTERM)
        exit_code = process.wait(timeout=30)
    context = f"{tally.summary()}\nlauncher log:\n{log_tail(log_path)}"

    assert tally.counts["ok"] == LOAD_REQUESTS, context
    assert tally.counts["null"] == 0, context
    assert tally.counts["corrupt"] == 0, context
    assert tally.counts["wrong"] == 0, context
    assert tally.counts["failed"] == 0, context
    for directory in output_dirs:
        assert len(privates[directory]) == 1, f"{directory}: {privates[directory]}"
        assert 0 < len(left[directory]) <= DEFAULT_KEEP_OUTPUTS, left[directory]
        # One output may be in flight on the server while the other server's client samples.
        assert maximum[directory] <= DEFAULT_KEEP_OUTPUTS + 1, maximum
    assert exit_code == 128 + signal.SIGTERM, log_tail(log_path)
    for directory in output_dirs:
        assert not directory.exists() or not private_dirs(directory), "not removed at exit"


def test_fixed_path_control_shows_corruption(tmp_path: Path) -> None:
    shared = tmp_path / "out.png"
    env = {
        "COG_PREDICT_TYPE_STUB": "fixed_path.py:Predictor",
        "SAFEINFER_TEST_SHARED_OUTPUT": str(shared),
    }
    with cog_servers(tmp_path, COG_SERVER, count=2, env=env) as (launcher, log_path):
        tally = run_load(launcher.urls(), requests=CONTROL_REQUESTS)
    context = f"{tally.summary()}\nserver log:\n{log_tail(log_path)}"

    # Without at least one bad response here, the zero-failure tests could not tell the
    # mixin's fix from a load that never triggers the bug.
    assert tally.bad >= 1, context
    assert tally.counts["corrupt"] + tally.counts["wrong"] + tally.counts["null"] >= 1, context


def test_async_predictor_slots_zero_failures(tmp_path: Path) -> None:
    env = {
        "COG_PREDICT_TYPE_STUB": "mixin_async.py:Predictor",
        "COG_MAX_CONCURRENCY": str(ASYNC_SLOTS),
    }
    with cog_servers(tmp_path, COG_SERVER, count=1, env=env) as (launcher, log_path):
        output_dir = launcher.workers[0].output_dir
        maximum: dict[Path, int] = {}
        tally = run_load(
            launcher.urls(),
            requests=ASYNC_REQUESTS,
            clients_per_server=ASYNC_SLOTS,
            inputs=lambda request_id: {"request_id": request_id, "work_ms": request_id % 7},
            on_response=lambda: sample_max_files([output_dir], maximum),
        )
        left = output_files(output_dir)
    context = f"{tally.summary()}\nserver log:\n{log_tail(log_path)}"

    # The server really ran several predictions at once.
    assert f'"num_slots":{ASYNC_SLOTS}' in log_path.read_text(), context
    assert max_overlap(log_path) >= 2, context
    assert tally.counts["ok"] == ASYNC_REQUESTS, context
    assert tally.bad == 0, context
    assert 0 < len(left) <= DEFAULT_KEEP_OUTPUTS, left
    assert maximum[output_dir] <= DEFAULT_KEEP_OUTPUTS + ASYNC_SLOTS, maximum


def test_introspection_mixin_positions_and_defaults(tmp_path: Path) -> None:
    # One server per class: the worker index picks the class.
    select = (
        "import os, runpy, sys\n"
        f"classes = {INTROSPECTION_CLASSES!r}\n"
        "name = classes[int(os.environ['SAFEINFER_WORKER'])]\n"
        "os.environ['COG_PREDICT_TYPE_STUB'] = 'introspection.py:' + name\n"
        "sys.argv = ['cog.server.http', '--host', '127.0.0.1']\n"
        "runpy.run_module('cog.server.http', run_name='__main__')\n"
    )
    command = [sys.executable, "-c", select]
    count = len(INTROSPECTION_CLASSES)
    with cog_servers(tmp_path, command, count=count, env={}) as (launcher, log_path):
        results = {}
        for class_name, url in zip(INTROSPECTION_CLASSES, launcher.urls(), strict=True):
            tally = Tally()
            results[class_name] = (
                predict(url, {}, tally),
                predict(url, {"request_id": 3, "label": "given"}, tally),
            )
        logs = log_tail(log_path)

    for class_name, (omitted, given) in results.items():
        context = f"{class_name}: {omitted} / {given}\nserver log:\n{logs}"
        assert omitted["status"] == "succeeded", context
        assert given["status"] == "succeeded", context
        mime, data = decode_data_url(omitted["output"])
        assert mime == "application/json", context
        report = json.loads(data)
        assert report["class"] == class_name, context
        assert report["inputs"] == {"request_id": 7, "label": "fallback", "scale": 0.5}, context
        report = json.loads(decode_data_url(given["output"])[1])
        assert report["inputs"] == {"request_id": 3, "label": "given", "scale": 0.5}, context


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_server_stop_removes_private_dir(tmp_path: Path, signum: int) -> None:
    # Started without the launcher, which would remove the outputs directory itself.
    output_root = tmp_path / "outputs"
    port = free_ports(1)[0]
    log_path = tmp_path / "server.log"
    env = {
        **os.environ,
        "COG_PREDICT_TYPE_STUB": "mixin_sync.py:Predictor",
        "PORT": str(port),
        "SAFEINFER_OUTPUT_DIR": str(output_root),
    }
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            COG_SERVER, cwd=PREDICTORS, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        url = f"http://127.0.0.1:{port}"
        while probe(f"{url}/health-check")[0] is not Health.READY:
            assert server.poll() is None, log_tail(log_path)
            assert time.monotonic() < deadline, log_tail(log_path)
            time.sleep(0.2)
        document = predict(url, {"request_id": 1}, Tally())
        directories = private_dirs(output_root)
        server.send_signal(signum)
        server.wait(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()

    assert document["status"] == "succeeded", log_tail(log_path)
    assert len(directories) == 1, directories
    assert not directories[0].exists(), log_tail(log_path)


def test_sigkill_restart_sweeps_old_outputs(tmp_path: Path) -> None:
    env = {"COG_PREDICT_TYPE_STUB": "mixin_sync.py:Predictor"}
    with cog_servers(tmp_path, COG_SERVER, count=1, env=env, max_restarts=2) as (
        launcher,
        log_path,
    ):
        output_dir = launcher.workers[0].output_dir
        first = run_load(launcher.urls(), requests=5)
        [old_dir] = private_dirs(output_dir)
        # The directory name records the pid of Cog's model process.
        model_pid = int(old_dir.name.split(".")[4])
        server_pid = launcher.pids()["worker-0"]
        assert server_pid is not None

        os.kill(server_pid, signal.SIGKILL)
        deadline = time.monotonic() + READY_TIMEOUT
        while launcher.pids()["worker-0"] in (None, server_pid):
            assert time.monotonic() < deadline, log_tail(log_path)
            time.sleep(0.1)
        launcher.wait_ready(timeout=READY_TIMEOUT)
        second = run_load(launcher.urls(), requests=5, first_id=100)
        new_dirs = private_dirs(output_dir)
        restarts = launcher.restart_counts
    context = f"{first.summary()}\n{second.summary()}\nserver log:\n{log_tail(log_path)}"

    assert first.counts["ok"] == 5, context
    assert second.counts["ok"] == 5, context
    assert restarts == {"worker-0": 1}, context
    # The killed server's model process went with its process group, and the new model
    # process swept the directory it left behind.
    assert not Path(f"/proc/{model_pid}").exists() or is_zombie(model_pid), context
    assert not old_dir.exists(), context
    assert len(new_dirs) == 1, new_dirs


def is_zombie(pid: int) -> bool:
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat_line.rsplit(")", 1)[1].split()[0] == "Z"
