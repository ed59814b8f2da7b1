"""Compaction: the index folder rebuilt with every logged write folded in, then the log emptied."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa

from notellm.inference.index import load_index
from notellm.inference.store import FaissStore
from notellm.serving.writes import WriteLog, decode_vector


def compact_index(index_dir: str | Path, write_log: str | Path) -> dict[str, Any]:
    """Replay `write_log` over `index_dir`, save the rebuilt index there, then truncate the log. A kill before
    the save leaves both untouched; a kill between save and truncate leaves a log whose replay is a no-op."""
    index = load_index(index_dir)
    store = FaissStore(index)
    log = WriteLog(write_log)
    rows = {}
    if index.notes is not None:
        rows = {str(r["note_id"]): r for r in index.notes.to_pylist()}
    replayed = 0
    for record in log.replay():
        note_id = record["id"]
        if record["op"] == "put":
            store.upsert([note_id], decode_vector(record["vector"])[None, :])
            rows[note_id] = {"note_id": note_id, "title": record.get("title") or "",
                             "category": list(record.get("category") or [])}
        else:
            store.delete([note_id])
            rows.pop(note_id, None)
        replayed += 1
    ids, _ = store.live_vectors()
    notes = pa.Table.from_pylist([{"note_id": i, "title": rows.get(i, {}).get("title") or "",
                                   "category": list(rows.get(i, {}).get("category") or [])} for i in ids],
                                 schema=pa.schema([("note_id", pa.string()), ("title", pa.string()),
                                                   ("category", pa.list_(pa.string()))]))
    store.compact(notes=notes)
    store.base.save(index_dir)
    log.truncate()
    return {"replayed": replayed, "count": len(store)}
