"""Counting GPUs without initialising CUDA in this process."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from safeinfer.gpu._plan import VISIBLE_DEVICES_ENV

__all__ = ["GpuInventory", "count_gpus"]

logger = logging.getLogger(__name__)

#: Device nodes of the NVIDIA driver: one per GPU the host (or the container) can use.
_DEVICE_NODE: Final = re.compile(r"nvidia[0-9]+")


@dataclass(frozen=True)
class GpuInventory:
    """The host's GPUs as far as they can be counted before CUDA starts.

    ``count`` is the number of physical GPUs, or ``None`` when only
    ``CUDA_VISIBLE_DEVICES`` lists which exist. ``driver`` is ``True`` when NVML answered,
    ``False`` when NVML reported that no NVIDIA driver is installed, ``None`` when nobody
    could tell. ``source`` names where the count came from.
    """

    count: int | None
    driver: bool | None
    source: str


def count_gpus(env: Mapping[str, str] | None = None, *, dev_dir: str = "/dev") -> GpuInventory:
    """Count GPUs without touching CUDA: NVML, else ``CUDA_VISIBLE_DEVICES``, else ``/dev``.

    NVML (the ``nvidia-ml-py`` package, extra ``gpu``) loads ``libnvidia-ml``, not the
    CUDA driver, so ``CUDA_VISIBLE_DEVICES`` can still be narrowed afterwards. NVML
    ignores ``CUDA_VISIBLE_DEVICES`` and counts every GPU of the host or container.
    """
    env = os.environ if env is None else env
    count, driver = _count_with_nvml()
    if count is not None:
        return GpuInventory(count, True, "nvml")
    if env.get(VISIBLE_DEVICES_ENV) is not None:
        return GpuInventory(None, driver, VISIBLE_DEVICES_ENV)
    if driver is False:
        return GpuInventory(0, False, "nvml")
    nodes = _count_device_nodes(dev_dir)
    if nodes:
        return GpuInventory(nodes, None, dev_dir)
    return GpuInventory(0, driver, "none")


def _count_with_nvml() -> tuple[int | None, bool | None]:
    try:
        import pynvml
    except ImportError:
        return None, None
    try:
        pynvml.nvmlInit()
    except (pynvml.NVMLError_LibraryNotFound, pynvml.NVMLError_DriverNotLoaded):
        return None, False
    except pynvml.NVMLError as error:
        logger.warning("NVML could not start (%s); counting GPUs another way", error)
        return None, None
    try:
        return int(pynvml.nvmlDeviceGetCount()), True
    except pynvml.NVMLError as error:
        logger.warning("NVML could not count GPUs (%s); counting GPUs another way", error)
        return None, None
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError as error:
            logger.debug("nvmlShutdown failed: %s", error)


def _count_device_nodes(dev_dir: str) -> int:
    try:
        names = os.listdir(dev_dir)
    except OSError:
        return 0
    return sum(1 for name in names if _DEVICE_NODE.fullmatch(name) and Path(dev_dir, name).exists())
