"""The writer's own cost: temp file, rename, hashing and each durability level.

Run from the repository root::

    python -m bench.writer [--rounds 31] [--dir PATH]

The image is scikit-image's ``astronaut`` sample upscaled to 1024x1024 RGB, encoded once
with ``encode_png`` (about 1.2 MB). Three comparisons, each against a named baseline:

- a new file per image, the common case: ``save_png(image, directory,
  durability="none")`` against ``encode_png`` + a plain ``open(path, "wb").write(data)``
  to a new path (target: within 5 %);
- one path rewritten: ``save_png(..., if_exists="replace")`` against ``encode_png`` +
  a plain overwrite of that path;
- the writer alone, on the same bytes: ``atomic_write`` to a new path at each durability
  level against the plain write, plus SHA-256 of the bytes by itself, because every
  WriteResult carries it.

Files go to a fresh directory under bench/_out, on the repository's file system, so the
fsync figures are that file system's; ``--dir`` picks another place. Rounds are paired and
interleaved: every round runs every variant once, the variants of one comparison back to
back, in an order that rotates from round to round. A ratio is the median of the
per-round ratios; new files are deleted between rounds, outside the timed calls.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import skimage.data
from PIL import Image

from safeinfer.encode import encode_png
from safeinfer.writer import atomic_write, save_png

Array = np.ndarray[Any, Any]
Variant = Callable[[], object]

SIZE = (1024, 1024)
DEFAULT_ROUNDS = 31
OUT_DIR = Path(__file__).resolve().parent / "_out"


def load_image() -> Array:
    photo = Image.fromarray(skimage.data.astronaut()).convert("RGB")
    return np.asarray(photo.resize(SIZE, Image.Resampling.LANCZOS))


def plain_write(path: Path, data: bytes, *, fsync: bool = False) -> None:
    with open(path, "wb") as file:
        file.write(data)
        if fsync:
            file.flush()
            os.fsync(file.fileno())


class Files:
    """Fresh paths per round, and the directories to empty between rounds."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.new_dirs = [root / "plain-new", root / "saved-new", root / "atomic-new"]
        for directory in self.new_dirs:
            directory.mkdir()
        self.count = 0

    def fresh(self, kind: str) -> Path:
        self.count += 1
        return self.root / f"{kind}-new" / f"{self.count}.png"

    def empty_new_dirs(self) -> None:
        for directory in self.new_dirs:
            for path in directory.iterdir():
                path.unlink()


def build_groups(pixels: Array, data: bytes, files: Files) -> list[dict[str, Variant]]:
    """Return the variant groups; a group's variants run back to back within a round."""
    root = files.root
    new_files: dict[str, Variant] = {
        "encode + plain write, new file": lambda: plain_write(
            files.fresh("plain"), encode_png(pixels)
        ),
        "save_png into a directory": lambda: save_png(
            pixels, root / "saved-new", durability="none"
        ),
    }
    one_path: dict[str, Variant] = {
        "encode + plain overwrite": lambda: plain_write(root / "plain.png", encode_png(pixels)),
        'save_png if_exists="replace"': lambda: save_png(
            pixels, root / "saved.png", durability="none", if_exists="replace"
        ),
    }
    writer_only: dict[str, Variant] = {
        "plain write, new file": lambda: plain_write(files.fresh("plain"), data),
        "plain write + fsync, new file": lambda: plain_write(
            files.fresh("plain"), data, fsync=True
        ),
        "sha256": lambda: hashlib.sha256(data).hexdigest(),
        'atomic_write "none"': lambda: atomic_write(files.fresh("atomic"), data, durability="none"),
        'atomic_write "file"': lambda: atomic_write(files.fresh("atomic"), data, durability="file"),
        'atomic_write "full"': lambda: atomic_write(files.fresh("atomic"), data, durability="full"),
    }
    return [new_files, one_path, writer_only]


def measure(groups: list[dict[str, Variant]], rounds: int, files: Files) -> dict[str, list[float]]:
    """Run every variant once per round; return seconds per round for each variant.

    The variants of one group run back to back, in an order that rotates every round, so
    the two sides of a paired ratio meet the same machine load. New files are removed
    between rounds, outside the timed calls.
    """
    times: dict[str, list[float]] = {name: [] for group in groups for name in group}
    for group in groups:
        for variant in group.values():  # warm-up: page cache, imports, first-call costs
            variant()
    for round_index in range(rounds):
        files.empty_new_dirs()
        for group in groups:
            names = list(group)
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                start = time.perf_counter()
                group[name]()
                times[name].append(time.perf_counter() - start)
    return times


def paired_ratio(times: dict[str, list[float]], candidate: str, baseline: str) -> float:
    return statistics.median(
        value / base for value, base in zip(times[candidate], times[baseline], strict=True)
    )


def paired_difference_ms(times: dict[str, list[float]], candidate: str, baseline: str) -> float:
    return 1000 * statistics.median(
        value - base for value, base in zip(times[candidate], times[baseline], strict=True)
    )


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def report(times: dict[str, list[float]], data: bytes, rounds: int) -> None:
    print(
        f"machine: {os.cpu_count()} cores, {cpu_model()}, "
        f"Python {platform.python_version()}; {rounds} rounds, PNG of {len(data) / 1e6:.2f} MB"
    )
    print(f"{'variant':34} {'median ms':>10}")
    for name, values in times.items():
        print(f"{name:34} {1000 * statistics.median(values):10.2f}")

    print()
    for candidate, baseline in (
        ("save_png into a directory", "encode + plain write, new file"),
        ('save_png if_exists="replace"', "encode + plain overwrite"),
    ):
        ratio = paired_ratio(times, candidate, baseline)
        difference = paired_difference_ms(times, candidate, baseline)
        verdict = "within" if ratio <= 1.05 else "OVER"
        print(f"{candidate} / ({baseline}): {ratio:.3f} ({verdict} the 5 % target)")
        print(f"  median paired difference: {difference:+.2f} ms")
    overhead = paired_difference_ms(times, 'atomic_write "none"', "plain write, new file")
    hashing = 1000 * statistics.median(times["sha256"])
    print(f'atomic_write "none" minus plain write, new file: {overhead:+.2f} ms')
    print(f"  of which SHA-256 of the bytes: {hashing:.2f} ms")
    baseline = "plain write, new file"
    for level in ("none", "file", "full"):
        name = f'atomic_write "{level}"'
        print(f"{name} / {baseline}: {paired_ratio(times, name, baseline):.2f}")
    fsync_ratio = paired_ratio(times, 'atomic_write "file"', "plain write + fsync, new file")
    print(f'atomic_write "file" / (plain write + fsync, new file): {fsync_ratio:.2f}')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help="paired rounds")
    parser.add_argument("--dir", type=Path, help="where to write (default: under bench/_out)")
    args = parser.parse_args()

    pixels = load_image()
    data = encode_png(pixels)
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
    else:
        OUT_DIR.mkdir(exist_ok=True)
    directory = Path(tempfile.mkdtemp(prefix="writer-", dir=args.dir or OUT_DIR))
    try:
        files = Files(directory)
        times = measure(build_groups(pixels, data, files), args.rounds, files)
    finally:
        shutil.rmtree(directory)
    report(times, data, args.rounds)


if __name__ == "__main__":
    main()
