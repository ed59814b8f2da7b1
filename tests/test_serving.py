"""The HTTP API with a tiny random NoteLLM, a real index, the k-NN tagger and a Ridge popularity model."""

import asyncio
import threading

import numpy as np
import pytest
from fastapi.testclient import TestClient

from helpers.toy import toy_notes
from notellm.data.schema import notes_to_table, write_notes
from notellm.errors import NotellmError
from notellm.inference.embed import Embedder
from notellm.inference.generate import GenerationSettings, KnnTagger, NoteGenerator, category_paths
from notellm.inference.index import build_index
from notellm.serving.app import create_app, create_app_from_paths
from notellm.serving.batching import MicroBatcher
from notellm.serving.schemas import ServingLimits


class RidgePopularity:
    """A real popularity model fitted here: Ridge on (title chars, content chars, hashtag count)."""

    def __init__(self):
        from sklearn.linear_model import Ridge

        rng = np.random.default_rng(0)
        x = rng.integers(0, 60, size=(200, 3)).astype(float)
        y = 1.0 + 0.1 * x[:, 0] + 0.02 * x[:, 1] + 0.5 * x[:, 2]  # the rule the model must learn
        self.model = Ridge(alpha=1e-6).fit(x, y)

    @staticmethod
    def features(notes):
        return np.array([[len(n["title"]), len(n["content"]), len(n["hashtags"])] for n in notes], dtype=float)

    def predict(self, notes):
        return self.model.predict(self.features(notes))

    def describe(self):
        return {"target": {"name": "toy score"}, "model": "ridge"}


_BUILT: dict = {}  # one world per session, also for tests/test_browser.py (which imports this fixture)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A saved tiny NoteLLM (dim 16), its embeddings of the 32 toy notes, a flat index with titles."""
    if "world" not in _BUILT:
        _BUILT["world"] = build_world(tmp_path_factory.mktemp("serving"))
    return _BUILT["world"]


def build_world(root):
    from notellm.models.notellm import NoteLLMConfig, build_notellm

    build_notellm(NoteLLMConfig(backbone="tiny-qwen3", dim=16)).save(root / "model")
    embedder = Embedder(str(root / "model"), bf16=False)
    rows = toy_notes()
    table = notes_to_table([dict(r) for r in rows])
    vectors = embedder.encode(rows)
    index = build_index([r["note_id"] for r in rows], vectors, embedder.meta, notes=table)
    return {"root": root, "embedder": embedder, "rows": rows, "table": table, "vectors": vectors, "index": index}


@pytest.fixture(scope="module")
def client(world):
    app = create_app(index=world["index"], embedder=world["embedder"], notes=world["table"],
                     tagger=KnnTagger(world["rows"], k=10, n_tags=3), popularity=RidgePopularity())
    with TestClient(app) as c:
        yield c


def note_body(row):
    return {"title": row["title"], "content": row["content"], "hashtags": row["hashtags"]}


def errors_at(response):
    return [tuple(e["loc"]) for e in response.json()["detail"]]


# ---- the endpoints ---------------------------------------------------------------------------------------
def test_health_names_model_index_and_components(client, world):
    body = client.get("/health").json()
    assert body["model"] == "model"  # the folder's name: /health never shows server paths
    assert body["index"] == {"backend": "faiss", "count": 32, "dim": 16, "kind": "flat", "model": "model",
                             "pending_writes": 0, "tombstones": 0}
    assert str(world["root"]) not in str(body)
    assert body["notes"] == 32
    comp = body["components"]
    assert comp["embedder"] and comp["index"] and comp["titles"]
    assert comp["tagger"]["class"] == "KnnTagger" and comp["popularity"]["class"] == "RidgePopularity"
    assert body["limits"]["max_k"] == 100


