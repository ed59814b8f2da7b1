"""Vector stores: where the server keeps note vectors, with writes. One interface, two backends.

    store = FaissStore(load_index("runs/index"))              # the embedded default: an index folder
    store = MilvusStore.open("runs/notes.db", dim=128)         # Milvus: milvus-lite file, or a cluster URI
    store.upsert(["n1"], vectors); store.delete(["n2"]); ids, scores = store.search(queries, k=10)

`FaissStore` keeps the built FAISS index (flat, HNSW or IVF-PQ, none of which the server rebuilds per write)
as its base, and holds writes beside it: new and updated vectors in an exact in-memory matrix, deleted or
superseded base rows as tombstones filtered out at query time (over-fetching by the number of tombstones).
`compact()` folds both into a new base index of the same kind. `MilvusStore` lets Milvus do all of it (it
deletes and upserts in place); its `compact()` flushes. Scores are cosine (inner product of unit vectors) in
both, so an exact search gives the same ids and scores on both backends.

`build_milvus` is `notellm index build --backend milvus`: a FLAT collection with titles, categories and the
embedding metadata, built beside the old one and swapped in by alias; `MilvusStore.connect` opens it with the
read methods of a NoteIndex (`neighbours_of_vector`, `labels`, `notes`, ...) for `recommend`, `index info` and
`serve --backend milvus` (which needs no index folder then: dimension, metadata and titles come from it).
"""

from __future__ import annotations

import json
import logging
import re
import time
from abc import ABC, abstractmethod
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa

from notellm.errors import ConfigError, DataError, NotellmError
from notellm.inference.index import (METRIC, NoteIndex, _as_matrix, _notes_subset, build_index, load_index,
                                    note_labels)

BACKENDS = ("faiss", "milvus")


class VectorStore(ABC):
    """Note id -> unit vector, searchable by cosine, with upsert and delete."""

    kind: str
    meta: dict[str, Any]

    @property
    @abstractmethod
    def dim(self) -> int: ...

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def __contains__(self, note_id: object) -> bool: ...

    @abstractmethod
    def search(self, vectors: Any, k: int) -> tuple[list[list[str]], np.ndarray]:
        """The k nearest live notes of each query: (ids per query, cosine scores, -inf padded)."""

    @abstractmethod
    def vector_of(self, note_id: str) -> np.ndarray: ...

    @abstractmethod
    def upsert(self, ids: Sequence[str], vectors: Any,
               labels: Sequence[tuple[str | None, list[str] | None]] | None = None) -> None:
        """Add or replace the vectors of `ids` (normalised here). `labels`: (title, category) per id, kept by
        a store that holds them (a Milvus collection built with notes); the others ignore them."""

    @abstractmethod
    def delete(self, ids: Sequence[str]) -> int:
        """Remove `ids` (unknown ids are ignored); the number removed."""

    @abstractmethod
    def compact(self) -> None:
        """Fold pending writes into the persistent form (rebuild, flush); queries answer the same after."""

    def info(self) -> dict[str, Any]:
        return {"backend": self.kind, "count": len(self), "dim": self.dim}

    def _vectors(self, vectors: Any, what: str = "vectors") -> np.ndarray:
        x = _as_matrix(vectors, what)
        if x.shape[1] != self.dim:
            raise DataError(f"{what} have dimension {x.shape[1]} but the store holds dimension {self.dim}")
        return x


def _top_k(ids: list[str], scores: np.ndarray, k: int) -> tuple[list[str], list[float]]:
    order = np.argsort(-scores, kind="stable")[:k]
    return [ids[i] for i in order], [float(scores[i]) for i in order]


