"""PNG encoding speed and size against Pillow and OpenCV, on two photographs.

Run from the repository root::

    python -m bench.encode [--rounds 11] [--slow-rounds 3]

The photographs are scikit-image's ``astronaut`` and ``coffee`` samples, upscaled to
1024x1024 RGB with Pillow's LANCZOS filter. Every contestant writes a file into a
temporary directory. Rounds are paired and interleaved (the order alternates every round),
and each figure is the median over rounds. A speed ratio is the median of the per-round
ratios, so load that hits one round slows both sides of that round alike.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import skimage.data
from PIL import Image

from safeinfer.encode import encode_png
from safeinfer.encode._deflate import available_backends
from safeinfer.encode._fast import MODE_CANDIDATES, EncoderSettings, compress_pixels
from safeinfer.encode._filters import FILTER_SUB, FILTER_UP
from safeinfer.encode._pool import thread_count

Array = np.ndarray[Any, Any]

SIZE = (1024, 1024)
PHOTOS = ("astronaut", "coffee")


def load_photo(name: str) -> Array:
    photo = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
    return np.asarray(photo.resize(SIZE, Image.Resampling.LANCZOS))


def save_png_function() -> tuple[str, Callable[[Array, Path], None]]:
    """Return the writer's save_png when it exists, else encode_png plus a plain write."""
    try:
        from safeinfer.writer import save_png
    except ImportError:

        def encode_and_write(pixels: Array, path: Path) -> None:
            path.write_bytes(encode_png(pixels))

        return "encode_png + write", encode_and_write

    def save(pixels: Array, path: Path) -> None:
        save_png(pixels, path, durability="none", if_exists="replace")

    return 'save_png(durability="none")', save


def pillow_save(pixels: Array, path: Path) -> None:
    Image.fromarray(pixels).save(path)


def pillow_optimize(pixels: Array, path: Path) -> None:
    Image.fromarray(pixels).save(path, optimize=True)


def opencv_save(pixels: Array, path: Path) -> None:
    ok, encoded = cv2.imencode(".png", pixels[:, :, ::-1])
    assert ok
    path.write_bytes(encoded.tobytes())


def small_save(pixels: Array, path: Path) -> None:
    path.write_bytes(encode_png(pixels, compression="small"))


def balanced_save(pixels: Array, path: Path) -> None:
    path.write_bytes(encode_png(pixels, compression="balanced"))


def timed(function: Callable[[Array, Path], None], pixels: Array, path: Path) -> float:
    start = time.perf_counter()
    function(pixels, path)
    return time.perf_counter() - start


def paired(
    ours: Callable[[Array, Path], None],
    baseline: Callable[[Array, Path], None],
    pixels: Array,
    folder: Path,
    rounds: int,
) -> dict[str, float]:
    """Time both functions in alternating order and return medians, ratio and file sizes."""
    ours_path, baseline_path = folder / "ours.png", folder / "baseline.png"
    ours_times, baseline_times, ratios = [], [], []
    for round_index in range(rounds):
        if round_index % 2 == 0:
            ours_time = timed(ours, pixels, ours_path)
            baseline_time = timed(baseline, pixels, baseline_path)
        else:
            baseline_time = timed(baseline, pixels, baseline_path)
            ours_time = timed(ours, pixels, ours_path)
        ours_times.append(ours_time)
        baseline_times.append(baseline_time)
        ratios.append(baseline_time / ours_time)
    for path in (ours_path, baseline_path):
        with Image.open(path) as decoded:
            assert np.array_equal(np.asarray(decoded), pixels), f"{path.name} is not lossless"
    return {
        "ours_ms": statistics.median(ours_times) * 1000,
        "baseline_ms": statistics.median(baseline_times) * 1000,
        "speedup": statistics.median(ratios),
        "size_ratio": ours_path.stat().st_size / baseline_path.stat().st_size,
        "ours_bytes": ours_path.stat().st_size,
        "baseline_bytes": baseline_path.stat().st_size,
    }


def report(label: str, result: dict[str, float]) -> None:
    print(
        f"  {label:<44} {result['ours_ms']:7.1f} ms vs {result['baseline_ms']:7.1f} ms"
        f"  speed x{result['speedup']:5.2f}  size x{result['size_ratio']:.3f}"
        f"  ({result['ours_bytes']:,} vs {result['baseline_bytes']:,} bytes)"
    )


