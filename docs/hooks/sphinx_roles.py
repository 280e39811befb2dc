"""Griffe extension: turn Sphinx cross-reference roles in docstrings into Markdown links.

The package's docstrings use the Sphinx forms (``:func:`name```, ``:class:`~a.b.C```)
that editors and ``help()`` show well. mkdocstrings expects Markdown cross-references,
so this rewrites each role to ``[`name`][target]`` before rendering. The links are then
checked by the strict build: a role that names a missing object fails it.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

#: ``:role:`target``` and ``:role:`~target```, for the roles that name Python objects.
_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|attr|exc|mod|data|obj|const):`(~?)([\w.]+)`")


def _link(match: re.Match[str]) -> str:
    short, target = match.group(1), match.group(2)
    text = target.rsplit(".", 1)[-1] if short else target
    return f"[`{text}`][{target}]"


def rewrite_roles(text: str) -> str:
    """Return ``text`` with every Sphinx object role replaced by a Markdown cross-reference."""
    return _ROLE.sub(_link, text)


class SphinxRoles(griffe.Extension):
    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rewrite_roles(obj.docstring.value)