class FaissStore(VectorStore):
    """A built NoteIndex plus writes held beside it (see module doc)."""

    kind = "faiss"

    def __init__(self, index: NoteIndex):
        self.base = index
        self.meta = index.meta
        self.config = index.config
        self.dead: set[str] = set()           # base ids deleted or superseded by a newer vector
        self.extra_ids: list[str] = []        # written notes, exact search
        self.extra_row: dict[str, int] = {}
        self.extra = np.zeros((16, index.dim), dtype=np.float32)

    @property
    def dim(self) -> int:
        return self.base.dim

    @property
    def notes(self):
        return self.base.notes

    def __len__(self) -> int:
        return len(self.base) - len(self.dead) + len(self.extra_ids)

    def __contains__(self, note_id: object) -> bool:
        return note_id in self.extra_row or (note_id in self.base.row and note_id not in self.dead)

    def info(self) -> dict[str, Any]:
        return {**super().info(), "kind": self.config.kind, "pending_writes": len(self.extra_ids),
                "tombstones": len(self.dead)}

    # ---- writes ----
    def upsert(self, ids: Sequence[str], vectors: Any, labels=None) -> None:
        # labels are ignored: the server keeps written titles itself, compaction takes them from the write log
        x = self._vectors(vectors)
        if len(ids) != len(x):
            raise DataError(f"{len(ids)} ids but {len(x)} vectors")
        for note_id, vector in zip(map(str, ids), x):
            if note_id in self.base.row:
                self.dead.add(note_id)
            row = self.extra_row.get(note_id)
            if row is None:
                row = len(self.extra_ids)
                if row == len(self.extra):
                    self.extra = np.concatenate([self.extra, np.zeros_like(self.extra)])
                self.extra_ids.append(note_id)
                self.extra_row[note_id] = row
            self.extra[row] = vector

    def delete(self, ids: Sequence[str]) -> int:
        removed = 0
        for note_id in map(str, ids):
            present = note_id in self
            row = self.extra_row.pop(note_id, None)
            if row is not None:  # swap the last written note into the hole
                last = len(self.extra_ids) - 1
                if row != last:
                    moved = self.extra_ids[last]
                    self.extra[row] = self.extra[last]
                    self.extra_ids[row] = moved
                    self.extra_row[moved] = row
                self.extra_ids.pop()
            if note_id in self.base.row:
                self.dead.add(note_id)
            removed += present
        return removed

    # ---- queries ----
    def search(self, vectors: Any, k: int) -> tuple[list[list[str]], np.ndarray]:
        x = self._vectors(vectors, "query vectors")
        k = max(1, int(k))
        live_base = len(self.base) - len(self.dead)
        base_ids: list[list[str]] = [[] for _ in range(len(x))]
        base_scores = np.zeros((len(x), 0), dtype=np.float32)
        if live_base > 0:
            base_ids, base_scores = self.base.search(x, min(len(self.base), k + len(self.dead)))
        n = len(self.extra_ids)
        extra_scores = x @ self.extra[:n].T if n else None
        out_ids, out_scores = [], np.full((len(x), k), -np.inf, dtype=np.float32)
        for q in range(len(x)):
            ids = [i for i in base_ids[q] if i not in self.dead]
            scores = [float(s) for i, s in zip(base_ids[q], base_scores[q]) if i not in self.dead]
            if extra_scores is not None:
                ids += self.extra_ids
                scores += extra_scores[q].tolist()
            top_ids, top_scores = _top_k(ids, np.asarray(scores, dtype=np.float32), k)
            out_ids.append(top_ids)
            out_scores[q, : len(top_scores)] = top_scores
        return out_ids, out_scores

    def vector_of(self, note_id: str) -> np.ndarray:
        row = self.extra_row.get(note_id)
        if row is not None:
            return self.extra[row].copy()
        if note_id in self.dead or note_id not in self.base.row:
            raise DataError(f"note id '{note_id}' is not in the store ({len(self):,} notes)", field="note_id")
        return self.base.vector_of(note_id)

    def live_vectors(self) -> tuple[list[str], np.ndarray]:
        """Every live note and its vector (approximate for ivfpq, which keeps only codes)."""
        keep = [i for i in self.base.ids if i not in self.dead]
        base = np.stack([self.base.vector_of(i) for i in keep]) if keep else np.zeros((0, self.dim), np.float32)
        return keep + self.extra_ids, np.concatenate([base, self.extra[: len(self.extra_ids)]])

    def compact(self, notes=None) -> None:
        """Rebuild the base index (same kind and settings) from the live notes; `notes`: their Note rows."""
        ids, vectors = self.live_vectors()
        if not ids:
            raise NotellmError("cannot compact an empty store (every note was deleted)")
        self.base = build_index(ids, vectors, self.meta, config=self.config,
                                notes=notes if notes is not None else self.base.notes)
        self.dead, self.extra_ids, self.extra_row = set(), [], {}
        self.extra = np.zeros((16, self.dim), dtype=np.float32)


