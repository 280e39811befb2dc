"""Safe output files for Cog predictors: :class:`SafeOutputMixin`.

Several Cog servers on one host that all save to a fixed path such as ``/tmp/out.png``
return each other's images, or half-written ones. The mixin gives every server process
its own directory, unique names and atomic writes, and deletes old outputs only after
Cog has read them.

>>> from cog import BaseRunner, Input
>>> from safeinfer.cog import SafeOutputMixin
>>> class Runner(SafeOutputMixin, BaseRunner):                      # doctest: +SKIP
...     def run(self, seed: int = Input(default=0)) -> Path:
...         return self.save_output(make_image(seed), metadata={"seed": seed})

Importing this module needs the Cog SDK (``pip install "safeinfer[cog]"``).
"""

from __future__ import annotations

from safeinfer.errors import MissingDependencyError

try:
    # An absolute import: this module is safeinfer.cog, the SDK is the top-level cog.
    import cog  # noqa: F401
except ImportError as error:
    raise MissingDependencyError(
        f"safeinfer.cog needs the Cog SDK, which failed to import ({error}); "
        'install it with: pip install "safeinfer[cog]"'
    ) from error

from safeinfer.cog._mixin import SUFFIXES, OutputFile, SafeOutputMixin
from safeinfer.cog._outputs import (
    DEFAULT_KEEP_OUTPUTS,
    KEEP_OUTPUTS_ENV,
    OUTPUT_DIR_ENV,
    sweep_dead_owners,
)

__all__ = [
    "DEFAULT_KEEP_OUTPUTS",
    "KEEP_OUTPUTS_ENV",
    "OUTPUT_DIR_ENV",
    "SUFFIXES",
    "OutputFile",
    "SafeOutputMixin",
    "sweep_dead_owners",
]
