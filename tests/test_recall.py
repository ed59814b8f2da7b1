"""Recall@K under the NoteLLM protocol, on a hand-made 2-d embedding set whose ranks are worked out below."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from notellm.data.schema import PAIR_SCHEMA, empty_note, notes_to_table
from notellm.errors import DataError
from notellm.evaluation.recall import (RecallConfig, dedupe_pairs, default_ks, evaluate_recall, partner_ranks,
                                       recall_at_k)

# Test pairs in file order. Sorted by score: (q1,p1,.9) (q1,x,.85) (q2,p2,.8) (p2,q3,.7) (q3,p3,.6) (p3,y,.5).
# Greedy keeps (q1,p1), drops (q1,x) [q1 used], keeps (q2,p2), drops (p2,q3) [p2 used], keeps (q3,p3),
# drops (p3,y) [p3 used]. Queries q1,q2,q3; pool = every test note but the queries = p1,x,p2,p3,y.
PAIRS = [("q3", "p3", 0.6), ("q1", "x", 0.85), ("q1", "p1", 0.9), ("q2", "p2", 0.8), ("p2", "q3", 0.7),
         ("p3", "y", 0.5)]
VEC = {"q1": (1, 0), "q2": (0, 1), "q3": (-1, 0),
       "p1": (0.8, 0.6), "x": (0.6, 0.8), "p2": (0, 1), "p3": (0.8, -0.6), "y": (1, 0)}
# Cosines. q1: p1 .8, x .6, p2 0, p3 .8, y 1   -> partner p1 .8; y (1) and p3 (.8, a tie) >= it: rank 2
#          q2: p1 .6, x .8, p2 1, p3 -.6, y 0  -> partner p2 is first: rank 0
#          q3: p1 -.8, x -.6, p2 0, p3 -.8, y -1 -> partner p3 -.8; p1 (tie), x, p2 >= it: rank 3
EXPECTED_RANKS = [2, 0, 3]


def pairs_table(pairs=PAIRS) -> pa.Table:
    a, b, s = zip(*pairs)
    return pa.table({"note_a": list(a), "note_b": list(b), "score": list(s)}, schema=PAIR_SCHEMA)


def vectors():
    ids = list(VEC)
    return ids, np.array([VEC[i] for i in ids], dtype=np.float32)


def test_greedy_dedupe_keeps_highest_scored_pairs_without_repeating_a_note():
    kept = dedupe_pairs(PAIRS)
    assert [PAIRS[i][:2] for i in kept] == [("q1", "p1"), ("q2", "p2"), ("q3", "p3")]


def test_ranks_count_ties_against_the_model():
    ranks = partner_ranks(["q1", "q2", "q3"], ["p1", "p2", "p3"], ["p1", "x", "p2", "p3", "y"], vectors())
    assert ranks.tolist() == EXPECTED_RANKS
    r = recall_at_k(["q1", "q2", "q3"], ["p1", "p2", "p3"], ["p1", "x", "p2", "p3", "y"], VEC, ks=[1, 2, 3, 4])
    # ranks 2, 0, 3: < 1 one query, < 2 one (the tie keeps q1 out), < 3 two, < 4 all
    assert r == pytest.approx({1: 1 / 3, 2: 1 / 3, 3: 2 / 3, 4: 1.0})


def test_constant_scorer_ranks_every_partner_last():
    class Constant:
        def score(self, queries, pool):
            return np.zeros((len(queries), len(pool)))

    ranks = partner_ranks(["q1", "q2"], ["p1", "p2"], ["p1", "x", "p2", "p3"], Constant())
    assert ranks.tolist() == [3, 3]  # every other pool note ties with the partner


def test_query_inside_the_pool_never_competes():
    # q1 scores 1.0 against itself, above its partner p1 (.8): unmasked, p1 would rank 1 instead of 0
    ranks = partner_ranks(["q1"], ["p1"], ["q1", "p1", "x"], vectors())
    assert ranks.tolist() == [0]


def test_evaluate_recall_from_tables():
    report = evaluate_recall(None, pairs_table(), vectors(), ks=[1, 2, 3, 4], buckets=False)
    assert (report.n_pairs, report.n_queries, report.pool_size) == (6, 3, 5)
    assert report.overall.recall == pytest.approx({1: 1 / 3, 2: 1 / 3, 3: 2 / 3, 4: 1.0})
    assert report.overall.stderr[1] == pytest.approx(np.sqrt(1 / 3 * 2 / 3 / 3))
    assert [q["rank"] for q in report.per_query] == EXPECTED_RANKS


def test_candidate_pool_replaces_the_test_notes():
    # without y and p3 in the pool: q1's partner p1 has only... p1 .8 vs x .6, p2 0 -> rank 0;
    # q3's partner p3 must be in the pool, so give a pool with p3 but not y.
    report = evaluate_recall(None, pairs_table(), vectors(), ks=[1], buckets=False, pool=["p1", "x", "p2", "p3", "q1"])
    assert report.pool_size == 4  # q1 is a query, so it leaves the pool
    # q1: p3 ties p1 -> rank 1; q2 rank 0; q3: p1 tie, x, p2 -> rank 3
    assert [q["rank"] for q in report.per_query] == [1, 0, 3]
    with pytest.raises(DataError, match="not in the candidate pool"):
        evaluate_recall(None, pairs_table(), vectors(), ks=[1], buckets=False, pool=["p1", "x", "p2"])


def test_missing_vector_and_bad_pairs_are_errors():
    ids, x = vectors()
    with pytest.raises(DataError, match="have no vector"):
        evaluate_recall(None, pairs_table(), (ids[:-1], x[:-1]), ks=[1], buckets=False)
    bad = pa.table({"note_a": ["a"], "note_b": [None], "score": [1.0]})
    with pytest.raises(DataError, match="row 1.*note_b"):
        evaluate_recall(None, bad, vectors(), ks=[1], buckets=False)


def _notes_table():
    rows = []
    lengths = {"q1": 10, "q2": 50, "q3": 100, "p1": 5, "x": 1, "p2": 60, "p3": 200, "y": 3}
    likes = {"q1": 0, "q2": 100, "q3": 5}
    for note_id, n in lengths.items():
        row = empty_note(note_id)
        row.update(title=note_id, content="字" * n, likes=likes.get(note_id))
        rows.append(row)
    return notes_to_table(rows)


def test_buckets_by_exposure_and_length():
    report = evaluate_recall(_notes_table(), pairs_table(), vectors(), ks=[1, 3],
                             config=RecallConfig(low_exposure=0.3, high_exposure=0.1))
    b = report.buckets
    # no impressions -> likes. Query likes 0, 100, 5: 30th pct = 3 -> low = {q1} (rank 2);
    # 90th pct = 81 -> high = {q2} (rank 0)
    assert b["exposure:low"].n_queries == 1 and b["exposure:low"].recall == {1: 0.0, 3: 1.0}
    assert b["exposure:high"].n_queries == 1 and b["exposure:high"].recall == {1: 1.0, 3: 1.0}
    assert "likes" in b["exposure:low"].rule
    # query lengths 10, 50, 100: median 50 -> short {q1, q2} (ranks 2, 0), long {q3} (rank 3)
    assert b["query:short"].recall == {1: 0.5, 3: 1.0}
    assert b["query:long"].recall == {1: 0.0, 3: 0.0}
    # partner lengths p1 5, p2 60, p3 200: median 60 -> short {p1, p2} (ranks 2, 0), long {p3}
    assert b["partner:short"].n_queries == 2 and b["partner:long"].n_queries == 1


def test_embed_fn_is_called_on_queries_then_pool_and_json_round_trips(tmp_path):
    seen = []

    def embed(notes):
        seen.extend(n["note_id"] for n in notes)
        return np.array([VEC[n["note_id"]] for n in notes], dtype=np.float32)

    report = evaluate_recall(_notes_table(), pairs_table(), embed, ks=[2], buckets=False)
    # queries in kept order, then the pool in order of first appearance in the pair file
    assert seen == ["q1", "q2", "q3", "p3", "x", "p1", "p2", "y"]
    assert report.overall.recall == {2: pytest.approx(1 / 3)}
    report.write_json(tmp_path / "r.json")
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["overall"]["recall"] == {"2": pytest.approx(1 / 3)} and data["pool_size"] == 5


def test_default_ks_follow_the_pool_size():
    assert default_ks(1243) == [10, 50, 100, 1000]
    assert default_ks(5) == [4]


def test_cli_eval_recall_with_embeddings_and_baseline(tmp_path):
    from typer.testing import CliRunner

    from notellm.cli import app
    from notellm.data.schema import write_notes
    from notellm.inference.embed import write_embeddings
    from notellm.io import write_parquet

    write_notes(_notes_table(), tmp_path / "notes.parquet")
    write_parquet(pairs_table(), tmp_path / "pairs.parquet")
    ids, x = vectors()
    write_embeddings(ids, x / np.linalg.norm(x, axis=1, keepdims=True), {"model": "hand-made"}, tmp_path / "emb")
    runner = CliRunner()
    common = ["eval", "recall", "--notes", str(tmp_path / "notes.parquet"), "--pairs", str(tmp_path / "pairs.parquet")]
    result = runner.invoke(app, common + ["--embeddings", str(tmp_path / "emb"), "--ks", "1,2,3,4",
                                          "--out", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["overall"]["recall"] == pytest.approx({"1": 1 / 3, "2": 1 / 3, "3": 2 / 3, "4": 1.0})
    assert data["buckets"]["exposure:low"]["n_queries"] == 1

    result = runner.invoke(app, common + ["--baseline", "tfidf-char", "--pool", "notes", "--out", str(tmp_path / "b.json")])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "b.json").read_text())
    assert data["pool_size"] == 5 and data["n_queries"] == 3 and data["ks"] == [4]
