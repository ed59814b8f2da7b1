"""Hybrid retrieval: reciprocal-rank and weighted fusion, the fused Scorer under the recall protocol, the
validation-chosen weight, and `eval recall` / `recommend` with dense + BM25."""

from __future__ import annotations

import json

import numpy as np
import pytest

from notellm.evaluation.recall import VectorScorer, choose_dense_weight, recall_at_k
from notellm.inference.fusion import FusedScorer, fuse_hits, reciprocal_rank_fusion, weighted_fusion


def test_rrf_sums_reciprocal_ranks_and_ties_take_the_worst_rank():
    a = np.array([[3.0, 2.0, 1.0]])
    b = np.array([[0.0, 5.0, 0.0]])  # candidates 0 and 2 tie for ranks 2-3: both get rank 3
    fused = reciprocal_rank_fusion([a, b], k=60)
    assert fused[0] == pytest.approx([1 / 61 + 1 / 63, 1 / 62 + 1 / 61, 1 / 63 + 1 / 63])
    assert int(np.argmax(fused)) == 1  # second in one list and first in the other beats first + last


def test_weighted_fusion_z_scores_each_retriever_per_query():
    dense = np.array([[0.9, 0.8, 0.1], [0.2, 0.3, 0.4]])
    bm25 = 100.0 * np.array([[0.0, 1.0, 0.5], [1.0, 0.0, 0.0]])  # another scale entirely
    assert np.argsort(-weighted_fusion([dense, bm25], [1.0, 0.0]), axis=1).tolist() == \
        np.argsort(-dense, axis=1).tolist()
    both = weighted_fusion([dense, bm25], [0.5, 0.5])
    z = lambda x: (x - x.mean(1, keepdims=True)) / x.std(1, keepdims=True)  # noqa: E731
    assert both == pytest.approx(0.5 * z(dense) + 0.5 * z(bm25))
    with pytest.raises(ValueError, match="2 retrievers but 1 weights"):
        weighted_fusion([dense, bm25], [1.0])


def _complementary_retrievers(n: int = 40, seed: int = 0):
    """Queries q0..q{n-1} with partners p0..; the dense retriever finds the partners of even queries, the
    lexical one those of odd queries; each gives the other half's partners only a weak lift (as real dense
    and lexical retrievers both carry some signal everywhere)."""
    rng = np.random.default_rng(seed)
    queries = [f"q{i}" for i in range(n)]
    partners = [f"p{i}" for i in range(n)]
    pool = partners + [f"x{i}" for i in range(4 * n)]
    ids = queries + pool
    dim = 64
    basis = rng.standard_normal((n, dim))
    vec = {i: rng.standard_normal(dim) for i in ids}
    for i in range(n):
        strength = 5.0 if i % 2 == 0 else 0.6
        vec[queries[i]] = basis[i] * strength + rng.standard_normal(dim)
        vec[partners[i]] = basis[i] * strength + rng.standard_normal(dim)
    dense = VectorScorer(ids, np.stack([vec[i] for i in ids]), name="dense")

    class Lexical:
        name = "lexical"

        def score(self, query_ids, pool_ids):
            s = rng.random((len(query_ids), len(pool_ids)))
            col = {p: j for j, p in enumerate(pool_ids)}
            for r, q in enumerate(query_ids):
                i = int(q[1:])
                s[r, col[f"p{i}"]] = 10.0 if i % 2 else s[r, col[f"p{i}"]] + 0.5
            return s

    return queries, partners, pool, dense, Lexical()


def test_fused_scorer_beats_both_parts_when_they_find_different_partners():
    queries, partners, pool, dense, lexical = _complementary_retrievers()
    ks = (5, 20)
    r_dense = recall_at_k(queries, partners, pool, dense, ks)
    r_lex = recall_at_k(queries, partners, pool, lexical, ks)
    r_rrf = recall_at_k(queries, partners, pool, FusedScorer([dense, lexical], "rrf"), ks)
    r_mix = recall_at_k(queries, partners, pool, FusedScorer([dense, lexical], "weighted", [0.5, 0.5]), ks)
    assert r_rrf[20] >= max(r_dense[20], r_lex[20]) + 0.1
    assert r_mix[5] >= max(r_dense[5], r_lex[5]) + 0.15
    assert FusedScorer([dense, lexical]).name == "hybrid dense + lexical (rrf)"