def test_similar_of_indexed_note_is_brute_force_cosine_without_itself(client, world):
    vectors, ids = world["vectors"], [r["note_id"] for r in world["rows"]]
    query = ids.index("1-2-0")
    cosine = vectors @ vectors[query]
    cosine[query] = -np.inf
    expected = [ids[i] for i in np.argsort(-cosine, kind="stable")[:5]]

    body = client.get("/notes/1-2-0/similar", params={"k": 5}).json()
    got = [r["note_id"] for r in body["results"]]
    assert got == expected and "1-2-0" not in got
    assert [r["rank"] for r in body["results"]] == [1, 2, 3, 4, 5]
    np.testing.assert_allclose([r["score"] for r in body["results"]], np.sort(cosine)[::-1][:5], atol=1e-5)
    by_id = {r["note_id"]: r for r in world["rows"]}
    assert [r["title"] for r in body["results"]] == [by_id[i]["title"] for i in expected]
    assert [r["category"] for r in body["results"]] == [by_id[i]["category"] for i in expected]
    assert body["note_id"] == "1-2-0" and body["title"] == "雪山分享0"


def test_similar_of_a_new_note_finds_the_note_with_the_same_text(client, world):
    row = world["rows"][9]
    body = client.post("/similar", json={"note": note_body(row), "k": 3}).json()
    assert body["note_id"] is None and body["k"] == 3 and len(body["results"]) == 3
    top = body["results"][0]
    assert top["note_id"] == row["note_id"] and top["score"] == pytest.approx(1.0, abs=1e-5)
    assert top["title"] == row["title"] and top["category"] == row["category"]


