"""PNG verification speed against a plain CRC-32 pass and against Pillow's decoder.

Run from the repository root::

    python -m bench.verify [--files 2000] [--rounds 5] [--dir PATH]

The benchmark first writes ``--files`` PNGs of 512x512 RGB into a temporary directory:
smooth colour gradients (a random direction and colours per file) plus Gaussian noise of
sigma 6, saved by Pillow with its default compression. Every file is read once before the
timings, so all variants read from the page cache. Three comparisons, single process
unless stated, each against a named baseline:

- ``verify_png(level="structure")`` against ``zlib.crc32`` over each file's bytes, the
  file read included (target: at most 1.25 times the baseline's time);
- ``verify_png(level="full")`` against Pillow's ``Image.open(path).load()``
  (target: at least 1.5 times as fast);
- ``scan(level="full", jobs=2)`` against ``jobs=1`` (how far it scales with cores).

Rounds are paired and interleaved: every round runs every variant over all files once, in
an order that rotates from round to round, and a ratio is the median of the per-round
ratios. Set ``SAFEINFER_INFLATE=zlib`` to measure the standard-library fallback.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from safeinfer.png import scan, verify_png
from safeinfer.png._inflate import CHECKSUM_BACKEND, INFLATE_BACKEND

SIZE = 512
NOISE_SIGMA = 6.0
DEFAULT_FILES = 2000
DEFAULT_ROUNDS = 5

Variant = Callable[[list[Path]], object]


def make_image(rng: np.random.Generator) -> np.ndarray:
    """Return a smooth colour gradient in a random direction, plus Gaussian noise."""
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / SIZE
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(angle) * x + np.sin(angle) * y
    ramp = (ramp - ramp.min()) / (ramp.max() - ramp.min())
    start, end = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    pixels = start + ramp[..., None] * (end - start)
    pixels += rng.normal(0, NOISE_SIGMA, pixels.shape)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def write_files(directory: Path, count: int) -> list[Path]:
    existing = sorted(directory.glob("bench-*.png"))
    if len(existing) >= count:
        return existing[:count]
    rng = np.random.default_rng(20261204)
    paths = []
    for index in range(count):
        path = directory / f"bench-{index:05d}.png"
        Image.fromarray(make_image(rng)).save(path, "PNG")
        paths.append(path)
    return paths


def crc32_files(paths: list[Path]) -> None:
    for path in paths:
        with open(path, "rb") as file:
            zlib.crc32(file.read())


def verify_structure(paths: list[Path]) -> None:
    for path in paths:
        if not verify_png(path, level="structure").ok:
            raise AssertionError(f"{path} failed the structure check")


def verify_full(paths: list[Path]) -> None:
    for path in paths:
        if not verify_png(path).ok:
            raise AssertionError(f"{path} failed the full check")


def pillow_load(paths: list[Path]) -> None:
    for path in paths:
        with Image.open(path) as image:
            image.load()


def scan_jobs(jobs: int) -> Variant:
    def run(paths: list[Path]) -> None:
        bad = [report.path for report in scan(paths, jobs=jobs) if not report.ok]
        if bad:
            raise AssertionError(f"scan flagged {bad[:3]}")

    return run


VARIANTS: dict[str, Variant] = {
    "zlib.crc32 + read": crc32_files,
    "verify structure": verify_structure,
    "Pillow open().load()": pillow_load,
    "verify full": verify_full,
    "scan full, jobs=1": scan_jobs(1),
    "scan full, jobs=2": scan_jobs(2),
}

#: (name, variant, baseline): the ratio printed is baseline time / variant time.
COMPARISONS = (
    ("structure vs crc32 (time ratio, target <= 1.25)", "verify structure", "zlib.crc32 + read"),
    ("full vs Pillow load (speed-up, target >= 1.5)", "Pillow open().load()", "verify full"),
    ("scan jobs=2 vs jobs=1 (speed-up)", "scan full, jobs=1", "scan full, jobs=2"),
)


def run_rounds(paths: list[Path], rounds: int) -> dict[str, list[float]]:
    names = list(VARIANTS)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            VARIANTS[name](paths)
            seconds[name].append(time.perf_counter() - start)
        print(f"round {round_index + 1}/{rounds} done", flush=True)
    return seconds


def report(seconds: dict[str, list[float]], paths: list[Path]) -> None:
    count = len(paths)
    mean_kb = sum(path.stat().st_size for path in paths) / count / 1000
    print(
        f"\n{count} files of {SIZE}x{SIZE} RGB, mean {mean_kb:.0f} KB; "
        f"inflate: {INFLATE_BACKEND}, checksums: {CHECKSUM_BACKEND}; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    print(f"{'variant':28} {'median s':>9} {'files/s':>9}")
    for name, values in seconds.items():
        median = statistics.median(values)
        print(f"{name:28} {median:9.3f} {count / median:9.0f}")
    print()
    for label, numerator, denominator in COMPARISONS:
        ratios = [a / b for a, b in zip(seconds[numerator], seconds[denominator], strict=True)]
        print(f"{label}: {statistics.median(ratios):.2f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.verify", description=__doc__)
    parser.add_argument("--files", type=int, default=DEFAULT_FILES, help="PNG files to make")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help="interleaved rounds")
    parser.add_argument(
        "--dir", type=Path, help="keep the files here and reuse them (default: a temp dir)"
    )
    args = parser.parse_args(argv)
    directory = args.dir or Path(tempfile.mkdtemp(prefix="safeinfer-bench-verify-"))
    directory.mkdir(parents=True, exist_ok=True)
    try:
        start = time.perf_counter()
        paths = write_files(directory, args.files)
        print(f"made {len(paths)} files in {time.perf_counter() - start:.0f} s", flush=True)
        crc32_files(paths)  # warm the page cache
        report(run_rounds(paths, args.rounds), paths)
    finally:
        if args.dir is None:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
