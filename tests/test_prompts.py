"""Prompt files, item ids, seeds, file names and the rank split of the generate job."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from safeinfer.errors import ConfigError
from safeinfer.jobs._items import FILES_PER_FOLDER, derive_seed, item_name, make_items, shard
from safeinfer.jobs._prompts import parse_size, read_prompts


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# -- formats ---------------------------------------------------------------------------


def test_txt_skips_blank_and_comment_lines(tmp_path: Path) -> None:
    path = _write(tmp_path, "p.txt", "# header\n\na red fox\n  a blue whale  \n\n")

    rows = read_prompts(path)

    assert [row.prompt for row in rows] == ["a red fox", "a blue whale"]
    assert [row.row for row in rows] == [0, 1]
    assert [row.line for row in rows] == [3, 4]


def test_jsonl_overrides(tmp_path: Path) -> None:
    lines = [
        {"prompt": "a cat", "seed": 7, "steps": 3, "size": "64x32", "guidance": 2.5},
        {"prompt": "a dog", "negative_prompt": "blurry", "width": 16, "height": 24},
        "a bare string",
        {"prompt": "nulls", "seed": None},
    ]
    path = _write(tmp_path, "p.jsonl", "\n".join(json.dumps(line) for line in lines) + "\n")

    rows = read_prompts(path)

    assert [row.prompt for row in rows] == ["a cat", "a dog", "a bare string", "nulls"]
    assert (rows[0].seed, rows[0].steps, rows[0].guidance) == (7, 3, 2.5)
    assert (rows[0].width, rows[0].height) == (64, 32)
    assert rows[1].negative_prompt == "blurry"
    assert (rows[1].width, rows[1].height) == (16, 24)
    assert rows[3].seed is None


def test_csv_overrides_and_quoting(tmp_path: Path) -> None:
    text = 'prompt,seed,steps,size\n"a cat, sitting",5,,\n\na dog,,4,32x32\n'
    path = _write(tmp_path, "p.csv", text)

    rows = read_prompts(path)

    assert [row.prompt for row in rows] == ["a cat, sitting", "a dog"]
    assert (rows[0].seed, rows[0].steps, rows[0].width) == (5, None, None)
    assert (rows[1].seed, rows[1].steps, rows[1].width) == (None, 4, 32)
    assert [row.line for row in rows] == [2, 4]


def test_utf8_bom_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "p.txt"
    path.write_bytes("\ufeffé café\n".encode())

    assert read_prompts(path)[0].prompt == "é café"


def test_sequence_source() -> None:
    rows = read_prompts(["a", {"prompt": "b", "steps": 2}])

    assert [(row.prompt, row.steps, row.line) for row in rows] == [("a", None, 1), ("b", 2, 2)]


# -- errors name the line ----------------------------------------------------------------

BAD_FILES = [
    ("empty.txt", "", r"contains no prompts"),
    ("comments.txt", "# only\n\n", r"contains no prompts"),
    ("empty.jsonl", "\n\n", r"contains no prompts"),
    ("header.csv", "prompt\n", r"contains no prompts"),
    ("bad.jsonl", '{"prompt": "a"}\n{"prompt": \n', r"bad\.jsonl:2: invalid JSON"),
    ("list.jsonl", '{"prompt": "a"}\n[1, 2]\n', r"list\.jsonl:2: expected an object"),
    ("key.jsonl", '{"prompt": "a", "stpes": 3}\n', r"key\.jsonl:1: unknown column 'stpes'"),
    ("noprompt.jsonl", '{"seed": 3}\n', r"noprompt\.jsonl:1: 'prompt' is missing"),
    ("numprompt.jsonl", '{"prompt": 3}\n', r"numprompt\.jsonl:1: 'prompt' must be text"),
    (
        "steps.jsonl",
        '{"prompt": "a"}\n{"prompt": "b", "steps": 0}\n',
        r"steps\.jsonl:2: invalid steps 0",
    ),
    ("boolseed.jsonl", '{"prompt": "a", "seed": true}\n', r"boolseed\.jsonl:1: invalid seed True"),
    ("negseed.jsonl", '{"prompt": "a", "seed": -1}\n', r"negseed\.jsonl:1: invalid seed -1"),
    (
        "bigseed.jsonl",
        '{"prompt": "a", "seed": 18446744073709551616}\n',
        r"bigseed\.jsonl:1: invalid seed 18446744073709551616: expected a whole number from 0 "
        r"to 18446744073709551615",
    ),
    ("guid.jsonl", '{"prompt": "a", "guidance": "x"}\n', r"guid\.jsonl:1: invalid guidance"),
    ("size.jsonl", '{"prompt": "a", "size": "64by64"}\n', r"size\.jsonl:1: invalid size '64by64'"),
    ("zero.jsonl", '{"prompt": "a", "size": "0x64"}\n', r"zero\.jsonl:1: invalid size '0x64'"),
    ("both.jsonl", '{"prompt": "a", "size": "8x8", "width": 8}\n', r"both\.jsonl:1: set either"),
    ("col.csv", "prompt,colour\na,red\n", r"col\.csv:1: unknown column 'colour'"),
    ("nocol.csv", "seed\n3\n", r"nocol\.csv:1: the header has no 'prompt' column"),
    ("dup.csv", "prompt,prompt\na,b\n", r"dup\.csv:1: the header repeats"),
    ("fields.csv", "prompt,seed\na,1\nb,2,3\n", r"fields\.csv:3: expected 2 fields"),
    ("csvseed.csv", "prompt,seed\na,1\nb,x\n", r"csvseed\.csv:3: invalid seed 'x'"),
    ("csvsteps.csv", "prompt,steps\na,1.5\n", r"csvsteps\.csv:2: invalid steps '1.5'"),
    ("prompts.yaml", "- a\n", r"unknown prompt file type '\.yaml'"),
    ("nul.txt", "a\nb\x00c\n", r"nul\.txt:2: invalid prompt: NUL character at index 1"),
    ("nul.jsonl", '{"prompt": "a\\u0000"}\n', r"nul\.jsonl:1: invalid prompt: NUL character"),
    ("nulstr.jsonl", '"a"\n"\\u0000"\n', r"nulstr\.jsonl:2: invalid prompt: NUL character"),
    (
        "nulneg.jsonl",
        '{"prompt": "a", "negative_prompt": "b\\u0000"}\n',
        r"nulneg\.jsonl:1: invalid negative_prompt: NUL character",
    ),
    ("nul.csv", "prompt\na\nx\x00\n", r"nul\.csv:3: invalid prompt: NUL character"),
]


@pytest.mark.parametrize(
    ("name", "text", "message"), BAD_FILES, ids=[case[0] for case in BAD_FILES]
)
def test_bad_prompt_file(tmp_path: Path, name: str, text: str, message: str) -> None:
    path = _write(tmp_path, name, text)

    with pytest.raises(ConfigError, match=message):
        read_prompts(path)


def test_largest_seed_matches_torch() -> None:
    import torch

    largest = 2**64 - 1
    (row,) = read_prompts([{"prompt": "a", "seed": largest}])
    (item,) = make_items([row])

    assert item.seed == largest
    torch.Generator().manual_seed(item.seed)
    with pytest.raises(ValueError, match="Overflow"):
        torch.Generator().manual_seed(largest + 1)


def test_seeds_past_largest_are_rejected() -> None:
    rows = read_prompts(["a", {"prompt": "b", "seed": 2**64 - 2}])

    with pytest.raises(ConfigError, match=r"invalid seed 18446744073709551614 on line 2: with 3"):
        make_items(rows, images_per_prompt=3)
    assert make_items(rows, images_per_prompt=2)[-1].seed == 2**64 - 1


def test_nul_in_prompt_list() -> None:
    with pytest.raises(ConfigError, match="prompt list:2: invalid prompt: NUL character"):
        read_prompts(["a", "b\x00"])


def test_tab_and_control_characters_pass(tmp_path: Path) -> None:
    path = _write(tmp_path, "tabs.jsonl", '{"prompt": "a\\tb\\u0001c"}\n')

    assert [row.prompt for row in read_prompts(path)] == ["a\tb\x01c"]


def test_invalid_utf8_names_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"fine\ncaf\xe9\n")

    with pytest.raises(ConfigError, match=r"latin1\.txt:2: invalid UTF-8"):
        read_prompts(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="prompt file not found"):
        read_prompts(tmp_path / "absent.txt")


def test_parse_size() -> None:
    assert parse_size("512x768") == (512, 768)
    assert parse_size("64X32") == (64, 32)
    with pytest.raises(ConfigError, match="invalid size"):
        parse_size("512")


# -- items -------------------------------------------------------------------------------


def test_item_ids_seeds_and_names_are_stable() -> None:
    rows = read_prompts(["a red fox", {"prompt": "a whale", "seed": 100}])

    first = make_items(rows, seed=3, images_per_prompt=2)
    second = make_items(rows, seed=3, images_per_prompt=2)

    assert first == second
    assert [item.id for item in first] == ["000000-00", "000000-01", "000001-00", "000001-01"]
    assert [item.index for item in first] == [0, 1, 2, 3]
    assert first[0].seed == derive_seed(3, 0, 0)
    assert first[1].seed == derive_seed(3, 0, 1)
    assert [first[2].seed, first[3].seed] == [100, 101]
    assert first[0].name == f"0000/000000-00-{first[0].seed}-a_red_fox.png"


def test_base_seed_changes_derived_seeds() -> None:
    rows = read_prompts(["a", "b", "c"])

    seeds_zero = [item.seed for item in make_items(rows, seed=0, images_per_prompt=2)]
    seeds_one = [item.seed for item in make_items(rows, seed=1, images_per_prompt=2)]

    assert len(set(seeds_zero)) == 6
    assert not set(seeds_zero) & set(seeds_one)
    assert all(0 <= seed < 2**32 for seed in seeds_zero)


def test_row_overrides_win_over_job_options() -> None:
    rows = read_prompts([{"prompt": "a", "steps": 2, "size": "16x8"}, "b"])

    items = make_items(rows, steps=5, width=32, height=32, guidance=1.5, negative_prompt="dark")

    assert (items[0].steps, items[0].width, items[0].height) == (2, 16, 8)
    assert (items[1].steps, items[1].width, items[1].height) == (5, 32, 32)
    assert items[0].guidance == items[1].guidance == 1.5
    assert items[0].negative_prompt == "dark"


def test_names_spread_over_folders() -> None:
    name_first = item_name(FILES_PER_FOLDER - 1, "000999-00", 1, "x")
    name_next = item_name(FILES_PER_FOLDER, "001000-00", 1, "x")

    assert name_first.startswith("0000/")
    assert name_next.startswith("0001/")


def test_names_are_safe_for_hostile_prompts() -> None:
    for prompt in ["../../etc/passwd", "", "???", "CON", "a/b\\c\x00d", "é" * 200]:
        name = item_name(0, "000000-00", 1, prompt)
        folder, _, file_name = name.partition("/")

        assert folder == "0000"
        assert "/" not in file_name
        assert re.fullmatch(r"000000-00-1-[^/\\\x00]+\.png", file_name), name
        assert len(file_name.encode()) < 100


def test_shard_covers_every_item_once() -> None:
    items = list(range(11))

    shares = [shard(items, rank, 3) for rank in range(3)]

    assert sorted(item for share in shares for item in share) == items
    assert [len(share) for share in shares] == [4, 4, 3]
    assert shard(items, 0, 1) == items
    with pytest.raises(ConfigError, match="invalid rank 3"):
        shard(items, 3, 3)


def test_names_survive_pipeline_sanitising() -> None:
    # Resume finds an item's file by its name, so the pipeline must publish it unchanged.
    from safeinfer.pipeline import safe_relative_name

    for prompt in ["A red fox, at dawn", "../../etc/passwd", "é" * 200, "CON", "x.y.png", ""]:
        name = item_name(1234, "000617-00", 2**40, prompt)

        assert safe_relative_name(name) == name.removesuffix(".png")
