"""`notellm index build | info` and `notellm recommend` on Milvus (milvus-lite, in-process) against the FAISS flat
index built from the same embeddings: the same neighbours and scores, builds that never mix, --replace that keeps
the old collection until the new one is complete, and one-line errors. Tiny random vectors, no model."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("pymilvus", reason="the Milvus backend needs pip install -e .[milvus]")
pytest.importorskip("milvus_lite", reason="the Milvus backend needs pip install -e .[milvus]")

from helpers.write_server import HashEmbedder  # noqa: E402
from notellm.cli import app  # noqa: E402
from notellm.cli.common import run_cli  # noqa: E402
from notellm.data.schema import empty_note, notes_to_table, write_notes  # noqa: E402
from notellm.inference.embed import write_embeddings  # noqa: E402
from notellm.inference.store import MilvusStore, build_milvus  # noqa: E402

DIM, N = 8, 40
CATEGORIES = [["美食", "火锅"], ["穿搭"], ["美食"], []]


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Embeddings of N notes (n0..), a Note table of all but the last two, both backends built from them."""
    root = tmp_path_factory.mktemp("milvus_cli")
    ids = [f"n{i}" for i in range(N)]
    write_embeddings(ids, unit(np.random.default_rng(0).standard_normal((N, DIM))),
                     {"model": "hash-embedder", "fingerprint": "abc123"}, root / "emb")
    rows = []
    for i, note_id in enumerate(ids[:-2]):
        row = empty_note(note_id)
        row.update(title=f"标题 {i}", content=f"内容 {i} 火锅" if i % 3 == 0 else f"内容 {i}",
                   category=CATEGORIES[i % len(CATEGORIES)])
        rows.append(row)
    write_notes(notes_to_table(rows), root / "notes.parquet")
    uri = str(root / "runs" / "notes.db")  # the folder does not exist yet: the build makes it
    for args in (["--out", str(root / "idx")], ["--backend", "milvus", "--milvus-uri", uri]):
        assert run_cli(app, ["index", "build", str(root / "emb"), "--notes", str(root / "notes.parquet"), *args]) == 0
    return root, uri


