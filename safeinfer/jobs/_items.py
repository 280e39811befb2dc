"""Items: one image each, with an id, a seed and a file name fixed by the prompt file.

The rules, which a resumed job and every rank of a split job apply alike:

- The prompt on row ``r`` (0-based, counting prompts, not blank or comment lines) makes
  ``images_per_prompt`` items ``k = 0, 1, ...``, with item id ``f"{r:06d}-{k:02d}"``
  and index ``r * images_per_prompt + k``.
- The seed is the row's own ``seed`` plus ``k`` when the row sets one. Otherwise it is
  the first 4 bytes (big-endian) of SHA-256 over ``"<base seed>:<r>:<k>"``, so it is
  below 2**32. Hashing keeps the seeds of two jobs with neighbouring base seeds apart,
  where ``base + index`` would make one job's image ``k + 1`` the other's image ``k``.
- The file is ``<index // 1000, 4 digits>/<item id>-<seed>-<prompt stem>.png`` below the
  output root: a thousand files per folder, and a name that says which prompt and seed
  made it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from safeinfer.errors import ConfigError, InvalidNameError
from safeinfer.jobs._prompts import MAX_SEED, PromptRow
from safeinfer.naming import sanitize_stem

__all__ = ["FILES_PER_FOLDER", "Item", "derive_seed", "item_name", "make_items", "shard"]

#: Files per subfolder of the output root. Directory listings and most file systems slow
#: down with hundreds of thousands of entries in one folder.
FILES_PER_FOLDER: Final = 1000
#: Maximum UTF-8 bytes of the prompt part of a file name.
STEM_BYTES: Final = 60
#: Stem used when a prompt has nothing that survives sanitising (for example "" or "???").
FALLBACK_STEM: Final = "image"

#: Sanitising passes after which a file name must be stable; one or two suffice.
SANITIZE_PASSES: Final = 4

_T = TypeVar("_T")


@dataclass(frozen=True)
class Item:
    """One image to make: its id, index, prompt, seed, parameters and relative file name.

    ``None`` for steps, guidance, width or height leaves the pipeline's own default.
    """

    id: str
    index: int
    row: int
    k: int
    prompt: str
    seed: int
    name: str
    negative_prompt: str | None = None
    steps: int | None = None
    guidance: float | None = None
    width: int | None = None
    height: int | None = None

    def params(self) -> dict[str, Any]:
        """Return the generation parameters, as recorded in the manifest."""
        return {
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "seed": self.seed,
            "steps": self.steps,
            "guidance": self.guidance,
            "width": self.width,
            "height": self.height,
        }

    def batch_key(self) -> tuple[object, ...]:
        """Return what must be equal for items to share one pipeline call."""
        return (self.negative_prompt, self.steps, self.guidance, self.width, self.height)


def derive_seed(base_seed: int, row: int, k: int) -> int:
    """Return the seed of image ``k`` of prompt ``row`` for a job with ``base_seed``.

    >>> derive_seed(0, 0, 0) == derive_seed(0, 0, 0)
    True
    >>> 0 <= derive_seed(0, 5, 1) < 2**32
    True
    """
    digest = hashlib.sha256(f"{base_seed}:{row}:{k}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def item_name(index: int, item_id: str, seed: int, prompt: str) -> str:
    """Return the file name of an item, relative to the output root.

    >>> item_name(1234, "000617-00", 42, "A red fox, at dawn")
    '0001/000617-00-42-A_red_fox_at_dawn.png'
    """
    try:
        stem = sanitize_stem(prompt, max_length=STEM_BYTES)
    except InvalidNameError:
        stem = FALLBACK_STEM
    # The pipeline sanitises the whole file name again, and resume finds a file by its
    # name, so the name must come out unchanged: "CON" alone becomes "CON_", whose "_"
    # a second pass trims once the stem is no longer the whole name.
    base = f"{item_id}-{seed}-{stem}"
    for _ in range(SANITIZE_PASSES):
        cleaned = sanitize_stem(base)
        if cleaned == base:
            return f"{index // FILES_PER_FOLDER:04d}/{base}.png"
        base = cleaned
    raise InvalidNameError(f"cannot make a stable file name for item {item_id} from {prompt!r}")


def make_items(
    rows: Sequence[PromptRow],
    *,
    seed: int = 0,
    images_per_prompt: int = 1,
    negative_prompt: str | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    width: int | None = None,
    height: int | None = None,
) -> list[Item]:
    """Expand prompt rows into items; a row's overrides win over these job options.

    >>> from safeinfer.jobs._prompts import read_prompts
    >>> [item.id for item in make_items(read_prompts(["a", "b"]), images_per_prompt=2)]
    ['000000-00', '000000-01', '000001-00', '000001-01']
    """
    if images_per_prompt < 1:
        raise ConfigError(f"invalid images_per_prompt {images_per_prompt}: must be at least 1")
    items = []
    for row in rows:
        for k in range(images_per_prompt):
            index = row.row * images_per_prompt + k
            item_id = f"{row.row:06d}-{k:02d}"
            item_seed = row.seed + k if row.seed is not None else derive_seed(seed, row.row, k)
            if item_seed > MAX_SEED:
                raise ConfigError(
                    f"invalid seed {row.seed} on line {row.line}: with {images_per_prompt} "
                    f"images per prompt the seeds reach {item_seed}, past the largest seed "
                    f"2**64 - 1; use a seed of at most {MAX_SEED - images_per_prompt + 1}"
                )
            items.append(
                Item(
                    id=item_id,
                    index=index,
                    row=row.row,
                    k=k,
                    prompt=row.prompt,
                    seed=item_seed,
                    name=item_name(index, item_id, item_seed, row.prompt),
                    negative_prompt=_pick(row.negative_prompt, negative_prompt),
                    steps=_pick(row.steps, steps),
                    guidance=_pick(row.guidance, guidance),
                    width=_pick(row.width, width),
                    height=_pick(row.height, height),
                )
            )
    return items


def shard(items: Sequence[_T], rank: int, world_size: int) -> list[_T]:
    """Return the share of ``items`` that rank ``rank`` of ``world_size`` makes.

    Round-robin by position: every item goes to exactly one rank, shares differ in
    length by at most one, and the split depends only on the list, so every rank
    computes the same split without talking to the others.

    >>> shard(list(range(7)), 1, 3)
    [1, 4]
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(
            f"invalid rank {rank} of world size {world_size}: need 0 <= rank < world size"
        )
    return list(items[rank::world_size])


def _pick(row_value: _T | None, job_value: _T | None) -> _T | None:
    return row_value if row_value is not None else job_value