MILVUS_META = "notellm.meta"      # collection property: what `notellm index build` knew (index.json's role)
MILVUS_TOPK = 16384               # the most hits one Milvus search returns
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,199}")


def milvus_client(uri: str, must_exist: bool = False):
    """A MilvusClient for `uri` (a milvus-lite `.db` file, or http(s)://host:port); a bad or unreachable uri
    is one NotellmError line. `must_exist`: a local file must already be there (reading, not building)."""
    try:
        from pymilvus import MilvusClient
    except ImportError as exc:
        raise NotellmError("the Milvus backend needs `pip install -e .[milvus]` (pymilvus, milvus-lite)") from exc
    # failures come back to the user as one line; pymilvus would also log each with a traceback on stderr
    logging.getLogger("pymilvus").setLevel(logging.CRITICAL)
    if not uri.startswith(("http://", "https://", "tcp://", "unix:")):
        if not uri.endswith(".db"):
            raise ConfigError(f"--milvus-uri {uri}: give a milvus-lite file ending in .db (runs/notes.db) "
                              f"or a server address (http://host:19530)")
        if must_exist and not Path(uri).exists():  # milvus-lite 3 keeps a folder
            raise ConfigError(f"--milvus-uri {uri}: no such milvus-lite file; build it with "
                              f"`notellm index build EMB_DIR --backend milvus --milvus-uri {uri}`")
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
    with milvus_errors(f"cannot open Milvus at {uri}"):
        return MilvusClient(uri, timeout=30)


@contextmanager
def milvus_errors(what: str) -> Iterator[None]:
    """Milvus' own exceptions as one NotellmError line ('what: milvus's message')."""
    from pymilvus.exceptions import MilvusException

    try:
        yield
    except MilvusException as exc:
        message = str(getattr(exc, "message", "") or exc).strip().splitlines() or [type(exc).__name__]
        raise NotellmError(f"{what}: {message[0]}") from None


