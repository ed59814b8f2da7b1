"""Text conventions of Xiaohongshu notes (see DESIGN.md): invisible characters, inline `#话题[话题]#` tags."""

from __future__ import annotations

import re

_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\ufeff"), None)
_TOPIC_MARK = re.compile(r"\[话题\]")
_HASHTAG = re.compile(r"#(\w+)#")
MAX_TAG_CHARS = 16
MAX_TAGS = 10


def clean_text(text: str | None) -> str:
    """Strip zero-width characters and surrounding blanks; keep platform emoji like `[哭惹R]` as text."""
    if text is None:
        return ""
    return str(text).translate(_INVISIBLE).strip()


def parse_hashtags(text: str | None, max_chars: int = MAX_TAG_CHARS, max_tags: int = MAX_TAGS) -> list[str]:
    """Hashtags written inline as `#话题[话题]#` or `#话题#`, in order, deduplicated.

    As the reference code: remove `[话题]`, match `#(\\w+)#`, keep tags of <= 16 chars, at most 10.
    """
    text = _TOPIC_MARK.sub("", clean_text(text))
    tags: list[str] = []
    pos = 0
    while (m := _HASHTAG.search(text, pos)) is not None:
        tag = m.group(1)
        if len(tag) <= max_chars and tag not in tags:
            tags.append(tag)
        pos = m.end() - 1  # the closing '#' may open the next tag: `#a##b#` and `#a#b#`
    return tags[:max_tags]


def strip_hashtags(text: str | None) -> str:
    """The body without its inline hashtags (they live in the `hashtags` column)."""
    text = _TOPIC_MARK.sub("", clean_text(text))
    return re.sub(r"\s+", " ", _HASHTAG.sub(" ", text)).strip()


def normalize_tag(tag: str) -> str:
    """Normalised form for comparing tags: no `#`, no `[话题]`, no blanks, lower case."""
    tag = _TOPIC_MARK.sub("", clean_text(tag)).strip("#")
    return re.sub(r"\s+", "", tag).lower()


_UNITS = {"万": 10_000, "w": 10_000, "W": 10_000, "千": 1_000, "k": 1_000, "K": 1_000, "亿": 100_000_000}


def parse_count(value: object) -> int | None:
    """Counts as platforms print them: `1234`, `1.5万`, `10w+`, `2千`, `1,024`; empty -> None.

    Raises ValueError on anything else, so callers can name the row and field.
    """
    if value is None:
        return None
    if isinstance(value, (int,)) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, float):
        if value != value:  # NaN
            return None
        return int(round(value))
    text = clean_text(str(value)).replace(",", "").rstrip("+")
    if text == "":
        return None
    unit = 1
    if text[-1] in _UNITS:
        unit = _UNITS[text[-1]]
        text = text[:-1]
    number = float(text)  # ValueError for junk
    if number < 0:
        raise ValueError(f"negative count {value!r}")
    return int(round(number * unit))
