"""The docs stay true: their code runs, the CLI reference matches the parser, the site builds.

Python blocks in README.md and docs/quickstart.md run in order, as one script per file, in
an empty working directory. The site is built with ``mkdocs build --strict``, and builds of
small sites with a deliberately broken link, anchor or API reference must fail.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
MKDOCS_YML = REPO_ROOT / "mkdocs.yml"
CODE_RUN_TIMEOUT_S = 300
BUILD_TIMEOUT_S = 180

_PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)
_MARKDOWN_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _python_blocks(path: Path) -> list[str]:
    return _PYTHON_BLOCK.findall(path.read_text(encoding="utf-8"))


def _docs_env() -> dict[str, str]:
    # The Material theme prints a banner about MkDocs 2 on every build. It says nothing about
    # this site, so keep it out of the output that a failure shows.
    return {**os.environ, "NO_MKDOCS_2_WARNING": "1"}


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "gen_cli_docs", REPO_ROOT / "scripts" / "gen_cli_docs.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("document", ["README.md", "docs/quickstart.md"])
def test_python_blocks_run(document: str, tmp_path: Path) -> None:
    blocks = _python_blocks(REPO_ROOT / document)
    assert blocks, f"{document} has no python block"

    script = tmp_path / "blocks.py"
    script.write_text("\n".join(blocks), encoding="utf-8")
    completed = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=CODE_RUN_TIMEOUT_S,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr


@pytest.mark.parametrize(
    ("marker", "expected"),
    [("main-command", "safeinfer generate examples/prompts.txt"), ("test-command", "pytest")],
)
def test_readme_command_layout(marker: str, expected: str) -> None:
    # CI reads the test command as the second line after its marker, so the marker, the
    # opening fence and the one-line command must stay in exactly this shape.
    lines = (REPO_ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    start = lines.index(f"<!-- {marker} -->")

    assert lines[start + 1] == "```bash"
    assert expected in lines[start + 2]
    assert lines[start + 3] == "```"
    assert start < 20, "the set-up commands belong at the top of the README"


def test_readme_relative_links_exist() -> None:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    targets = [
        target.split("#", 1)[0]
        for target in _MARKDOWN_LINK.findall(readme)
        if "://" not in target and not target.startswith("#")
    ]
    assert targets
    missing = [target for target in targets if not (REPO_ROOT / target).exists()]
    assert missing == []


def test_cli_reference_matches_parser() -> None:
    generator = _load_generator()
    page = REPO_ROOT / "docs" / "reference" / "cli.md"
    assert page.read_text(encoding="utf-8") == generator.render(), (
        "docs/reference/cli.md is stale: run python scripts/gen_cli_docs.py"
    )


def test_cli_reference_lists_subcommands() -> None:
    from safeinfer.cli import SUBCOMMANDS

    page = (REPO_ROOT / "docs" / "reference" / "cli.md").read_text(encoding="utf-8")
    for name in SUBCOMMANDS:
        assert f"## `safeinfer {name}`" in page, name
        assert f"usage: safeinfer {name}" in page, name


def test_cli_check_flags_stale_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    generator = _load_generator()
    stale = tmp_path / "cli.md"
    stale.write_text("# Command line\n\nout of date\n", encoding="utf-8")
    monkeypatch.setattr(generator, "CLI_PAGE", stale)
    monkeypatch.setattr(generator, "REPO_ROOT", tmp_path)

    assert generator.main(["--check"]) == 1
    assert stale.read_text(encoding="utf-8") == "# Command line\n\nout of date\n"
    assert generator.main([]) == 0
    assert generator.main(["--check"]) == 0


def test_site_builds_strict(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=REPO_ROOT,
        env=_docs_env(),
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert (tmp_path / "index.html").exists()
    assert (tmp_path / "reference" / "cli" / "index.html").exists()


#: A page with a heading to link to and API blocks to refer to. The errors module is there
#: because the naming module's docstrings refer to it.
OTHER_PAGE = "# Other\n\n## Details\n\n::: safeinfer.naming\n\n::: safeinfer.errors\n"


def _build_small_site(
    tmp_path: Path,
    pages: dict[str, str],
    *,
    keep_hooks: bool = False,
    modules: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Build a site of ``pages`` with the project's own configuration, minus its nav.

    ``modules`` maps module names to source text; they are importable by the API blocks.
    """
    sources = tmp_path / "sources"
    sources.mkdir(exist_ok=True)
    for module_name, source in (modules or {}).items():
        (sources / f"{module_name}.py").write_text(source, encoding="utf-8")
    docs = tmp_path / "docs"
    for name, text in pages.items():
        (docs / name).parent.mkdir(parents=True, exist_ok=True)
        (docs / name).write_text(text, encoding="utf-8")

    # The one MkDocs-specific YAML tag names the config's directory; safe_load cannot read
    # it, so spell that directory out.
    config_text = MKDOCS_YML.read_text(encoding="utf-8")
    config_text = config_text.replace("!relative $config_dir", json.dumps(str(REPO_ROOT)))
    config: dict[str, Any] = yaml.safe_load(config_text)
    config["docs_dir"] = str(docs)
    config["nav"] = list(pages)
    if keep_hooks:
        config["hooks"] = [str(REPO_ROOT / hook) for hook in config["hooks"]]
    else:
        config.pop("hooks")
    (mkdocstrings,) = [
        plugin["mkdocstrings"]
        for plugin in config["plugins"]
        if isinstance(plugin, dict) and "mkdocstrings" in plugin
    ]
    handler = mkdocstrings["handlers"]["python"]
    handler["paths"] = [str(REPO_ROOT), str(sources)]
    handler["options"]["extensions"] = [
        str(REPO_ROOT / extension) for extension in handler["options"]["extensions"]
    ]
    config_file = tmp_path / "mkdocs.yml"
    config_file.write_text(yaml.safe_dump(config), encoding="utf-8")

    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config_file)],
        cwd=REPO_ROOT,
        env=_docs_env(),
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        check=False,
    )


