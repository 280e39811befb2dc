"""Unique names and stem sanitising: one rule, a table of hostile inputs, real processes."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from safeinfer.errors import InvalidNameError
from safeinfer.naming import DEFAULT_MAX_STEM_BYTES, sanitize_stem, unique_name

UNIQUE_PART = re.compile(r"\d{8}T\d{12}Z-[0-9a-f]{16}")


def test_unique_name_format() -> None:
    name = unique_name()
    assert re.fullmatch(UNIQUE_PART.pattern + r"\.png", name)


def test_unique_name_with_stem_and_suffix() -> None:
    name = unique_name("a cat/dog", suffix=".webp")
    assert re.fullmatch(UNIQUE_PART.pattern + r"-a_cat_dog\.webp", name)


def test_unique_names_sorted_within_process() -> None:
    names = [unique_name(suffix="") for _ in range(20_000)]
    assert names == sorted(names)
    assert len(set(names)) == len(names)


def test_unique_names_across_processes() -> None:
    code = "from safeinfer.naming import unique_name\nfor _ in range(3000): print(unique_name())"
    processes = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    names: list[str] = []
    for process in processes:
        output, _ = process.communicate(timeout=60)
        assert process.returncode == 0
        names.extend(output.split())
    assert len(names) == 9000
    assert len(set(names)) == len(names)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("cat", "cat"),
        ("black square", "black_square"),
        ("../../etc/passwd", "etc_passwd"),
        ("..", None),
        ("...", None),
        ("/", None),
        ("a/../b", "a_._b"),
        ("C:\\Windows\\system32", "C_Windows_system32"),
        ("nul\x00byte", "nul_byte"),
        ("line\nbreak\ttab", "line_break_tab"),
        ("bell\x07\x1b[31m", "bell_31m"),
        ("\x7f\x85", None),
        ('<>:"|?*', None),
        ("   ", None),
        ("", None),
        (".hidden", "hidden"),
        ("trailing.", "trailing"),
        ("-rf", "rf"),
        ("CON", "CON_"),
        ("con.txt", "con_.txt"),
        ("Lpt9", "Lpt9_"),
        ("COM¹", "COM¹_"),
        ("console", "console"),
        ("e\u0301t\u00e9", "\u00e9t\u00e9"),
        ("日本語 の 名前", "日本語_の_名前"),
        ("a..b", "a.b"),
        ("v1.2+build", "v1.2+build"),
    ],
)
def test_sanitize_stem_table(text: str, expected: str | None) -> None:
    if expected is None:
        with pytest.raises(InvalidNameError, match="nothing usable remains"):
            sanitize_stem(text)
    else:
        assert sanitize_stem(text) == expected


def test_sanitize_stem_cuts_long_names() -> None:
    stem = sanitize_stem("é" * 300)
    assert len(stem.encode()) <= DEFAULT_MAX_STEM_BYTES
    assert stem == "é" * (DEFAULT_MAX_STEM_BYTES // 2)


def test_sanitize_stem_cut_leaves_no_separator() -> None:
    assert sanitize_stem("ab.cd", max_length=3) == "ab"


def test_sanitize_stem_rejects_non_string() -> None:
    with pytest.raises(InvalidNameError, match="expected str"):
        sanitize_stem(b"bytes")  # type: ignore[arg-type]


def test_sanitize_stem_output_is_stable() -> None:
    for text in ("../x", "CON", "a b c", "ünï cödé"):
        once = sanitize_stem(text)
        assert sanitize_stem(once) == once
