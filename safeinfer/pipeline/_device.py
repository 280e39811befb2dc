"""Put a pipeline on its device: the bound GPU for "auto", else the one the caller names."""

from __future__ import annotations

import logging
from typing import Any, Final

from safeinfer.errors import ConfigError

logger = logging.getLogger(__name__)

#: Bind through :func:`safeinfer.gpu.bind_gpu` unless the pipeline is already on a GPU.
AUTO: Final = "auto"


def place_pipeline(pipe: Any, device: str) -> str:
    """Move ``pipe`` to its device and return that device as torch spells it.

    ``"auto"`` keeps a pipeline that is already on a CUDA device there, and otherwise
    binds this process's GPU with :func:`~safeinfer.gpu.bind_gpu` (the CPU when there is
    none). Any other value (``"cpu"``, ``"cuda:1"``) is used as given.
    """
    import torch

    current = torch.device(pipe.device)
    if device == AUTO:
        if current.type == "cuda":
            logger.info("pipeline already on %s; keeping it there", current)
            return str(current)
        from safeinfer.gpu import bind_gpu

        # strict=False: in a notebook CUDA may have started before this call; the
        # binding then warns and uses the current device list instead of raising.
        target = torch.device(bind_gpu(strict=False).device)
    else:
        try:
            target = torch.device(device)
        except (RuntimeError, TypeError) as error:
            raise ConfigError(
                f"invalid device {device!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'"
            ) from error
    # NOTE: the suite runs on CPU-only machines, so the CUDA branches here and the CUDA
    # generators that SafePipeline then creates have not run in its tests.
    if target != current:
        logger.info("moving %s from %s to %s", type(pipe).__name__, current, target)
        pipe.to(target)
    return str(target)
