"""save_png and save_image: destination rules, names, bad inputs, verify, round trips."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import png as pypng
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

import safeinfer.encode
from safeinfer.errors import (
    ConfigError,
    CorruptPngError,
    FileExistsConflict,
    InvalidImageError,
    InvalidNameError,
    InvalidTypeError,
)
from safeinfer.png import read_metadata
from safeinfer.writer import save_image, save_png

RGB = np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3)
UNIQUE_NAME = r"\d{8}T\d{12}Z-[0-9a-f]{16}"


def decode(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def decode_exact(path: Path) -> np.ndarray:
    """Decode any bit depth without conversion (Pillow narrows 16-bit colour to 8 bits)."""
    width, height, rows, info = pypng.Reader(filename=str(path)).asDirect()
    planes = info["planes"]
    dtype = np.uint16 if info["bitdepth"] > 8 else np.uint8
    return np.vstack([np.asarray(row, dtype=dtype) for row in rows]).reshape(height, width, planes)


def test_existing_directory_gets_unique_name(tmp_path: Path) -> None:
    result = save_png(RGB, tmp_path, durability="none")
    assert result.path.parent == tmp_path
    assert result.path.name.endswith(".png")
    assert len(result.path.name) == len("20261204T204512123456Z-9f1c2a7be04d3316.png")
    assert np.array_equal(decode(result.path), RGB)


@pytest.mark.parametrize("dest", ["new/", "new"])
def test_missing_directory_created(tmp_path: Path, dest: str) -> None:
    result = save_png(RGB, f"{tmp_path}/{dest}", name="cat", durability="none")
    assert result.path.parent == tmp_path / "new"
    assert result.path.name.endswith("-cat.png")


def test_names_sort_by_time(tmp_path: Path) -> None:
    names = [save_png(RGB, tmp_path, durability="none").path.name for _ in range(20)]
    assert names == sorted(names)
    assert sorted(os.listdir(tmp_path)) == names


def test_name_suffix_not_doubled(tmp_path: Path) -> None:
    result = save_png(RGB, tmp_path, name="cat.PNG", durability="none")
    assert result.path.name.endswith("-cat.png")


def test_directory_replace_uses_exact_name(tmp_path: Path) -> None:
    first = save_png(RGB, tmp_path, name="latest", if_exists="replace", durability="none")
    second = save_png(RGB[::-1], tmp_path, name="latest", if_exists="replace", durability="none")
    assert first.path == second.path == tmp_path / "latest.png"
    assert np.array_equal(decode(second.path), RGB[::-1])
    assert os.listdir(tmp_path) == ["latest.png"]


def test_directory_error_needs_name(tmp_path: Path) -> None:
    with pytest.raises(InvalidNameError, match="needs name"):
        save_png(RGB, tmp_path, if_exists="error")


def test_file_path_defaults_to_error(tmp_path: Path) -> None:
    target = tmp_path / "out.png"
    save_png(RGB, target, durability="none")
    with pytest.raises(FileExistsConflict):
        save_png(RGB[::-1], target, durability="none")
    assert np.array_equal(decode(target), RGB)


def test_file_path_rejects_name(tmp_path: Path) -> None:
    with pytest.raises(InvalidNameError, match="applies only when dest is a directory"):
        save_png(RGB, tmp_path / "out.png", name="x")


@pytest.mark.parametrize("dest", [".png", ".PNG", "sub/.png", ".jpg"])
def test_suffix_only_destination_rejected(tmp_path: Path, dest: str) -> None:
    with pytest.raises(InvalidNameError, match="has no file name") as raised:
        save_png(RGB, tmp_path / dest)
    assert f"give a name like out{dest[-4:].lower()} or a folder like out/" in str(raised.value)
    assert os.listdir(tmp_path) == [], "a failed save created files or directories"


@pytest.mark.parametrize("image_format", ["jpeg", "webp"])
def test_suffix_only_destination_rejected_for_lossy(tmp_path: Path, image_format: str) -> None:
    with pytest.raises(InvalidNameError, match="has no file name"):
        save_image(RGB, tmp_path / f".{image_format}", format=image_format)
    assert os.listdir(tmp_path) == []


def test_suffix_only_folder_stays_usable(tmp_path: Path) -> None:
    explicit = save_png(RGB, os.path.join(tmp_path, ".png", ""), durability="none")
    assert explicit.path.parent == tmp_path / ".png"
    existing = save_png(RGB, tmp_path / ".png", durability="none")
    assert existing.path.parent == tmp_path / ".png"


def test_file_path_with_wrong_suffix(tmp_path: Path) -> None:
    with pytest.raises(InvalidNameError, match=r"ending in \.png"):
        save_png(RGB, tmp_path / "out.jpg")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    ("name", "expected_stem"),
    [
        ("../../etc/passwd", "etc_passwd"),
        ("/abs/path", "abs_path"),
        ("..\\..\\windows", "windows"),
        ("CON", "CON_"),
        ("a\x00b", "a_b"),
    ],
)
def test_hostile_names_stay_inside(tmp_path: Path, name: str, expected_stem: str) -> None:
    outputs = tmp_path / "outputs"
    result = save_png(RGB, outputs, name=name, durability="none")
    assert result.path.parent == outputs
    assert result.path.name.endswith(f"-{expected_stem}.png")
    assert sorted(os.listdir(tmp_path)) == ["outputs"]


@pytest.mark.parametrize("name", ["..", "", "///", "\x00\x01", "<>|"])
def test_unusable_names_rejected(tmp_path: Path, name: str) -> None:
    with pytest.raises(InvalidNameError):
        save_png(RGB, tmp_path, name=name)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"metadata": [1, 2]}, r"invalid metadata \[1, 2\]: expected a dict .* got list"),
        ({"metadata": "prompt"}, "invalid metadata 'prompt': expected a dict .* got str"),
        ({"name": 5}, "invalid name 5: expected a str .* got int"),
        ({"name": b"cat"}, "invalid name b'cat': expected a str .* got bytes"),
    ],
)
@pytest.mark.parametrize("image_format", ["png", "jpeg"])
def test_wrong_argument_types_rejected(
    tmp_path: Path, options: dict[str, Any], message: str, image_format: str
) -> None:
    with pytest.raises(InvalidTypeError, match=message):
        save_image(RGB, tmp_path / "out/", format=image_format, **options)
    assert os.listdir(tmp_path) == [], "a failed save created files or directories"


def test_dest_of_wrong_type_rejected(tmp_path: Path) -> None:
    with pytest.raises(InvalidTypeError, match="invalid dest 5: expected a str or path"):
        save_png(RGB, 5)  # type: ignore[arg-type]


def _nan_image() -> np.ndarray:
    image = np.zeros((4, 4, 3), np.float32)
    image[1, 2, 0] = np.nan
    return image


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (_nan_image(), "NaN"),
        (np.full((4, 4), np.inf), "inf"),
        (np.full((4, 4), -0.5), r"\[0, 1\]"),
        (np.zeros((4, 4, 3), np.complex64), "complex"),
        (np.zeros((4, 4), np.int64) - 1, "int64"),
        (np.zeros((4, 4, 5), np.uint8), "channels"),
        (np.zeros((2, 4, 4, 3), np.uint8), "shape"),
        (np.zeros(16, np.uint8), "shape"),
        (np.zeros((0, 0, 3), np.uint8), "at least 1"),
        (np.zeros((0, 8), np.uint8), "at least 1"),
        ("not an image", "str"),
        (None, "NoneType"),
    ],
)
def test_bad_images_rejected(tmp_path: Path, image: Any, message: str) -> None:
    with pytest.raises(InvalidImageError, match=message):
        save_png(image, tmp_path / "out/", durability="none")
    assert os.listdir(tmp_path) == [], "a failed save created files or directories"


def test_verify_full_publishes(tmp_path: Path) -> None:
    result = save_png(RGB, tmp_path / "v.png", verify="full", durability="none")
    assert np.array_equal(decode(result.path), RGB)


@pytest.mark.parametrize("level", ["structure", "full"])
def test_verify_blocks_corrupt_png(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, level: str
) -> None:
    real_encode = safeinfer.encode.encode_png

    def corrupting_encode(image: Any, **options: Any) -> bytes:
        data = bytearray(real_encode(image, **options))
        data[-20] ^= 0xFF  # inside IDAT's data or CRC
        return bytes(data)

    monkeypatch.setattr(safeinfer.encode, "encode_png", corrupting_encode)
    target = tmp_path / "v.png"
    with pytest.raises(CorruptPngError, match="not publishing") as caught:
        save_png(RGB, target, verify=level, durability="none")  # type: ignore[arg-type]
    assert str(target) in str(caught.value)
    assert caught.value.report is not None
    assert os.listdir(tmp_path) == []


def test_invalid_verify_level(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="invalid verify"):
        save_png(RGB, tmp_path, verify="deep")  # type: ignore[arg-type]


def test_metadata_written(tmp_path: Path) -> None:
    result = save_png(RGB, tmp_path, metadata={"prompt": "a cat ✓", "seed": 7}, durability="none")
    metadata = read_metadata(result.path)
    assert metadata["safeinfer"]["seed"] == 7
    assert metadata["safeinfer"]["prompt"] == "a cat ✓"


def test_torch_tensor_chw(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    tensor = torch.rand(3, 6, 5, generator=torch.Generator().manual_seed(0))
    result = save_png(tensor, tmp_path, durability="none")
    expected = np.rint(tensor.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    assert np.array_equal(decode(result.path), expected)


@pytest.mark.parametrize(
    ("image_format", "suffix"), [("jpeg", ".jpg"), ("jpg", ".jpg"), ("webp", ".webp")]
)
def test_save_image_lossy(tmp_path: Path, image_format: str, suffix: str) -> None:
    result = save_image(RGB, tmp_path, format=image_format, quality=90, durability="none")
    assert result.path.suffix == suffix
    with Image.open(result.path) as opened:
        assert opened.format == {"jpg": "JPEG"}.get(image_format, image_format.upper())
        assert opened.size == (8, 8)


def test_save_image_png_matches_save_png(tmp_path: Path) -> None:
    result = save_image(RGB, tmp_path / "a.png", durability="none")
    assert np.array_equal(decode(result.path), RGB)


def test_save_image_jpeg_file_path(tmp_path: Path) -> None:
    result = save_image(RGB, tmp_path / "photo.jpeg", format="jpeg", durability="none")
    assert result.path == tmp_path / "photo.jpeg"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"format": "gif"}, "invalid format"),
        ({"format": "png", "quality": 80}, "quality applies"),
        ({"format": "jpeg", "verify": "full"}, "PNG only"),
        ({"format": "webp", "compression": "small"}, "PNG only"),
    ],
)
def test_save_image_invalid_options(tmp_path: Path, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        save_image(RGB, tmp_path, **options)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint32])
@pytest.mark.parametrize(("peak", "bit_depth"), [(255, 8), (256, 16), (65535, 16)])
def test_wide_integer_arrays_narrowed(
    tmp_path: Path, dtype: type[np.integer[Any]], peak: int, bit_depth: int
) -> None:
    image = np.zeros((4, 4, 3), dtype)
    image[1, 2, 0] = peak
    result = save_png(image, tmp_path / "out.png", durability="none")
    assert pypng.Reader(filename=str(result.path)).read()[3]["bitdepth"] == bit_depth
    assert np.array_equal(decode_exact(result.path), image)


@pytest.mark.parametrize(
    ("dtype", "value"),
    [(np.int32, 65536), (np.int64, 65536), (np.uint32, 65536), (np.int32, -1), (np.int64, -1)],
)
def test_wide_integer_arrays_out_of_range(
    tmp_path: Path, dtype: type[np.integer[Any]], value: int
) -> None:
    image = np.zeros((4, 4, 3), dtype)
    image[0, 0, 1] = value
    with pytest.raises(InvalidImageError, match=r"\[0, 65535\]"):
        save_png(image, tmp_path / "out/", durability="none")
    assert os.listdir(tmp_path) == []


def shapes() -> st.SearchStrategy[tuple[int, ...]]:
    sides = st.integers(1, 24)
    grey = st.tuples(sides, sides)
    colour = st.tuples(sides, sides, st.sampled_from([1, 2, 3, 4]))
    return st.one_of(grey, colour)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(image=arrays(st.sampled_from([np.uint8, np.uint16]), shapes()))
def test_round_trip_integer(tmp_path: Path, image: np.ndarray) -> None:
    result = save_png(image, tmp_path, durability="none")
    decoded = decode_exact(result.path)
    expected = image if image.ndim == 3 else image[:, :, np.newaxis]
    assert decoded.dtype == image.dtype
    assert np.array_equal(decoded, expected)
    assert result.bytes == result.path.stat().st_size


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(image=arrays(np.float32, shapes(), elements=st.floats(0, 1, width=32)))
def test_round_trip_float(tmp_path: Path, image: np.ndarray) -> None:
    result = save_png(image, tmp_path, durability="none")
    expected = np.rint(image * 255).astype(np.uint8)
    if expected.ndim == 2:
        expected = expected[:, :, np.newaxis]
    assert np.array_equal(decode_exact(result.path), expected)


def test_pil_image_round_trip(tmp_path: Path) -> None:
    image = Image.fromarray(RGB).convert("RGBA")
    result = save_png(image, tmp_path, durability="none")
    buffer = io.BytesIO(result.path.read_bytes())
    assert np.array_equal(np.asarray(Image.open(buffer)), np.asarray(image))


def test_numpy_save_imports_no_torch(tmp_path: Path) -> None:
    code = (
        "import sys, numpy, safeinfer\n"
        f"safeinfer.save_png(numpy.zeros((4, 4, 3), numpy.uint8), {str(tmp_path)!r})\n"
        "print('torch' in sys.modules)"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert completed.stdout.strip() == "False"
    assert len(os.listdir(tmp_path)) == 1


def test_threads_save_unique_names(tmp_path: Path) -> None:
    def save_many(worker: int) -> list[Path]:
        image = np.full((4, 4), worker, np.uint8)
        return [save_png(image, tmp_path, durability="none").path for _ in range(50)]

    with ThreadPoolExecutor(max_workers=8) as pool:
        paths = [path for batch in pool.map(save_many, range(8)) for path in batch]
    assert len(set(paths)) == 400
    assert sorted(os.listdir(tmp_path)) == sorted(path.name for path in paths)
