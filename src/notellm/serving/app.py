"""The HTTP API and the creator's web page (FastAPI, served by uvicorn: `notellm serve`).

    app = create_app(index=load_index("runs/index"), embedder=Embedder("runs/model"), notes=read_notes(...))
    app = create_app_from_paths(model="runs/model", index="runs/index", notes="notes.parquet")

Endpoints: `GET /health`, `GET /notes/{id}/similar?k=`, `POST /similar`, `POST /embed`, `POST /tags`,
`POST /popularity` (score, percentile, interval), `POST /coldstart`, the writes `POST /notes`,
`PUT /notes/{id}`, `DELETE /notes/{id}`, the page at `/`, OpenAPI docs at `/docs` (served offline). Every
component is optional: an endpoint whose component is missing answers 503 saying which `notellm serve`
option provides it. Every invalid request is a 4xx whose JSON body names the field (serving/responses.py).

Writes (with `write_log`): embedded on the model thread, then logged and fsynced (serving/writes.py) and
applied to the vector store (inference/store.py) on the search thread, so a write and a query never touch
the store at once and a write is visible to every request after its acknowledgement. The token and the
per-client rate limit are in serving/security.py.

Concurrency: model work (embedding, tags, popularity) runs on one thread - the lock around the model - fed
by micro-batching queues, so concurrent requests within a few milliseconds share one forward pass. Index
queries are batched the same way on their own thread: a flat scan of 100k x 128 vectors for sixteen queries
costs about 1.3 times the scan for one (measured here; the scan is bound by reading the vectors). Bodies over the size limit are refused with 413 before
parsing; clients never name files.
"""

# no `from __future__ import annotations`: FastAPI must see the request models built inside create_app
import asyncio
import logging
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Path as PathParam, Query
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from notellm.errors import ConfigError, NotellmError
from notellm.serving.batching import MicroBatcher
from notellm.serving.components import describe, load_tagger, public_name
from notellm.inference.store import as_store
from notellm.serving.readable import PopularityContext
from notellm.serving.responses import SafeJSONResponse, install_error_handlers
from notellm.serving.security import RateLimit, TokenCheck
from notellm.serving.writes import WriteLog, decode_vector, encode_vector
from notellm.serving.schemas import (ColdStartResponse, DeleteResponse, EmbedResponse, PopularityResponse, ServingLimits,
                                     SimilarResponse, TagsResponse, WriteResponse, request_models)

STATIC_DIR = Path(__file__).parent / "static"
log = logging.getLogger("notellm.serving")

MISSING = {
    "embedder": "no embedding model is loaded: start the server with `notellm serve --model MODEL_DIR` "
                "(a trained NoteLLM folder, or zero-shot:<backbone>)",
    "index": "no index is loaded: start the server with `notellm serve --index INDEX_DIR` "
             "(a folder written by `notellm index build`) or `--backend milvus --milvus-uri URI` (a collection "
             "written by `notellm index build --backend milvus`)",
    "tagger": "no hashtag/category generator is loaded: start the server with `notellm serve --tagger model` "
              "(the served NoteLLM generates; add --notes to constrain categories) or `--tagger knn --notes "
              "notes.parquet` (tags of the nearest notes)",
    "popularity": "no popularity model is loaded: start the server with `notellm serve --popularity-model DIR` "
                  "(a folder written by `notellm popularity train`), or --model a NoteLLM folder with a popularity "
                  "head (`notellm popularity train CONFIG model.kind=notellm-head`)",
    "coldstart": "no cold-start model is loaded: start the server with `notellm serve --coldstart-model DIR` "
                 "(a folder written by `notellm coldstart sft` or `align`)",
    "write_log": "writes are off: start the server with `notellm serve --write-log FILE` (and --api-key, or "
                 "NOTELLM_API_KEY, when it listens beyond 127.0.0.1)",
}


@dataclass
class SearchQuery:
    """One index query: an indexed note (its stored vector) or a vector, k, and ids to leave out."""
    k: int
    note_id: str | None = None
    vector: np.ndarray | None = None
    exclude: frozenset[str] = field(default_factory=frozenset)