def deflate_backends(pixels: Array, rounds: int) -> None:
    """Compare the deflate libraries on the ``fast`` settings, one thread, interleaved."""
    backends = available_backends()
    times: dict[str, list[float]] = {name: [] for name in backends}
    sizes: dict[str, int] = {}
    for round_index in range(rounds):
        order = list(backends) if round_index % 2 == 0 else list(reversed(backends))
        for name in order:
            start = time.perf_counter()
            stream = compress_pixels(
                pixels, MODE_CANDIDATES["fast"], backend=backends[name], threads=1
            )
            times[name].append(time.perf_counter() - start)
            sizes[name] = len(stream)
    reference = statistics.median(times["zlib"])
    for name, backend in backends.items():
        note = " (no Z_RLE: default strategy, level <= 3)" if not backend.supports_strategy else ""
        print(
            f"  {name + ' ' + backend.version:<22} {statistics.median(times[name]) * 1000:6.1f} ms"
            f"  speed x{reference / statistics.median(times[name]):4.2f} of zlib"
            f"  IDAT {sizes[name]:,} bytes{note}"
        )


def thread_scaling(pixels: Array, rounds: int) -> None:
    """Compare the ``fast`` filter and deflate on one thread and on the default count."""
    one, default, ratios = [], [], []
    for round_index in range(rounds):
        pair = []
        for threads in (1, None) if round_index % 2 == 0 else (None, 1):
            start = time.perf_counter()
            compress_pixels(pixels, MODE_CANDIDATES["fast"], threads=threads)
            pair.append((threads, time.perf_counter() - start))
        single = next(seconds for threads, seconds in pair if threads == 1)
        several = next(seconds for threads, seconds in pair if threads is None)
        one.append(single)
        default.append(several)
        ratios.append(single / several)
    print(
        f"  threads: {thread_count()} threads {statistics.median(default) * 1000:.1f} ms vs one "
        f"{statistics.median(one) * 1000:.1f} ms, speed x{statistics.median(ratios):.2f}"
    )


def filter_alternatives(pixels: Array, pillow_bytes: int) -> None:
    """Show why ``fast`` uses Paeth: sizes of single-filter alternatives at level 1 RLE."""
    for label, filter_type in (("Sub", FILTER_SUB), ("Up", FILTER_UP)):
        settings = EncoderSettings(filter=filter_type, level=1, strategy=zlib.Z_RLE)
        size = len(compress_pixels(pixels, [settings]))
        ratio = size / pillow_bytes
        print(f"  {label} filter, level 1, Z_RLE: size x{ratio:.3f} of Pillow default")


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model}, {cpus} usable CPUs, Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=11, help="rounds for fast contestants")
    parser.add_argument(
        "--slow-rounds", type=int, default=3, help="rounds for optimize=True and 'small'"
    )
    args = parser.parse_args()

    save_label, save = save_png_function()
    print(f"machine: {machine()}")
    print(f"Pillow {Image.__version__}, OpenCV {cv2.__version__}, numpy {np.__version__}")
    with tempfile.TemporaryDirectory() as folder_name:
        folder = Path(folder_name)
        for name in PHOTOS:
            pixels = load_photo(name)
            print(f"\n{name} ({SIZE[0]}x{SIZE[1]} RGB)")
            default = paired(save, pillow_save, pixels, folder, args.rounds)
            report(f"{save_label} vs Pillow save()", default)
            report(
                "balanced vs Pillow save()",
                paired(balanced_save, pillow_save, pixels, folder, args.slow_rounds),
            )
            report(
                "small vs Pillow save(optimize=True)",
                paired(small_save, pillow_optimize, pixels, folder, args.slow_rounds),
            )
            report(
                f"{save_label} vs OpenCV imencode('.png')",
                paired(save, opencv_save, pixels, folder, args.rounds),
            )
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="PNG")
            filter_alternatives(pixels, len(buffer.getvalue()))
            thread_scaling(pixels, args.rounds)
            print("  deflate libraries, fast settings, one thread:")
            deflate_backends(pixels, args.rounds)


if __name__ == "__main__":
    main()