class MilvusStore(VectorStore):
    """A Milvus collection (id: varchar primary key, vector: float, metric IP on unit vectors).

    `uri` is a local file for milvus-lite (in-process; laptops and tests) or `http://host:19530` for a
    cluster. Exact search: the collection's default index on milvus-lite is a flat scan; `build_milvus`
    asks for FLAT everywhere. A collection built by `build_milvus` also holds each note's title and category
    (when built with notes) and the build's metadata; `connect` opens it for recommend and `index info`."""

    kind = "milvus"

    def __init__(self, client, collection: str, dim: int, meta: dict[str, Any] | None = None,
                 built: dict[str, Any] | None = None, fields: Sequence[str] = ("id", "vector"), uri: str = ""):
        self.client, self.collection, self._dim = client, collection, int(dim)
        self.meta = dict(meta or {})
        self.config = None
        self._notes: pa.Table | None = None
        self._notes_read = False           # `notes` scans the collection once, when first asked
        self.built = dict(built or {})     # the build's metadata (empty for a collection the server created)
        self.fields = tuple(fields)
        self.uri = uri
        self.path = f"{uri} (collection {collection})"

    @classmethod
    def open(cls, uri: str, dim: int, collection: str = "notes", meta: dict[str, Any] | None = None) -> "MilvusStore":
        """The collection `collection` at `uri`, created (id and vector only) when it is not there yet."""
        client = milvus_client(uri)
        with milvus_errors(f"cannot open collection '{collection}' of Milvus at {uri}"):
            exists = client.has_collection(collection)
            if not exists:
                client.create_collection(collection, dimension=int(dim), primary_field_name="id", id_type="string",
                                         max_length=512, metric_type="IP", auto_id=False, vector_field_name="vector")
                client.load_collection(collection)  # a collection reopened from a milvus-lite file starts released
        if not exists:
            return cls(client, collection, dim, meta, uri=uri)
        store = cls._existing(client, uri, collection)  # its own fields: a build's also has title and category
        if store.dim != int(dim):
            raise ConfigError(f"collection '{collection}' in Milvus at {uri} holds dimension {store.dim}, not "
                              f"{dim}: serve it without --index, or pass --collection for a new one")
        if meta:
            store.meta = dict(meta)
        return store

    @classmethod
    def connect(cls, uri: str, collection: str = "notes") -> "MilvusStore":
        """An existing collection (a `notellm index build --backend milvus`, or one a server filled)."""
        return cls._existing(milvus_client(uri, must_exist=True), uri, collection)

    @classmethod
    def _existing(cls, client, uri: str, collection: str) -> "MilvusStore":
        where = f"Milvus at {uri}"
        with milvus_errors(f"cannot read collection '{collection}' of {where}"):
            if not client.has_collection(collection):
                there = ", ".join(sorted(client.list_collections())) or "none"
                raise DataError(f"no collection '{collection}' in {where} (collections: {there}); build it with "
                                f"`notellm index build EMB_DIR --backend milvus --milvus-uri {uri}`")
            described = client.describe_collection(collection)
            client.load_collection(collection)
        fields = {f["name"]: f for f in described["fields"]}
        if "vector" not in fields or "id" not in fields:
            raise DataError(f"collection '{collection}' in {where} is not a notellm collection (no id and vector)")
        built = json.loads((described.get("properties") or {}).get(MILVUS_META, "{}"))
        return cls(client, collection, int(fields["vector"]["params"]["dim"]), built.get("embedding", {}), built,
                   tuple(fields), uri)

    @classmethod
    def from_index(cls, index: NoteIndex, uri: str, collection: str = "notes", batch: int = 2048) -> "MilvusStore":
        """A Milvus collection filled with the notes of a built index (replacing the collection)."""
        client = milvus_client(uri)
        if client.has_collection(collection):
            client.drop_collection(collection)
        store = cls.open(uri, index.dim, collection, index.meta)
        for start in range(0, len(index), batch):
            ids = index.ids[start: start + batch]
            store.upsert(ids, np.stack([index.vector_of(i) for i in ids]))
        return store

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def has_notes(self) -> bool:
        return "title" in self.fields

    @property
    def notes(self) -> pa.Table | None:
        """note_id, title, category of the notes the build found in its notes table (a FAISS index folder's
        attached notes.parquet); None without notes. Read once (a scan): the server's titles at start."""
        if not self._notes_read:
            self._notes_read = True
            if self.has_notes:
                rows = [{"note_id": str(r["id"]), "title": r.get("title"), "category": r.get("category")}
                        for r in self._scan(["title", "category"]) if r.get("noted")]
                self._notes = pa.Table.from_pylist(rows, schema=pa.schema(
                    [("note_id", pa.string()), ("title", pa.string()), ("category", pa.list_(pa.string()))]))
        return self._notes

    def __len__(self) -> int:
        return int(self.client.get_collection_stats(self.collection)["row_count"])

    def __contains__(self, note_id: object) -> bool:
        return isinstance(note_id, str) and bool(self.client.get(self.collection, ids=[note_id], output_fields=["id"]))

    def details(self) -> dict[str, Any]:
        """`index info`: info() plus where it lives and what built it (not for /health: the uri is server-side)."""
        target = self.client.describe_alias(self.collection)["collection_name"] \
            if self.collection in self.client.list_aliases()["aliases"] else self.collection
        return {**self.info(), "uri": self.uri, "collection": self.collection, "holds": target,
                "kind": self.built.get("kind", "?"), "metric": METRIC, "embedding": self.meta,
                "notes_attached": self.has_notes, "built_at": self.built.get("built_at", "?")}

    def upsert(self, ids: Sequence[str], vectors: Any,
               labels: Sequence[tuple[str | None, list[str] | None]] | None = None) -> None:
        """Milvus replaces a row with the same id in place, so replaying a write it already holds changes
        nothing. In a collection built with notes the labels go with the vector (unlabelled: not `noted`)."""
        x = self._vectors(vectors)
        if len(ids) != len(x) or (labels is not None and len(labels) != len(x)):
            given = "" if labels is None else f", {len(labels)} labels"
            raise DataError(f"{len(ids)} ids but {len(x)} vectors{given}")
        rows = [{"id": str(i), "vector": v.tolist()} for i, v in zip(ids, x)]
        if self.has_notes:  # the build's schema: noted is required, title and category nullable
            for row, label in zip(rows, labels or [None] * len(rows)):
                title, category = label if label is not None else (None, None)
                row.update(noted=label is not None, title=title,
                           category=None if label is None else list(category or []))
        with milvus_errors(f"write to {self.path} failed"):
            self.client.upsert(self.collection, rows)

    def delete(self, ids: Sequence[str]) -> int:
        present = [i for i in map(str, ids) if i in self]
        if present:
            self.client.delete(self.collection, ids=present)
        return len(present)

    def search(self, vectors: Any, k: int) -> tuple[list[list[str]], np.ndarray]:
        x = self._vectors(vectors, "query vectors")
        k = max(1, int(k))
        hits = self.client.search(self.collection, data=x.tolist(), limit=k, output_fields=["id"])
        ids, scores = [], np.full((len(x), k), -np.inf, dtype=np.float32)
        for q, row in enumerate(hits):
            ids.append([str(h["id"]) for h in row])
            scores[q, : len(row)] = [float(h["distance"]) for h in row]
        return ids, scores

    def vector_of(self, note_id: str) -> np.ndarray:
        rows = self.client.get(self.collection, ids=[note_id], output_fields=["vector"])
        if not rows:
            raise DataError(f"note id '{note_id}' is not in the store ({len(self):,} notes)", field="note_id")
        return np.asarray(rows[0]["vector"], dtype=np.float32)

    def compact(self, notes=None) -> None:
        self.client.flush(self.collection)

    # ---- what recommend asks of an index (NoteIndex's read interface) ----
    def neighbours_of(self, note_id: str, k: int = 10, exclude_self: bool = True,
                      category: str | None = None) -> list[tuple[str, float]]:
        exclude = {note_id} if exclude_self else set()
        return self.neighbours_of_vector(self.vector_of(note_id), k, exclude=exclude, category=category)

    def neighbours_of_vector(self, vector: Any, k: int = 10, exclude: set[str] = frozenset(),
                             category: str | None = None) -> list[tuple[str, float]]:
        """The k nearest notes, exclusions and the category filter applied by Milvus itself (a filtered exact
        search: the same notes as NoteIndex's over-fetch and filter)."""
        x = self._vectors(vector, "query vector")[:1]
        where = []
        if exclude:
            where.append(f"id not in {_literal(sorted(map(str, exclude)))}")
        if category is not None:
            if "category" not in self.fields:
                raise DataError("this Milvus collection has no notes attached, so it cannot filter by category "
                                "(build it with --notes notes.parquet)")
            where.append(f"array_contains(category, {_literal(category)})")
        with milvus_errors(f"search in {self.path} failed"):
            hits = self.client.search(self.collection, data=x.tolist(), limit=min(max(1, int(k)), MILVUS_TOPK),
                                      filter=" and ".join(where), output_fields=["id"])
        return [(str(h["id"]), float(h["distance"])) for h in hits[0]]

    def labels(self, ids: Sequence[str]) -> dict[str, tuple[str | None, list[str] | None]]:
        """(title, category) of each of `ids` that the build found in its notes table."""
        if not self.has_notes or not ids:
            return {}
        rows = self.client.get(self.collection, ids=list(ids), output_fields=["title", "category", "noted"])
        return {str(r["id"]): (r.get("title"), r.get("category")) for r in rows if r.get("noted")}

    @property
    def ids(self) -> list[str]:
        """Every stored note id (a scan of the collection: for hybrid retrieval's BM25 pool)."""
        return [str(r["id"]) for r in self._scan(["id"])]

    def categories(self) -> dict[str, list[str]]:
        """note id -> category of every note (a scan of the collection)."""
        if "category" not in self.fields:
            raise DataError("this Milvus collection has no notes attached, so it cannot filter by category "
                            "(build it with --notes notes.parquet)")
        return {str(r["id"]): list(r.get("category") or []) for r in self._scan(["category"]) if r.get("noted")}

    def _scan(self, fields: list[str], batch: int = 4096) -> Iterator[dict[str, Any]]:
        extra = ["noted"] if "noted" in self.fields and fields != ["id"] else []
        iterator = self.client.query_iterator(self.collection, batch_size=batch, output_fields=fields + extra)
        try:
            while rows := iterator.next():
                yield from rows
        finally:
            iterator.close()


