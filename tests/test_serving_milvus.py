"""`notellm serve --backend milvus` on a collection built by `notellm index build --backend milvus`, without
--index: dimension, embedding metadata, titles and categories come from the collection, and the answers are the
flat FAISS index's on the same embeddings. Refusals are one line, exit 2. (milvus-lite; the tiny 16-dim model.)"""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

pytest.importorskip("pymilvus", reason="the Milvus backend needs pip install -e .[milvus]")
pytest.importorskip("milvus_lite", reason="the Milvus backend needs pip install -e .[milvus]")

from notellm.cli import app  # noqa: E402
from notellm.cli.common import run_cli  # noqa: E402
from notellm.data.schema import write_notes  # noqa: E402
from notellm.inference.embed import write_embeddings  # noqa: E402
from notellm.inference.store import MilvusStore, build_milvus  # noqa: E402
from notellm.serving.app import create_app, create_app_from_paths  # noqa: E402
from test_serving import world  # noqa: E402,F401  (the shared module fixture)

NEW = {"title": "冰岛极光之旅", "content": "第一次看到极光，绿色的光在天上跳舞", "hashtags": ["极光"]}


@pytest.fixture(scope="module")
def built(world, tmp_path_factory):  # noqa: F811
    """The toy notes' embeddings and Note table, and the collection the CLI builds from them (with notes)."""
    root = tmp_path_factory.mktemp("milvus_serve")
    write_embeddings(world["index"].ids, world["vectors"], world["embedder"].meta, root / "emb")
    write_notes(world["table"], root / "notes.parquet")
    uri = str(root / "notes.db")
    assert run_cli(app, ["index", "build", str(root / "emb"), "--backend", "milvus", "--milvus-uri", uri,
                         "--notes", str(root / "notes.parquet")]) == 0
    return root, uri


def serve_app(monkeypatch, *args: str):
    """`notellm serve ARGS` up to uvicorn: (exit code, the app it would have served)."""
    import uvicorn

    served = []
    monkeypatch.setattr(uvicorn, "run", lambda web, **_: served.append(web))
    code = run_cli(app, ["serve", *args])
    return code, (served[0] if served else None)


def assert_same_answers(milvus_client, faiss_client, ids, k=8) -> None:
    for note_id in ids:
        got = milvus_client.get(f"/notes/{note_id}/similar", params={"k": k}).json()
        want = faiss_client.get(f"/notes/{note_id}/similar", params={"k": k}).json()
        assert_same_results(got, want)
        assert got["title"] == want["title"] and got["title"]  # the query note's title, from the collection


def assert_same_results(got: dict, want: dict) -> None:
    assert [r["note_id"] for r in got["results"]] == [r["note_id"] for r in want["results"]]
    np.testing.assert_allclose([r["score"] for r in got["results"]], [r["score"] for r in want["results"]],
                               atol=1e-5)
    for key in ("rank", "title", "category"):
        assert [r[key] for r in got["results"]] == [r[key] for r in want["results"]]


def test_serve_a_built_collection_without_index(built, world, monkeypatch):  # noqa: F811
    root, uri = built
    code, web = serve_app(monkeypatch, "--model", str(world["root"] / "model"), "--backend", "milvus",
                          "--milvus-uri", uri)
    assert code == 0
    faiss_app = create_app(index=world["index"], embedder=world["embedder"])  # the flat index, its notes attached
    with TestClient(web) as c, TestClient(faiss_app) as f:
        health = c.get("/health").json()
        assert health["index"] == {"backend": "milvus", "count": 32, "dim": 16, "model": "model"}
        assert health["components"]["titles"] is True and health["notes"] == 32
        assert_same_answers(c, f, world["index"].ids)
        assert_same_results(c.get("/notes/0-0-0/similar", params={"k": 40}).json(),
                            f.get("/notes/0-0-0/similar", params={"k": 40}).json())  # k past the collection
        body = {"note": NEW, "k": 6}  # a new note: embedded by the served model, searched in the collection
        assert_same_results(c.post("/similar", json=body).json(), f.post("/similar", json=body).json())
        assert c.get("/notes/nope/similar").status_code == 404


def test_serve_milvus_with_index_still_fills_the_collection(world, tmp_path):  # noqa: F811
    world["index"].save(tmp_path / "index")
    uri = str(tmp_path / "filled.db")
    kw = dict(index=str(tmp_path / "index"), backend="milvus", milvus_uri=uri, collection="served")
    with TestClient(create_app_from_paths(**kw)) as c, TestClient(create_app(index=world["index"])) as f:
        assert c.get("/health").json()["index"]["count"] == 32
        assert_same_answers(c, f, world["index"].ids[:6])
    store = MilvusStore.connect(uri, "served")
    assert len(store) == 32 and sorted(store.ids) == sorted(world["index"].ids)
    store.upsert(["extra"], world["vectors"][:1])  # a second start reopens it as it is: no refill
    with TestClient(create_app_from_paths(**kw)) as c:
        assert c.get("/health").json()["index"]["count"] == 33
    store.client.close()


@pytest.mark.parametrize("args, expected", [
    (["--milvus-uri", "SMALL"], "the model makes vectors of dimension 16 but the index holds dimension 8"),
    (["--milvus-uri", "SMALL", "--index", "INDEX"], "holds dimension 8, not 16"),
    (["--milvus-uri", "DB", "--collection", "nope"], "no collection 'nope'"),
    (["--milvus-uri", "MISSING"], "no such milvus-lite file"),
    ([], "--backend milvus needs --milvus-uri"),
])
def test_serve_milvus_refusals_are_one_line_exit_2(built, world, tmp_path, monkeypatch, capsys,  # noqa: F811
                                                   args, expected):
    root, uri = built
    small = str(tmp_path / "small.db")  # a collection of 8-dim vectors: not the 16-dim model's
    if "SMALL" in args:
        build_milvus(["a", "b"], np.eye(2, 8, dtype=np.float32), {"model": "other"}, small).client.close()
    if "INDEX" in args:
        world["index"].save(tmp_path / "index")
    names = {"SMALL": small, "DB": uri, "MISSING": str(tmp_path / "missing.db"), "INDEX": str(tmp_path / "index")}
    capsys.readouterr()
    code, web = serve_app(monkeypatch, "--model", str(world["root"] / "model"), "--backend", "milvus",
                          *[names.get(a, a) for a in args])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]  # (the model loader's progress bar)
    assert code == 2 and web is None and len(errors) == 1 and expected in errors[0] and "Traceback" not in err, err


def test_serve_faiss_needs_index(monkeypatch, capsys):
    capsys.readouterr()
    code, web = serve_app(monkeypatch, "--model", "m")
    err = capsys.readouterr().err
    assert code == 2 and web is None and err.count("\n") == 1 and "--backend faiss needs --index" in err
