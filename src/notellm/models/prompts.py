"""Note Compression Prompt (NCP) templates: the note compressed into one token, then a generation task.

Chinese template (as the reference code):
    笔记：{"标题":"<title>","话题":"<tags>","内容":"<content>"}，压缩为一个词：“[EMB]”。生成笔记类目：<c1，c2>。
English template (as the paper):
    Extract the note information in json format, compress it into one word for recommendation, and generate
    the category of the note. {'title': ..., 'topic': ..., 'content': ...} The compression word is:"[EMB]".
    The category is: <c>

A prompt is split into `prefix` (everything up to and including the compression token and the closing of the
compression sentence, i.e. what is embedded) and `answer` (the generation target, trained with CSFT).
Truncation lengths are configuration (PromptConfig), not constants.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Sequence

EMB_TOKEN = "[EMB]"
IMG_EMB_TOKEN = "[IMG_EMB]"
IMG_TOKEN = "<IMG>"

TASK_EMBED = "embed"        # compression only: what `embed` and evaluation use
TASK_CATEGORY = "category"
TASK_HASHTAG = "hashtag"


@dataclass
class PromptConfig:
    language: str = "zh"            # zh | en
    title_chars: int = 20
    content_chars: int = 80
    max_tags_in_input: int = 10
    category_levels: int = 2        # the category task generates the first N levels
    include_category_in_input: bool = False


@dataclass
class NotePrompt:
    prefix: str          # ends right after the compression sentence (contains EMB_TOKEN once)
    answer: str          # generation target ("" for the embedding-only prompt)
    task: str
    removed_tag: str | None = None
    extras: dict[str, Any] = field(default_factory=dict)


def _json_note(cfg: PromptConfig, title: str, tags: Sequence[str], content: str, category: Sequence[str]) -> str:
    """The note as compact JSON. Category (when configured) precedes the content; the category task never
    sees it (build_prompt passes none), else its target would be copied from the input."""
    title = (title or "")[: cfg.title_chars]
    content = (content or "")[: cfg.content_chars]
    tags = list(tags)[: cfg.max_tags_in_input]
    if cfg.language == "zh":
        fields = {"标题": title}
        if tags:
            fields["话题"] = "，".join(tags)
        if cfg.include_category_in_input and category:
            fields["类目"] = "，".join(category)
        if content:
            fields["内容"] = content
        return "笔记：" + json.dumps(fields, ensure_ascii=False, separators=(",", ":"))
    fields = {"title": title}
    if tags:
        fields["topic"] = ", ".join(tags)
    if cfg.include_category_in_input and category:
        fields["category"] = ", ".join(category)
    if content:
        fields["content"] = content
    return json.dumps(fields, ensure_ascii=False)


def _compress_sentence(cfg: PromptConfig, token: str = EMB_TOKEN) -> str:
    if cfg.language == "zh":
        return f"，压缩为一个词：“{token}”。"
    return f' The compression word is:"{token}".'


_EN_INSTRUCTION = {
    # Embedding uses the category instruction: with a causal LM the vector depends only on what precedes
    # [EMB], so the embedding prompt must equal the training prompt up to there.
    TASK_EMBED: "Extract the note information in json format, compress it into one word for recommendation, "
                "and generate the category of the note.",
    TASK_CATEGORY: "Extract the note information in json format, compress it into one word for recommendation, "
                   "and generate the category of the note.",
    TASK_HASHTAG: "Extract the note information in json format, compress it into one word for recommendation, "
                  "and generate {n} topics of the note.",
}


def strip_special(text: str | None) -> str:
    """A note's own text must not contain our special tokens: pooling looks for the first [EMB]."""
    text = text or ""
    for token in (EMB_TOKEN, IMG_EMB_TOKEN, IMG_TOKEN):
        text = text.replace(token, "")
    return text


def build_prompt(
    note: dict[str, Any],
    task: str = TASK_EMBED,
    cfg: PromptConfig | None = None,
    tag_target: int | tuple[int, ...] | None = None,
    n_tags: int | None = None,
) -> NotePrompt:
    """The NCP for one note (a Note-table row as a dict).

    - TASK_EMBED: compression only.
    - TASK_CATEGORY: the answer is the first `category_levels` category levels.
    - TASK_HASHTAG, by `tag_target`:
      - an int k (training, as the reference code): tag k is removed from the input and is the answer;
      - a tuple of indices (training, as the paper's template): the input carries no tags and the answer is
        those tags, in the note's order, asked for as "<j> topics";
      - None (generation): the input carries no tags and the answer is all of them.
    """
    cfg = cfg or PromptConfig()
    title, content = strip_special(note.get("title")), strip_special(note.get("content"))
    tags = [strip_special(t) for t in note.get("hashtags") or []]
    category = [strip_special(c) for c in note.get("category") or []]
    removed = None
    input_tags = tags
    answer_tags: list[str] = []
    if task == TASK_HASHTAG:
        if isinstance(tag_target, int) and tags:
            removed = tags[tag_target % len(tags)]
            input_tags = [t for t in tags if t != removed]
            answer_tags = [removed]
        elif isinstance(tag_target, tuple):
            input_tags, answer_tags = [], [tags[i] for i in sorted(set(tag_target))]
        else:
            input_tags, answer_tags = [], tags
    body = _json_note(cfg, title, input_tags, content, [] if task == TASK_CATEGORY else category)
    answer_categories = category[: cfg.category_levels]
    n = n_tags if n_tags is not None else len(answer_tags)
    if cfg.language == "zh":
        prefix = body + _compress_sentence(cfg)
        if task == TASK_CATEGORY:
            return NotePrompt(prefix + "生成笔记类目：", "，".join(answer_categories) + "。", task)
        if task == TASK_HASHTAG:
            return NotePrompt(prefix + f"生成笔记{n}个话题：", "，".join(answer_tags) + "。", task, removed)
        return NotePrompt(prefix, "", task)
    instruction = _EN_INSTRUCTION[task].format(n=n)
    prefix = f"{instruction} {body}{_compress_sentence(cfg)}"
    if task == TASK_CATEGORY:
        return NotePrompt(prefix + " The category is:", " " + ", ".join(answer_categories) + ".", task)
    if task == TASK_HASHTAG:
        return NotePrompt(prefix + f" The {n} topics are:", " " + ", ".join(answer_tags) + ".", task, removed)
    return NotePrompt(prefix, "", task)


def parse_answer_list(text: str, language: str = "zh") -> list[str]:
    """Split a generated answer ('a，b。' or ' a, b.') into items."""
    text = text.strip()
    for stop in ("。", "\n"):
        text = text.split(stop)[0]
    if language == "en":
        text = text.rstrip(".")
    parts = [p.strip().strip("#").strip() for p in text.replace("，", ",").replace("、", ",").split(",")]
    return [p for p in parts if p]
