"""Prompt parsing for the tiny-digits model: which digit a prompt names.

This module does not import torch, so prompt files can be checked before a model loads.
"""

from __future__ import annotations

import re
from typing import Final

from safeinfer.errors import ConfigError

#: Digit words, indexed by the digit they name.
DIGIT_WORDS: Final[tuple[str, ...]] = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
)

#: Class label of the unconditional ("any digit") embedding. The model was trained with
#: this label on a share of the samples, which enables classifier-free guidance.
NULL_CLASS: Final = 10

#: Accepted prompt forms, listed in the error for a prompt that names no digit.
ACCEPTED_FORMS: Final = (
    '"7", "digit 7", "a handwritten seven", "the number 3", "Zero"; '
    'exactly one digit 0-9 as a numeral or an English word, or "" for any digit'
)

_TOKEN: Final = re.compile(r"[a-z]+|\d+")


def parse_digit_prompt(prompt: str | None) -> int:
    """Return the digit (0-9) that ``prompt`` names, or ``NULL_CLASS`` for any digit.

    The prompt must name exactly one digit, as a numeral or an English word; other
    words are ignored. An empty prompt or ``None`` requests any digit.

    >>> parse_digit_prompt("a handwritten seven")
    7
    >>> parse_digit_prompt("digit 3")
    3

    Raises:
        ConfigError: the prompt names no digit, several different digits, or a
            number with more than one digit.
    """
    if prompt is None or not prompt.strip():
        return NULL_CLASS
    found: set[int] = set()
    for token in _TOKEN.findall(prompt.lower()):
        if token.isdigit():
            if len(token) != 1:
                raise ConfigError(
                    f"invalid digit prompt {prompt!r}: {token!r} is not a single digit. "
                    f"Accepted forms: {ACCEPTED_FORMS}"
                )
            found.add(int(token))
        elif token in DIGIT_WORDS:
            found.add(DIGIT_WORDS.index(token))
    if len(found) != 1:
        reason = "names no digit" if not found else f"names several digits {sorted(found)}"
        raise ConfigError(
            f"invalid digit prompt {prompt!r}: it {reason}. Accepted forms: {ACCEPTED_FORMS}"
        )
    return found.pop()
