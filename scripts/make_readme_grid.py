"""Draw the images of a generate job's output into one grid PNG for the README.

Run the main job first, then this script on its output:

    safeinfer generate examples/prompts.txt --out outputs
    python scripts/make_readme_grid.py outputs docs/images/generate-grid.png

Images are placed in manifest order, so the grid follows the prompt file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

import safeinfer
from safeinfer.manifest import read_manifests

#: Images per row; the example prompt file has 22 prompts, which fill two rows.
COLUMNS = 11
#: Pixels of background between and around the images.
GAP = 4
BACKGROUND = 255


def draw_grid(images: list[Image.Image], columns: int) -> np.ndarray:
    """Return an RGB array with ``images`` laid out row by row on a white background."""
    width, height = images[0].size
    rows = -(-len(images) // columns)
    canvas = np.full(
        (rows * (height + GAP) + GAP, columns * (width + GAP) + GAP, 3), BACKGROUND, np.uint8
    )
    for index, image in enumerate(images):
        row, column = divmod(index, columns)
        top, left = GAP + row * (height + GAP), GAP + column * (width + GAP)
        canvas[top : top + height, left : left + width] = np.asarray(image.convert("RGB"))
    return canvas


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="output directory of a generate job")
    parser.add_argument("grid", type=Path, help="PNG file to write")
    parser.add_argument("--columns", type=int, default=COLUMNS, help="images per row")
    options = parser.parse_args(argv)

    entries = read_manifests(options.out)
    if not entries:
        print(
            f"no manifest entries in {options.out}: run safeinfer generate first", file=sys.stderr
        )
        return 1
    images = [Image.open(entry.absolute_path) for entry in entries]
    grid = draw_grid(images, options.columns)
    result = safeinfer.save_png(grid, options.grid, if_exists="replace", compression="small")
    print(f"wrote {result.path} ({result.bytes} bytes) from {len(images)} images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
