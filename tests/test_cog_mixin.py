"""SafeOutputMixin in this process and in real child processes (no server)."""

from __future__ import annotations

import inspect
import json
import multiprocessing
import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import cog
import numpy as np
import pytest
from cog_predictors.pattern import request_image
from PIL import Image

from safeinfer.cog import DEFAULT_KEEP_OUTPUTS, SafeOutputMixin, _mixin, sweep_dead_owners
from safeinfer.errors import ConfigError, InvalidNameError, WriteError
from safeinfer.png import read_metadata, verify_png

PYTHON = sys.executable


class Runner(SafeOutputMixin, cog.BaseRunner):
    def run(self, request_id: int = cog.Input(default=0)) -> cog.Path:
        return self.save_output(request_image(request_id), name=f"request-{request_id}")


@pytest.fixture
def output_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Point the mixin at a fresh root and give every test its own process directory."""
    root = tmp_path / "outputs"
    monkeypatch.setenv("SAFEINFER_OUTPUT_DIR", str(root))
    monkeypatch.delenv("SAFEINFER_KEEP_OUTPUTS", raising=False)
    monkeypatch.delenv("COG_MAX_CONCURRENCY", raising=False)
    _mixin._directories.clear()
    yield root
    for directory in _mixin._directories.values():
        directory.close()
    _mixin._directories.clear()


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def files_in(directory: Path) -> list[Path]:
    return sorted(path for path in directory.iterdir() if path.is_file())


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
        check=False,
    )


# -- the class itself ---------------------------------------------------------------------


def test_mixin_defines_no_cog_entry_points() -> None:
    defined = set(vars(SafeOutputMixin))
    for name in ("setup", "predict", "run", "__init__", "__call__", "__new__", "train"):
        assert name not in defined, name


def test_mixin_data_attributes_share_prefix(output_root: Path) -> None:
    runner = Runner()
    runner.configure_outputs(keep=8)
    runner.run(request_id=1)
    class_data = [
        name
        for name, value in vars(SafeOutputMixin).items()
        if not name.startswith("__") and not callable(value)
    ]
    assert class_data, "expected the configuration attributes"
    for name in class_data + list(vars(runner)):
        assert name.startswith("_safeinfer_"), name


def test_mixin_keeps_run_signature() -> None:
    parameters = inspect.signature(Runner.run).parameters
    assert list(parameters) == ["self", "request_id"]
    assert parameters["request_id"].default.default == 0


# -- saving -------------------------------------------------------------------------------


def test_save_output_returns_cog_path(output_root: Path) -> None:
    path = Runner().run(request_id=42)

    assert isinstance(path, cog.Path)
    assert path.suffix == ".png"
    assert "request-42" in path.name
    assert path.parent.parent == output_root
    assert verify_png(path).ok
    assert np.array_equal(pixels(path), request_image(42))


def test_save_output_writes_metadata(output_root: Path) -> None:
    path = Runner().save_output(request_image(5), metadata={"seed": 5, "prompt": "ein Bär"})
    metadata = read_metadata(path)["safeinfer"]
    assert metadata["seed"] == 5
    assert metadata["prompt"] == "ein Bär"


@pytest.mark.parametrize(
    ("image_format", "suffix", "pillow_format"),
    [
        ("jpeg", ".jpg", "JPEG"),
        ("jpg", ".jpg", "JPEG"),
        ("webp", ".webp", "WEBP"),
        ("PNG", ".png", "PNG"),
    ],
)
def test_save_output_formats(
    output_root: Path, image_format: str, suffix: str, pillow_format: str
) -> None:
    path = Runner().save_output(request_image(9), format=image_format)
    assert path.suffix == suffix
    with Image.open(path) as image:
        assert image.format == pillow_format


def test_save_output_rejects_unknown_format(output_root: Path) -> None:
    with pytest.raises(ConfigError, match="gif"):
        Runner().save_output(request_image(1), format="gif")


def test_output_names_are_unique(output_root: Path) -> None:
    runner = Runner()
    paths = {runner.save_output(request_image(1), name="same") for _ in range(10)}
    assert len(paths) == 10


def test_private_directory_mode_0700(output_root: Path) -> None:
    directory = Runner().output_directory()
    mode = stat.S_IMODE(directory.stat().st_mode)
    assert mode == 0o700
    assert directory.parent == output_root
    assert f".{os.getpid()}." in directory.name


def test_private_directory_under_temp_dir_by_default(
    output_root: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("SAFEINFER_OUTPUT_DIR")
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr("tempfile.tempdir", None)
    assert Runner().output_directory().parent == tmp_path / "tmp"


# -- deferred cleanup ---------------------------------------------------------------------


def test_keeps_last_outputs_only(output_root: Path) -> None:
    runner = Runner()
    runner.configure_outputs(keep=4)
    paths = [runner.run(request_id=request_id) for request_id in range(10)]

    remaining = files_in(runner.output_directory())
    assert remaining == sorted(paths[-4:])
    for path in paths[:-4]:
        assert not path.exists(), path


def test_default_keeps_sixteen(output_root: Path) -> None:
    runner = Runner()
    for request_id in range(DEFAULT_KEEP_OUTPUTS + 5):
        runner.run(request_id=request_id)
    assert len(files_in(runner.output_directory())) == DEFAULT_KEEP_OUTPUTS


def test_keep_from_environment(output_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAFEINFER_KEEP_OUTPUTS", "3")
    runner = Runner()
    for request_id in range(6):
        runner.run(request_id=request_id)
    assert len(files_in(runner.output_directory())) == 3


def test_keep_must_exceed_slots(output_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COG_MAX_CONCURRENCY", "4")
    with pytest.raises(ConfigError, match="COG_MAX_CONCURRENCY=4"):
        Runner().configure_outputs(keep=4)
    assert Runner().configure_outputs(keep=5).is_dir()


def test_keep_rejects_non_integer_env(output_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAFEINFER_KEEP_OUTPUTS", "many")
    with pytest.raises(ConfigError, match="SAFEINFER_KEEP_OUTPUTS"):
        Runner().run(request_id=1)


def test_cleanup_tolerates_vanished_file(output_root: Path) -> None:
    runner = Runner()
    runner.configure_outputs(keep=2)
    first = runner.run(request_id=1)
    first.unlink()
    paths = [runner.run(request_id=request_id) for request_id in range(2, 6)]
    assert files_in(runner.output_directory()) == sorted(paths[-2:])


def test_vanished_directory_is_recreated(output_root: Path) -> None:
    runner = Runner()
    old = runner.output_directory()
    runner.run(request_id=1)
    for path in files_in(old):
        path.unlink()
    old.rmdir()

    path = runner.run(request_id=2)
    assert np.array_equal(pixels(path), request_image(2))
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_unwritable_root_raises_write_error(
    output_root: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_bytes(b"")
    monkeypatch.setenv("SAFEINFER_OUTPUT_DIR", str(blocker / "outputs"))
    with pytest.raises(WriteError, match="SAFEINFER_OUTPUT_DIR"):
        Runner().run(request_id=1)


def test_configure_after_first_save_rejects_new_root(output_root: Path, tmp_path: Path) -> None:
    runner = Runner()
    runner.run(request_id=1)
    with pytest.raises(ConfigError, match="before the first output"):
        runner.configure_outputs(root=tmp_path / "elsewhere")


def _save_from_threads(runner: Runner, *, threads: int, saves: int) -> list[str]:
    """Save from several threads at once; return a message for every wrong file."""
    errors: list[str] = []

    def work(thread: int) -> None:
        for step in range(saves):
            request_id = thread * 1000 + step
            path = runner.run(request_id=request_id)
            if not np.array_equal(pixels(path), request_image(request_id)):
                errors.append(f"{path} does not hold request {request_id}")

    workers = [threading.Thread(target=work, args=(index,)) for index in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return errors


def test_threads_save_concurrently(output_root: Path) -> None:
    runner = Runner()
    # keep is above the total here, so every file must still exist when its thread reads it.
    runner.configure_outputs(keep=1000)
    errors = _save_from_threads(runner, threads=8, saves=40)
    assert errors == []
    assert len(list(runner.output_directory().iterdir())) == 8 * 40


def test_threads_prune_to_keep(output_root: Path) -> None:
    runner = Runner()
    runner.configure_outputs(keep=16)
    failures: list[BaseException] = []

    def work(thread: int) -> None:
        try:
            for step in range(40):
                runner.run(request_id=thread * 1000 + step)
        except BaseException as error:
            failures.append(error)

    workers = [threading.Thread(target=work, args=(index,)) for index in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()

    assert failures == []
    remaining = list(runner.output_directory().iterdir())
    assert len(remaining) == 16, remaining
    for path in remaining:
        request_id = int(path.stem.rsplit("request-", 1)[1])
        assert np.array_equal(pixels(path), request_image(request_id)), path


# -- other outputs ------------------------------------------------------------------------


def test_reserve_output_counts_toward_keep(output_root: Path) -> None:
    runner = Runner()
    runner.configure_outputs(keep=2)
    reserved = runner.reserve_output(".mp4", name="clip")
    assert isinstance(reserved, cog.Path)
    assert reserved.suffix == ".mp4"
    assert not reserved.exists()
    reserved.write_bytes(b"video")
    runner.run(request_id=1)
    runner.run(request_id=2)
    assert not reserved.exists()


@pytest.mark.parametrize("suffix", ["mp4", ".", "../x", "a/b.mp4"])
def test_reserve_output_rejects_bad_suffix(output_root: Path, suffix: str) -> None:
    with pytest.raises(InvalidNameError):
        Runner().reserve_output(suffix)


def test_open_output_publishes_on_success(output_root: Path) -> None:
    runner = Runner()
    with runner.open_output(".json", name="report") as output:
        output.file.write(json.dumps({"ok": True}).encode())
        assert not output.path.exists()
    assert isinstance(output.path, cog.Path)
    assert json.loads(output.path.read_bytes()) == {"ok": True}


def test_open_output_failure_leaves_nothing(output_root: Path) -> None:
    runner = Runner()
    directory = runner.output_directory()

    def fail_midway() -> None:
        with runner.open_output(".json") as output:
            output.file.write(b"{partial")
            raise RuntimeError("model failed")

    with pytest.raises(RuntimeError):
        fail_midway()
    assert list(directory.iterdir()) == []


# -- processes ----------------------------------------------------------------------------


def _save_in_child(queue: multiprocessing.Queue[str]) -> None:
    path = Runner().run(request_id=3)
    queue.put(str(path))


def test_forked_child_gets_own_directory(output_root: Path) -> None:
    runner = Runner()
    parent_path = runner.run(request_id=1)
    context = multiprocessing.get_context("fork")
    queue: multiprocessing.Queue[str] = context.Queue()
    child = context.Process(target=_save_in_child, args=(queue,))
    child.start()
    child_path = Path(queue.get(timeout=30))
    child.join(30)

    assert child.exitcode == 0
    assert child_path.parent != parent_path.parent
    assert f".{child.pid}." in child_path.parent.name
    # The child's exit must not remove the parent's directory or files.
    assert parent_path.exists()


STAY_ALIVE = """
    import sys, time
    from cog import BaseRunner
    from safeinfer.cog import SafeOutputMixin
    class Runner(SafeOutputMixin, BaseRunner):
        def run(self) -> None: ...
    print(Runner().output_directory(), flush=True)
    if sys.argv[-1] == "wait":
        time.sleep(60)
