"""Text conventions of Xiaohongshu notes (see DESIGN.md): invisible characters, inline `#话题[话题]#` tags.

Three inline hashtag styles exist in the sources we read:
- closed tags `#话题[话题]#` (Xiaohongshu, word characters only, as the reference code): `parse_hashtags` /
  `strip_hashtags`;
- Weibo topics `#…#` with free text inside (`#2020一季度GDP同比下降6.8%#`): `parse_weibo_hashtags` /
  `strip_weibo_hashtags`;
- open tags `#tag ` ended by a blank or punctuation (Kuaishou, Instagram): `parse_open_hashtags` /
  `strip_open_hashtags`.
"""

from __future__ import annotations

import math
import re

_INVISIBLE = re.compile("[\u200b\u200c\u200d\ufeff]")
_TOPIC_MARK = re.compile(r"\[话题\]")
_HASHTAG = re.compile(r"#(\w+)#")
_OPEN_HASHTAG = re.compile(r"#(\w+)")
_WEIBO_HASHTAG = re.compile(r"#([^#\n]+)#")
MAX_TAG_CHARS = 16
MAX_TAGS = 10
_BLANKS = re.compile(r"[^\S\n]+")
_LINE_EDGES = re.compile(r" *\n *")
_MANY_LINES = re.compile(r"\n{3,}")
WEIBO_MAX_TAG_CHARS = 32  # Weibo topics are headlines: 872 of 11,621 in weibo_cctv_2020 exceed 16 chars


def clean_text(text: str | None) -> str:
    """Strip zero-width characters and surrounding blanks; keep platform emoji like `[哭惹R]` as text."""
    if text is None:
        return ""
    if isinstance(text, float) and math.isnan(text):  # a missing cell read by pandas
        return ""
    return _INVISIBLE.sub("", str(text)).strip()  # a regex: str.translate with a dict is ~10x slower


def _keep_tags(found: list[str], max_chars: int, max_tags: int) -> list[str]:
    tags: list[str] = []
    for tag in found:
        if len(tag) <= max_chars and tag not in tags:
            tags.append(tag)
    return tags[:max_tags]


def parse_hashtags(text: str | None, max_chars: int = MAX_TAG_CHARS, max_tags: int = MAX_TAGS) -> list[str]:
    """Hashtags written inline as `#话题[话题]#` or `#话题#`, in order, deduplicated.

    As the reference code: remove `[话题]`, match `#(\\w+)#` without overlap (so `#a[话题]##b[话题]#` gives
    a, b while the body between two Weibo tags, `#a#正文#b#`, is not taken for a tag), keep tags of
    <= 16 chars, at most 10.
    """
    text = _TOPIC_MARK.sub("", clean_text(text))
    return _keep_tags(_HASHTAG.findall(text), max_chars, max_tags)


def _tidy_blanks(text: str) -> str:
    """Collapse runs of blanks left by removed tags but keep the note's line breaks (paragraphs)."""
    text = _BLANKS.sub(" ", text)
    if "\n" in text:  # most notes are one paragraph: skip the line-break passes
        text = _LINE_EDGES.sub("\n", text)
        text = _MANY_LINES.sub("\n\n", text)
    return text.strip()


def _drop_tags(pattern: re.Pattern, text: str, max_chars: int) -> str:
    """Remove tags short enough to be hashtags; a longer one is not a hashtag, so its words stay (no `#`)."""
    return _tidy_blanks(pattern.sub(lambda m: " " if len(m.group(1)) <= max_chars else m.group(1), text))


def strip_hashtags(text: str | None, max_chars: int = MAX_TAG_CHARS) -> str:
    """The body without its inline `#…#` hashtags (they live in the `hashtags` column); line breaks kept.

    Only tags that `parse_hashtags` would keep by length are removed, so no words are lost."""
    return _drop_tags(_HASHTAG, _TOPIC_MARK.sub("", clean_text(text)), max_chars)


def split_hashtags(text: str | None, max_chars: int = MAX_TAG_CHARS, max_tags: int = MAX_TAGS) -> tuple[str, list[str]]:
    """(`strip_hashtags(text)`, `parse_hashtags(text)`) in one pass over the text (readers call it per note)."""
    text = _TOPIC_MARK.sub("", clean_text(text))
    return _drop_tags(_HASHTAG, text, max_chars), _keep_tags(_HASHTAG.findall(text), max_chars, max_tags)


def parse_weibo_hashtags(text: str | None, max_chars: int = WEIBO_MAX_TAG_CHARS, max_tags: int = MAX_TAGS) -> list[str]:
    """Weibo topics `#…#`: paired in order and free text inside (`#2019年人均阅读4.65本#`), one line at most."""
    found = [t.strip() for t in _WEIBO_HASHTAG.findall(clean_text(text))]
    return _keep_tags([t for t in found if t], max_chars, max_tags)


def strip_weibo_hashtags(text: str | None, max_chars: int = WEIBO_MAX_TAG_CHARS) -> str:
    """The post without its `#…#` topics (longer ones than `max_chars` keep their words)."""
    return _drop_tags(_WEIBO_HASHTAG, clean_text(text), max_chars)


def parse_open_hashtags(text: str | None, max_chars: int = MAX_TAG_CHARS, max_tags: int = MAX_TAGS) -> list[str]:
    """Hashtags written `#tag` and ended by a blank or punctuation (Kuaishou: `#搞笑 #热门 正文`)."""
    return _keep_tags(_OPEN_HASHTAG.findall(clean_text(text)), max_chars, max_tags)


def strip_open_hashtags(text: str | None, max_chars: int = MAX_TAG_CHARS) -> str:
    """The body without its `#tag` hashtags (longer ones keep their words); a lone `#` left over goes too."""
    text = _drop_tags(_OPEN_HASHTAG, clean_text(text), max_chars)
    return _tidy_blanks(re.sub(r"(?<=\s)#(?=\s|$)|^#(?=\s|$)", " ", text))


def normalize_tag(tag: str) -> str:
    """Normalised form for comparing tags: no `#`, no `[话题]`, no blanks, lower case."""
    tag = _TOPIC_MARK.sub("", clean_text(tag)).strip("#")
    return re.sub(r"\s+", "", tag).lower()


_UNITS = {"万": 10_000, "w": 10_000, "W": 10_000, "千": 1_000, "k": 1_000, "K": 1_000, "亿": 100_000_000}


def parse_count(value: object) -> int | None:
    """Counts as platforms print them: `1234`, `1.5万`, `10w+`, `2千`, `1,024`, `1202.0`; empty or NaN -> None.

    Raises ValueError on anything else (junk, negative, infinite), so callers can name the row and field.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"not a count: {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"not a count: {value!r}")
        return value
    if isinstance(value, float):
        if math.isnan(value):  # a missing cell read by pandas
            return None
        number = value
    else:
        text = clean_text(str(value)).replace(",", "").rstrip("+")
        if text == "" or text.lower() == "nan":  # empty cell, or NaN written out by pandas/numpy
            return None
        unit = 1
        if text[-1] in _UNITS:
            unit = _UNITS[text[-1]]
            text = text[:-1]
        try:
            number = float(text) * unit
        except ValueError:
            raise ValueError(f"not a count: {value!r}") from None
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"not a count: {value!r}")
    return int(round(number))
