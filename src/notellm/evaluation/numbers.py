"""Read the number in a model's free-text answer, and say plainly when there is none.

Generated answers are messy: `约 3.5 分`, `Score: 4.20.`, `3,5` (decimal comma), `1,024` (thousands),
full-width digits `３.５`, a Unicode minus `−2`. The first number in the text is the answer. Number words
(`four`, `三点五`), a lone `-`, `nan` and `inf` are *not* numbers: the caller counts them as non-answers
instead of guessing a value.
"""

from __future__ import annotations

import math
import re
import unicodedata
from typing import Iterable

# Longest alternatives first: `1,024.5` (thousands groups), then `3.5` / `3,5` (decimal point or comma),
# then `.5`. The look-behind keeps digits glued to Latin letters (`v2`, `x86`) from counting, but allows
# CJK text right before a number (`约3.5分`).
_NUMBER = re.compile(
    r"(?<![A-Za-z0-9.,])"
    r"(?P<sign>[-+]?)"
    r"(?P<body>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:[.,]\d+)?|\.\d+)"
    r"(?P<exp>[eE][-+]?\d+)?"
)
_MINUS_SIGNS = str.maketrans({"\u2212": "-", "\u2013": "-", "\u2014": "-", "\ufe63": "-"})


def parse_number(text: str | None) -> float | None:
    """The first number written with digits in `text`, or None when there is none.

    >>> parse_number("约 3.5 分"), parse_number("Score: 4.20."), parse_number("3,5"), parse_number("four")
    (3.5, 4.2, 3.5, None)
    """
    if text is None:
        return None
    text = unicodedata.normalize("NFKC", str(text)).translate(_MINUS_SIGNS)
    match = _NUMBER.search(text)
    if match is None:
        return None
    body = match.group("body")
    if re.fullmatch(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?", body):
        body = body.replace(",", "")  # thousands separators
    else:
        body = body.replace(",", ".")  # a decimal comma
    value = float(match.group("sign") + body + (match.group("exp") or ""))
    return value if math.isfinite(value) else None


def parse_numbers(texts: Iterable[str | None]) -> list[float | None]:
    return [parse_number(t) for t in texts]


def count_non_numbers(values: Iterable[float | None]) -> int:
    return sum(v is None for v in values)
