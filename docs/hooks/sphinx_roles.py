"""Griffe extension: read the package's docstring conventions for mkdocstrings.

The docstrings are written for ``help()`` and editors, in the Sphinx and doctest forms:

- cross-reference roles (``:func:`name```, ``:class:`~a.b.C```) become Markdown
  cross-references ``[`name`][target]``, which the strict build then checks, so a role
  that names a missing object fails it;
- doctest examples (``>>>`` lines and their output) become fenced ``pycon`` code blocks.
  Markdown would otherwise read them as nested block quotes, and ``x["key"]["seed"]`` as
  a reference link;
- ``#:`` comments above a module constant or class attribute, or after it on the same
  line, become that attribute's docstring, as Sphinx autodoc reads them.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

#: ``:role:`target``` and ``:role:`~target```, for the roles that name Python objects.
_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|attr|exc|mod|data|obj|const):`(~?)([\w.]+)`")

_FENCE = "```"
_TRAILING_DOC_COMMENT = re.compile(r"#:\s?(.*)$")


def _link(match: re.Match[str]) -> str:
    short, target = match.group(1), match.group(2)
    text = target.rsplit(".", 1)[-1] if short else target
    return f"[`{text}`][{target}]"


def rewrite_roles(text: str) -> str:
    """Return ``text`` with every Sphinx object role replaced by a Markdown cross-reference."""
    return _ROLE.sub(_link, text)


def fence_doctests(text: str) -> str:
    """Wrap each run of doctest lines (from a ``>>>`` line to the next blank line) in a fence.

    Runs inside an existing fence are left alone, so applying this twice changes nothing.
    """
    lines = text.split("\n")
    output: list[str] = []
    in_fence = False
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.lstrip().startswith(_FENCE):
            in_fence = not in_fence
        if in_fence or not line.lstrip().startswith(">>>"):
            output.append(line)
            index += 1
            continue

        block: list[str] = []
        while index < len(lines) and lines[index].strip():
            block.append(lines[index])
            index += 1
        indent = min(len(entry) - len(entry.lstrip()) for entry in block)
        if output and output[-1].strip():
            output.append("")
        output.append(f"{_FENCE}pycon")
        output.extend(entry[indent:] for entry in block)
        output.append(_FENCE)
    return "\n".join(output)


def _comment_docstring(attribute: griffe.Attribute) -> str | None:
    """Return the ``#:`` comment text that documents ``attribute``, or None."""
    if attribute.lineno is None or attribute.filepath is None:
        return None
    try:
        source = attribute.lines_collection[attribute.filepath]
    except KeyError:
        return None
    first = attribute.lineno - 1

    trailing = _TRAILING_DOC_COMMENT.search(source[first]) if first < len(source) else None
    if trailing is not None:
        return trailing.group(1).strip()

    comment: list[str] = []
    line = first - 1
    while line >= 0 and source[line].lstrip().startswith("#:"):
        comment.insert(0, source[line].lstrip()[2:].strip())
        line -= 1
    return "\n".join(comment) if comment else None


class SphinxRoles(griffe.Extension):
    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is None and isinstance(obj, griffe.Attribute):
            comment = _comment_docstring(obj)
            if comment:
                obj.docstring = griffe.Docstring(comment, lineno=obj.lineno, parent=obj)
        if obj.docstring is not None:
            obj.docstring.value = fence_doctests(rewrite_roles(obj.docstring.value))
