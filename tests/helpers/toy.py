"""A small topical note set with pairs, written by tests (no ../shared needed)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from notellm.data.schema import empty_note, notes_to_table, write_notes

TOPICS = {
    "美食": (["火锅", "烧烤", "甜品", "面条"], ["美食", "探店"], "今天吃到一家超好吃的{w}，味道绝了"),
    "旅行": (["海边", "古镇", "雪山", "草原"], ["旅行", "攻略"], "周末去了{w}，风景太美了，推荐大家去"),
    "穿搭": (["衬衫", "裙子", "外套", "牛仔"], ["穿搭", "时尚"], "这件{w}显瘦又百搭，夏天必备"),
    "宠物": (["猫咪", "狗狗", "兔子", "仓鼠"], ["宠物", "萌宠"], "我家{w}今天又调皮了，太可爱"),
}


def toy_notes() -> list[dict]:
    rows = []
    for t, (topic, (words, tags, template)) in enumerate(TOPICS.items()):
        for i, word in enumerate(words):
            for j in range(2):
                note = empty_note(f"{t}-{i}-{j}")
                note.update(title=f"{word}分享{j}", content=template.format(w=word), hashtags=[tags[j], word],
                            category=[topic, word], author_id=f"a{t}")
                rows.append(note)
    return rows


def write_toy(tmp: Path) -> dict[str, Path]:
    """32 notes in 4 topics; pairs link the two notes of the same word (train) ."""
    notes = toy_notes()
    write_notes(notes_to_table(notes), tmp / "notes.parquet")
    ids = [n["note_id"] for n in notes]
    pairs = [(a, a[:-1] + "1") for a in ids if a.endswith("0")]
    table = pa.table({"note_a": [a for a, _ in pairs], "note_b": [b for _, b in pairs],
                      "score": [1.0] * len(pairs)})
    pq.write_table(table, tmp / "pairs.parquet")
    return {"notes": tmp / "notes.parquet", "pairs": tmp / "pairs.parquet"}
