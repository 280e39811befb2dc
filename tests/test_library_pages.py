"""Code blocks on the library's reference pages are valid Python.

A ``python`` block must parse as a module, and a ``pycon`` block must hold interactive
examples (``>>>`` lines) that each compile. Running them needs models and output folders,
so these pages are parsed here, not run.
"""

from __future__ import annotations

import ast
import doctest
import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
PAGES = ["writer.md", "encoding.md", "locks.md", "gpu.md", "pipeline.md", "models.md"]

_BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def blocks(page: str) -> list[tuple[int, str, str]]:
    """Return (line number, language, body) for every fenced block of ``page``."""
    text = (DOCS / page).read_text(encoding="utf-8")
    return [
        (text.count("\n", 0, match.start()) + 1, match.group(1), match.group(2))
        for match in _BLOCK.finditer(text)
    ]


@pytest.mark.parametrize("page", PAGES)
def test_python_blocks_parse(page: str) -> None:
    for line, language, body in blocks(page):
        if language != "python":
            continue
        assert not body.lstrip().startswith(">>>"), f"{page}:{line}: tag a >>> session pycon"
        try:
            ast.parse(body)
        except SyntaxError as error:
            pytest.fail(f"{page}:{line}: invalid Python in a python block: {error}")


@pytest.mark.parametrize("page", PAGES)
def test_pycon_blocks_compile(page: str) -> None:
    parser = doctest.DocTestParser()
    for line, language, body in blocks(page):
        if language != "pycon":
            continue
        examples = parser.get_examples(body)
        assert examples, f"{page}:{line}: a pycon block without >>> lines"
        for example in examples:
            compile(example.source, f"{page}:{line}", "single")


@pytest.mark.parametrize("page", PAGES)
def test_every_block_names_its_language(page: str) -> None:
    for line, language, _ in blocks(page):
        assert language, f"{page}:{line}: a code block without a language tag"
