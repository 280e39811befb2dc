"""Conversion of PIL images, numpy arrays and torch tensors to one pixel layout.

Every encoder in this package takes a C-contiguous ``(height, width, channels)`` array of
``uint8`` or ``uint16``, with 1 (grey), 2 (grey + alpha), 3 (RGB) or 4 (RGBA) channels.
The conversion keeps every sample value, so the decoded PNG equals the input; the one
exception is float input, which is quantised by :data:`FLOAT_QUANTISATION`.
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np
from PIL import Image

from safeinfer.errors import InvalidImageError

#: The rule that maps float samples in [0, 1] to 8 bits. numpy.rint rounds half to even.
FLOAT_QUANTISATION: Final = "numpy.rint(x * 255)"

#: Channel counts that map to a PNG colour type: grey, grey + alpha, RGB, RGBA.
SUPPORTED_CHANNELS: Final = (1, 2, 3, 4)

#: Pillow modes whose pixels pass through unchanged, mapped to the numpy dtype they give.
_DIRECT_MODES: Final[dict[str, np.dtype[Any]]] = {
    "L": np.dtype(np.uint8),
    "LA": np.dtype(np.uint8),
    "RGB": np.dtype(np.uint8),
    "RGBA": np.dtype(np.uint8),
    "I;16": np.dtype("<u2"),
    "I;16L": np.dtype("<u2"),
    "I;16B": np.dtype(">u2"),
    "I;16N": np.dtype("=u2"),
    "I": np.dtype(np.int32),
    "F": np.dtype(np.float32),
}

#: Pillow modes converted to the nearest supported mode. "1" becomes 0/255 grey.
_CONVERTED_MODES: Final[dict[str, str]] = {
    "1": "L",
    "La": "LA",
    "RGBa": "RGBA",
    "RGBX": "RGB",
    "CMYK": "RGB",
    "YCbCr": "RGB",
    "LAB": "RGB",
    "HSV": "RGB",
}


def to_array(image: Any) -> np.ndarray[Any, np.dtype[Any]]:
    """Convert an image to a C-contiguous ``(height, width, channels)`` uint8 or uint16 array.

    Accepted inputs:

    - PIL images in any mode. Palette images become RGB, or RGBA when they carry
      transparency; CMYK, YCbCr, LAB and HSV become RGB; 16-bit grey stays 16-bit.
    - numpy arrays of shape ``(H, W)`` or ``(H, W, C)`` with 1 to 4 channels. uint8 and
      uint16 pass unchanged. Other integer dtypes become uint8 when every value fits,
      else uint16 when every value fits. Floats in [0, 1] are quantised to uint8 by
      ``numpy.rint(x * 255)``.
    - torch tensors of shape ``(C, H, W)``, ``(H, W, C)`` or ``(H, W)`` on any device
      (copied to the CPU), with the same dtype rules. When both the first and the last
      dimension could be channels, the tensor is read as ``(C, H, W)``, the torch layout.

    Raises :class:`~safeinfer.errors.InvalidImageError` for anything else (a batch
    dimension, zero size, more than 4 channels, bool or complex dtypes, NaN or infinity,
    floats outside [0, 1], integers outside [0, 65535]); the message names the value and
    the fix.

    >>> to_array(numpy.zeros((2, 3), numpy.float32)).shape          # doctest: +SKIP
    (2, 3, 1)
    """
    if isinstance(image, Image.Image):
        array = _from_pillow(image)
        source = f"PIL image of mode {image.mode!r}"
    elif isinstance(image, np.ndarray):
        array = image
        source = "array"
    elif _is_torch_tensor(image):
        array = _from_torch(image)
        source = "tensor"
    else:
        raise InvalidImageError(
            f"unsupported image type {type(image).__module__}.{type(image).__qualname__}: "
            "pass a PIL image, a numpy array or a torch tensor"
        )
    array = _to_hwc(array, source)
    array = _to_supported_dtype(array, source)
    return np.ascontiguousarray(array)


def _is_torch_tensor(value: Any) -> bool:
    # Checking the type's module avoids importing torch for every other input.
    module = type(value).__module__
    return (module == "torch" or module.startswith("torch.")) and hasattr(value, "detach")


def _from_torch(tensor: Any) -> np.ndarray[Any, np.dtype[Any]]:
    # The dtype's name ("torch.bfloat16") avoids importing torch here.
    cpu = tensor.detach().to("cpu")
    dtype_name = str(cpu.dtype).removeprefix("torch.")
    if dtype_name == "bool":
        raise InvalidImageError(
            f"bool tensor of shape {tuple(cpu.shape)} has no pixel values: "
            "convert it with tensor.to(torch.uint8) * 255"
        )
    if cpu.is_complex():
        raise InvalidImageError(
            f"complex tensor of shape {tuple(cpu.shape)} has no pixel values: pass a real tensor"
        )
    # numpy has no bfloat16, and float32 represents every bfloat16 and float16 exactly.
    if dtype_name in ("bfloat16", "float16"):
        cpu = cpu.float()
    array: np.ndarray[Any, np.dtype[Any]] = cpu.numpy()
    if array.ndim == 3 and _looks_channels_first(array.shape):
        array = array.transpose(1, 2, 0)
    return array


def _looks_channels_first(shape: tuple[int, ...]) -> bool:
    # torch and diffusers put channels first, so that wins when both ends could be channels.
    return shape[0] in SUPPORTED_CHANNELS


def _from_pillow(image: Image.Image) -> np.ndarray[Any, np.dtype[Any]]:
    mode = image.mode
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in image.info
        image = image.convert("RGBA" if has_alpha else "RGB")
    elif mode in _CONVERTED_MODES:
        image = image.convert(_CONVERTED_MODES[mode])
    elif mode not in _DIRECT_MODES:
        raise InvalidImageError(
            f"unsupported PIL image mode {mode!r}: convert it with image.convert('RGB') "
            "or image.convert('RGBA')"
        )
    return np.asarray(image)


def _to_hwc(array: np.ndarray[Any, np.dtype[Any]], source: str) -> np.ndarray[Any, np.dtype[Any]]:
    shape = tuple(array.shape)
    if array.ndim == 2:
        array = array[:, :, np.newaxis]
    elif array.ndim != 3:
        fix = "pass one image, for example batch[0]" if array.ndim == 4 else "pass (H, W, C)"
        raise InvalidImageError(
            f"invalid image shape {shape} of {source}: expected (H, W) or (H, W, C); {fix}"
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise InvalidImageError(
            f"invalid image shape {shape} of {source}: height and width must be at least 1"
        )
    channels = array.shape[2]
    if channels not in SUPPORTED_CHANNELS:
        fix = "drop the extra channels"
        if array.shape[0] in SUPPORTED_CHANNELS:
            fix = "it looks like (C, H, W): transpose it with array.transpose(1, 2, 0)"
        raise InvalidImageError(
            f"invalid image shape {shape} of {source}: {channels} channels, expected 1 (grey), "
            f"2 (grey + alpha), 3 (RGB) or 4 (RGBA); {fix}"
        )
    return array


def _to_supported_dtype(
    array: np.ndarray[Any, np.dtype[Any]], source: str
) -> np.ndarray[Any, np.dtype[Any]]:
    dtype = array.dtype
    described = f"{dtype} {source} of shape {tuple(array.shape)}"
    if dtype == np.uint8:
        return array
    if dtype.kind == "u" and dtype.itemsize == 2:
        # Any byte order: the encoder writes PNG's big-endian samples itself.
        return array.astype(np.uint16, copy=False)
    if dtype.kind == "b":
        raise InvalidImageError(
            f"invalid dtype in {described}: bool has no pixel values; "
            "convert it with array.astype(numpy.uint8) * 255"
        )
    if dtype.kind in "iu":
        return _narrow_integers(array, described)
    if dtype.kind == "f":
        return _quantise_floats(array, described)
    raise InvalidImageError(
        f"invalid dtype in {described}: expected uint8, uint16, another integer type, or float "
        "in [0, 1]"
    )


def _narrow_integers(
    array: np.ndarray[Any, np.dtype[Any]], described: str
) -> np.ndarray[Any, np.dtype[Any]]:
    low = int(array.min())
    high = int(array.max())
    if low < 0 or high > 0xFFFF:
        bad = int(np.count_nonzero((array < 0) | (array > 0xFFFF)))
        raise InvalidImageError(
            f"invalid values in {described}: {bad} samples outside [0, 65535] "
            f"(min {low}, max {high}); scale or clip them first, for example "
            "numpy.clip(array, 0, 255).astype(numpy.uint8)"
        )
    return array.astype(np.uint8 if high <= 0xFF else np.uint16)


def _quantise_floats(
    array: np.ndarray[Any, np.dtype[Any]], described: str
) -> np.ndarray[Any, np.dtype[Any]]:
    finite = np.isfinite(array)
    if not finite.all():
        bad = int(array.size - np.count_nonzero(finite))
        raise InvalidImageError(
            f"invalid values in {described}: {bad} samples are NaN or infinite; "
            "fix the model output or replace them with numpy.nan_to_num before saving"
        )
    low = float(array.min())
    high = float(array.max())
    if low < 0.0 or high > 1.0:
        bad = int(np.count_nonzero((array < 0.0) | (array > 1.0)))
        raise InvalidImageError(
            f"invalid values in {described}: {bad} samples outside [0, 1] "
            f"(min {low:g}, max {high:g}); map [-1, 1] output with x / 2 + 0.5, or clip "
            "with numpy.clip(x, 0, 1)"
        )
    # float16 products round too coarsely, so they are computed in float32.
    work = array if array.dtype.itemsize >= 4 else array.astype(np.float32)
    quantised: np.ndarray[Any, np.dtype[np.uint8]] = np.rint(work * 255).astype(np.uint8)
    return quantised