class Service:
    """The loaded components and the queues in front of them; one per app."""

    def __init__(self, index=None, embedder=None, notes=None, tagger=None, popularity=None,
                 limits: ServingLimits | None = None, write_log: str | Path | None = None, coldstart=None):
        self.index = as_store(index)
        self.coldstart = coldstart
        self.embedder, self.tagger, self.popularity = embedder, tagger, popularity
        self.limits = limits or ServingLimits()
        self._check_dims()
        self.titles, self.categories = _note_lookup(notes if notes is not None else getattr(index, "notes", None))
        self.notes_count = None if notes is None else notes.num_rows
        self.popularity_context = PopularityContext.build(popularity, notes) if popularity is not None else None
        self.write_log = WriteLog(write_log) if write_log is not None else None
        self.replayed = self._replay() if self.write_log is not None else 0
        # one thread runs every model call (the lock around the model); searches get their own thread
        self.model_thread = ThreadPoolExecutor(1, thread_name_prefix="notellm-model")
        self.search_thread = ThreadPoolExecutor(1, thread_name_prefix="notellm-search")
        lim = self.limits
        self.batchers: dict[str, MicroBatcher] = {
            "search": MicroBatcher(self._search_batch, lim.search_batch, lim.search_wait_ms, self.search_thread,
                                   "search"),
            "embed": MicroBatcher(self._embed_batch, lim.model_batch, lim.model_wait_ms, self.model_thread, "embed"),
            "tags": MicroBatcher(self._tags_batch, lim.model_batch, lim.model_wait_ms, self.model_thread, "tags"),
            "popularity": MicroBatcher(self._popularity_batch, lim.model_batch, lim.model_wait_ms,
                                       self.model_thread, "popularity"),
            "coldstart": MicroBatcher(self._coldstart_batch, lim.model_batch, lim.model_wait_ms,
                                      self.model_thread, "coldstart"),
            # writes share the search thread: a write and a query never touch the store at once; concurrent
            # writes share one fsync (group commit)
            "write": MicroBatcher(self._write_batch, lim.search_batch, 0.0, self.search_thread, "write"),
        }

    def _check_dims(self) -> None:
        if self.index is None or self.embedder is None:
            return
        dim = getattr(self.embedder, "meta", {}).get("dim")
        if dim is not None and dim != self.index.dim:
            raise NotellmError(f"the model makes vectors of dimension {dim} but the index holds dimension "
                               f"{self.index.dim} (built from {public_name(self.index.meta.get('model', '?'))}): "
                               f"serve the model that built the index")

    def require(self, name: str) -> Any:
        component = getattr(self, name)
        if component is None:
            raise HTTPException(503, MISSING[name])
        return component

    async def start(self) -> None:
        for batcher in self.batchers.values():
            batcher.start()

    async def stop(self) -> None:
        for batcher in self.batchers.values():
            await batcher.stop()
        if self.write_log is not None:
            self.write_log.close()
        self.model_thread.shutdown(wait=False, cancel_futures=True)
        self.search_thread.shutdown(wait=False, cancel_futures=True)

    # ---- the batch functions (run on the worker threads) ----
    def _search_batch(self, queries: list[SearchQuery]) -> list[list[tuple[str, float]] | None]:
        """Hits per query; None for a query by a note that is no longer stored (deleted meanwhile)."""
        found = [q for q in queries if q.vector is not None or q.note_id in self.index]
        results: dict[int, list[tuple[str, float]]] = {}
        if found:
            vectors = np.stack([q.vector if q.vector is not None else self.index.vector_of(q.note_id)
                                for q in found]).astype(np.float32, copy=False)
            fetch = max(q.k + len(q.exclude) for q in found)
            ids, scores = self.index.search(vectors, fetch)
            for q, row_ids, row_scores in zip(found, ids, scores):
                results[id(q)] = [(i, float(s)) for i, s in zip(row_ids, row_scores) if i not in q.exclude][: q.k]
        return [results.get(id(q)) for q in queries]

    def _replay(self) -> int:
        """Apply every acknowledged write of the log (at start, before any request). A store that keeps writes
        itself (Milvus) may already hold some or all of them: puts are upserts and deleting an absent note is a
        no-op, so replaying them again ends in the same state."""
        if self.index is None:
            raise NotellmError("writes need an index to write into: start the server with --index, or "
                               "--backend milvus --milvus-uri")
        count = 0
        for record in self.write_log.replay():
            self._apply(record)
            count += 1
        if count:
            log.info("replayed %d acknowledged writes from the write log", count)
        return count

    def _apply(self, record: dict[str, Any]) -> None:
        note_id = record["id"]
        if record["op"] == "put":
            title, category = record.get("title") or "", list(record.get("category") or [])
            self.index.upsert([note_id], decode_vector(record["vector"])[None, :], labels=[(title, category)])
            self.titles[note_id] = title
            self.categories[note_id] = category
        else:
            self.index.delete([note_id])
            self.titles.pop(note_id, None)
            self.categories.pop(note_id, None)

    def _write_batch(self, ops: list[dict[str, Any]]) -> list[bool | None]:
        """Log (one fsync for the whole batch), then apply. Per op: put -> created?; delete/update of a note
        that is not there -> None (nothing logged)."""
        results: list[bool | None] = []
        records = []
        present = set()  # ids written earlier in this batch count as present
        gone = set()
        for op in ops:
            exists = (op["id"] in present) or (op["id"] not in gone and op["id"] in self.index)
            if op["op"] == "delete" or op.get("must_exist"):
                if not exists:
                    results.append(None)
                    continue
            records.append({k: v for k, v in op.items() if k != "must_exist"})
            results.append(not exists if op["op"] == "put" else True)
            (present.add if op["op"] == "put" else gone.add)(op["id"])
            if op["op"] == "delete":
                present.discard(op["id"])
            else:
                gone.discard(op["id"])
        self.write_log.append(records)  # durable from here on: only now may the requests be answered
        for record in records:
            self._apply(record)
        return results

    def _coldstart_batch(self, prompts: list[str]) -> list[tuple[str, float | None]]:
        return self.coldstart.answer(prompts)

    def _embed_batch(self, notes: list[dict[str, Any]]) -> list[np.ndarray]:
        return list(np.asarray(self.embedder.encode(notes), dtype=np.float32))

    def _tags_batch(self, notes: list[dict[str, Any]]) -> list[Any]:
        return list(self.tagger.generate(notes))

    def _popularity_batch(self, notes: list[dict[str, Any]]) -> list[float]:
        return [float(s) for s in self.popularity.predict(notes)]

    # ---- helpers for the endpoints ----
    def similar_response(self, hits: Sequence[tuple[str, float]], k: int, note_id: str | None = None) -> JSONResponse:
        """The SimilarResponse body built as plain JSON: the hot path skips pydantic's re-validation."""
        results = [{"rank": r, "note_id": i, "score": round(s, 6), "title": self.titles.get(i),
                    "category": self.categories.get(i)} for r, (i, s) in enumerate(hits, 1)]
        return SafeJSONResponse({"note_id": note_id, "title": self.titles.get(note_id) if note_id else None, "k": k,
                             "results": results})

    def health(self) -> dict[str, Any]:
        index = self.index
        return {
            "status": "ok",
            "writes": None if self.write_log is None else {"enabled": True, "replayed_at_start": self.replayed,
                                                            "logged": self.write_log.seq},
            "model": public_name((getattr(self.embedder, "meta", {}) or {}).get("model"))
            if self.embedder is not None else None,
            "index": None if index is None else {**index.info(), "model": public_name(index.meta.get("model"))},
            "notes": self.notes_count if self.notes_count is not None else (len(self.titles) or None),
            "components": {"embedder": self.embedder is not None, "index": index is not None,
                           "titles": bool(self.titles), "tagger": describe(self.tagger),
                           "popularity": describe(self.popularity), "coldstart": describe(self.coldstart)},
            "limits": asdict(self.limits),
            "batching": {name: {"batches": b.batches, "items": b.items, "largest_batch": b.largest_batch,
                                "busy_seconds": round(b.busy_seconds, 3), "cpu_seconds": round(b.cpu_seconds, 3)}
                         for name, b in self.batchers.items()},
        }