"""


def test_directory_removed_at_exit(output_root: Path) -> None:
    result = run_python(STAY_ALIVE, SAFEINFER_OUTPUT_DIR=str(output_root))
    assert result.returncode == 0, result.stderr
    directory = Path(result.stdout.strip())
    assert directory.parent == output_root
    assert not directory.exists()


def test_sweep_removes_only_dead_owners(output_root: Path) -> None:
    env = {**os.environ, "SAFEINFER_OUTPUT_DIR": str(output_root)}
    code = textwrap.dedent(STAY_ALIVE)
    processes = [
        subprocess.Popen([PYTHON, "-c", code, "wait"], stdout=subprocess.PIPE, text=True, env=env)
        for _ in range(2)
    ]
    try:
        directories = [Path(process.stdout.readline().strip()) for process in processes]  # type: ignore[union-attr]
        killed = processes[0]
        killed.send_signal(signal.SIGKILL)
        killed.wait(30)
        assert directories[0].exists(), "SIGKILL runs no exit handler"

        # A new server process sweeps at start-up.
        fresh = Runner().output_directory()

        assert not directories[0].exists()
        assert directories[1].exists()
        assert fresh.exists()
        assert sweep_dead_owners(output_root) == []
    finally:
        for process in processes:
            process.kill()
            process.wait(30)
            process.stdout.close()  # type: ignore[union-attr]


def test_sweep_ignores_foreign_names(output_root: Path) -> None:
    output_root.mkdir(parents=True)
    keep = [output_root / "safeinfer-cog-notours", output_root / "model.png"]
    keep[0].mkdir()
    keep[1].write_bytes(b"x")
    sweep_dead_owners(output_root)
    assert all(path.exists() for path in keep)


def test_bind_gpu_helper_uses_safeinfer_gpu() -> None:
    result = run_python(
        """
        from cog import BaseRunner
        from safeinfer.cog import SafeOutputMixin
        class Runner(SafeOutputMixin, BaseRunner):
            def run(self) -> None: ...
        binding = Runner().bind_gpu()
        print(binding.device, binding.source)
        """,
        SAFEINFER_GPU="cpu",
        CUDA_VISIBLE_DEVICES="",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == "cpu"


# -- optional dependency ------------------------------------------------------------------


def test_missing_cog_raises_with_install_hint() -> None:
    result = run_python(
        """
        import sys
        sys.modules["cog"] = None  # makes `import cog` fail as if it were not installed
        import safeinfer
        assert "cog" not in [name for name in sys.modules if sys.modules[name] is not None]
        try:
            import safeinfer.cog
        except safeinfer.MissingDependencyError as error:
            assert isinstance(error, ImportError)
            print(error)
        else:
            raise SystemExit("no error raised")
        """
    )
    assert result.returncode == 0, result.stderr
    assert 'pip install "safeinfer[cog]"' in result.stdout


def test_import_safeinfer_does_not_import_cog() -> None:
    result = run_python("import sys, safeinfer; print('cog' in sys.modules)")
    assert result.stdout.strip() == "False", result.stderr
