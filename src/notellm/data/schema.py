"""The Note table: one row per note, the one format every stage reads (see DESIGN.md).

Also the Event table (user behaviour) and the Pair table (mined co-occurring notes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from notellm.errors import DataError
from notellm.io import write_parquet

NOTE_SCHEMA = pa.schema(
    [
        pa.field("note_id", pa.string(), nullable=False),
        pa.field("title", pa.string()),
        pa.field("content", pa.string()),
        pa.field("hashtags", pa.list_(pa.string())),
        pa.field("category", pa.list_(pa.string())),  # coarse to fine
        pa.field("image_paths", pa.list_(pa.string())),
        pa.field("author_id", pa.string()),
        pa.field("published_at", pa.timestamp("s", tz="UTC")),
        pa.field("likes", pa.int64()),
        pa.field("collects", pa.int64()),
        pa.field("comments", pa.int64()),
        pa.field("shares", pa.int64()),
        pa.field("impressions", pa.int64()),
        pa.field("extra", pa.string()),  # JSON object with source-specific fields
    ]
)

# Event tables may carry more columns; pair mining uses an optional int64 `seq` (file order) to order events
# with equal timestamps.
EVENT_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("note_id", pa.string(), nullable=False),
        pa.field("timestamp", pa.timestamp("s", tz="UTC")),
        pa.field("session_id", pa.string()),
    ]
)

PAIR_SCHEMA = pa.schema(
    [
        pa.field("note_a", pa.string(), nullable=False),
        pa.field("note_b", pa.string(), nullable=False),
        pa.field("score", pa.float64(), nullable=False),
    ]
)

NOTE_COLUMNS = NOTE_SCHEMA.names

# Optional Note columns: a table has them only where its source does (readers add them, `read_notes` keeps
# them, every other stage may ignore them). Author-level counts as the source saw them, and which of the
# note's counts are a bucket's lower bound (`1w+` -> likes 10000 with "likes" listed here).
OPTIONAL_NOTE_FIELDS = (
    pa.field("followers", pa.int64()),         # the author's followers
    pa.field("author_notes", pa.int64()),      # the author's number of notes
    pa.field("author_likes", pa.int64()),      # the author's total likes (and collects, where the source sums them)
    pa.field("count_lower_bounds", pa.list_(pa.string())),
)
OPTIONAL_NOTE_COLUMNS = tuple(f.name for f in OPTIONAL_NOTE_FIELDS)
AUTHOR_COUNT_COLUMNS = ("followers", "author_notes", "author_likes")
_LIST_COLUMNS = ("hashtags", "category", "image_paths")


def empty_note(note_id: str) -> dict[str, Any]:
    """A Note row with every field present (lists empty, counts unknown)."""
    row: dict[str, Any] = {name: None for name in NOTE_COLUMNS}
    row.update(note_id=note_id, title="", content="", hashtags=[], category=[], image_paths=[])
    return row


def notes_to_table(rows: Iterable[dict[str, Any]], source: str = "<memory>") -> pa.Table:
    """Validate rows (unique, non-empty note ids) and build an Arrow table with NOTE_SCHEMA."""
    rows = list(rows)
    seen: dict[str, int] = {}
    for i, row in enumerate(rows, start=1):
        note_id = row.get("note_id")
        if note_id is None or str(note_id).strip() == "":
            raise DataError("note id is missing", file=source, row=i, field="note_id")
        note_id = str(note_id)
        if note_id in seen:
            raise DataError(
                f"duplicate note id '{note_id}' (first seen in row {seen[note_id]})",
                file=source, row=i, field="note_id",
            )
        seen[note_id] = i
        row["note_id"] = note_id
        for col in _LIST_COLUMNS:
            if row.get(col) is None:
                row[col] = []
    columns = {name: [row.get(name) for row in rows] for name in NOTE_COLUMNS}
    return pa.table(columns, schema=NOTE_SCHEMA)


def note_table_for_writing(table: pa.Table) -> pa.Table:
    """The Note table as it is stored: NOTE_SCHEMA's columns and types, then the optional columns it has."""
    return table.select(list(NOTE_COLUMNS) + [c for c in OPTIONAL_NOTE_COLUMNS if c in table.column_names]) \
        .cast(note_schema(table))


def note_schema(table: pa.Table) -> pa.Schema:
    """NOTE_SCHEMA plus the optional Note columns `table` has (in OPTIONAL_NOTE_FIELDS order)."""
    return pa.schema(list(NOTE_SCHEMA) + [f for f in OPTIONAL_NOTE_FIELDS if f.name in table.column_names])


def write_notes(table: pa.Table, path: str | Path) -> Path:
    return write_parquet(note_table_for_writing(table), path)


def read_table_with(path: str | Path, kind: str, required: Sequence[str]) -> pa.Table:
    """Read a Parquet table; a missing file or required column is an error naming the file."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{kind} table does not exist", file=str(path))
    if path.is_dir() and not any(path.glob("*.parquet")):
        raise DataError(f"expected a Parquet {kind} table, found a folder without .parquet files", file=str(path))
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"not a readable Parquet {kind} table ({first})", file=str(path)) from None
    missing = [c for c in required if c not in table.column_names]
    if missing:
        raise DataError(f"not a {kind} table: missing column(s) {missing}", file=str(path))
    return table


def read_notes(path: str | Path) -> pa.Table:
    """Read a Note table; a missing required column is an error naming the file."""
    table = read_table_with(path, "note", ("note_id", "title", "content"))
    for name in NOTE_COLUMNS:  # tolerate tables written by other tools that omit optional columns
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(len(table), NOTE_SCHEMA.field(name).type))
    try:
        return note_table_for_writing(table)
    except (pa.ArrowException, ValueError) as exc:
        bad = next((f.name for f in note_schema(table) if not _castable(table.column(f.name), f.type)), None)
        raise DataError(f"a column does not have the Note table's type ({str(exc).splitlines()[0]})",
                        file=str(path), field=bad) from None


def _castable(column: pa.ChunkedArray, target: pa.DataType) -> bool:
    try:
        column.cast(target)
        return True
    except (pa.ArrowException, ValueError):
        return False


def read_events(path: str | Path) -> pa.Table:
    table = read_table_with(path, "event", ("user_id", "note_id"))
    for field in EVENT_SCHEMA:  # Parquet stores seconds as milliseconds: cast the known columns back
        if field.name in table.column_names:
            i = table.column_names.index(field.name)
            table = table.set_column(i, field, table.column(i).cast(field.type))
    return table
