"""Load a pipeline from an embedded name, a local folder or a Hub id; dtype and scheduler."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Final

from safeinfer.errors import ConfigError, ModelError
from safeinfer.tiny import embedded_name, load, own_weights, pipeline_class, resolve_model

logger = logging.getLogger(__name__)

#: Accepted ``torch_dtype`` names and the torch attribute each stands for.
DTYPE_NAMES: Final[dict[str, str]] = {
    "float32": "float32",
    "fp32": "float32",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float64": "float64",
    "fp64": "float64",
}


def load_pipeline(
    model: str | os.PathLike[str],
    *,
    torch_dtype: Any = None,
    local_files_only: bool = False,
    scheduler: str | None = None,
    **kwargs: Any,
) -> tuple[Any, str]:
    """Load a diffusers pipeline and return it with the model label for metadata.

    ``model`` is an embedded name, a folder written by ``save_pretrained`` or a Hub id
    (see :func:`safeinfer.tiny.resolve_model`). The label is the embedded name, the Hub
    id, or the folder's own name, so metadata never contains a local path. ``torch_dtype``
    is a ``torch.dtype`` or a name such as ``"float16"``; ``scheduler`` names a diffusers
    scheduler class that replaces the pipeline's own. ``kwargs`` go to ``from_pretrained``.

    >>> pipe, label = load_pipeline("tiny-sd", torch_dtype="float32")   # doctest: +SKIP

    Raises :class:`~safeinfer.errors.ModelError` when the model cannot be found or loaded
    and :class:`~safeinfer.errors.ConfigError` for an unknown dtype or scheduler.
    """
    kind, location = resolve_model(model)
    dtype = parse_dtype(torch_dtype)
    if dtype is not None:
        kwargs[_dtype_keyword()] = dtype

    if kind == "embedded":
        pipe = load(str(model), **kwargs)
        label = str(model)
    elif kind == "local":
        pipe = _load_folder(Path(location), **kwargs)
        label = Path(location).name
    else:
        pipe = _load_hub(location, local_files_only=local_files_only, **kwargs)
        label = location
    if scheduler is not None:
        set_scheduler(pipe, scheduler)
    logger.info("loaded %s model %s as %s", kind, label, type(pipe).__name__)
    return pipe, label


def _load_folder(folder: Path, **kwargs: Any) -> Any:
    if not (folder / "model_index.json").is_file():
        raise ModelError(
            f"invalid model folder {str(folder)!r}: no model_index.json. Pass a folder "
            "written by a diffusers pipeline's save_pretrained"
        )
    kwargs["local_files_only"] = True
    try:
        pipe = pipeline_class(folder).from_pretrained(str(folder), **kwargs)
    except (OSError, ValueError, KeyError, AttributeError) as error:
        # diffusers raises AttributeError for a _class_name that it does not define.
        raise ModelError(f"cannot load the pipeline in {str(folder)!r}: {error}") from error
    if embedded_name(folder) is not None:
        own_weights(pipe)
    return pipe


def _load_hub(model_id: str, *, local_files_only: bool, **kwargs: Any) -> Any:
    from diffusers import DiffusionPipeline

    try:
        return DiffusionPipeline.from_pretrained(  # type: ignore[no-untyped-call]
            model_id, local_files_only=local_files_only, **kwargs
        )
    except (OSError, ValueError, KeyError, AttributeError) as error:
        # huggingface_hub reports a missing cache entry or network failure as an OSError
        # subclass; diffusers adds ValueError and AttributeError for odd repositories.
        where = "the local Hugging Face cache" if local_files_only else "the Hugging Face Hub"
        raise ModelError(
            f"cannot load {model_id!r} from {where}: {error}. Download it first "
            f"(`hf download {model_id}`) or pass a folder written by save_pretrained"
        ) from error


def _dtype_keyword() -> str:
    # diffusers 0.42 renamed from_pretrained's torch_dtype to dtype and warns about the
    # old name; older releases know only torch_dtype. The helper below came with the rename.
    try:
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401
    except ImportError:
        return "torch_dtype"
    return "dtype"


def parse_dtype(value: Any) -> Any:
    """Return the ``torch.dtype`` for a dtype or a name such as ``"float16"``; None stays None."""
    if value is None:
        return None
    import torch

    if isinstance(value, torch.dtype):
        return value
    if isinstance(value, str):
        key = value.lower().removeprefix("torch.")
        if key in DTYPE_NAMES:
            return getattr(torch, DTYPE_NAMES[key])
    raise ConfigError(
        f"invalid torch_dtype {value!r}: use a torch.dtype or one of {', '.join(DTYPE_NAMES)}"
    )


def set_scheduler(pipe: Any, name: str) -> None:
    """Replace ``pipe.scheduler`` with the diffusers scheduler class ``name``, same config.

    >>> set_scheduler(pipe, "EulerDiscreteScheduler")                # doctest: +SKIP
    """
    import diffusers

    current = getattr(pipe, "scheduler", None)
    if current is None:
        raise ConfigError(f"{type(pipe).__name__} has no scheduler to replace with {name!r}")
    compatible = sorted(cls.__name__ for cls in getattr(current, "compatibles", []))
    scheduler_class = getattr(diffusers, name, None)
    if not isinstance(scheduler_class, type) or not issubclass(
        scheduler_class, diffusers.SchedulerMixin
    ):
        raise ConfigError(
            f"unknown scheduler {name!r}; schedulers compatible with "
            f"{type(current).__name__}: {', '.join(compatible) or 'none listed'}"
        )
    pipe.scheduler = scheduler_class.from_config(current.config)  # type: ignore[no-untyped-call]
