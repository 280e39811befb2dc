"""Import-time promises of the package: light imports and one exception tree."""

from __future__ import annotations

import subprocess
import sys

import pytest

import safeinfer
from safeinfer import errors

HEAVY_MODULES = ("torch", "diffusers", "transformers", "cog", "ray")


def test_import_loads_no_heavy_module() -> None:
    code = (
        "import sys, safeinfer, safeinfer.cli\n"
        f"print(','.join(m for m in {HEAVY_MODULES!r} if m in sys.modules))"
    )
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert output == ""


def test_every_error_derives_from_base() -> None:
    for name in errors.__all__:
        error_class = getattr(errors, name)
        assert issubclass(error_class, errors.SafeInferError), name
        assert getattr(safeinfer, name) is error_class


def test_unknown_attribute_raises() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = safeinfer.no_such_name  # type: ignore[attr-defined]