def _note_lookup(notes) -> tuple[dict[str, str], dict[str, list[str]]]:
    """note_id -> title and note_id -> category from a Note table (or the index's attached notes)."""
    if notes is None or notes.num_rows == 0:
        return {}, {}
    ids = [str(i) for i in notes.column("note_id").to_pylist()]
    titles = dict(zip(ids, notes.column("title").to_pylist())) if "title" in notes.column_names else {}
    categories = dict(zip(ids, (c or [] for c in notes.column("category").to_pylist()))) \
        if "category" in notes.column_names else {}
    return titles, categories


def note_dict(note, note_id: str) -> dict[str, Any]:
    """A request's note as a Note row (every field present, nothing but text from the client)."""
    from notellm.data.schema import empty_note

    return {**empty_note(note_id), "title": note.title, "content": note.content, "hashtags": list(note.hashtags)}


def too_large(size: int, limit: int, at_least: bool = False) -> dict[str, str]:
    return {"detail": f"request body is {'more than ' if at_least else ''}{size:,} bytes; the limit is {limit:,} "
                      f"bytes (send fewer or shorter notes)"}


class BodySizeLimit:
    """ASGI middleware: 413 for a body over `max_bytes`, decided from Content-Length before anything reads the
    body; a body without Content-Length (chunked) is read up to the limit and refused past it.

    (FastAPI's own `max_body_size` works too, but answers a too-long Content-Length with a bare "Content Too
    Large" that cannot be reworded; this says what the limit is.)"""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or ())
        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit():
                return await SafeJSONResponse({"detail": "Content-Length is not a number"}, 400)(scope, receive, send)
            if int(length) > self.max_bytes:
                return await self._refuse(scope, receive, send, too_large(int(length), self.max_bytes))
            return await self.app(scope, receive, send)
        if b"chunked" not in headers.get(b"transfer-encoding", b""):
            return await self.app(scope, receive, send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await self._refuse(scope, receive, send, too_large(self.max_bytes, self.max_bytes, True))
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    @staticmethod
    async def _refuse(scope, receive, send, payload: dict[str, str]) -> None:
        await SafeJSONResponse(payload, status_code=413, headers={"connection": "close"})(scope, receive, send)


def create_app(index=None, embedder=None, notes=None, tagger=None, popularity=None,
               limits: ServingLimits | None = None, title: str = "notellm", write_log: str | Path | None = None,
               api_key: str | None = None, protect_reads: bool = False, rate_limit: float = 0.0,
               rate_burst: int | None = None, coldstart=None) -> FastAPI:
    """The app for already-loaded components (any of them may be None; see module doc).

    `write_log`: enables POST/PUT/DELETE /notes, logged there before they are acknowledged and replayed now.
    `api_key`: the token write endpoints (and with `protect_reads` every endpoint) require.
    `rate_limit`: model requests per second per client (0: unlimited)."""
    service = Service(index, embedder, notes, tagger, popularity, limits, write_log, coldstart)
    lim = service.limits
    models = request_models(lim)
    SimilarRequest, EmbedRequest, NoteRequest = models["SimilarRequest"], models["EmbedRequest"], models["NoteRequest"]
    WriteRequest, UpdateRequest = models["WriteRequest"], models["UpdateRequest"]
    ColdStartRequest = models["ColdStartRequest"]
    token = TokenCheck(api_key)
    service.rate = limiter = RateLimit(rate_limit, rate_burst, tokens=token)
    reads = [Depends(token)] if protect_reads else []
    model_reads = reads + [Depends(limiter)]
    writes = [Depends(token), Depends(limiter)]

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(title=title, lifespan=lifespan, default_response_class=SafeJSONResponse,
                  docs_url=None, redoc_url=None,  # /docs below serves Swagger UI's files itself: works offline
                  description="Note embeddings, similar notes, hashtag/category suggestions and popularity "
                              "prediction. The creator's page is at `/`.")
    app.state.service = service
    app.add_middleware(BodySizeLimit, max_bytes=lim.max_body_bytes)

    install_error_handlers(app)

    @app.get("/health", summary="model, index size and which components are loaded", dependencies=reads)
    async def health() -> dict[str, Any]:
        return service.health()

    @app.get("/notes/{note_id:path}/similar", response_model=SimilarResponse,
             summary="the k indexed notes most similar to an indexed note (itself excluded)",
             responses={404: {"description": "unknown note id"}}, dependencies=reads)
    async def similar_to_indexed(note_id: str = PathParam(..., description="an indexed note id"),
                                 k: int = Query(10, ge=1, le=lim.max_k)) -> JSONResponse:
        index = service.require("index")
        hits = await service.batchers["search"].submit(SearchQuery(k=k, note_id=note_id,
                                                                   exclude=frozenset((note_id,))))
        if hits is None:
            raise HTTPException(404, f"note id '{note_id}' is not in the index ({len(index):,} notes)")
        return service.similar_response(hits, k, note_id)

    @app.post("/similar", response_model=SimilarResponse,
              summary="embed a new note and return the k most similar indexed notes", dependencies=model_reads)
    async def similar_to_new(body: SimilarRequest) -> JSONResponse:  # type: ignore[valid-type]
        service.require("index")
        service.require("embedder")
        vector = await service.batchers["embed"].submit(note_dict(body.note, "request"))
        hits = await service.batchers["search"].submit(SearchQuery(k=body.k, vector=vector))
        return service.similar_response(hits, body.k)

    @app.post("/embed", response_model=EmbedResponse, summary=f"embedding vectors of up to {lim.max_notes} notes",
              dependencies=model_reads)
    async def embed(body: EmbedRequest) -> EmbedResponse:  # type: ignore[valid-type]
        embedder = service.require("embedder")
        notes_ = [note_dict(n, f"request-{i}") for i, n in enumerate(body.notes)]
        vectors = await service.batchers["embed"].submit_many(notes_)
        return EmbedResponse(model=public_name(embedder.meta.get("model")), dim=int(vectors[0].shape[0]),
                             vectors=[v.tolist() for v in vectors])

    @app.post("/tags", response_model=TagsResponse, summary="suggested hashtags and category for a note",
              dependencies=model_reads)
    async def tags(body: NoteRequest) -> TagsResponse:  # type: ignore[valid-type]
        tagger = service.require("tagger")
        result = await service.batchers["tags"].submit(note_dict(body.note, "request"))
        return TagsResponse(hashtags=list(result.tags), category=list(result.category), tagger=type(tagger).__name__)

    @app.post("/popularity", response_model=PopularityResponse, summary="predicted popularity score of a note",
              dependencies=model_reads)
    async def popularity(body: NoteRequest) -> PopularityResponse:  # type: ignore[valid-type]
        model = service.require("popularity")
        note = note_dict(body.note, "request")
        jobs = [service.batchers["popularity"].submit(note)]
        if service.tagger is not None:  # the predicted category, for the percentile within it
            jobs.append(service.batchers["tags"].submit(note))
        results = await asyncio.gather(*jobs)
        score, category = results[0], (list(results[1].category) if len(results) > 1 else None)
        info = describe(model) or {}
        readable = (service.popularity_context.explain(score, (category or [None])[0])
                    if service.popularity_context is not None else {})
        return PopularityResponse(score=score, target=info.get("target"), model=info.get("model"),
                                  category=category, **readable)

    @app.post("/coldstart", response_model=ColdStartResponse, dependencies=model_reads,
              summary="predicted score of a draft from the author's past posts (cold-start model)")
    async def coldstart(body: ColdStartRequest) -> ColdStartResponse:  # type: ignore[valid-type]
        from notellm.data.schema import empty_note

        scorer = service.require("coldstart")
        past = [{**empty_note(f"past-{i}"), "title": p.title, "content": p.content, "hashtags": list(p.hashtags),
                 "category": list(p.category), "score": p.score} for i, p in enumerate(body.past_posts)]
        if not past:
            past = scorer.author_posts(body.author_id)
            if not past:
                raise HTTPException(404, f"author '{body.author_id}' has no posts in the served notes: send "
                                         f"past_posts instead")
        draft = {**note_dict(body.note, "draft"), "category": list(body.category)}
        prompt = scorer.prompt(draft, past, body.author_id)
        answer, score = await service.batchers["coldstart"].submit(prompt)
        return ColdStartResponse(score=score, answer=answer, past_posts=len(past),
                                 model=(describe(scorer) or {}).get("model"))

    # ---- writes ----
    def check_writes() -> None:
        service.require("write_log")
        service.require("index")
        service.require("embedder")

    async def embed_and_write(items: list[tuple[str, Any, list[str]]], must_exist: bool) -> list[bool | None]:
        vectors = await service.batchers["embed"].submit_many([note_dict(n, i) for i, n, _ in items])
        ops = [{"op": "put", "id": i, "vector": encode_vector(v), "title": n.title, "category": list(c),
                "must_exist": must_exist} for (i, n, c), v in zip(items, vectors)]
        return await service.batchers["write"].submit_many(ops)

    @app.post("/notes", response_model=WriteResponse, status_code=201, dependencies=writes,
              summary=f"store up to {lim.max_notes} notes (embedded now, recommendable by the next request)",
              responses={401: {"description": "no token"}, 403: {"description": "wrong token"}})
    async def write_notes(body: WriteRequest) -> SafeJSONResponse:  # type: ignore[valid-type]
        check_writes()
        ids = [n.note_id or uuid.uuid4().hex[:24] for n in body.notes]
        if len(set(ids)) != len(ids):
            raise HTTPException(422, "the same note_id appears twice in one request")
        created = await embed_and_write([(i, n, n.category) for i, n in zip(ids, body.notes)], must_exist=False)
        return SafeJSONResponse({"written": [{"note_id": i, "created": bool(c)} for i, c in zip(ids, created)],
                                 "count": len(service.index)}, status_code=201)

    @app.put("/notes/{note_id:path}", response_model=WriteResponse, dependencies=writes,
             summary="replace a stored note (its text is embedded again)",
             responses={404: {"description": "unknown note id"}})
    async def update_note(body: UpdateRequest, note_id: str = PathParam(..., max_length=128)) -> SafeJSONResponse:  # type: ignore[valid-type]
        check_writes()
        result = await embed_and_write([(note_id, body.note, body.category)], must_exist=True)
        if result[0] is None:
            raise HTTPException(404, f"note id '{note_id}' is not stored; create it with POST /notes")
        return SafeJSONResponse({"written": [{"note_id": note_id, "created": False}], "count": len(service.index)})

    @app.delete("/notes/{note_id:path}", response_model=DeleteResponse, dependencies=writes,
                summary="delete a stored note (no longer recommended from the next request on)",
                responses={404: {"description": "unknown note id"}})
    async def delete_note(note_id: str = PathParam(..., max_length=128)) -> SafeJSONResponse:
        check_writes()
        result = await service.batchers["write"].submit({"op": "delete", "id": note_id})
        if result is None:
            raise HTTPException(404, f"note id '{note_id}' is not stored")
        return SafeJSONResponse({"deleted": note_id, "count": len(service.index)})

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    mount_offline_docs(app, title)
    return app


def mount_offline_docs(app: FastAPI, title: str) -> None:
    """Swagger UI at /docs from the pinned `swagger-ui-bundle` package (no CDN, so it works offline); without
    the package, FastAPI's default page (which loads Swagger UI from a CDN)."""
    from fastapi.openapi.docs import get_swagger_ui_html

    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        swagger_ui_path = None
        log.warning("swagger-ui-bundle is not installed: /docs loads Swagger UI from a CDN")
    if swagger_ui_path is not None:
        app.mount("/docs-static", StaticFiles(directory=swagger_ui_path), name="docs-static")
    local = swagger_ui_path is not None

    @app.get("/docs", include_in_schema=False)
    async def docs():
        return get_swagger_ui_html(
            openapi_url=app.openapi_url, title=f"{title} API",
            **({"swagger_js_url": "/docs-static/swagger-ui-bundle.js", "swagger_css_url": "/docs-static/swagger-ui.css",
                "swagger_favicon_url": "/docs-static/favicon-32x32.png"} if local else {}))


def _query_precision(bf16: bool | None, stored: dict[str, Any] | None) -> bool | None:
    """bf16 for the served model's forward passes: as asked; else the stored vectors' own precision, so that a
    new note lands where `notellm embed` would have put it (bf16 and float32 embeddings of one note differ by
    ~1e-3 in cosine, enough to reorder close neighbours); None (the hardware decides) when unrecorded or when
    bf16 was recorded but this machine has no bf16 units."""
    from notellm.device import bf16_supported

    if bf16 is not None:
        return bf16
    recorded = (stored or {}).get("bf16")
    if recorded is False or (recorded is True and bf16_supported()):
        return recorded
    return None


def create_app_from_paths(model: str | None = None, index: str | None = None, notes: str | None = None,
                          popularity_model: str | None = None, tagger: str = "none",
                          limits: ServingLimits | None = None, backend: str = "faiss",
                          milvus_uri: str | None = None, coldstart_model: str | None = None,
                          coldstart_language: str = "en", collection: str = "notes", bf16: bool | None = None,
                          **options: Any) -> FastAPI:
    """Load the components from folders (server-side paths, given by whoever starts the server).
    `backend="milvus"`: vectors live in the Milvus collection `collection` at `milvus_uri`: one built by
    `notellm index build --backend milvus` (then `index` is not needed: dimension, embedding metadata, titles
    and categories come from the collection), or one filled from `index` the first time. `options`:
    create_app's write_log, api_key, protect_reads, rate_limit, rate_burst. `bf16=None`: new notes are embedded
    at the precision the stored vectors were (their embedding metadata), else bf16 where the hardware has it."""
    from notellm.data.schema import read_notes
    from notellm.inference.index import load_index
    from notellm.inference.store import BACKENDS

    if backend not in BACKENDS:
        raise ConfigError(f"--backend must be one of {BACKENDS}, got '{backend}'")
    idx = load_index(index) if index else None
    note_table = read_notes(notes) if notes else None
    store = _milvus_store(idx, milvus_uri, collection) if backend == "milvus" else idx
    # titles and categories without --notes: the index folder's attached notes, or the built collection's
    attached = idx.notes if idx is not None else getattr(store, "notes", None)
    embedder = None
    if model:
        from notellm.inference.embed import Embedder

        embedder = Embedder(model, bf16=_query_precision(bf16, getattr(store, "meta", None)))
    popularity = None
    if popularity_model:
        from notellm.serving.components import PopularityPredictor

        popularity = PopularityPredictor(popularity_model)
    elif embedder is not None:
        from notellm.serving.components import NoteLLMHeadPopularity, has_popularity_head

        if has_popularity_head(embedder):  # one folder: the served NoteLLM's own head scores
            popularity = NoteLLMHeadPopularity(embedder)
    tag_source = note_table if note_table is not None else attached
    coldstart = None
    if coldstart_model:
        from notellm.serving.components import ColdStartScorer

        coldstart = ColdStartScorer(coldstart_model, coldstart_language, notes=note_table)
    if note_table is None:
        note_table = attached
    return create_app(index=store, embedder=embedder, notes=note_table,
                      tagger=load_tagger(tagger, embedder, tag_source), popularity=popularity, limits=limits,
                      coldstart=coldstart, **options)


def _milvus_store(idx, milvus_uri: str | None, collection: str):
    """The served Milvus collection: the built one as it is (no `idx`), or one `idx` fills when it is empty.
    Opened before the model loads, so a missing collection is refused at once."""
    from notellm.inference.store import MilvusStore

    if not milvus_uri:
        raise ConfigError("--backend milvus needs --milvus-uri (a milvus-lite file such as runs/notes.db, "
                          "or http://host:19530)")
    if idx is None:
        return MilvusStore.connect(milvus_uri, collection)
    store = MilvusStore.open(milvus_uri, idx.dim, collection, meta=idx.meta)
    if len(store) == 0:
        store = MilvusStore.from_index(idx, milvus_uri, collection)
    return store