def test_embed_returns_the_models_unit_vectors_in_order(client, world):
    rows = world["rows"][:3]
    body = client.post("/embed", json={"notes": [note_body(r) for r in rows]}).json()
    vectors = np.array(body["vectors"])
    assert body["dim"] == 16 and vectors.shape == (3, 16) and body["model"] == "model"
    np.testing.assert_allclose(vectors, world["vectors"][:3], atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_tags_are_the_votes_of_the_nearest_notes(client):
    # the two 火锅 notes share this content: their tags (美食/探店 + 火锅) and category (美食, 火锅) win the vote;
    # 美食 and 探店 are each on 4 of the 8 food notes, 火锅 on 2 but with the highest similarity
    body = client.post("/tags", json={"note": {"title": "火锅分享", "content": "今天吃到一家超好吃的火锅，味道绝了"}}).json()
    assert body["category"] == ["美食", "火锅"]
    assert sorted(body["hashtags"]) == sorted(["美食", "探店", "火锅"])
    assert body["tagger"] == "KnnTagger"


def test_popularity_is_the_fitted_models_prediction(client):
    # title 5 chars, content 20 chars, 2 hashtags: 1 + 0.1*5 + 0.02*20 + 0.5*2 = 2.9
    note = {"title": "周末去哪儿", "content": "一" * 20, "hashtags": ["#咖啡#", "杭州[话题]"]}
    body = client.post("/popularity", json={"note": note}).json()
    assert body["score"] == pytest.approx(2.9, abs=1e-4)
    assert body["target"] == {"name": "toy score"} and body["model"] == "ridge"


def test_note_ids_with_slashes_work(world):
    index = build_index(["a/b", "c"], world["vectors"][:2], world["embedder"].meta)
    with TestClient(create_app(index=index)) as c:
        body = c.get("/notes/a/b/similar", params={"k": 1}).json()
    assert [r["note_id"] for r in body["results"]] == ["c"] and body["results"][0]["title"] is None


def test_generator_with_the_served_model_answers_a_known_category(world):
    categories = category_paths(world["rows"], 2)
    generator = NoteGenerator(world["embedder"].model, GenerationSettings(n_tags=2, max_new_tokens=4),
                              categories=categories)
    with TestClient(create_app(index=world["index"], embedder=world["embedder"], tagger=generator)) as c:
        body = c.post("/tags", json={"note": {"title": "雪山", "content": "周末去了雪山"}}).json()
    assert tuple(body["category"]) in categories  # constrained decoding: a random model still names a real one
    assert len(body["hashtags"]) <= 2 and body["tagger"] == "NoteGenerator"


# ---- 4xx: every way a request can be wrong ------------------------------------------------------------------
def test_unknown_note_id_is_404_naming_it(client):
    response = client.get("/notes/no-such-note/similar")
    assert response.status_code == 404
    assert "no-such-note" in response.json()["detail"] and "32 notes" in response.json()["detail"]


@pytest.mark.parametrize("k", [0, 101, "ten"])
def test_k_out_of_range_is_422_on_the_query_field(client, k):
    response = client.get("/notes/0-0-0/similar", params={"k": k})
    assert response.status_code == 422 and errors_at(response) == [("query", "k")]


def test_k_in_the_body_is_limited_too(client, world):
    response = client.post("/similar", json={"note": note_body(world["rows"][0]), "k": 101})
    assert response.status_code == 422 and errors_at(response) == [("body", "k")]


@pytest.mark.parametrize("note, where, words", [
    ({"title": "x" * 201}, ("body", "note", "title"), "at most 200"),
    ({"title": "t", "content": "x" * 5001}, ("body", "note", "content"), "at most 5000"),
    ({"title": "t", "hashtags": [f"t{i}" for i in range(21)]}, ("body", "note", "hashtags"), "at most 20"),
    ({"title": "t", "hashtags": ["#"]}, ("body", "note", "hashtags"), "empty"),
    ({"title": " ", "content": ""}, ("body", "note"), "needs a title or content"),
    ({"title": "t", "image_paths": ["/etc/passwd"]}, ("body", "note", "image_paths"), "not permitted"),
    ({"title": 5}, ("body", "note", "title"), "valid string"),
])
def test_bad_notes_are_422_naming_the_field(client, note, where, words):
    response = client.post("/popularity", json={"note": note})
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert tuple(detail[0]["loc"]) == where and words in detail[0]["msg"]


def test_too_many_or_no_notes_to_embed_is_422(client, world):
    many = [note_body(world["rows"][0])] * 33
    assert errors_at(client.post("/embed", json={"notes": many})) == [("body", "notes")]
    assert errors_at(client.post("/embed", json={"notes": []})) == [("body", "notes")]
    assert errors_at(client.post("/embed", json={})) == [("body", "notes")]


def test_malformed_json_is_422(client):
    response = client.post("/tags", content=b'{"note": {"title": ', headers={"content-type": "application/json"})
    assert response.status_code == 422 and response.json()["detail"][0]["type"] == "json_invalid"


def test_oversized_bodies_are_413_before_parsing(world):
    app = create_app(index=world["index"], limits=ServingLimits(max_body_bytes=1000))
    with TestClient(app) as c:
        junk = b"{" * 1001  # not JSON: a 413 (not 422) shows nothing parsed it
        response = c.post("/embed", content=junk, headers={"content-type": "application/json"})
        assert response.status_code == 413 and "1,001 bytes" in response.json()["detail"]
        # chunked (no Content-Length): read up to the limit, then refused
        chunked = c.post("/embed", content=iter([b"{" * 600, b"{" * 600]), headers={"content-type": "application/json"})
        assert chunked.status_code == 413 and "limit is 1,000 bytes" in chunked.json()["detail"]
        # at the limit it goes through to validation (and then to the missing embedder: 503)
        small = c.post("/embed", json={"notes": [{"title": "t"}]})
        assert small.status_code == 503
        chunked_small = c.post("/popularity", content=iter([b'{"note": ', b'{"title": "t"}}']),
                               headers={"content-type": "application/json"})
        assert chunked_small.status_code == 503


def test_missing_components_are_503_saying_what_to_pass(world):
    note = {"note": {"title": "t"}}
    with TestClient(create_app(index=world["index"])) as c:
        assert "--popularity-model" in c.post("/popularity", json=note).json()["detail"]
        assert "--tagger" in c.post("/tags", json=note).json()["detail"]
        for path, body in (("/similar", note), ("/embed", {"notes": [{"title": "t"}]})):
            response = c.post(path, json=body)
            assert response.status_code == 503 and "--model" in response.json()["detail"]
        assert c.get("/health").json()["components"]["popularity"] is None
    with TestClient(create_app(embedder=world["embedder"])) as c:
        response = c.get("/notes/0-0-0/similar")
        assert response.status_code == 503 and "--index" in response.json()["detail"]


def test_model_and_index_of_different_dimensions_are_refused(world):
    other = build_index(["a", "b"], np.eye(2, 8, dtype=np.float32), {"model": "other"})
    with pytest.raises(NotellmError, match="dimension 16 but the index holds dimension 8"):
        create_app(index=other, embedder=world["embedder"])


# ---- batching, docs, page, loading from folders ----------------------------------------------------------
class CountingEmbedder:
    """The real embedder, recording how many notes each forward pass took."""

    def __init__(self, inner):
        self.inner, self.meta, self.calls = inner, inner.meta, []

    def encode(self, notes):
        self.calls.append(len(notes))
        return self.inner.encode(notes)


def test_concurrent_requests_share_forward_passes(world):
    embedder = CountingEmbedder(world["embedder"])
    app = create_app(index=world["index"], embedder=embedder, limits=ServingLimits(model_wait_ms=300))
    rows = world["rows"][:8]
    results = {}
    with TestClient(app) as c:
        def ask(i):
            results[i] = c.post("/embed", json={"notes": [note_body(rows[i])]}).json()["vectors"][0]

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stats = c.get("/health").json()["batching"]["embed"]
    assert sum(embedder.calls) == 8 and len(embedder.calls) < 8  # fewer forward passes than requests
    assert stats["items"] == 8 and stats["largest_batch"] == max(embedder.calls) >= 2
    for i in range(8):  # each request got its own note's vector back
        np.testing.assert_allclose(results[i], world["vectors"][i], atol=1e-5)


def test_micro_batcher_batches_orders_and_fails_whole_batches():
    async def scenario():
        seen = []

        def double(items):
            seen.append(list(items))
            if "bad" in items:
                raise ValueError("bad item")
            return [2 * x for x in items]

        batcher = MicroBatcher(double, max_batch=2, max_wait_ms=50)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit(x) for x in (1, 2, 3)))
        assert results == [2, 4, 6] and seen == [[1, 2], [3]]
        assert await batcher.submit_many([5, 6]) == [10, 12]
        outcome = await asyncio.gather(batcher.submit("bad"), batcher.submit(7), return_exceptions=True)
        assert all(isinstance(o, ValueError) for o in outcome)  # one batch, one failure for both
        await batcher.stop()
        return batcher.batches, batcher.items

    assert asyncio.run(scenario()) == (3, 5)