def test_choose_dense_weight_prefers_the_retriever_that_finds_partners():
    queries, partners, pool, dense, _ = _complementary_retrievers()
    rng = np.random.default_rng(1)

    class Noise:
        def score(self, query_ids, pool_ids):
            return rng.random((len(query_ids), len(pool_ids)))

    best, tried = choose_dense_weight(queries, partners, pool, dense, Noise(), ks=(5,))
    assert best >= 0.7 and tried[best] == max(tried.values()) and set(tried) == {round(w, 4) for w in np.linspace(0, 1, 11)}
    assert tried[best] > tried[0.0] + 0.3


def test_fuse_hits_ranks_a_candidate_missing_from_one_list_below_that_lists_entries():
    dense = [("a", 0.9), ("b", 0.8), ("c", 0.7)]
    lexical = [("c", 12.0), ("d", 3.0)]
    got = fuse_hits([dense, lexical], k=4)
    assert [i for i, _ in got][:1] == ["c"]  # ranks 3 and 1
    assert {i for i, _ in got} == {"a", "b", "c", "d"}
    assert fuse_hits([[], []], k=3) == []
    weighted = fuse_hits([dense, lexical], k=2, method="weighted", weights=[1.0, 0.0])
    assert [i for i, _ in weighted] == ["a", "b"]


def _indexed_notes(tmp_path):
    """Five notes embedded by a tiny random model (its neighbours are noise) and indexed, with their text."""
    from notellm.data.schema import empty_note, notes_to_table, write_notes
    from notellm.inference.embed import load_embedder, write_embeddings
    from notellm.inference.index import build_index

    texts = {"a": "成都火锅毛肚鸭肠", "b": "秋季风衣穿搭", "c": "重庆火锅毛肚牛油锅底", "d": "甜品店探店",
             "e": "通勤针织衫"}
    rows = []
    for note_id, text in texts.items():
        row = empty_note(note_id)
        row.update(title=f"title {note_id}", content=text, category=["美食"] if note_id in "acd" else ["穿搭"])
        rows.append(row)
    write_notes(notes_to_table(rows), tmp_path / "notes.parquet")
    embedder = load_embedder("zero-shot:tiny-qwen3", bf16=False)
    vectors = embedder.encode(rows)
    write_embeddings(list(texts), vectors, embedder.meta, tmp_path / "emb")
    build_index(list(texts), vectors, embedder.meta, notes=notes_to_table(rows)).save(tmp_path / "idx")
    return texts


def test_recommend_hybrid_puts_the_lexical_match_first(tmp_path):
    from typer.testing import CliRunner

    from notellm.cli import app

    _indexed_notes(tmp_path)
    runner = CliRunner()
    args = ["recommend", "--index", str(tmp_path / "idx"), "--note-id", "a", "-k", "4", "--json"]
    dense = json.loads(runner.invoke(app, args).stdout)
    result = runner.invoke(app, args + ["--hybrid-notes", str(tmp_path / "notes.parquet")])
    assert result.exit_code == 0, result.output
    hybrid = [h["note_id"] for h in json.loads(result.stdout)]
    # c shares 火锅 / 毛肚 with a; random dense vectors rank it anywhere, BM25 first: RRF puts it on top
    # unless dense ranks it last (then a note first in dense and absent from BM25 could tie)
    assert "a" not in hybrid and len(hybrid) == 4
    if [h["note_id"] for h in dense].index("c") < 3:
        assert hybrid[0] == "c"
    result = runner.invoke(app, args + ["--hybrid-notes", str(tmp_path / "notes.parquet"), "--category", "穿搭"])
    assert result.exit_code == 0 and {h["note_id"] for h in json.loads(result.stdout)} == {"b", "e"}
    result = runner.invoke(app, args + ["--hybrid-notes", str(tmp_path / "notes.parquet"), "--fusion", "max"])
    assert "--fusion must be rrf or weighted" in str(result.exception)  # run_cli makes it one line, exit 2


def test_eval_recall_fuses_embeddings_with_bm25(tmp_path):
    import pyarrow as pa
    from typer.testing import CliRunner

    from notellm.cli import app
    from notellm.io import write_parquet

    _indexed_notes(tmp_path)
    write_parquet(pa.table({"note_a": ["a"], "note_b": ["c"], "score": [1.0]}), tmp_path / "pairs.parquet")
    common = ["eval", "recall", "--notes", str(tmp_path / "notes.parquet"), "--pairs", str(tmp_path / "pairs.parquet"),
              "--pool", "notes", "--ks", "1", "--no-buckets"]
    result = CliRunner().invoke(app, common + ["--embeddings", str(tmp_path / "emb"), "--baseline", "bm25",
                                               "--out", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["scorer"].startswith("hybrid") and "BM25" in report["scorer"]
    assert report["n_queries"] == 1 and report["pool_size"] == 4
