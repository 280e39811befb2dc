"""Prompt files: ``.txt`` (one prompt per line), ``.jsonl`` and ``.csv`` with per-row overrides.

Every error names the file and the line, so a bad row in a file of thousands is found
at once. Nothing here imports torch: a prompt file is checked before any model loads.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, cast

from safeinfer.errors import ConfigError

__all__ = [
    "COLUMNS",
    "MAX_SEED",
    "PromptRow",
    "PromptSource",
    "parse_size",
    "read_prompts",
]

#: The columns (CSV) and keys (JSON Lines) a row may set. Only ``prompt`` is required.
COLUMNS: Final = (
    "prompt",
    "negative_prompt",
    "seed",
    "steps",
    "guidance",
    "size",
    "width",
    "height",
)
#: Largest seed accepted, as in ``torch.Generator.manual_seed`` and ``SafePipeline``: an
#: unsigned 64-bit number. A row's seed plus its image index must not pass it either.
MAX_SEED: Final = 2**64 - 1
#: Largest width or height in pixels; a bigger value is a typo, not a request.
MAX_SIDE: Final = 16384
#: A ``.txt`` line starting with this is a comment.
COMMENT_PREFIX: Final = "#"
#: File suffixes by format.
SUFFIXES: Final = {".txt": "txt", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}

#: Prompts: a prompt file, or prompts given directly as strings or row mappings.
PromptSource = str | os.PathLike[str] | Sequence[str | Mapping[str, Any]]


@dataclass(frozen=True)
class PromptRow:
    """One prompt and its per-row overrides (None: use the job's option).

    ``row`` is the 0-based index among the prompts, which item ids and seeds derive
    from. ``line`` is the 1-based line in the file (for a sequence, the 1-based position).
    """

    row: int
    line: int
    prompt: str
    negative_prompt: str | None = None
    seed: int | None = None
    steps: int | None = None
    guidance: float | None = None
    width: int | None = None
    height: int | None = None


def read_prompts(source: PromptSource) -> list[PromptRow]:
    """Read prompts from a file or a sequence, validating every row.

    A file's format follows its suffix. In ``.txt`` every non-blank line is one prompt,
    and lines that start with ``#`` are comments. A ``.jsonl`` line is an object with a
    ``"prompt"`` key and optional overrides from :data:`COLUMNS`, or a bare JSON
    string. A ``.csv`` file has a header row naming columns from :data:`COLUMNS`, with
    ``prompt`` required. Empty cells and JSON ``null`` leave the job's option in force.

    >>> [row.prompt for row in read_prompts(["a cat", {"prompt": "a dog", "steps": 4}])]
    ['a cat', 'a dog']

    Raises:
        ConfigError: the file is missing, empty or of an unknown type, or a row is
            invalid. The message names the file and line.
    """
    if isinstance(source, (str, os.PathLike)):
        return _read_file(Path(source))
    if isinstance(cast(object, source), (bytes, bytearray)):
        raise ConfigError("prompts must be a file path or a sequence of prompts, not bytes")
    rows = [
        _parse_entry(entry, index + 1, "prompt list", allow_text=True)
        for index, entry in enumerate(source)
    ]
    return _finish(rows, "the prompt list")


def parse_size(value: object, *, where: str = "size") -> tuple[int, int]:
    """Parse ``"WxH"`` (for example ``"512x768"``) into (width, height).

    >>> parse_size("512x768")
    (512, 768)
    """
    if not isinstance(value, str):
        raise ConfigError(f"{where}: invalid size {value!r}: expected text such as '512x512'")
    parts = value.lower().replace("×", "x").split("x")
    if len(parts) != 2:
        raise ConfigError(
            f"{where}: invalid size {value!r}: expected WIDTHxHEIGHT such as '512x512'"
        )
    width = _parse_side(parts[0].strip(), value, where)
    height = _parse_side(parts[1].strip(), value, where)
    return width, height


def _parse_side(text: str, value: str, where: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= MAX_SIDE:
        raise ConfigError(
            f"{where}: invalid size {value!r}: width and height must be whole numbers "
            f"from 1 to {MAX_SIDE}"
        )
    return int(text)


# -- files -------------------------------------------------------------------------------


def _read_file(path: Path) -> list[PromptRow]:
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise ConfigError(
            f"unknown prompt file type {path.suffix or '(no suffix)'!r} for {path}: "
            "use .txt (one prompt per line), .jsonl or .csv"
        )
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(f"prompt file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(
            f"prompt file {path} is a directory; pass a .txt, .jsonl or .csv file"
        ) from None
    except UnicodeDecodeError as error:
        line = _line_of(path.read_bytes(), error.start)
        raise ConfigError(
            f"{path}:{line}: invalid UTF-8 ({error.reason}); save the file as UTF-8"
        ) from None
    except OSError as error:
        raise ConfigError(f"cannot read prompt file {path}: {error.strerror or error}") from None
    readers: dict[str, Callable[[str, str], Iterator[PromptRow]]] = {
        "txt": _read_txt,
        "jsonl": _read_jsonl,
        "csv": _read_csv,
    }
    rows = list(readers[kind](text, str(path)))
    return _finish(rows, str(path))


def _line_of(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def _read_txt(text: str, name: str) -> Iterator[PromptRow]:
    for number, line in enumerate(text.splitlines(), start=1):
        prompt = line.strip()
        if prompt and not prompt.startswith(COMMENT_PREFIX):
            _check_text(prompt, "prompt", f"{name}:{number}")
            yield PromptRow(row=0, line=number, prompt=prompt)


def _read_jsonl(text: str, name: str) -> Iterator[PromptRow]:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as error:
            raise ConfigError(
                f"{name}:{number}: invalid JSON ({error.msg} at column {error.colno}); "
                'each line must be an object such as {"prompt": "a red fox"}'
            ) from None
        yield _parse_entry(entry, number, name, allow_text=True)


def _read_csv(text: str, name: str) -> Iterator[PromptRow]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
    except csv.Error as error:
        raise ConfigError(f"{name}:1: invalid CSV header: {error}") from None
    if header is None:
        return
    columns = [column.strip() for column in header]
    _check_columns(columns, f"{name}:1")
    if "prompt" not in columns:
        raise ConfigError(
            f"{name}:1: the header has no 'prompt' column (found: {', '.join(columns)})"
        )
    if len(set(columns)) != len(columns):
        raise ConfigError(f"{name}:1: the header repeats a column: {', '.join(columns)}")
    while True:
        start = reader.line_num + 1
        try:
            record = next(reader, None)
        except csv.Error as error:
            raise ConfigError(f"{name}:{start}: invalid CSV: {error}") from None
        if record is None:
            return
        if not any(cell.strip() for cell in record):
            continue
        if len(record) != len(columns):
            raise ConfigError(
                f"{name}:{start}: expected {len(columns)} fields as in the header, "
                f"got {len(record)}"
            )
        entry = {column: cell for column, cell in zip(columns, record, strict=True) if cell != ""}
        yield _parse_entry(entry, start, name, allow_text=False, from_text=True)


# -- rows --------------------------------------------------------------------------------


def _check_columns(columns: Iterable[str], where: str) -> None:
    unknown = [column for column in columns if column not in COLUMNS]
    if unknown:
        raise ConfigError(
            f"{where}: unknown column {', '.join(repr(column) for column in unknown)}; "
            f"known columns: {', '.join(COLUMNS)}"
        )


def _parse_entry(
    entry: object, line: int, name: str, *, allow_text: bool, from_text: bool = False
) -> PromptRow:
    where = f"{name}:{line}"
    if isinstance(entry, str) and allow_text:
        _check_text(entry, "prompt", where)
        return PromptRow(row=0, line=line, prompt=entry)
    if not isinstance(entry, Mapping):
        raise ConfigError(
            f"{where}: expected an object with a 'prompt' key or a string, "
            f"got {type(entry).__name__}"
        )
    _check_columns(entry, where)
    values = {key: value for key, value in entry.items() if value is not None}
    prompt = values.get("prompt")
    if not isinstance(prompt, str):
        problem = "is missing" if prompt is None else f"must be text, got {prompt!r}"
        raise ConfigError(f"{where}: 'prompt' {problem}")
    negative = values.get("negative_prompt")
    if negative is not None and not isinstance(negative, str):
        raise ConfigError(f"{where}: 'negative_prompt' must be text, got {negative!r}")
    _check_text(prompt, "prompt", where)
    if negative is not None:
        _check_text(negative, "negative_prompt", where)
    width, height = _parse_dimensions(values, where, from_text)
    return PromptRow(
        row=0,
        line=line,
        prompt=prompt,
        negative_prompt=negative,
        seed=_parse_int(values.get("seed"), "seed", where, 0, MAX_SEED, from_text),
        steps=_parse_int(values.get("steps"), "steps", where, 1, None, from_text),
        guidance=_parse_float(values.get("guidance"), "guidance", where, from_text),
        width=width,
        height=height,
    )


def _check_text(text: str, key: str, where: str) -> None:
    # Prompts go into the PNG text metadata, which cannot hold NUL. Other control
    # characters are valid there and pass.
    if "\x00" in text:
        raise ConfigError(
            f"{where}: invalid {key}: NUL character at index {text.index(chr(0))}; "
            "remove it, because PNG text metadata cannot contain NUL"
        )


def _parse_dimensions(
    values: Mapping[str, object], where: str, from_text: bool
) -> tuple[int | None, int | None]:
    if "size" in values:
        if "width" in values or "height" in values:
            raise ConfigError(f"{where}: set either 'size' or 'width' and 'height', not both")
        return parse_size(values["size"], where=where)
    width = _parse_int(values.get("width"), "width", where, 1, MAX_SIDE, from_text)
    height = _parse_int(values.get("height"), "height", where, 1, MAX_SIDE, from_text)
    return width, height


def _parse_int(
    value: object, key: str, where: str, low: int, high: int | None, from_text: bool
) -> int | None:
    if value is None:
        return None
    number: int | None = None
    if from_text and isinstance(value, str) and value.strip().isdigit():
        number = int(value.strip())
    elif isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    limit = f"from {low} to {high}" if high is not None else f"of at least {low}"
    if number is None or number < low or (high is not None and number > high):
        raise ConfigError(f"{where}: invalid {key} {value!r}: expected a whole number {limit}")
    return number


def _parse_float(value: object, key: str, where: str, from_text: bool) -> float | None:
    if value is None:
        return None
    number: float | None = None
    if from_text and isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = None
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    if number is None or not math.isfinite(number):
        raise ConfigError(f"{where}: invalid {key} {value!r}: expected a finite number")
    return number


def _finish(rows: list[PromptRow], name: str) -> list[PromptRow]:
    if not rows:
        raise ConfigError(f"{name} contains no prompts: add one prompt per line")
    return [dataclasses.replace(row, row=index) for index, row in enumerate(rows)]
