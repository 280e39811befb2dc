"""The safe output writer: temp file beside the target, fsync, atomic publish.

``atomic_write`` and ``atomic_open`` publish bytes; ``save_png`` and ``save_image``
encode an image first; ``clean_stale_temps`` removes what killed writers left behind.
Each private module covers one concern: ``_atomic`` the write sequence, ``_fs`` the
system calls, ``_temps`` temp-file names and the sweep, ``_owner`` process identity,
``_dest`` directory and name rules, ``_save`` the image entry points.
"""

from safeinfer.writer._atomic import AtomicFile, atomic_open, atomic_write
from safeinfer.writer._result import Durability, IfExists, WriteResult
from safeinfer.writer._save import ImageFormat, VerifyLevel, save_image, save_png
from safeinfer.writer._temps import clean_stale_temps

__all__ = [
    "AtomicFile",
    "Durability",
    "IfExists",
    "ImageFormat",
    "VerifyLevel",
    "WriteResult",
    "atomic_open",
    "atomic_write",
    "clean_stale_temps",
    "save_image",
    "save_png",
]
