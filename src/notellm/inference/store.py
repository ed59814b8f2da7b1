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
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Sequence

import numpy as np

from notellm.errors import DataError, NotellmError
from notellm.inference.index import NoteIndex, _as_matrix, build_index

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
    def upsert(self, ids: Sequence[str], vectors: Any) -> None:
        """Add or replace the vectors of `ids` (normalised here)."""

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
    def upsert(self, ids: Sequence[str], vectors: Any) -> None:
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


class MilvusStore(VectorStore):
    """A Milvus collection (id: varchar primary key, vector: float, metric IP on unit vectors).

    `uri` is a local file for milvus-lite (in-process; laptops and tests) or `http://host:19530` for a
    cluster. Exact search: the collection's default index on milvus-lite is a flat scan."""

    kind = "milvus"

    def __init__(self, client, collection: str, dim: int, meta: dict[str, Any] | None = None):
        self.client, self.collection, self._dim = client, collection, int(dim)
        self.meta = dict(meta or {})
        self.config = None
        self.notes = None

    @classmethod
    def open(cls, uri: str, dim: int, collection: str = "notes", meta: dict[str, Any] | None = None) -> "MilvusStore":
        try:
            from pymilvus import MilvusClient
        except ImportError as exc:
            raise NotellmError("the Milvus backend needs `pip install -e .[milvus]` (pymilvus, milvus-lite)") from exc
        client = MilvusClient(uri)
        if not client.has_collection(collection):
            client.create_collection(collection, dimension=int(dim), primary_field_name="id", id_type="string",
                                     max_length=512, metric_type="IP", auto_id=False, vector_field_name="vector")
        return cls(client, collection, dim, meta)

    @classmethod
    def from_index(cls, index: NoteIndex, uri: str, collection: str = "notes", batch: int = 2048) -> "MilvusStore":
        """A Milvus collection filled with the notes of a built index (replacing the collection)."""
        from pymilvus import MilvusClient

        client = MilvusClient(uri)
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

    def __len__(self) -> int:
        return int(self.client.get_collection_stats(self.collection)["row_count"])

    def __contains__(self, note_id: object) -> bool:
        return isinstance(note_id, str) and bool(self.client.get(self.collection, ids=[note_id], output_fields=["id"]))

    def upsert(self, ids: Sequence[str], vectors: Any) -> None:
        x = self._vectors(vectors)
        if len(ids) != len(x):
            raise DataError(f"{len(ids)} ids but {len(x)} vectors")
        self.client.upsert(self.collection, [{"id": str(i), "vector": v.tolist()} for i, v in zip(ids, x)])

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


def as_store(index: Any) -> VectorStore | None:
    """The store for what the server was given: a NoteIndex becomes a FaissStore, a store stays itself."""
    if index is None or isinstance(index, VectorStore):
        return index
    if isinstance(index, NoteIndex):
        return FaissStore(index)
    raise TypeError(f"not a vector store or NoteIndex: {type(index).__name__}")