def recommend(capsys, *args) -> list[dict]:
    capsys.readouterr()
    assert run_cli(app, ["recommend", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def both(capsys, built, *args) -> tuple[list[dict], list[dict]]:
    root, uri = built
    return (recommend(capsys, "--index", str(root / "idx"), *args),
            recommend(capsys, "--backend", "milvus", "--milvus-uri", uri, *args))


def assert_same(faiss_rows: list[dict], milvus_rows: list[dict]) -> None:
    assert [r["note_id"] for r in milvus_rows] == [r["note_id"] for r in faiss_rows]
    np.testing.assert_allclose([r["score"] for r in milvus_rows], [r["score"] for r in faiss_rows], atol=2e-4)
    for key in ("rank", "title", "category"):
        assert [r[key] for r in milvus_rows] == [r[key] for r in faiss_rows]


@pytest.mark.parametrize("query", [["--note-id", "n3", "-k", "5"], ["--note-id", "n0", "-k", "7", "--category", "美食"],
                                   ["--note-id", "n39", "-k", "N"], ["--note-id", "n5", "-k", "6", "--category", "穿搭"]])
def test_recommend_gives_the_flat_index_neighbours(built, capsys, query):
    query = [str(N + 5) if q == "N" else q for q in query]  # -k past the collection: every other note
    faiss_rows, milvus_rows = both(capsys, built, *query)
    assert_same(faiss_rows, milvus_rows)
    k = int(query[query.index("-k") + 1])
    assert len(milvus_rows) == min(k, N - 1) and query[1] not in [r["note_id"] for r in milvus_rows]
    if "--category" in query:
        assert all(query[-1] in r["category"] for r in milvus_rows)
    scores = [r["score"] for r in milvus_rows]
    assert scores == sorted(scores, reverse=True)
    # the notes outside the Note table (n38, n39) have no title or category, on both backends
    assert all(r["title"] is None and r["category"] is None for r in milvus_rows if r["note_id"] in ("n38", "n39"))


def test_recommend_a_new_note_and_hybrid(built, capsys, monkeypatch):
    """--note-json with --model (a hash embedder stands in for the model) and --hybrid-notes (dense + BM25)."""
    import notellm.inference.embed as embed

    monkeypatch.setattr(embed, "load_embedder", lambda model, **_: HashEmbedder(DIM))
    note = json.dumps({"title": "新笔记", "content": "火锅"}, ensure_ascii=False)
    assert_same(*both(capsys, built, "--note-json", note, "--model", "hash", "-k", "5"))
    assert_same(*both(capsys, built, "--note-json", note, "--model", "hash", "-k", "4", "--category", "美食"))
    root, _ = built
    faiss_rows, milvus_rows = both(capsys, built, "--note-id", "n6", "-k", "5",
                                   "--hybrid-notes", str(root / "notes.parquet"), "--category", "美食")
    assert [r["note_id"] for r in milvus_rows] == [r["note_id"] for r in faiss_rows] and len(milvus_rows) == 5
    np.testing.assert_allclose([r["score"] for r in milvus_rows], [r["score"] for r in faiss_rows], atol=1e-6)


def test_index_info_on_milvus_keeps_the_embedding_metadata(built, capsys):
    root, uri = built
    store = MilvusStore.connect(uri)
    info = store.details()
    assert info["backend"] == "milvus" and info["count"] == N and info["dim"] == DIM and info["kind"] == "flat"
    assert info["embedding"]["fingerprint"] == "abc123" and info["embedding"]["model"] == "hash-embedder"
    assert info["embedding"]["embeddings"] == str(root / "emb") and info["notes_attached"] is True
    assert info["holds"].startswith("notes__b")  # `notes` is an alias of the build's own collection
    store.client.close()
    capsys.readouterr()
    assert run_cli(app, ["index", "info", "--backend", "milvus", "--milvus-uri", uri]) == 0
    shown = capsys.readouterr().err
    assert "abc123" in shown and "notes_attached" in shown and str(N) in shown


def test_builds_never_mix_and_replace_swaps_whole(tmp_path, capsys):
    uri = str(tmp_path / "m.db")
    rng = np.random.default_rng(1)
    first = build_milvus(["a", "b", "c"], rng.standard_normal((3, DIM)), {"model": "one"}, uri)
    old_physical = first.details()["holds"]
    capsys.readouterr()
    write_embeddings(["x", "y"], unit(rng.standard_normal((2, DIM))), {"model": "two"}, tmp_path / "emb2")
    args = ["index", "build", str(tmp_path / "emb2"), "--backend", "milvus", "--milvus-uri", uri]
    assert run_cli(app, args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already has a collection 'notes' (3 vectors)" in err and "--replace" in err
    assert sorted(MilvusStore.connect(uri).ids) == ["a", "b", "c"]  # untouched

    # a build that fails midway leaves the old collection answering, and nothing of its own behind
    def broken(*a, **k):
        raise RuntimeError("disk full")

    import notellm.inference.store as store_module

    real = store_module._point
    store_module._point = broken
    try:
        with pytest.raises(RuntimeError, match="disk full"):
            build_milvus(["x"], rng.standard_normal((1, DIM)), {"model": "two"}, uri, replace=True)
    finally:
        store_module._point = real
    after = MilvusStore.connect(uri)
    assert sorted(after.ids) == ["a", "b", "c"] and after.meta["model"] == "one"
    assert sorted(after.client.list_collections()) == [old_physical]

    assert run_cli(app, [*args, "--replace"]) == 0
    replaced = MilvusStore.connect(uri)
    assert sorted(replaced.ids) == ["x", "y"] and replaced.meta["model"] == "two" and not replaced.has_notes
    assert replaced.client.list_collections() == [replaced.details()["holds"]]  # the old build was dropped
    # another collection beside it is its own build
    assert run_cli(app, [*args, "--collection", "other"]) == 0
    assert sorted(MilvusStore.connect(uri, "other").ids) == ["x", "y"]


def test_replace_over_a_collection_the_server_created(tmp_path):
    """A plain collection (MilvusStore.open, as `serve --backend milvus` makes) is moved aside, then dropped."""
    uri = str(tmp_path / "m.db")
    rng = np.random.default_rng(2)
    served = MilvusStore.open(uri, DIM)
    served.upsert(["old"], rng.standard_normal((1, DIM)))
    with pytest.raises(Exception, match="already has a collection 'notes' \\(1 vectors\\)"):
        build_milvus(["p", "q"], rng.standard_normal((2, DIM)), {}, uri)
    store = build_milvus(["p", "q"], rng.standard_normal((2, DIM)), {}, uri, replace=True)
    assert sorted(store.ids) == ["p", "q"] and store.client.list_collections() == [store.details()["holds"]]
    # the server's store works over the built collection (an alias) as over its own
    reopened = MilvusStore.open(uri, DIM)
    reopened.upsert(["r"], rng.standard_normal((1, DIM)))
    assert len(reopened) == 3 and reopened.search(reopened.vector_of("r"), 1)[0] == [["r"]]


@pytest.mark.parametrize("args, expected", [
    (["--milvus-uri", "runs/notes.txt"], "give a milvus-lite file ending in .db"),
    (["--milvus-uri", "http://127.0.0.1:1"], "cannot open Milvus at http://127.0.0.1:1"),
    (["--milvus-uri", "MISSING"], "no such milvus-lite file"),
    (["--milvus-uri", "DB", "--collection", "nope"], "no collection 'nope'"),
    ([], "--backend milvus needs --milvus-uri"),
    (["--milvus-uri", "DB", "--index", "idx"], "--index is for --backend faiss"),
    (["--milvus-uri", "DB", "--note-id", "zzz"], "note id 'zzz' is not in the store"),
])
def test_milvus_errors_are_one_line_exit_2(built, capsys, args, expected):
    root, uri = built
    args = [uri if a == "DB" else str(root / "missing.db") if a == "MISSING" else a for a in args]
    if "--note-id" not in args:
        args += ["--note-id", "n1"]
    capsys.readouterr()
    assert run_cli(app, ["recommend", "--backend", "milvus", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err, err


@pytest.mark.parametrize("args, expected", [
    (["--backend", "milvus"], "--backend milvus needs --milvus-uri"),
    (["--backend", "milvus", "--milvus-uri", "x.db", "--kind", "hnsw"], "the Milvus collection is FLAT"),
    (["--backend", "milvus", "--milvus-uri", "x.db", "--collection", "bad-name"], "Milvus names are"),
    (["--out", "o", "--milvus-uri", "x.db"], "--milvus-uri is for --backend milvus"),
    ([], "--backend faiss needs --out"),
])
def test_build_flag_errors_are_one_line_exit_2(built, capsys, tmp_path, monkeypatch, args, expected):
    root, _ = built
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert run_cli(app, ["index", "build", str(root / "emb"), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err, err
    assert not (tmp_path / "x.db").exists()


def test_writes_into_a_collection_built_with_notes_keep_their_labels(tmp_path):
    """The server's writes (upsert with labels) land in the build's title/category fields; a write without
    labels is a note outside the Note table (no title, as at build time); `notes` is what the server shows."""
    rng = np.random.default_rng(3)
    rows = [dict(empty_note(i), title=f"t{i}", category=["美食"]) for i in ("a", "b")]
    store = build_milvus(["a", "b", "c"], rng.standard_normal((3, DIM)), {"model": "m"}, str(tmp_path / "m.db"),
                         notes=notes_to_table(rows))
    assert store.notes.to_pylist() == [{"note_id": "a", "title": "ta", "category": ["美食"]},
                                       {"note_id": "b", "title": "tb", "category": ["美食"]}]
    store.upsert(["w", "a"], unit(rng.standard_normal((2, DIM))), labels=[("写的", ["旅行", "极光"]), ("新a", [])])
    store.upsert(["u"], unit(rng.standard_normal((1, DIM))))
    store.upsert(["w"], store.vector_of("w")[None, :], labels=[("写的", ["旅行", "极光"])])  # a replay: no change
    assert len(store) == 5
    assert store.labels(["a", "b", "c", "w", "u"]) == {"a": ("新a", []), "b": ("tb", ["美食"]),
                                                      "w": ("写的", ["旅行", "极光"])}
    assert [i for i, _ in store.neighbours_of_vector(store.vector_of("w"), k=5, category="旅行")] == ["w"]
    reopened = MilvusStore.connect(str(tmp_path / "m.db"))
    assert sorted(r["note_id"] for r in reopened.notes.to_pylist()) == ["a", "b", "w"]
    with pytest.raises(Exception, match="2 ids but 2 vectors, 1 labels"):
        store.upsert(["x", "y"], rng.standard_normal((2, DIM)), labels=[("x", [])])