def test_openapi_documents_the_endpoints_and_limits(client):
    spec = client.get("/openapi.json").json()
    assert {"/health", "/notes/{note_id}/similar", "/similar", "/embed", "/tags", "/popularity"} <= set(spec["paths"])
    k = next(p for p in spec["paths"]["/notes/{note_id}/similar"]["get"]["parameters"] if p["name"] == "k")
    assert k["schema"]["maximum"] == 100 and k["schema"]["minimum"] == 1
    docs = client.get("/docs")
    assert docs.status_code == 200 and "cdn" not in docs.text.lower()  # Swagger UI from the package: offline
    for asset in ("/docs-static/swagger-ui-bundle.js", "/docs-static/swagger-ui.css"):
        assert asset in docs.text and client.get(asset).status_code == 200


def test_the_page_and_its_assets_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script src="/static/app.js">' in page.text and 'id="draft-template"' in page.text
    assert "analyse" in client.get("/static/app.js").text
    assert client.get("/static/style.css").headers["content-type"].startswith("text/css")
    for escape in ("/static/%2e%2e/app.py", "/static/..%2fapp.py"):  # no file outside static/ is served
        assert client.get(escape).status_code == 404


def test_create_app_from_paths_loads_the_folders(world, tmp_path):
    world["index"].save(tmp_path / "index")
    write_notes(world["table"], tmp_path / "notes.parquet")
    app = create_app_from_paths(model=str(world["root"] / "model"), index=str(tmp_path / "index"),
                                notes=str(tmp_path / "notes.parquet"), tagger="knn")
    with TestClient(app) as c:
        health = c.get("/health").json()
        assert health["index"]["count"] == 32 and health["components"]["tagger"]["class"] == "KnnTagger"
        top = c.post("/similar", json={"note": note_body(world["rows"][4]), "k": 1}).json()["results"][0]
        assert top["note_id"] == world["rows"][4]["note_id"]
    with pytest.raises(NotellmError, match="--tagger knn needs --notes"):
        create_app_from_paths(index=str(tmp_path / "index"), tagger="knn")


