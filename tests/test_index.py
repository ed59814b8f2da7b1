"""The FAISS note index: exact neighbours, save/load round trip, HNSW against exact, filters and errors."""

from __future__ import annotations

import numpy as np
import pytest

from notellm.data.schema import empty_note, notes_to_table
from notellm.errors import DataError
from notellm.inference.index import IndexConfig, build_index, load_index


def _random(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _small_notes():
    # 2-d unit vectors at angles 0, 10, 20, 90, 180 degrees; categories alternate
    angles = np.deg2rad([0, 10, 20, 90, 180])
    vectors = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    ids = ["a", "b", "c", "d", "e"]
    cats = [["美食", "火锅"], ["穿搭"], ["美食", "甜品"], ["美食"], ["穿搭"]]
    rows = []
    for note_id, cat in zip(ids, cats):
        row = empty_note(note_id)
        row.update(title=f"title {note_id}", category=cat)
        rows.append(row)
    return ids, vectors, notes_to_table(rows)


def test_exact_neighbours_category_filter_and_round_trip(tmp_path):
    ids, vectors, notes = _small_notes()
    index = build_index(ids, vectors, {"model": "m", "dim": 2}, notes=notes)
    got = index.neighbours_of("a", k=3)
    assert [i for i, _ in got] == ["b", "c", "d"]
    assert [s for _, s in got] == pytest.approx([np.cos(np.deg2rad(10)), np.cos(np.deg2rad(20)), 0.0], abs=1e-6)
    assert [i for i, _ in index.neighbours_of("a", k=2, exclude_self=False)] == ["a", "b"]
    # 美食 at any category level: c (20 deg), d (90 deg); b and e are 穿搭
    assert [i for i, _ in index.neighbours_of("a", k=5, category="美食")] == ["c", "d"]

    index.save(tmp_path / "idx")
    loaded = load_index(tmp_path / "idx")
    assert loaded.ids == ids and loaded.dim == 2 and loaded.meta["model"] == "m"
    assert loaded.neighbours_of("a", k=3) == got
    assert loaded.titles()["c"] == "title c"
    assert [i for i, _ in loaded.neighbours_of("e", k=1, category="美食")] == ["d"]


def test_hnsw_and_ivfpq_round_trip_give_identical_neighbours(tmp_path):
    ids = [f"n{i}" for i in range(2000)]
    x = _random(2000, 32, seed=1)
    for kind, cfg in (("hnsw", IndexConfig(kind="hnsw")), ("ivfpq", IndexConfig(kind="ivfpq", pq_nbits=4))):
        index = build_index(ids, x, {"dim": 32}, config=cfg)
        before = index.search(x[:20], 10)
        index.save(tmp_path / kind)
        after = load_index(tmp_path / kind).search(x[:20], 10)
        assert after[0] == before[0]
        np.testing.assert_allclose(after[1], before[1], rtol=1e-6)


def test_hnsw_recall_against_exact_search():
    x = _random(3000, 32, seed=2)
    queries = _random(100, 32, seed=3)
    ids = [str(i) for i in range(len(x))]
    exact = build_index(ids, x, kind="flat").search(queries, 10)[0]
    approx = build_index(ids, x, kind="hnsw").search(queries, 10)[0]
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact)])
    assert recall > 0.9


def test_exact_search_matches_brute_force():
    x = _random(500, 16, seed=4)
    q = _random(7, 16, seed=5)
    ids, scores = build_index([str(i) for i in range(500)], x).search(q, 5)
    brute = np.argsort(-(q @ x.T), axis=1)[:, :5]
    assert ids == [[str(i) for i in row] for row in brute]
    np.testing.assert_allclose(scores, np.take_along_axis(q @ x.T, brute, axis=1), atol=1e-5)


def test_errors_name_the_note_and_both_dimensions(tmp_path):
    ids, vectors, _ = _small_notes()
    index = build_index(ids, vectors, {"model": "m"})
    with pytest.raises(DataError, match="'zzz' is not in the index"):
        index.neighbours_of("zzz")
    with pytest.raises(DataError, match="dimension 3 but the index holds vectors of dimension 2"):
        index.search(np.ones((1, 3)), 2)
    with pytest.raises(DataError, match="no notes table attached"):
        index.neighbours_of("a", category="美食")
    with pytest.raises(DataError, match="5 note ids but 4 vectors"):
        build_index(ids, vectors[:4])
    with pytest.raises(DataError, match="not an index folder"):
        load_index(tmp_path)


def test_cli_build_info_and_recommend(tmp_path):
    """End to end through the CLI: embed notes with a tiny random model, index them, recommend for an indexed
    note (category filtered) and for a new note given as JSON whose text equals an indexed note's."""
    import json

    from typer.testing import CliRunner

    from notellm.cli import app
    from notellm.data.schema import write_notes
    from notellm.inference.embed import load_embedder, write_embeddings

    _, _, notes = _small_notes()
    rows = notes.to_pylist()
    texts = {"a": "成都火锅毛肚鸭肠", "b": "秋季风衣穿搭", "c": "重庆火锅牛油锅底", "d": "甜品店探店", "e": "通勤针织衫"}
    for row in rows:
        row["content"] = texts[row["note_id"]]
    notes = notes_to_table(rows)
    write_notes(notes, tmp_path / "notes.parquet")
    model = "zero-shot:tiny-qwen3"
    embedder = load_embedder(model, bf16=False)
    write_embeddings([r["note_id"] for r in rows], embedder.encode(rows), embedder.meta, tmp_path / "emb")

    runner = CliRunner()
    result = runner.invoke(app, ["index", "build", str(tmp_path / "emb"), "--out", str(tmp_path / "idx"),
                                 "--notes", str(tmp_path / "notes.parquet"), "--kind", "hnsw", "hnsw_m=8"])
    assert result.exit_code == 0, result.output
    info = load_index(tmp_path / "idx").info()
    assert info["kind"] == "hnsw" and info["config"]["hnsw_m"] == 8 and info["count"] == 5
    assert runner.invoke(app, ["index", "info", str(tmp_path / "idx")]).exit_code == 0

    result = runner.invoke(app, ["recommend", "--index", str(tmp_path / "idx"), "--note-id", "a", "-k", "2",
                                 "--category", "美食", "--json"])
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)
    assert [h["note_id"] for h in hits] == [i for i, _ in load_index(tmp_path / "idx").neighbours_of("a", 2, category="美食")]
    assert all("美食" in h["category"] for h in hits) and "a" not in [h["note_id"] for h in hits]

    new = json.dumps({"title": "title c", "content": texts["c"], "hashtags": []}, ensure_ascii=False)
    result = runner.invoke(app, ["recommend", "--index", str(tmp_path / "idx"), "--note-json", new,
                                 "--model", model, "-k", "1", "--json"])
    assert result.exit_code == 0, result.output
    top = json.loads(result.stdout)[0]
    assert top["note_id"] == "c" and top["score"] == pytest.approx(1.0, abs=0.02) and top["title"] == "title c"
