"""The vector-store suite, run on both backends: FAISS files (flat and HNSW with tombstones) and Milvus
(milvus-lite in-process; skipped without `pip install -e .[milvus]`). Exact search must agree with brute force."""

import numpy as np
import pytest

from notellm.errors import DataError
from notellm.inference.index import build_index, load_index
from notellm.inference.store import FaissStore, MilvusStore

DIM, N = 8, 60


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return [f"n{i}" for i in range(N)], unit(rng.standard_normal((N, DIM))), unit(rng.standard_normal((5, DIM)))


@pytest.fixture(params=["faiss-flat", "faiss-hnsw", "milvus"])
def store(request, data, tmp_path):
    ids, x, _ = data
    if request.param == "milvus":
        pytest.importorskip("pymilvus", reason="the Milvus backend needs pip install -e .[milvus]")
        pytest.importorskip("milvus_lite", reason="the Milvus backend needs pip install -e .[milvus]")
        s = MilvusStore.from_index(build_index(ids, x, {"model": "m"}), str(tmp_path / "notes.db"))
        yield s
        s.client.close()
    else:
        yield FaissStore(build_index(ids, x, {"model": "m"}, kind=request.param.split("-")[1]))


def brute(live: dict[str, np.ndarray], queries: np.ndarray, k: int):
    ids = list(live)
    scores = queries @ np.stack([live[i] for i in ids]).T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return [[ids[j] for j in row] for row in order], np.take_along_axis(scores, order, axis=1)


def check_exact(store, live, queries, k=7):
    got_ids, got_scores = store.search(queries, k)
    want_ids, want_scores = brute(live, queries, k)
    assert got_ids == want_ids
    np.testing.assert_allclose(got_scores, want_scores, atol=1e-5)
    assert len(store) == len(live)


def test_search_is_exact_cosine(store, data):
    ids, x, queries = data
    check_exact(store, dict(zip(ids, x)), queries)
    np.testing.assert_allclose(store.vector_of("n3"), x[3], atol=1e-6)
    assert "n3" in store and "nope" not in store


def test_upserts_and_deletes_are_searched_at_once(store, data):
    ids, x, queries = data
    live = dict(zip(ids, x))
    rng = np.random.default_rng(1)
    new = unit(rng.standard_normal((4, DIM)))
    store.upsert(["a", "b", "n5", "n6"], new)            # two new notes, two replaced base notes
    live.update(zip(["a", "b", "n5", "n6"], new))
    assert store.delete(["n7", "b", "missing"]) == 2      # a base note (tombstone) and a written one
    del live["n7"], live["b"]
    store.upsert(["a"], queries[:1])                      # a written note replaced again
    live["a"] = queries[0]
    check_exact(store, live, queries, k=10)
    top_ids, top_scores = store.search(queries[:1], 1)
    assert top_ids == [["a"]] and top_scores[0, 0] == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(DataError, match="not in the store"):
        store.vector_of("n7")
    with pytest.raises(DataError, match="dimension"):
        store.upsert(["c"], np.ones((1, DIM + 1)))


def test_compaction_keeps_the_answers(store, data):
    ids, x, queries = data
    live = dict(zip(ids, x))
    store.upsert(["z"], queries[2:3])
    store.delete(["n0", "n1"])
    live["z"] = queries[2]
    del live["n0"], live["n1"]
    store.compact()
    check_exact(store, live, queries)
    if isinstance(store, FaissStore):  # folded into a new base index of the same kind
        assert store.info()["tombstones"] == 0 and store.info()["pending_writes"] == 0
        assert len(store.base) == N - 1 and store.base.config.kind == store.config.kind


def test_both_backends_agree(data, tmp_path):
    pytest.importorskip("milvus_lite", reason="the Milvus backend needs pip install -e .[milvus]")
    ids, x, queries = data
    index = build_index(ids, x, {"model": "m"})
    faiss_store, milvus = FaissStore(index), MilvusStore.from_index(index, str(tmp_path / "m.db"))
    for s in (faiss_store, milvus):
        s.upsert(["q"], queries[3:4])
        s.delete(["n9"])
    (fi, fs), (mi, ms) = faiss_store.search(queries, 12), milvus.search(queries, 12)
    assert fi == mi
    np.testing.assert_allclose(fs, ms, atol=1e-5)
    milvus.client.close()