def test_a_trained_popularity_model_folder_is_served(world, tmp_path):
    from notellm.config import load_config
    from notellm.data.schema import empty_note
    from notellm.inference.popularity import load_model, predict_table
    from notellm.training.popularity import PopularityConfig, prepare, train

    rows = [dict(r, likes=10 * i, collects=i, comments=i % 3) for i, r in enumerate(toy_notes())]
    cfg = load_config(PopularityConfig, None, [
        "model.backbone=tiny-qwen3", "split.kind=random", "batch_size=16", "model.max_length=24",
        "lora.top_layers=1", "bf16=false", f"output_dir={tmp_path}"])
    model_dir = train(cfg, data=prepare(cfg, notes_to_table(rows), "toy"))
    note = {"title": "火锅分享", "content": "今天吃到一家超好吃的火锅", "hashtags": ["美食"]}
    expected = predict_table(load_model(model_dir), notes_to_table([{**empty_note("x"), **note}]))[0]
    with TestClient(create_app_from_paths(popularity_model=str(model_dir))) as c:
        body = c.post("/popularity", json={"note": note}).json()
        health = c.get("/health").json()["components"]["popularity"]
    assert body["score"] == pytest.approx(float(expected), abs=1e-5)
    assert body["target"]["name"] == "wlaes" and body["model"] == model_dir.name
    assert health["class"] == "PopularityPredictor" and health["backbone"] == "tiny-qwen3"


def test_serve_command_is_registered():
    from typer.testing import CliRunner

    from notellm.cli import app

    result = CliRunner().invoke(app, ["serve", "--help"])
    assert result.exit_code == 0
    for option in ("--model", "--index", "--notes", "--popularity-model", "--tagger", "--host", "--port"):
        assert option in result.output


def test_the_served_model_embeds_at_the_stored_vectors_precision(monkeypatch):
    """`serve` without --bf16/--fp32: new notes are embedded at the precision recorded with the stored vectors
    (bf16 and float32 vectors of one note differ enough to reorder close neighbours); bf16 recorded on a machine
    without bf16 units, or nothing recorded, leaves it to the hardware; an explicit flag wins."""
    import notellm.device as device
    from notellm.serving.app import _query_precision

    monkeypatch.setattr(device, "bf16_supported", lambda *a: True)
    assert _query_precision(None, {"bf16": False}) is False
    assert _query_precision(None, {"bf16": True}) is True
    assert _query_precision(None, {}) is None and _query_precision(None, None) is None
    assert _query_precision(True, {"bf16": False}) is True and _query_precision(False, {"bf16": True}) is False
    monkeypatch.setattr(device, "bf16_supported", lambda *a: False)
    assert _query_precision(None, {"bf16": True}) is None and _query_precision(None, {"bf16": False}) is False