def _literal(value: Any) -> str:
    """A string or list of strings as a Milvus filter literal (Milvus reads JSON's double-quoted escapes)."""
    return json.dumps(value, ensure_ascii=False)


def build_milvus(ids: Sequence[str], vectors: Any, meta: dict[str, Any], uri: str, collection: str = "notes",
                 notes: pa.Table | None = None, replace: bool = False, batch: int = 2048) -> MilvusStore:
    """Write `vectors` (rows L2-normalised here) under `ids` into the Milvus collection `collection` at `uri`,
    with titles and categories from `notes` and `meta` (the embedding metadata) as a collection property.

    Never mixes builds: an existing `collection` is refused unless `replace`. The vectors go into a new
    collection `<collection>__b<time>`, and `collection` becomes an alias of it only once it is complete
    (alter_alias: one step); the old collection is dropped after. A failure (or kill) before the swap leaves
    the old collection answering (a killed build leaves its half-written `__b` collection behind)."""
    x = _as_matrix(vectors, "vectors")
    ids = [str(i) for i in ids]
    _check_build(ids, x, meta, collection)
    client = milvus_client(uri)
    with milvus_errors(f"cannot build collection '{collection}' in Milvus at {uri}"):
        old = _current(client, collection)
        if old is not None and not replace:
            count = int(client.get_collection_stats(collection)["row_count"])
            raise ConfigError(f"Milvus at {uri} already has a collection '{collection}' ({count:,} vectors); "
                              f"pass --replace to rebuild it, or choose another --collection")
        physical = f"{collection}__b{time.time_ns()}"
        try:
            _fill(client, physical, ids, x, meta, _notes_subset(notes, ids), batch)
            _point(client, collection, physical, old)
        except BaseException:
            _drop_unused(client, physical, collection)
            raise
    return MilvusStore.connect(uri, collection)


