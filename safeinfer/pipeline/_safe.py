"""SafePipeline: run a diffusers pipeline with one seed per image and publish every image safely."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

from safeinfer.encode import COMPRESSION_MODES, DEFAULT_COMPRESSION, Compression
from safeinfer.errors import ClosedError, ConfigError, WriteError
from safeinfer.pipeline._device import AUTO, place_pipeline
from safeinfer.pipeline._invoke import CallSpec, output_images
from safeinfer.pipeline._loading import load_pipeline
from safeinfer.pipeline._metadata import (
    check_extra_metadata,
    image_metadata,
    model_label,
    pipeline_settings,
)
from safeinfer.pipeline._pool import DEFAULT_MAX_PENDING, DEFAULT_WRITER_THREADS, WriterPool
from safeinfer.pipeline._requests import ImageRequest, plan_requests
from safeinfer.pipeline._results import PendingGeneration, Results
from safeinfer.writer import save_png
from safeinfer.writer._result import (
    DEFAULT_DURABILITY,
    DURABILITIES,
    IF_EXISTS_CHOICES,
    Durability,
    IfExists,
)

if TYPE_CHECKING:
    from PIL import Image

    from safeinfer.writer import WriteResult

logger = logging.getLogger(__name__)

#: New names never replace a file, so two workers or two runs never overwrite each other.
DEFAULT_IF_EXISTS: Final[IfExists] = "unique"

#: Images per pipeline call. With one image per call, every image is bit-for-bit the same
#: however the prompts are grouped. Matrix kernels take other code paths for other batch
#: sizes (a batch of one runs matrix-vector code on CPUs), which changes the last float
#: bits and can move a few pixels by 1/255.
DEFAULT_BATCH_SIZE: Final = 1


class SafePipeline:
    """A diffusers pipeline that writes every image safely, with its seed and metadata.

    Every image gets its own seed and its own ``torch.Generator``, and by default its own
    pipeline call, so image k comes out the same alone or among other prompts. A small
    writer pool encodes and publishes the images while the next one is generated:
    atomically, fsynced per ``durability``, named uniquely (or by ``names``), with the
    generation metadata inside the PNG.

    >>> from safeinfer import SafePipeline
    >>> pipe = SafePipeline.from_pretrained("tiny-digits", output_dir="outputs")  # doctest: +SKIP
    >>> results = pipe(["a handwritten 3", "seven"], seeds=[1, 2])              # doctest: +SKIP
    >>> results[0].path, results[0].seed, results[0].sha256                     # doctest: +SKIP

    One instance is not safe to call from several threads at once; use one per worker.
    """

    def __init__(
        self,
        pipe: Any,
        *,
        output_dir: str | os.PathLike[str],
        device: str = AUTO,
        durability: Durability = DEFAULT_DURABILITY,
        if_exists: IfExists = DEFAULT_IF_EXISTS,
        writer_threads: int = DEFAULT_WRITER_THREADS,
        max_pending: int = DEFAULT_MAX_PENDING,
        compression: Compression = DEFAULT_COMPRESSION,
        model_name: str | None = None,
    ) -> None:
        """Wrap ``pipe`` (a diffusers ``DiffusionPipeline``) and put it on ``device``.

        ``device="auto"`` keeps a pipeline that is on a GPU, and otherwise binds this
        process's GPU with :func:`safeinfer.gpu.bind_gpu`. ``if_exists`` applies to
        ``names``: "unique" adds a unique prefix, "replace" overwrites (for resuming a
        job), "error" raises. ``writer_threads=0`` writes in the calling thread.
        ``model_name`` labels the metadata; by default it comes from the pipeline.
        """
        from diffusers import DiffusionPipeline

        if not isinstance(pipe, DiffusionPipeline):
            raise ConfigError(
                f"SafePipeline wraps a diffusers DiffusionPipeline, got {type(pipe).__name__}"
            )
        if durability not in DURABILITIES:
            raise ConfigError(f"invalid durability {durability!r}: use one of {DURABILITIES}")
        if if_exists not in IF_EXISTS_CHOICES:
            raise ConfigError(f"invalid if_exists {if_exists!r}: use one of {IF_EXISTS_CHOICES}")
        if compression not in COMPRESSION_MODES:
            raise ConfigError(
                f"invalid compression {compression!r}: use one of {COMPRESSION_MODES}"
            )
        self.output_dir = Path(output_dir)
        if self.output_dir.exists() and not self.output_dir.is_dir():
            raise WriteError(
                f"output_dir {str(self.output_dir)!r} is a file, not a directory; "
                "pass a directory path",
                path=str(self.output_dir),
            )

        self.pipe: Any = pipe
        self.durability: Durability = durability
        self.if_exists: IfExists = if_exists
        self.compression: Compression = compression
        self.device = place_pipeline(pipe, device)
        self.model_name = model_name if model_name is not None else model_label(pipe)
        self._spec = CallSpec.of(pipe)
        self._pool = WriterPool(threads=writer_threads, max_pending=max_pending)
        self._closed = False

    @classmethod
    def from_pretrained(
        cls,
        model: str | os.PathLike[str],
        *,
        output_dir: str | os.PathLike[str],
        device: str = AUTO,
        torch_dtype: Any = None,
        local_files_only: bool = False,
        scheduler: str | None = None,
        durability: Durability = DEFAULT_DURABILITY,
        if_exists: IfExists = DEFAULT_IF_EXISTS,
        writer_threads: int = DEFAULT_WRITER_THREADS,
        max_pending: int = DEFAULT_MAX_PENDING,
        compression: Compression = DEFAULT_COMPRESSION,
        **kwargs: Any,
    ) -> SafePipeline:
        """Load ``model`` with diffusers' ``from_pretrained`` and wrap it.

        ``model`` is an embedded name (``"tiny-digits"``, ``"tiny-sd"``), a folder written
        by ``save_pretrained``, or a Hub id. Embedded models and folders load offline;
        a Hub id needs the network unless ``local_files_only=True`` and the Hugging Face
        cache has it. ``torch_dtype`` is a dtype or a name such as ``"float16"``;
        ``scheduler`` names a diffusers scheduler class to use instead of the saved one.
        Other ``kwargs`` go to ``from_pretrained``.

        >>> pipe = SafePipeline.from_pretrained("tiny-sd", output_dir="out")  # doctest: +SKIP

        Raises :class:`~safeinfer.errors.ModelError` when the model cannot be loaded.
        """
        if device == AUTO:
            # Bind before loading, so nothing in the loading path starts CUDA first.
            from safeinfer.gpu import bind_gpu

            device = bind_gpu(strict=False).device
        pipe, label = load_pipeline(
            model,
            torch_dtype=torch_dtype,
            local_files_only=local_files_only,
            scheduler=scheduler,
            **kwargs,
        )
        return cls(
            pipe,
            output_dir=output_dir,
            device=device,
            durability=durability,
            if_exists=if_exists,
            writer_threads=writer_threads,
            max_pending=max_pending,
            compression=compression,
            model_name=label,
        )

    def __call__(
        self,
        prompt: str | Sequence[str] | None = None,
        *,
        negative_prompt: str | Sequence[str | None] | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        height: int | None = None,
        width: int | None = None,
        seeds: int | Sequence[int] | None = None,
        names: Sequence[str] | None = None,
        batch_size: int | None = None,
        metadata: Mapping[str, Any] | None = None,
        **pipeline_kwargs: Any,
    ) -> Results:
        """Generate one image per prompt (times ``num_images_per_prompt``) and publish them.

        ``seeds``: an int ``s`` gives image k the seed ``s + k``, and a list gives one seed
        per image. None draws random seeds, which the results and the files record.
        ``names``: one relative file path per image, where subfolders are allowed and each
        part is made safe. Without names, files get unique names from prompt and seed.
        ``batch_size`` sets the images per pipeline call. The default, 1, makes image k
        the same bytes whatever else is in the call; larger batches run faster on a GPU
        and use the same seeds and noise, but may change a few pixels by 1/255.
        ``metadata`` adds fields to the metadata stored in each PNG. Other keyword
        arguments go to the pipeline; ``None`` options use the pipeline's defaults.

        Returns the results in request order once every file is published. When a write
        fails, raises its error after the other writes have finished.

        >>> results = pipe("a cat", seeds=7, num_images_per_prompt=2)    # doctest: +SKIP
        >>> [r.seed for r in results]                                     # doctest: +SKIP
        [7, 8]
        """
        return self.submit(
            prompt,
            negative_prompt=negative_prompt,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            height=height,
            width=width,
            seeds=seeds,
            names=names,
            batch_size=batch_size,
            metadata=metadata,
            **pipeline_kwargs,
        ).result()

    def submit(
        self,
        prompt: str | Sequence[str] | None = None,
        *,
        negative_prompt: str | Sequence[str | None] | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        height: int | None = None,
        width: int | None = None,
        seeds: int | Sequence[int] | None = None,
        names: Sequence[str] | None = None,
        batch_size: int | None = None,
        metadata: Mapping[str, Any] | None = None,
        **pipeline_kwargs: Any,
    ) -> PendingGeneration:
        """Run inference now and return while the last images are still being written.

        Takes the same arguments as calling the pipeline. ``result()`` on the returned
        object waits for the writes and returns the results, so a caller can start the
        next request while this one's files are published.

        >>> pending = pipe.submit("a cat", seeds=1)                      # doctest: +SKIP
        >>> results = pending.result()                                   # doctest: +SKIP
        """
        if self._closed:
            raise ClosedError(
                f"SafePipeline is closed: {self!r} cannot generate after close() or the end "
                "of its with block; create a new SafePipeline"
            )
        _check_steps(num_inference_steps)
        images_per_prompt = pipeline_kwargs.pop("num_images_per_prompt", 1)
        options = {
            "num_inference_steps": num_inference_steps,
            "guidance_scale": guidance_scale,
            "height": height,
            "width": width,
        }
        self._spec.check(options, pipeline_kwargs)
        check_extra_metadata(metadata)
        requests = plan_requests(
            prompt,
            negative_prompt=negative_prompt,
            seeds=seeds,
            names=names,
            images_per_prompt=images_per_prompt,
            takes_prompts=self._spec.takes_prompts,
            pipeline_name=self._spec.pipeline_name,
        )
        settings = pipeline_settings(self.pipe, model=self.model_name)
        steps = self._spec.effective("num_inference_steps", num_inference_steps)
        guidance = (
            self._spec.effective("guidance_scale", guidance_scale)
            if self._spec.takes("guidance_scale")
            else None
        )

        pending = PendingGeneration()
        try:
            for batch in self._batches(requests, batch_size):
                started = time.perf_counter()
                output = self.pipe(
                    **self._spec.arguments(
                        batch, device=self.device, options=options, pipeline_kwargs=pipeline_kwargs
                    )
                )
                images = output_images(
                    output, expected=len(batch), pipeline_name=self._spec.pipeline_name
                )
                seconds = (time.perf_counter() - started) / len(batch)
                for request, image in zip(batch, images, strict=True):
                    image_data = image_metadata(
                        settings,
                        prompt=request.prompt,
                        negative_prompt=request.negative_prompt,
                        seed=request.seed,
                        steps=steps,
                        guidance=guidance,
                        width=image.width,
                        height=image.height,
                        extra=metadata,
                    )
                    write = self._pool.submit(self._write, image, request, image_data)
                    pending.add(
                        image,
                        seed=request.seed,
                        prompt=request.prompt,
                        negative_prompt=request.negative_prompt,
                        metadata=image_data,
                        seconds_inference=seconds,
                        write=write,
                    )
        except BaseException:
            # Let queued writes finish before the error propagates, so no thread is
            # still writing into output_dir after this call has returned.
            pending.wait()
            raise
        return pending

    def _batches(
        self, requests: list[ImageRequest], batch_size: int | None
    ) -> list[list[ImageRequest]]:
        if batch_size is not None and (
            isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
        ):
            raise ConfigError(f"invalid batch_size {batch_size!r}: use 1 or more, or None")
        size = batch_size or DEFAULT_BATCH_SIZE
        if self._spec.max_batch is not None:
            size = min(size, self._spec.max_batch)
        return [requests[start : start + size] for start in range(0, len(requests), size)]

    def _write(
        self, image: Image.Image, request: ImageRequest, metadata: dict[str, Any]
    ) -> tuple[WriteResult, float]:
        started = time.perf_counter()
        if request.name is None:
            directory, name = self.output_dir, request.file_stem()
            if_exists: IfExists = "unique"
        else:
            folder, _, name = request.name.rpartition("/")
            directory = self.output_dir / folder if folder else self.output_dir
            if_exists = self.if_exists
        # A trailing separator makes save_png read the destination as a directory even
        # when a folder name contains a dot.
        written = save_png(
            image,
            os.path.join(directory, ""),
            name=name,
            metadata=metadata,
            durability=self.durability,
            if_exists=if_exists,
            compression=self.compression,
        )
        seconds = time.perf_counter() - started
        logger.debug("wrote %s (seed %d, %d bytes)", written.path, request.seed, written.bytes)
        return written, seconds

    def close(self) -> None:
        """Wait for pending writes and stop the writer threads. Later calls raise ClosedError."""
        self._closed = True
        self._pool.close()

    def __enter__(self) -> SafePipeline:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"SafePipeline({type(self.pipe).__name__}, model={self.model_name!r}, "
            f"device={self.device!r}, output_dir={str(self.output_dir)!r})"
        )


def _check_steps(steps: object) -> None:
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ConfigError(
            f"invalid num_inference_steps {steps!r}: use an int of 1 or more, or None for "
            "the pipeline's default"
        )
