"""Input conversion: numpy, PIL and torch inputs, and the errors for bad ones."""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from safeinfer.encode import encode_png, to_array
from safeinfer.errors import InvalidImageError

Array = np.ndarray[Any, Any]


def gradient(height: int, width: int, channels: int) -> Array:
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([(x * 7 + y * 3 + c * 50) % 256 for c in range(channels)], axis=2).astype(
        np.uint8
    )


def test_hw_array_gets_channel_axis() -> None:
    pixels = gradient(4, 6, 1)[:, :, 0]
    converted = to_array(pixels)
    assert converted.shape == (4, 6, 1)
    assert converted.dtype == np.uint8
    assert np.array_equal(converted[:, :, 0], pixels)


def test_non_contiguous_array_is_copied() -> None:
    pixels = gradient(8, 10, 3)[::2, ::-1]
    converted = to_array(pixels)
    assert converted.flags.c_contiguous
    assert np.array_equal(converted, pixels)


def test_uint16_kept_and_big_endian_accepted() -> None:
    values = np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000
    assert to_array(values).dtype == np.uint16
    big_endian = to_array(values.astype(">u2"))
    assert big_endian.dtype == np.uint16
    assert np.array_equal(big_endian[:, :, 0], values)


def test_float_quantisation_rule() -> None:
    values = np.array([[0.0, 0.5 / 255, 1.5 / 255, 0.2, 1.0]], dtype=np.float64)
    # numpy.rint rounds halves to even: 0.5 -> 0, 1.5 -> 2.
    assert to_array(values)[0, :, 0].tolist() == [0, 0, 2, 51, 255]


def test_integer_dtypes_narrow_by_range() -> None:
    assert to_array(np.full((2, 2), 255, np.int64)).dtype == np.uint8
    assert to_array(np.full((2, 2), 256, np.int32)).dtype == np.uint16
    assert to_array(np.full((2, 2), 65535, np.uint32)).dtype == np.uint16


TORCH_PIXELS = gradient(5, 7, 3)


@pytest.mark.parametrize(
    ("name", "tensor", "expected"),
    [
        ("CHW uint8", torch.from_numpy(TORCH_PIXELS).permute(2, 0, 1), TORCH_PIXELS),
        ("HWC uint8", torch.from_numpy(TORCH_PIXELS.copy()), TORCH_PIXELS),
        ("HW uint8", torch.from_numpy(TORCH_PIXELS[:, :, 0].copy()), TORCH_PIXELS[:, :, :1]),
        (
            "CHW float32",
            torch.from_numpy(TORCH_PIXELS).permute(2, 0, 1).float() / 255,
            TORCH_PIXELS,
        ),
        (
            "1HW float16",
            torch.from_numpy(TORCH_PIXELS[:, :, :1]).permute(2, 0, 1).half() / 255,
            TORCH_PIXELS[:, :, :1],
        ),
        (
            "CHW bfloat16",
            torch.from_numpy(TORCH_PIXELS).permute(2, 0, 1).to(torch.bfloat16) / 255,
            np.rint(
                (torch.from_numpy(TORCH_PIXELS).to(torch.bfloat16) / 255).float().numpy() * 255
            ).astype(np.uint8),
        ),
        (
            "CHW requires grad",
            (torch.from_numpy(TORCH_PIXELS).permute(2, 0, 1).float() / 255).requires_grad_(),
            TORCH_PIXELS,
        ),
        (
            "CHW uint16",
            torch.from_numpy(TORCH_PIXELS.astype(np.int32) * 257).permute(2, 0, 1),
            TORCH_PIXELS.astype(np.uint16) * 257,
        ),
    ],
)
def test_torch_tensor_inputs(name: str, tensor: Any, expected: Array) -> None:
    converted = to_array(tensor)
    assert converted.shape == expected.shape, name
    assert converted.dtype == expected.dtype, name
    assert np.array_equal(converted, expected), name
    assert encode_png(tensor)[:8] == b"\x89PNG\r\n\x1a\n"


def test_torch_tiny_image_read_as_chw() -> None:
    # Both ends could be channels here, and torch's layout puts them first.
    tensor = torch.arange(48, dtype=torch.uint8).reshape(3, 4, 4)
    assert to_array(tensor).shape == (4, 4, 3)
    assert to_array(torch.zeros(4, 4, 3, dtype=torch.uint8)).shape == (4, 3, 4)