def _drop_unused(client, physical: str, name: str) -> None:
    """Drop a failed build's collection unless `name` already answers from it; never mask the failure."""
    try:
        if client.has_collection(physical) and _current(client, name) != ("alias", physical):
            client.drop_collection(physical)
    except Exception:  # the build's own error is the one to report
        pass


def _check_build(ids: list[str], x: np.ndarray, meta: dict[str, Any], collection: str) -> None:
    if not _NAME.fullmatch(collection) or "__b" in collection:
        raise ConfigError(f"--collection '{collection}': Milvus names are letters, digits and _ (not starting "
                          f"with a digit), and '__b' is kept for notellm's build collections")
    if len(ids) != x.shape[0]:
        raise DataError(f"{len(ids)} note ids but {x.shape[0]} vectors")
    if x.shape[0] == 0:
        raise DataError("no vectors to index")
    if len(set(ids)) != len(ids):
        raise DataError("note ids of the embeddings are not unique")
    if meta.get("dim") not in (None, x.shape[1]):
        raise DataError(f"the embedding metadata says dimension {meta['dim']} but the vectors have {x.shape[1]}")


def _current(client, name: str) -> tuple[str, str] | None:
    """What `name` is now: ("alias", the collection it points to), ("collection", name), or None."""
    if name in client.list_aliases()["aliases"]:
        return "alias", client.describe_alias(name)["collection_name"]
    return ("collection", name) if client.has_collection(name) else None


