"""The built wheel carries the package data: py.typed and every shipped non-Python file."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "safeinfer"

pytestmark = pytest.mark.slow


def source_files() -> set[str]:
    """Files under safeinfer/ that a build should see, as wheel paths (``safeinfer/...``)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "safeinfer"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    if listed.returncode == 0 and listed.stdout.strip():
        names = listed.stdout.splitlines()
    else:  # an unpacked sdist: no git, nothing ignorable left in the tree
        names = [
            str(Path(root, name).relative_to(REPO))
            for root, _, files in os.walk(PACKAGE)
            for name in files
            if "__pycache__" not in root
        ]
    # Deleted but still tracked files are not in the tree, so the wheel cannot have them.
    return {Path(name).as_posix() for name in names if (REPO / name).is_file()}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # --no-isolation builds with the hatchling of this environment (the test extra
    # installs it), so the test needs no network.
    built = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    [path] = out.glob("safeinfer-*.whl")
    return path


@pytest.fixture(scope="module")
def wheel_files(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


def test_wheel_has_py_typed(wheel_files: set[str]) -> None:
    assert "safeinfer/py.typed" in wheel_files


def test_wheel_has_every_data_file(wheel_files: set[str]) -> None:
    data_files = {name for name in source_files() if not name.endswith(".py")}
    assert "safeinfer/py.typed" in data_files
    missing = sorted(data_files - wheel_files)
    assert missing == [], f"package data missing from the wheel: {missing}"


def test_wheel_has_every_module(wheel_files: set[str]) -> None:
    modules = {name for name in source_files() if name.endswith(".py")}
    missing = sorted(modules - wheel_files)
    assert missing == [], f"modules missing from the wheel: {missing}"


def test_wheel_has_console_script(wheel: Path, wheel_files: set[str]) -> None:
    [entry_points] = [name for name in wheel_files if name.endswith(".dist-info/entry_points.txt")]
    with zipfile.ZipFile(wheel) as archive:
        text = archive.read(entry_points).decode()
    assert "safeinfer = safeinfer.cli:main" in text