def test_import_does_not_load_torch() -> None:
    code = (
        "import sys, numpy, safeinfer.encode as e; "
        "e.encode_png(numpy.zeros((2, 2, 3), numpy.uint8)); "
        "print('torch' in sys.modules)"
    )
    output = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    assert output.strip() == "False"


NAN_IMAGE = np.zeros((4, 4, 3), np.float32)
NAN_IMAGE[0, 0, 0] = np.nan
NAN_IMAGE[1, 1, 1] = np.inf

BAD_INPUTS = [
    ("NaN and inf", NAN_IMAGE, r"2 samples are NaN or infinite.*nan_to_num"),
    ("float above 1", np.full((3, 3), 1.5), r"9 samples outside \[0, 1\].*max 1\.5"),
    ("float below 0", np.full((2, 2, 3), -0.25, np.float32), r"12 samples outside.*x / 2 \+ 0\.5"),
    ("zero height", np.zeros((0, 5, 3), np.uint8), r"shape \(0, 5, 3\).*at least 1"),
    ("zero width", np.zeros((5, 0), np.uint8), r"shape \(5, 0\).*at least 1"),
    ("five channels", np.zeros((4, 4, 5), np.uint8), r"5 channels, expected 1 \(grey\)"),
    ("CHW numpy", np.zeros((3, 16, 16), np.uint8), r"looks like \(C, H, W\).*transpose"),
    ("batch", np.zeros((1, 8, 8, 3), np.uint8), r"shape \(1, 8, 8, 3\).*batch\[0\]"),
    ("one dimension", np.zeros(12, np.uint8), r"shape \(12,\).*expected \(H, W\)"),
    ("bool", np.zeros((4, 4), bool), r"bool has no pixel values.*astype"),
    ("complex", np.zeros((4, 4), np.complex64), r"invalid dtype in complex64"),
    ("int64 negative", np.full((2, 2), -1, np.int64), r"4 samples outside \[0, 65535\].*min -1"),
    ("int64 too large", np.full((2, 2), 70_000, np.int64), r"max 70000.*numpy\.clip"),
    ("object dtype", np.array([[None]], dtype=object), r"invalid dtype in object"),
    ("list", [[0, 1], [2, 3]], r"unsupported image type builtins\.list"),
    ("string", "image.png", r"unsupported image type builtins\.str"),
    ("torch batch", torch.zeros(2, 3, 8, 8), r"shape \(2, 3, 8, 8\).*batch\[0\]"),
    ("torch bool", torch.zeros(8, 8, dtype=torch.bool), r"bool tensor.*torch\.uint8"),
    ("torch NaN", torch.full((3, 4, 4), float("nan")), r"48 samples are NaN"),
    ("torch [-1, 1]", torch.full((3, 4, 4), -1.0), r"48 samples outside \[0, 1\]"),
]


@pytest.mark.parametrize(("name", "image", "message"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_rejected(name: str, image: Any, message: str) -> None:
    with pytest.raises(InvalidImageError) as raised:
        encode_png(image)
    assert re.search(message, str(raised.value)), str(raised.value)
    assert isinstance(raised.value, ValueError)


def test_pil_16_bit_modes_stay_16_bit() -> None:
    for mode in ("I;16", "I;16B", "I;16L"):
        converted = to_array(Image.new(mode, (3, 2), 7))
        assert converted.dtype == np.uint16, mode
        assert converted.shape == (2, 3, 1), mode
        assert np.all(converted == 7), mode


def test_pil_32_bit_modes_checked_like_arrays() -> None:
    assert to_array(Image.new("I", (2, 2), 300)).dtype == np.uint16
    with pytest.raises(InvalidImageError, match=r"PIL image of mode 'I'.*min -5"):
        to_array(Image.new("I", (2, 2), -5))
    assert to_array(Image.new("F", (2, 2), 1.0))[0, 0, 0] == 255
    with pytest.raises(InvalidImageError, match=r"PIL image of mode 'F'.*max 200"):
        to_array(Image.new("F", (2, 2), 200.0))
