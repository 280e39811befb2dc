"""Fixtures shared by the whole suite. Fixtures used by one area live in that area's files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

DATA_DIR = Path(__file__).parent / "data"
PNGSUITE_DIR = DATA_DIR / "pngsuite"


@pytest.fixture(scope="session")
def pngsuite() -> dict[str, dict[str, object]]:
    """Map each PngSuite file name to its manifest entry (valid, fault, bytes, sha256)."""
    manifest: dict[str, dict[str, object]] = json.loads(
        (PNGSUITE_DIR / "manifest.json").read_text()
    )
    return manifest
