"""safeinfer: safe outputs for diffusion inference in many processes.

Every public name is importable from here. Submodules load on first use, so
``import safeinfer`` stays cheap and never imports torch, diffusers, transformers or cog.

>>> import safeinfer
>>> result = safeinfer.save_png(image, "outputs/")          # doctest: +SKIP
>>> safeinfer.verify_png(result.path).ok                     # doctest: +SKIP
True
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from safeinfer._version import __version__
from safeinfer.errors import (
    ClosedError,
    ConfigError,
    CorruptPngError,
    FileExistsConflict,
    GpuBindingError,
    InvalidImageError,
    InvalidMetadataError,
    InvalidNameError,
    InvalidTypeError,
    JobError,
    JobInterrupted,
    LaunchError,
    LockError,
    LockTimeout,
    ManifestError,
    MissingDependencyError,
    ModelError,
    PngError,
    SafeInferError,
    UnsupportedPngError,
    WriteError,
)

if TYPE_CHECKING:
    from safeinfer._display import show_grid, show_reports
    from safeinfer.gpu import GpuBinding, bind_gpu, claim_gpu
    from safeinfer.jobs import generate
    from safeinfer.locks import mutex
    from safeinfer.manifest import Manifest
    from safeinfer.pipeline import SafePipeline
    from safeinfer.png import PngReport, check_png, read_metadata, scan, verify_png
    from safeinfer.writer import (
        WriteResult,
        atomic_open,
        atomic_write,
        clean_stale_temps,
        save_image,
        save_png,
    )

#: Public name -> the submodule that defines it, imported on first attribute access.
_LAZY: dict[str, str] = {
    "save_png": "safeinfer.writer",
    "save_image": "safeinfer.writer",
    "atomic_write": "safeinfer.writer",
    "atomic_open": "safeinfer.writer",
    "WriteResult": "safeinfer.writer",
    "clean_stale_temps": "safeinfer.writer",
    "read_metadata": "safeinfer.png",
    "verify_png": "safeinfer.png",
    "check_png": "safeinfer.png",
    "PngReport": "safeinfer.png",
    "scan": "safeinfer.png",
    "Manifest": "safeinfer.manifest",
    "bind_gpu": "safeinfer.gpu",
    "claim_gpu": "safeinfer.gpu",
    "GpuBinding": "safeinfer.gpu",
    "mutex": "safeinfer.locks",
    "SafePipeline": "safeinfer.pipeline",
    "generate": "safeinfer.jobs",
    "show_grid": "safeinfer._display",
    "show_reports": "safeinfer._display",
}

__all__ = [
    "ClosedError",
    "ConfigError",
    "CorruptPngError",
    "FileExistsConflict",
    "GpuBinding",
    "GpuBindingError",
    "InvalidImageError",
    "InvalidMetadataError",
    "InvalidNameError",
    "InvalidTypeError",
    "JobError",
    "JobInterrupted",
    "LaunchError",
    "LockError",
    "LockTimeout",
    "Manifest",
    "ManifestError",
    "MissingDependencyError",
    "ModelError",
    "PngError",
    "PngReport",
    "SafeInferError",
    "SafePipeline",
    "UnsupportedPngError",
    "WriteError",
    "WriteResult",
    "__version__",
    "atomic_open",
    "atomic_write",
    "bind_gpu",
    "check_png",
    "claim_gpu",
    "clean_stale_temps",
    "generate",
    "mutex",
    "read_metadata",
    "save_image",
    "save_png",
    "scan",
    "show_grid",
    "show_reports",
    "verify_png",
]


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'safeinfer' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