def test_compact_writes_folds_the_log_into_the_index_folder(data, tmp_path):
    from notellm.serving.compaction import compact_index
    from notellm.serving.writes import WriteLog, encode_vector

    ids, x, queries = data
    build_index(ids, x, {"model": "m"}, kind="hnsw").save(tmp_path / "index")
    log = WriteLog(tmp_path / "w.log")
    log.append([{"op": "put", "id": "new", "vector": encode_vector(queries[0]), "title": "新", "category": ["c"]},
                {"op": "delete", "id": "n2"}])
    log.close()
    assert compact_index(tmp_path / "index", tmp_path / "w.log") == {"replayed": 2, "count": N}
    index = load_index(tmp_path / "index")
    assert index.config.kind == "hnsw" and len(index) == N and "n2" not in index.row
    assert index.titles()["new"] == "新" and (tmp_path / "w.log").read_bytes() == b""
    np.testing.assert_allclose(index.vector_of("new"), queries[0], atol=1e-6)


def test_compact_writes_flushes_the_log_into_milvus_and_empties_it(data, tmp_path):
    """A Milvus server's log is folded into its collection too; compacting the same log twice (a kill between
    the flush and the truncate) ends in the same state."""
    pytest.importorskip("milvus_lite", reason="the Milvus backend needs pip install -e .[milvus]")
    from notellm.serving.compaction import compact_milvus
    from notellm.serving.writes import WriteLog, encode_vector

    ids, x, queries = data
    uri = str(tmp_path / "m.db")
    MilvusStore.from_index(build_index(ids, x, {"model": "m"}), uri).client.close()
    records = [{"op": "put", "id": "new", "vector": encode_vector(queries[0])},
               {"op": "put", "id": "n5", "vector": encode_vector(queries[1])}, {"op": "delete", "id": "n2"}]
    for _ in range(2):
        log = WriteLog(tmp_path / "w.log")
        log.append(records)
        log.close()
        assert compact_milvus(uri, "notes", tmp_path / "w.log") == {"replayed": 3, "count": N}
        assert (tmp_path / "w.log").read_bytes() == b""
    store = MilvusStore.connect(uri)
    live = {**dict(zip(ids, x)), "new": queries[0], "n5": queries[1]}
    live.pop("n2")
    check_exact(store, live, queries)
    store.client.close()


def test_the_server_writes_and_reads_through_milvus_as_through_faiss(data, tmp_path):
    """Same app, same writes, both backends: the same answers; a restart replays the log into Milvus too."""
    pytest.importorskip("milvus_lite", reason="the Milvus backend needs pip install -e .[milvus]")
    from fastapi.testclient import TestClient

    from helpers.write_server import HashEmbedder
    from notellm.serving.app import create_app

    ids, x, _ = data
    index = build_index(ids, x, {"model": "hash-embedder", "dim": DIM})
    auth = {"Authorization": "Bearer t"}
    new = {"note_id": "fresh", "title": "新笔记", "content": "刚发布"}

    def session(store, log):
        with TestClient(create_app(index=store, embedder=HashEmbedder(DIM), write_log=log, api_key="t")) as c:
            assert c.post("/notes", json={"notes": [new]}, headers=auth).status_code == 201
            assert c.delete("/notes/n4", headers=auth).status_code == 200
            return (c.post("/similar", json={"note": {"title": new["title"], "content": new["content"]}, "k": 8}).json(),
                    c.get("/notes/n10/similar", params={"k": 8}).json())

    via_faiss = session(FaissStore(index), tmp_path / "f.log")
    milvus = MilvusStore.from_index(index, str(tmp_path / "m.db"))
    via_milvus = session(milvus, tmp_path / "m.log")
    for a, b in zip(via_faiss, via_milvus):
        assert [r["note_id"] for r in a["results"]] == [r["note_id"] for r in b["results"]]
        np.testing.assert_allclose([r["score"] for r in a["results"]], [r["score"] for r in b["results"]], atol=1e-5)
    assert via_milvus[0]["results"][0]["note_id"] == "fresh"
    assert all("n4" not in [r["note_id"] for r in answer["results"]] for answer in via_milvus)
    with TestClient(create_app(index=milvus, write_log=tmp_path / "m.log")) as c:  # replay over Milvus: no change
        assert c.get("/health").json()["index"]["count"] == N and c.get("/notes/fresh/similar").status_code == 200
    milvus.client.close()