def _fill(client, physical: str, ids: list[str], x: np.ndarray, meta: dict[str, Any], notes: pa.Table | None,
          batch: int) -> None:
    """Create `physical` (FLAT, inner product: exact) and write every vector; the metadata goes last."""
    from pymilvus import DataType, MilvusClient

    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=512)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=x.shape[1])
    labels: dict[str, tuple[Any, Any]] = {}
    if notes is not None:  # noted: the note was in the notes table (title and category may still be empty)
        schema.add_field("noted", DataType.BOOL)
        schema.add_field("title", DataType.VARCHAR, max_length=65535, nullable=True)
        schema.add_field("category", DataType.ARRAY, element_type=DataType.VARCHAR, max_capacity=64,
                         max_length=1024, nullable=True)
        labels = note_labels(notes, ids)
    params = client.prepare_index_params()
    params.add_index("vector", index_type="FLAT", metric_type="IP")
    client.create_collection(physical, schema=schema, index_params=params, consistency_level="Strong")
    for start in range(0, len(ids), batch):
        rows = [{"id": i, "vector": v.tolist()} for i, v in zip(ids[start: start + batch], x[start: start + batch])]
        if notes is not None:
            for row in rows:
                title, category = labels.get(row["id"], (None, None))
                row.update(noted=row["id"] in labels, title=title, category=category)
        client.insert(physical, rows)
    client.flush(physical)
    built = {"kind": "flat", "count": len(ids), "dim": int(x.shape[1]), "metric": METRIC, "embedding": meta,
             "notes_attached": notes is not None, "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    client.alter_collection_properties(physical, properties={MILVUS_META: json.dumps(built, default=str)})


def _point(client, name: str, physical: str, old: tuple[str, str] | None) -> None:
    """Make `name` answer from `physical`, then drop what it answered from before."""
    if old is None:
        client.create_alias(physical, name)
    elif old[0] == "alias":
        client.alter_alias(physical, name)  # one step: a reader sees the old collection or the new one
        client.drop_collection(old[1])
    else:  # a plain collection (e.g. one a server created): move it aside, alias, then drop it
        aside = f"{name}__b{time.time_ns()}_old"
        client.rename_collection(name, aside)
        try:
            client.create_alias(physical, name)
        except BaseException:
            client.rename_collection(aside, name)
            raise
        client.drop_collection(aside)


def check_backend(backend: str, folder: str | None, milvus_uri: str | None, folder_flag: str = "--index") -> None:
    """The CLI's backend flags agree: faiss reads/writes `folder`, milvus the collection at `milvus_uri`."""
    if backend not in BACKENDS:
        raise ConfigError(f"--backend must be one of {BACKENDS}, got '{backend}'")
    if backend == "faiss" and folder is None:
        raise ConfigError(f"--backend faiss needs {folder_flag} (an index folder)")
    if backend == "faiss" and milvus_uri is not None:
        raise ConfigError("--milvus-uri is for --backend milvus")
    if backend == "milvus" and not milvus_uri:
        raise ConfigError("--backend milvus needs --milvus-uri (a milvus-lite file such as runs/notes.db, "
                          "or http://host:19530)")
    if backend == "milvus" and folder is not None:
        raise ConfigError(f"{folder_flag} is for --backend faiss; --backend milvus uses the collection at --milvus-uri")


def open_index(backend: str, index_dir: str | None, milvus_uri: str | None = None,
               collection: str = "notes") -> NoteIndex | MilvusStore:
    """What `recommend` and `index info` read: an index folder, or a built Milvus collection (same methods:
    vector_of, neighbours_of_vector, labels, ids, categories, info, dim, meta)."""
    check_backend(backend, index_dir, milvus_uri)
    if backend == "faiss":
        return load_index(index_dir)
    return MilvusStore.connect(milvus_uri, collection)


def describe_index(index: NoteIndex | MilvusStore) -> dict[str, Any]:
    """What `notellm index info` shows of an index folder or a Milvus collection."""
    return index.details() if isinstance(index, MilvusStore) else index.info()


def as_store(index: Any) -> VectorStore | None:
    """The store for what the server was given: a NoteIndex becomes a FaissStore, a store stays itself."""
    if index is None or isinstance(index, VectorStore):
        return index
    if isinstance(index, NoteIndex):
        return FaissStore(index)
    raise TypeError(f"not a vector store or NoteIndex: {type(index).__name__}")