def test_small_site_builds(tmp_path: Path) -> None:
    # The control for the failing builds below: the same setup with valid links passes.
    completed = _build_small_site(
        tmp_path,
        {
            "index.md": "# Home\n\nSee [the other page](other.md#details) and "
            "[`unique_name`][safeinfer.naming.unique_name].\n",
            "other.md": OTHER_PAGE,
        },
    )
    assert completed.returncode == 0, completed.stderr


BROKEN_PAGES = {
    "missing page": ("[gone](missing.md)", "missing.md"),
    "missing anchor": ("[gone](other.md#no-such-heading)", "no-such-heading"),
    "missing API object": ("[gone][safeinfer.naming.no_such_function]", "no_such_function"),
}


@pytest.mark.parametrize("case", BROKEN_PAGES.values(), ids=list(BROKEN_PAGES))
def test_broken_reference_fails_build(case: tuple[str, str], tmp_path: Path) -> None:
    link, name_in_message = case
    completed = _build_small_site(
        tmp_path,
        {
            "index.md": f"# Home\n\n{link}\n",
            "other.md": OTHER_PAGE,
        },
    )
    assert completed.returncode != 0
    assert name_in_message in completed.stderr


def test_page_outside_nav_fails_build(tmp_path: Path) -> None:
    docs = {"index.md": "# Home\n"}
    completed = _build_small_site(tmp_path, docs)
    assert completed.returncode == 0, completed.stderr

    (tmp_path / "docs" / "orphan.md").write_text("# Orphan\n", encoding="utf-8")
    completed = _build_small_site(tmp_path, docs)
    assert completed.returncode != 0
    assert "orphan.md" in completed.stderr


def test_stale_cli_reference_fails_build(tmp_path: Path) -> None:
    completed = _build_small_site(
        tmp_path,
        {"index.md": "# Home\n", "reference/cli.md": "# Command line\n\nout of date\n"},
        keep_hooks=True,
    )
    assert completed.returncode != 0
    assert "does not match `safeinfer --help`" in completed.stderr


def _load_extension() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "sphinx_roles", REPO_ROOT / "docs" / "hooks" / "sphinx_roles.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_roles_become_crossrefs() -> None:
    extension = _load_extension()

    text = "See :func:`save_png` and :class:`~safeinfer.errors.WriteError`, not :foo:`x`."

    assert extension.rewrite_roles(text) == (
        "See [`save_png`][save_png] and [`WriteError`][safeinfer.errors.WriteError], not :foo:`x`."
    )


def test_doctests_become_fenced_blocks() -> None:
    extension = _load_extension()
    text = 'Read it back.\n    >>> meta["safeinfer"]["seed"]\n    7\n\nMore text.'

    fenced = extension.fence_doctests(text)

    assert fenced == (
        'Read it back.\n\n```pycon\n>>> meta["safeinfer"]["seed"]\n7\n```\n\nMore text.'
    )
    assert extension.fence_doctests(fenced) == fenced


#: A module whose docstrings use the package's conventions, for the builds below.
CONVENTIONS_MODULE = '''"""A module for the docs build tests."""

#: Longest wait in seconds, documented by a comment.
MAX_WAIT = 5


def documented() -> None:
    """Do nothing; see :func:`helper`.

    >>> documented()["key"]["seed"]
    """


def helper() -> None:
    """Help."""
'''


def test_conventions_render_in_build(tmp_path: Path) -> None:
    completed = _build_small_site(
        tmp_path,
        {"index.md": "# Home\n\n::: conventions\n"},
        modules={"conventions": CONVENTIONS_MODULE},
    )
    assert completed.returncode == 0, completed.stderr

    page = (tmp_path / "site" / "index.html").read_text(encoding="utf-8")
    assert "Longest wait in seconds, documented by a comment." in page
    assert 'href="#conventions.helper"' in page
    assert "<blockquote>" not in page


def test_role_to_missing_object_fails_build(tmp_path: Path) -> None:
    module = CONVENTIONS_MODULE.replace(":func:`helper`", ":func:`no_such_helper`")
    completed = _build_small_site(
        tmp_path,
        {"index.md": "# Home\n\n::: conventions\n"},
        modules={"conventions": module},
    )
    assert completed.returncode != 0
    assert "no_such_helper" in completed.stderr


def test_readme_grid_script(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    import safeinfer
    from safeinfer.manifest import Manifest

    spec = importlib.util.spec_from_file_location(
        "make_readme_grid", REPO_ROOT / "scripts" / "make_readme_grid.py"
    )
    assert spec is not None
    assert spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)

    out = tmp_path / "outputs"
    with Manifest(out / "manifest-cpu0.jsonl") as manifest:
        for value in (0, 100, 200):
            image = np.full((8, 8, 3), value, dtype=np.uint8)
            manifest.record(safeinfer.save_png(image, out / "0000"), prompt=str(value))
    grid_path = tmp_path / "grid.png"

    assert script.main([str(out), str(grid_path), "--columns", "2"]) == 0

    gap = script.GAP
    with Image.open(grid_path) as grid:
        assert grid.size == (2 * 8 + 3 * gap, 2 * 8 + 3 * gap)
        assert grid.getpixel((gap, gap)) == (0, 0, 0)
        assert grid.getpixel((2 * gap + 8, gap)) == (100, 100, 100)
        assert grid.getpixel((gap, 2 * gap + 8)) == (200, 200, 200)
    assert safeinfer.verify_png(REPO_ROOT / "docs" / "images" / "generate-grid.png").ok
