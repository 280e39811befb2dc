"""The batch ``generate`` job: prompts in, images, a manifest and a summary out.

>>> import safeinfer
>>> summary = safeinfer.generate("examples/prompts.txt", "outputs")   # doctest: +SKIP
>>> print(summary.format())                                           # doctest: +SKIP

The pieces are public for other engines: :func:`read_prompts` and :func:`make_items`
fix every item's id, seed and file name, :func:`shard` splits the items between ranks,
and :func:`run_items` makes a list of items in the calling process. A torchrun rank or
a Ray actor runs its share with them and writes ``manifest-<rank>.jsonl``.
"""

from safeinfer.jobs._items import FILES_PER_FOLDER, Item, derive_seed, item_name, make_items, shard
from safeinfer.jobs._job import DEFAULT_SEED, DEFAULT_STOP_TIMEOUT, DTYPES, generate
from safeinfer.jobs._prompts import COLUMNS, PromptRow, parse_size, read_prompts
from safeinfer.jobs._resume import find_finished
from safeinfer.jobs._run import DEFAULT_RETRIES, ItemOutcome, run_items
from safeinfer.jobs._summary import JobSummary

__all__ = [
    "COLUMNS",
    "DEFAULT_RETRIES",
    "DEFAULT_SEED",
    "DEFAULT_STOP_TIMEOUT",
    "DTYPES",
    "FILES_PER_FOLDER",
    "Item",
    "ItemOutcome",
    "JobSummary",
    "PromptRow",
    "derive_seed",
    "find_finished",
    "generate",
    "item_name",
    "make_items",
    "parse_size",
    "read_prompts",
    "run_items",
    "shard",
]
