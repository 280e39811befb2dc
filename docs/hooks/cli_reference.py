"""MkDocs hook: fail the build when the command-line reference no longer matches the parser."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError

GENERATOR = Path(__file__).resolve().parents[2] / "scripts" / "gen_cli_docs.py"


def on_pre_build(config: Any) -> None:
    spec = importlib.util.spec_from_file_location("gen_cli_docs", GENERATOR)
    if spec is None or spec.loader is None:
        raise PluginError(f"cannot load the CLI reference generator at {GENERATOR}")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)

    page = Path(config["docs_dir"]) / "reference" / "cli.md"
    if not page.exists() or page.read_text(encoding="utf-8") != generator.render():
        raise PluginError(
            f"{page} does not match `safeinfer --help`: run python scripts/gen_cli_docs.py"
        )
