"""Release readiness: the sdist and wheel build, carry their data, and work once installed.

The wheel is built from the sdist (what ``python -m build`` does by default), so a file
missing from the sdist fails here too. It is then installed into a fresh virtual
environment and runs ``safeinfer generate`` on the embedded model from there.
"""

from __future__ import annotations

import email
import os
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

import safeinfer

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parent.parent
BUILD_TIMEOUT_S = 300
RUN_TIMEOUT_S = 300

#: Files outside the package that the sdist must carry for its tests, docs and examples.
SDIST_FILES = (
    "pyproject.toml",
    "README.md",
    "CHANGELOG.md",
    "LICENSE",
    "NOTICE",
    "mkdocs.yml",
    "noxfile.py",
    "docs/index.md",
    "docs/quickstart.md",
    "examples/quickstart.ipynb",
    "scripts/gen_cli_docs.py",
    "tests/test_release.py",
)


def _tracked_files(prefix: str) -> list[str]:
    listing = subprocess.run(
        ["git", "ls-files", "--", prefix],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [line for line in listing.splitlines() if line]


def _clean_env(**extra: str) -> dict[str, str]:
    # The installed copy must import from its own venv, never from the source tree.
    env = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
    env.pop("VIRTUAL_ENV", None)
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Build the sdist and, from it, the wheel; return (sdist, wheel)."""
    outdir = tmp_path_factory.mktemp("dist")
    # --no-isolation uses the hatchling of this environment, so the build works offline.
    completed = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(outdir)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    (sdist,) = outdir.glob("safeinfer-*.tar.gz")
    (wheel,) = outdir.glob("safeinfer-*.whl")
    return sdist, wheel


@pytest.fixture(scope="module")
def fresh_venv(dist: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Create a new venv with the wheel installed; return its python executable."""
    _, wheel = dist
    venv = tmp_path_factory.mktemp("venv") / "env"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=RUN_TIMEOUT_S)
    python = venv / "bin" / "python"

    # Reinstalling torch and diffusers here would take minutes and a download, so the new
    # venv imports this environment's packages through a .pth line. Directories added by a
    # .pth line come after the venv's own site-packages, and their .pth files (such as the
    # editable install of safeinfer) are not processed, so the wheel's copy wins.
    site_packages = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
        env=_clean_env(),
    ).stdout.strip()
    shared = sysconfig.get_paths()["purelib"]
    (Path(site_packages) / "shared_dependencies.pth").write_text(shared + "\n", encoding="utf-8")

    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)],
        check=True,
        timeout=RUN_TIMEOUT_S,
        env=_clean_env(),
        cwd=venv,
    )
    return python


def test_wheel_carries_package_files(dist: tuple[Path, Path]) -> None:
    _, wheel = dist
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())

    tracked = [path for path in _tracked_files("safeinfer") if "__pycache__" not in path]
    assert "safeinfer/py.typed" in tracked
    missing = [path for path in tracked if path not in names]
    assert missing == []
    assert not [name for name in names if name.endswith(".pyc") or name.startswith("tests/")]


def test_wheel_carries_model_weights(dist: tuple[Path, Path]) -> None:
    _, wheel = dist
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())

    models = sorted(path.name for path in (REPO_ROOT / "safeinfer" / "tiny" / "models").iterdir())
    assert models
    for model in models:
        prefix = f"safeinfer/tiny/models/{model}/"
        assert f"{prefix}model_index.json" in names, model
        weights = [
            name for name in names if name.startswith(prefix) and name.endswith(".safetensors")
        ]
        assert weights, model


def test_wheel_metadata(dist: tuple[Path, Path]) -> None:
    _, wheel = dist
    with zipfile.ZipFile(wheel) as archive:
        dist_info = f"safeinfer-{safeinfer.__version__}.dist-info"
        metadata = email.message_from_bytes(archive.read(f"{dist_info}/METADATA"))
        entry_points = archive.read(f"{dist_info}/entry_points.txt").decode()
        license_files = {name for name in archive.namelist() if "/licenses/" in name}

    assert metadata["Version"] == safeinfer.__version__
    requirements = metadata.get_all("Requires-Dist") or []
    core = [requirement for requirement in requirements if "extra ==" not in requirement]
    assert sorted(requirement.split(">")[0].split("<")[0] for requirement in core) == [
        "filelock",
        "numpy",
        "pillow",
        "tqdm",
    ]
    assert not [requirement for requirement in core if requirement.startswith("torch")]
    assert "safeinfer = safeinfer.cli:main" in entry_points
    assert f"{dist_info}/licenses/LICENSE" in license_files
    assert f"{dist_info}/licenses/NOTICE" in license_files


def test_sdist_carries_project_files(dist: tuple[Path, Path]) -> None:
    sdist, _ = dist
    with tarfile.open(sdist) as archive:
        root = archive.getnames()[0].split("/")[0]
        names = {name.removeprefix(f"{root}/") for name in archive.getnames()}

    for path in SDIST_FILES:
        assert path in names, path
    assert "safeinfer/py.typed" in names
    assert not [name for name in names if name.startswith((".venv/", ".git/"))]


def test_installed_wheel_imports_own_copy(fresh_venv: Path, tmp_path: Path) -> None:
    completed = subprocess.run(
        [str(fresh_venv), "-c", "import safeinfer; print(safeinfer.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        env=_clean_env(),
        cwd=tmp_path,
    )
    module_file = Path(completed.stdout.strip())
    assert module_file.is_relative_to(fresh_venv.parent.parent)


def test_installed_wheel_generates(fresh_venv: Path, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a handwritten seven\nzero\n", encoding="utf-8")
    command = fresh_venv.parent / "safeinfer"

    generate = subprocess.run(
        [str(command), "generate", str(prompts), "--out", "outputs", "--steps", "10"],
        capture_output=True,
        text=True,
        env=_clean_env(),
        cwd=tmp_path,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    assert generate.returncode == 0, generate.stderr

    images = sorted((tmp_path / "outputs").rglob("*.png"))
    assert len(images) == 2
    assert list((tmp_path / "outputs").glob("manifest*.jsonl"))

    verify = subprocess.run(
        [str(command), "verify", "--manifest", "outputs"],
        capture_output=True,
        text=True,
        env=_clean_env(),
        cwd=tmp_path,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_notice_accounts_for_models() -> None:
    # Every shipped model is listed, either with the third-party data its weights came
    # from or as containing none, so adding a model without a NOTICE line fails here.
    notice = (REPO_ROOT / "NOTICE").read_text(encoding="utf-8")
    models = sorted(path.name for path in (REPO_ROOT / "safeinfer" / "tiny" / "models").iterdir())
    for model in models:
        assert model in notice, f"NOTICE does not describe the shipped model {model}"
