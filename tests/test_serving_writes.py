"""Live note writes (issue 18): visible to the next request, durable across kill -9, behind a token. The
behaviour tests run on both vector stores: the FAISS index with writes beside it, and a Milvus collection
built by `notellm index build --backend milvus` (milvus-lite; skipped without `pip install -e .[milvus]`).
The kill -9 test kills a real server process on each store (Milvus: a milvus-lite file the restart reopens)."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from notellm.serving.app import create_app
from test_serving import world  # noqa: F401  (the shared module fixture)

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
NEW = {"note_id": "new-1", "title": "冰岛极光之旅", "content": "第一次看到极光，绿色的光在天上跳舞，太震撼了",
       "hashtags": ["极光", "冰岛"], "category": ["旅行", "极光"]}


def make_app(world, log, **kw):  # noqa: F811
    return create_app(index=world["index"], embedder=world["embedder"], notes=world["table"], write_log=log,
                      api_key=TOKEN, **kw)


@pytest.fixture(params=["faiss", "milvus"])
def served(request, world, tmp_path):  # noqa: F811
    """make(log) -> a write-enabled app over the 32 toy notes. faiss: the index with its notes table. milvus:
    one collection built with notes, served as `serve --backend milvus` does without --index (titles from the
    collection); each make() reconnects to it, as a restarted server does, so writes persist between apps."""
    if request.param == "faiss":
        yield lambda log, **kw: make_app(world, log, **kw)
        return
    pytest.importorskip("pymilvus", reason="the Milvus backend needs pip install -e .[milvus]")
    pytest.importorskip("milvus_lite", reason="the Milvus backend needs pip install -e .[milvus]")
    from notellm.inference.store import MilvusStore, build_milvus

    uri = str(tmp_path / "notes.db")
    build_milvus(world["index"].ids, world["vectors"], world["embedder"].meta, uri,
                 notes=world["table"]).client.close()
    stores = []

    def make(log, **kw):
        stores.append(MilvusStore.connect(uri))
        return create_app(index=stores[-1], embedder=world["embedder"], write_log=log, api_key=TOKEN, **kw)

    make.uri = uri
    yield make
    for store in stores:
        store.client.close()


def similar(client, note, k=3):
    body = {"note": {f: note[f] for f in ("title", "content", "hashtags")}, "k": k}
    return client.post("/similar", json=body).json()["results"]


def test_a_written_note_is_recommendable_by_the_next_request(served, tmp_path):
    with TestClient(served(tmp_path / "w.log")) as c:
        response = c.post("/notes", json={"notes": [NEW]}, headers=AUTH)
        assert response.status_code == 201
        assert response.json() == {"written": [{"note_id": "new-1", "created": True}], "count": 33}
        top = similar(c, NEW)[0]
        assert top["note_id"] == "new-1" and top["score"] == pytest.approx(1.0, abs=1e-5)
        assert top["title"] == NEW["title"] and top["category"] == ["旅行", "极光"]
        # and it has neighbours of its own; a note without an id gets one
        assert len(c.get("/notes/new-1/similar", params={"k": 4}).json()["results"]) == 4
        anon = c.post("/notes", json={"notes": [{"title": "无名笔记", "content": "随便写写"}]}, headers=AUTH).json()
        assert len(anon["written"][0]["note_id"]) == 24 and anon["count"] == 34
        assert c.get("/health").json()["index"]["count"] == 34


def test_update_moves_the_note_and_delete_removes_it(served, world, tmp_path):  # noqa: F811
    base = world["rows"][5]
    with TestClient(served(tmp_path / "w.log")) as c:
        c.post("/notes", json={"notes": [NEW]}, headers=AUTH)
        # replace new-1's text with a base note's text: it now sits on top of that note
        update = {"note": {k: base[k] for k in ("title", "content", "hashtags")}, "category": base["category"]}
        assert c.put("/notes/new-1", json=update, headers=AUTH).status_code == 200
        ids = [r["note_id"] for r in similar(c, base, k=2)]
        assert set(ids) == {base["note_id"], "new-1"}
        assert "new-1" not in [r["note_id"] for r in similar(c, NEW, k=34)[:1]]
        # delete the written note and a base note (a tombstone in the built index)
        assert c.delete("/notes/new-1", headers=AUTH).json() == {"deleted": "new-1", "count": 32}
        assert c.delete(f"/notes/{base['note_id']}", headers=AUTH).json()["count"] == 31
        everything = [r["note_id"] for r in similar(c, base, k=100)]
        assert len(everything) == 31 and "new-1" not in everything and base["note_id"] not in everything
        assert c.get(f"/notes/{base['note_id']}/similar").status_code == 404
        assert c.delete("/notes/new-1", headers=AUTH).status_code == 404
        assert c.put("/notes/never-was", json=update, headers=AUTH).status_code == 404


def test_a_restart_restores_exactly_the_acknowledged_state(served, world, tmp_path):  # noqa: F811
    log = tmp_path / "w.log"
    with TestClient(served(log)) as c:
        c.post("/notes", json={"notes": [NEW, {**NEW, "note_id": "new-2", "title": "另一篇"}]}, headers=AUTH)
        c.delete("/notes/new-2", headers=AUTH)
        c.delete("/notes/0-0-0", headers=AUTH)
        before = similar(c, NEW, k=40)
    assert [r["note_id"] for r in before][:1] == ["new-1"] and before[0]["title"] == NEW["title"]
    with open(log, "ab") as f:  # what a kill in the middle of an append leaves: a torn, unacknowledged line
        f.write(b'{"op":"put","id":"torn","vec')
    # Milvus already holds these writes: replaying them (upserts, deletes of absent notes) duplicates nothing
    with TestClient(served(log)) as c:
        health = c.get("/health").json()
        assert health["writes"]["replayed_at_start"] == 4 and health["index"]["count"] == 32
        assert similar(c, NEW, k=40) == before
    assert log.read_bytes().endswith(b"\n") and b"torn" not in log.read_bytes()
    if not hasattr(served, "uri"):
        return
    from notellm.inference.store import build_milvus

    # the collection keeps writes (and the written titles) itself: a server with a fresh log answers the same
    with TestClient(served(tmp_path / "fresh.log")) as c:
        assert c.get("/health").json()["index"]["count"] == 32 and similar(c, NEW, k=40) == before
    # a collection that lost the writes (rebuilt from the embeddings): the log's replay restores them
    build_milvus(world["index"].ids, world["vectors"], world["embedder"].meta, served.uri, notes=world["table"],
                 replace=True).client.close()
    with TestClient(served(log)) as c:
        assert c.get("/health").json()["index"]["count"] == 32 and similar(c, NEW, k=40) == before


def test_write_endpoints_refuse_without_the_token(world, tmp_path):  # noqa: F811
    with TestClient(make_app(world, tmp_path / "w.log")) as c:
        missing = c.post("/notes", json={"notes": [NEW]})
        assert missing.status_code == 401 and "Authorization: Bearer" in missing.json()["detail"]
        assert missing.headers["www-authenticate"] == "Bearer"
        wrong = c.delete("/notes/0-0-0", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 403 and "not valid" in wrong.json()["detail"]
        assert c.put("/notes/0-0-0", json={"note": {"title": "x"}}, headers={"X-API-Key": "nope"}).status_code == 403
        assert c.get("/notes/0-0-0/similar").status_code == 200  # reads stay open, and nothing was written
        assert c.get("/health").json()["index"]["count"] == 32
    with TestClient(make_app(world, tmp_path / "w2.log", protect_reads=True)) as c:
        assert c.get("/health").status_code == 401
        assert c.get("/health", headers=AUTH).status_code == 200
    with TestClient(create_app(index=world["index"], embedder=world["embedder"])) as c:
        off = c.post("/notes", json={"notes": [NEW]})
        assert off.status_code == 503 and "--write-log" in off.json()["detail"]


def test_model_endpoints_are_rate_limited_per_client(world, tmp_path):  # noqa: F811
    with TestClient(make_app(world, tmp_path / "w.log", rate_limit=0.5, rate_burst=2)) as c:
        codes = [c.post("/similar", json={"note": {"title": "火锅"}}).status_code for _ in range(3)]
        assert codes == [200, 200, 429]
        refused = c.post("/similar", json={"note": {"title": "火锅"}})
        assert int(refused.headers["retry-after"]) >= 1 and "per second per client" in refused.json()["detail"]
        made_up = {"Authorization": "Bearer made-up"}  # an invalid token is no new identity: still this address
        assert c.post("/similar", json={"note": {"title": "火锅"}}, headers=made_up).status_code == 429
        assert c.post("/similar", json={"note": {"title": "火锅"}}, headers=AUTH).status_code == 200  # another client
        assert c.get("/notes/0-0-0/similar").status_code == 200  # index reads are not limited


def test_serve_refuses_network_writes_without_a_token(monkeypatch):
    from notellm.cli import app

    monkeypatch.delenv("NOTELLM_API_KEY", raising=False)
    result = CliRunner().invoke(app, ["serve", "--model", "m", "--index", "i", "--host", "0.0.0.0",
                                      "--write-log", "w.log"])
    assert result.exit_code != 0 and "without a token" in str(result.exception)


# ---- a real server process, killed -----------------------------------------------------------------------
def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(log: Path, port: int, milvus_uri: Path | None = None) -> subprocess.Popen:
    """tests/helpers/write_server.py: the real app on uvicorn, 200 notes, a hash embedder (no torch: fast)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"),
                                                         os.environ.get("PYTHONPATH", "")])}
    script = Path(__file__).parent / "helpers" / "write_server.py"
    process = subprocess.Popen([sys.executable, str(script), "--port", str(port), "--write-log", str(log),
                                "--token", TOKEN, *(["--milvus-uri", str(milvus_uri)] if milvus_uri else [])],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"server exited: {process.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    pytest.fail("server did not start")


@pytest.mark.parametrize("backend", ["faiss", "milvus"])
def test_acknowledged_writes_survive_kill_9_of_the_server(tmp_path, backend):
    if backend == "milvus":
        pytest.importorskip("milvus_lite", reason="the Milvus backend needs pip install -e .[milvus]")
    log, port = tmp_path / "writes.log", free_port()
    milvus_uri = tmp_path / "notes.db" if backend == "milvus" else None
    server = start_server(log, port, milvus_uri)
    acked, stop = [], threading.Event()

    def writer(worker: int) -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=AUTH, timeout=10) as client:
            n = 0
            while not stop.is_set():
                note_id = f"w{worker}-{n}"
                try:
                    r = client.post("/notes", json={"notes": [{"note_id": note_id, "title": f"笔记{note_id}"}]})
                except httpx.HTTPError:
                    return  # the server died under us: this write was never acknowledged
                if r.status_code == 201:
                    acked.append(note_id)
                n += 1

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while len(acked) < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(server.pid, signal.SIGKILL)  # mid-write: requests are in flight
    server.wait()
    stop.set()
    for t in threads:
        t.join()
    assert len(acked) >= 20

    server = start_server(log, port, milvus_uri)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            count = client.get("/health").json()["index"]["count"]
            lost = [i for i in acked if client.get(f"/notes/{i}/similar", params={"k": 1}).status_code != 200]
    finally:
        server.kill()
        server.wait()
    assert lost == []
    # every acknowledged write exactly once; at most the in-flight unacknowledged ones besides
    assert 200 + len(acked) <= count <= 200 + len(acked) + len(threads)
