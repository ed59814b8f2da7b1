"""Training inputs by note id: the Note table as dicts (what prompts are built from) and pair tables checked
against it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from notellm.errors import DataError

PROMPT_COLUMNS = ["note_id", "title", "content", "hashtags", "category", "image_paths"]


class NoteStore:
    """Note-table rows by id, as dicts; `keys` gives each note a small integer (the GCL duplicate masks)."""

    def __init__(self, notes_path: str):
        from notellm.data.schema import read_notes

        if not notes_path:
            raise DataError("no Note table given (set notes=PATH)", field="notes")
        table = read_notes(notes_path)
        self.rows = {r["note_id"]: r for r in table.select(PROMPT_COLUMNS).to_pylist()}
        self.keys = {note_id: k for k, note_id in enumerate(self.rows)}
        self.path = notes_path

    def __getitem__(self, note_id: str) -> dict[str, Any]:
        return self.rows[note_id]

    def __len__(self) -> int:
        return len(self.rows)

    def check_ids(self, ids: list[str], source: str, field_name: str) -> None:
        for i, note_id in enumerate(ids, start=1):
            if note_id not in self.rows:
                raise DataError(f"note id '{note_id}' is not in the note table {self.path}",
                                file=source, row=i, field=field_name)


def read_pairs(path: str, store: NoteStore) -> list[tuple[str, str]]:
    """(note_a, note_b) of a pair table, every id checked against the Note table."""
    from notellm.data.schema import read_table_with

    if not path:
        raise DataError("no pair table given (set train_pairs=PATH)", field="train_pairs")
    if not Path(path).exists():
        raise DataError("pairs file does not exist", file=path)
    table = read_table_with(path, "pair", ["note_a", "note_b"])
    a = [str(x) if x is not None else None for x in table["note_a"].to_pylist()]
    b = [str(x) if x is not None else None for x in table["note_b"].to_pylist()]
    store.check_ids(a, path, "note_a")
    store.check_ids(b, path, "note_b")
    return list(zip(a, b))
