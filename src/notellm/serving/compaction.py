"""Compaction: the write log's records folded into the store they belong to, then the log emptied.

FAISS (`compact_index`): the index folder is rebuilt with every logged write and saved whole. Milvus
(`compact_milvus`): the writes are upserted / deleted in the collection and flushed, so Milvus holds them on disk.
Either way the log is truncated only after the store has them: a kill before leaves a log whose replay over
the compacted store is a no-op (puts are last-writer-wins upserts, deleting an absent note does nothing)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa

from notellm.inference.index import load_index
from notellm.inference.store import FaissStore, MilvusStore, VectorStore
from notellm.serving.writes import WriteLog, decode_vector

Label = tuple[str, list[str]]


def _apply_log(store: VectorStore, log: WriteLog) -> Iterator[tuple[str, Label | None]]:
    """Apply each logged write to `store`, in order; yield (id, (title, category)) for a put, (id, None) for a
    delete, so the caller can keep the labels a store does not hold itself."""
    for record in log.replay():
        note_id = record["id"]
        if record["op"] == "put":
            label = (record.get("title") or "", list(record.get("category") or []))
            store.upsert([note_id], decode_vector(record["vector"])[None, :], labels=[label])
            yield note_id, label
        else:
            store.delete([note_id])
            yield note_id, None


def compact_index(index_dir: str | Path, write_log: str | Path) -> dict[str, Any]:
    """Replay `write_log` over `index_dir`, save the rebuilt index there, then truncate the log. A kill before
    the save leaves both untouched; a kill between save and truncate leaves a log whose replay is a no-op."""
    index = load_index(index_dir)
    store = FaissStore(index)
    log = WriteLog(write_log)
    labels: dict[str, Label] = {}
    if index.notes is not None:
        labels = {str(r["note_id"]): (r.get("title") or "", list(r.get("category") or []))
                  for r in index.notes.to_pylist()}
    replayed = 0
    for note_id, label in _apply_log(store, log):
        if label is None:
            labels.pop(note_id, None)
        else:
            labels[note_id] = label
        replayed += 1
    ids, _ = store.live_vectors()
    notes = pa.Table.from_pylist([{"note_id": i, "title": labels.get(i, ("", []))[0],
                                   "category": labels.get(i, ("", []))[1]} for i in ids],
                                 schema=pa.schema([("note_id", pa.string()), ("title", pa.string()),
                                                   ("category", pa.list_(pa.string()))]))
    store.compact(notes=notes)
    store.base.save(index_dir)
    log.truncate()
    return {"replayed": replayed, "count": len(store)}


def compact_milvus(milvus_uri: str, collection: str, write_log: str | Path) -> dict[str, Any]:
    """Replay `write_log` into the Milvus collection, flush it (Milvus then keeps the writes on disk) and
    truncate the log, so a server that writes into Milvus does not grow its log for ever."""
    store = MilvusStore.connect(milvus_uri, collection)
    try:
        log = WriteLog(write_log)
        replayed = sum(1 for _ in _apply_log(store, log))
        store.compact()
        log.truncate()
        return {"replayed": replayed, "count": len(store)}
    finally:
        store.client.close()
