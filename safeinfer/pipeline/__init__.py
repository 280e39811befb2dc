"""Run diffusers pipelines with per-image seeds and publish every image safely.

:class:`SafePipeline` wraps any diffusers ``DiffusionPipeline``: it binds the device,
gives each image its own seed and generator, and writes every image through the safe
writer with its generation metadata, in a writer pool that overlaps the next batch.

>>> from safeinfer.pipeline import SafePipeline
>>> pipe = SafePipeline.from_pretrained("tiny-digits", output_dir="outputs")  # doctest: +SKIP
>>> pipe(["3", "a handwritten seven"], seeds=0)                              # doctest: +SKIP

Importing this module does not import torch or diffusers; building a SafePipeline does.
"""

from safeinfer.pipeline._device import AUTO
from safeinfer.pipeline._loading import load_pipeline, parse_dtype, set_scheduler
from safeinfer.pipeline._metadata import library_versions, model_label
from safeinfer.pipeline._pool import DEFAULT_MAX_PENDING, DEFAULT_WRITER_THREADS, WriterPool
from safeinfer.pipeline._requests import ImageRequest, safe_relative_name
from safeinfer.pipeline._results import GenerationResult, PendingGeneration, Results
from safeinfer.pipeline._safe import DEFAULT_BATCH_SIZE, DEFAULT_IF_EXISTS, SafePipeline

__all__ = [
    "AUTO",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_IF_EXISTS",
    "DEFAULT_MAX_PENDING",
    "DEFAULT_WRITER_THREADS",
    "GenerationResult",
    "ImageRequest",
    "PendingGeneration",
    "Results",
    "SafePipeline",
    "WriterPool",
    "library_versions",
    "load_pipeline",
    "model_label",
    "parse_dtype",
    "safe_relative_name",
    "set_scheduler",
]
