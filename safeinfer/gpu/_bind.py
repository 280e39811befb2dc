"""Binding this process to its GPU by narrowing CUDA_VISIBLE_DEVICES before CUDA starts."""

from __future__ import annotations

import enum
import logging
import os
import sys
from dataclasses import replace
from typing import Any, Final

from safeinfer.errors import GpuBindingError
from safeinfer.gpu._enumerate import count_gpus
from safeinfer.gpu._plan import (
    CPU,
    SAFEINFER_GPU_ENV,
    VISIBLE_DEVICES_ENV,
    GpuBinding,
    parse_visible_devices,
    plan_gpu,
)

__all__ = ["CudaState", "bind_gpu", "cuda_state"]

logger = logging.getLogger(__name__)

#: The CUDA driver library; once it is mapped, the driver has (almost surely) read
#: CUDA_VISIBLE_DEVICES already.
_DRIVER_LIBRARY: Final = "/libcuda.so"

_PROC_MAPS: Final = "/proc/self/maps"


class CudaState(enum.Enum):
    """How far CUDA has started in this process, as far as can be seen from Python."""

    #: No CUDA driver in the process: narrowing CUDA_VISIBLE_DEVICES still works.
    UNTOUCHED = "untouched"
    #: ``libcuda`` is loaded (for example by ``torch.cuda.is_available()``), which reads
    #: CUDA_VISIBLE_DEVICES, although torch reports CUDA as not initialised.
    DRIVER_LOADED = "driver-loaded"
    #: ``torch.cuda.is_initialized()`` is true.
    INITIALIZED = "initialized"


def cuda_state(*, torch_module: Any = None, proc_maps: str | None = None) -> CudaState:
    """Report whether CUDA_VISIBLE_DEVICES can still change the GPUs this process uses.

    Never imports torch: ``torch_module`` defaults to ``sys.modules.get("torch")``.
    ``torch.cuda.is_initialized()`` covers torch's own start-up. ``is_available()`` and
    ``device_count()`` load the CUDA driver without setting that flag, and the driver
    reads CUDA_VISIBLE_DEVICES when it starts, so on Linux the process's memory map
    (``proc_maps``, default ``/proc/self/maps``) is checked for ``libcuda.so`` too.
    NOTE: on other systems, and for CUDA started by other libraries without loading
    libcuda into this process's map, only torch's flag is seen.
    """
    torch = sys.modules.get("torch") if torch_module is None else torch_module
    cuda = getattr(torch, "cuda", None)
    is_initialized = getattr(cuda, "is_initialized", None)
    if callable(is_initialized) and is_initialized():
        return CudaState.INITIALIZED
    if _driver_library_mapped(proc_maps):
        return CudaState.DRIVER_LOADED
    return CudaState.UNTOUCHED


def bind_gpu(
    gpu: int | str | None = None, *, strict: bool = True, device_count: int | None = None
) -> GpuBinding:
    """Choose this process's GPU and narrow ``CUDA_VISIBLE_DEVICES`` to it.

    Call it before the first CUDA call, then use ``binding.device``. The choice follows
    :func:`~safeinfer.gpu.plan_gpu`; GPUs are counted without starting CUDA (see
    :func:`~safeinfer.gpu.count_gpus`) unless ``device_count`` gives the count. Binding
    also sets ``SAFEINFER_GPU``, so a second call and child processes agree with it.

    When CUDA already started here and the narrowed list differs from the current one,
    ``strict=True`` raises :class:`~safeinfer.errors.GpuBindingError`. ``strict=False``
    logs a warning instead, leaves the environment alone and returns the device under the
    current list. On a host where NVML reports no NVIDIA driver the device is ``cpu``, while
    ``physical_id`` and ``visible_devices`` still show the plan.

    >>> from safeinfer.gpu import bind_gpu
    >>> binding = bind_gpu()                               # doctest: +SKIP
    >>> pipe.to(binding.device)                            # doctest: +SKIP
    """
    driver: bool | None = None
    if device_count is None:
        inventory = count_gpus()
        device_count, driver = inventory.count, inventory.driver
    binding = plan_gpu(os.environ, gpu=gpu, device_count=device_count, strict=strict)
    return apply_binding(binding, strict=strict, driver=driver)


def apply_binding(binding: GpuBinding, *, strict: bool, driver: bool | None) -> GpuBinding:
    """Narrow the environment to a planned binding, or handle a late binding.

    Shared by :func:`bind_gpu` and :func:`~safeinfer.gpu.claim_gpu`. ``driver`` is the
    inventory's driver flag; ``False`` turns a planned GPU into a CPU device.
    """
    current = os.environ.get(VISIBLE_DEVICES_ENV)
    state = cuda_state()
    if state is not CudaState.UNTOUCHED and current != binding.visible_devices:
        message = _late_binding_message(binding, current, state)
        if strict:
            raise GpuBindingError(message)
        logger.warning("%s; continuing because strict=False", message)
        return _under_current_list(binding, current)

    assert binding.visible_devices is not None
    os.environ[VISIBLE_DEVICES_ENV] = binding.visible_devices
    os.environ[SAFEINFER_GPU_ENV] = binding.physical_id or CPU
    if driver is False and not binding.is_cpu:
        binding = replace(binding, device=CPU, ordinal=None)
        logger.info(
            "no NVIDIA driver on this host: running on the CPU; %s=%s shows the plan",
            VISIBLE_DEVICES_ENV,
            binding.visible_devices,
        )
    logger.info(
        "bound %s (physical id %s, from %s); %s=%s",
        binding.device,
        binding.physical_id,
        binding.source,
        VISIBLE_DEVICES_ENV,
        binding.visible_devices,
    )
    return binding


def _late_binding_message(binding: GpuBinding, current: str | None, state: CudaState) -> str:
    reason = (
        "torch has already initialised CUDA in this process"
        if state is CudaState.INITIALIZED
        else "the CUDA driver is already loaded in this process "
        "(torch.cuda.is_available() and device_count() load it)"
    )
    return (
        f"cannot bind GPU {binding.physical_id or CPU} ({binding.source}): {reason}, and it read "
        f"{VISIBLE_DEVICES_ENV}={_shown(current)} at start-up, so narrowing it to "
        f"{binding.visible_devices!r} has no effect. Call bind_gpu() before the first CUDA "
        f"call (before torch.cuda.is_available()), or launch the process with "
        f"{VISIBLE_DEVICES_ENV}={binding.visible_devices} already set"
    )


def _shown(value: str | None) -> str:
    return "(unset)" if value is None else repr(value)


def _under_current_list(binding: GpuBinding, current: str | None) -> GpuBinding:
    if binding.physical_id is None:
        return binding
    listed = parse_visible_devices(current)
    if listed is None:
        ordinal = int(binding.physical_id) if binding.physical_id.isdigit() else 0
    elif binding.physical_id in listed:
        ordinal = listed.index(binding.physical_id)
    else:
        ordinal = 0
    return replace(binding, device=f"cuda:{ordinal}", ordinal=ordinal, visible_devices=current)


def _driver_library_mapped(proc_maps: str | None) -> bool:
    if proc_maps is None:
        try:
            with open(_PROC_MAPS, encoding="utf-8", errors="replace") as maps:
                return any(_DRIVER_LIBRARY in line for line in maps)
        except OSError:
            return False
    return any(_DRIVER_LIBRARY in line for line in proc_maps.splitlines())
