"""Train/test splits of notes and their pairs, with no leakage: test notes are never in a training pair.

Every split decides which notes are test notes; then a pair goes to train when both its notes are train
notes, to test when both are test notes, and nowhere when it crosses (counted in `info`, never silently).

- `split_items_ml_i2i`: protocol ml-i2i-v1 exactly: the sorted ids of all clicked items, permuted by
  `numpy.random.default_rng(seed)`, the first round(20%) are test items.
- `split_by_time`: test notes are NEW notes, first seen strictly after a cutoff time chosen so that about
  `test_fraction` of the dated notes are test notes.
- `split_by_author`: authors (not notes) are drawn for the test side, so no author has notes on both sides.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from notellm.data.schema import PAIR_SCHEMA
from notellm.errors import DataError
from notellm.io import atomic_path, write_json, write_parquet

TableSource = Union[str, Path, pa.Table]


@dataclass
class Split:
    """Train/test notes and pairs, and what the split counted on the way (`info`)."""

    method: str
    train_notes: list[str]
    test_notes: list[str]
    train_pairs: pa.Table
    test_pairs: pa.Table
    info: dict[str, Any] = field(default_factory=dict)

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        """train_pairs.parquet, test_pairs.parquet, train_notes.txt, test_notes.txt (one id per line) and
        split.json (method and counts), each written atomically."""
        out = Path(out_dir)
        paths = {
            "train_pairs": write_parquet(self.train_pairs, out / "train_pairs.parquet"),
            "test_pairs": write_parquet(self.test_pairs, out / "test_pairs.parquet"),
            "train_notes": _write_lines(self.train_notes, out / "train_notes.txt"),
            "test_notes": _write_lines(self.test_notes, out / "test_notes.txt"),
        }
        paths["info"] = write_json({"method": self.method, **self.info}, out / "split.json")
        return paths


def read_split(folder: str | Path) -> Split:
    """Read a folder written by `Split.write`."""
    folder = Path(folder)
    info_path = folder / "split.json"
    if not info_path.exists():
        raise DataError("not a split folder (no split.json)", file=str(folder))
    info = json.loads(info_path.read_text(encoding="utf-8"))
    return Split(
        method=info.pop("method"),
        train_notes=_read_lines(folder / "train_notes.txt"),
        test_notes=_read_lines(folder / "test_notes.txt"),
        train_pairs=pq.read_table(folder / "train_pairs.parquet").cast(PAIR_SCHEMA),
        test_pairs=pq.read_table(folder / "test_pairs.parquet").cast(PAIR_SCHEMA),
        info=info,
    )


# ---- helpers ------------------------------------------------------------------------------------------------
def _write_lines(ids: Iterable[str], path: Path) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")
    return path


def _read_lines(path: Path) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line]


def _table(source: TableSource, what: str, required: Iterable[str]) -> pa.Table:
    if isinstance(source, pa.Table):
        table, name = source, f"<{what} table>"
    else:
        from notellm.data.schema import read_table_with

        table, name = read_table_with(source, what, ()), str(source)  # a one-line error for a non-Parquet file
    missing = [c for c in required if c not in table.column_names]
    if missing:
        raise DataError(f"not a {what} table: missing column(s) {missing}", file=name)
    return table


def _pairs(source: TableSource) -> pa.Table:
    table = _table(source, "pair", PAIR_SCHEMA.names)
    return table.select(PAIR_SCHEMA.names).cast(PAIR_SCHEMA).replace_schema_metadata(None)


def _ids(column: pa.ChunkedArray | pa.Array) -> list[str]:
    return [str(v) for v in column.cast(pa.string()).to_pylist() if v is not None]


def sort_ids(ids: Iterable[str]) -> list[str]:
    """Ids in ascending order: numerically when every id is a decimal integer (MovieLens movieId: "2" before
    "10", as the protocol sorts movie ids), else as strings."""
    ids = sorted(set(ids))
    if ids and all(i.isdigit() for i in ids):
        return sorted(ids, key=int)
    return ids


def divide_pairs(pairs: pa.Table, test_notes: set[str], train_notes: set[str]) -> tuple[pa.Table, pa.Table, dict]:
    """(train pairs: both ends train, test pairs: both ends test, counts of the pairs that go nowhere)."""
    a, b = pairs.column("note_a"), pairs.column("note_b")
    test_set, train_set = pa.array(sorted(test_notes), pa.string()), pa.array(sorted(train_notes), pa.string())
    a_test, b_test = pc.is_in(a, value_set=test_set), pc.is_in(b, value_set=test_set)
    a_train, b_train = pc.is_in(a, value_set=train_set), pc.is_in(b, value_set=train_set)
    train_mask = pc.and_(a_train, b_train)
    test_mask = pc.and_(a_test, b_test)
    known = pc.and_(pc.or_(a_test, a_train), pc.or_(b_test, b_train))
    counts = {
        "pairs": pairs.num_rows,
        "train_pairs": int(pc.sum(train_mask).as_py() or 0),
        "test_pairs": int(pc.sum(test_mask).as_py() or 0),
        "cross_pairs_dropped": int(pc.sum(pc.and_(known, pc.invert(pc.or_(train_mask, test_mask)))).as_py() or 0),
        "pairs_with_unknown_notes_dropped": int(pc.sum(pc.invert(known)).as_py() or 0),
    }
    return pairs.filter(train_mask), pairs.filter(test_mask), counts


def _finish(method: str, all_notes: list[str], test: set[str], pairs: pa.Table, info: dict[str, Any]) -> Split:
    train = set(all_notes) - test
    train_pairs, test_pairs, counts = divide_pairs(pairs, test, train)
    test_in_pairs = set(_ids(test_pairs.column("note_a"))) | set(_ids(test_pairs.column("note_b")))
    info = {**info, "notes": len(all_notes), "train_notes": len(train), "test_notes": len(test),
            "test_notes_in_test_pairs": len(test_in_pairs), **counts}
    return Split(method, sort_ids(train), sort_ids(test), train_pairs, test_pairs, info)


def _check_fraction(test_fraction: float) -> None:
    if not 0.0 <= test_fraction <= 1.0:
        raise DataError(f"test_fraction must be in [0, 1], got {test_fraction}")


# ---- the splits -----------------------------------------------------------------------------------------------
def split_items_ml_i2i(events: TableSource, pairs: TableSource, test_fraction: float = 0.2,
                       seed: int = 0, notes: TableSource | None = None) -> Split:
    """Protocol ml-i2i-v1: the sorted ids of all clicked items (`sort_ids`), permuted by
    `numpy.random.default_rng(seed)`; the first round(test_fraction * n) are test (new) items.

    With `notes`, only clicked items that are notes with text (a title or content) are split (MIND's
    behaviours name news that its news.tsv lacks or has without text); the others are counted in info."""
    _check_fraction(test_fraction)
    clicks = _table(events, "event", ("note_id",))
    items = sort_ids(_ids(clicks.column("note_id")))
    info: dict[str, Any] = {"protocol": "ml-i2i-v1", "seed": seed, "test_fraction": test_fraction}
    if notes is not None:
        with_text = _notes_with_text(_table(notes, "note", ("note_id",)))
        info["clicked_items_without_text"] = sum(1 for i in items if i not in with_text)
        items = [i for i in items if i in with_text]
    order = np.random.default_rng(seed).permutation(len(items))
    n_test = int(round(test_fraction * len(items)))
    test = {items[i] for i in order[:n_test]}
    info["clicked_items"] = len(items)
    return _finish("items_ml_i2i", items, test, _pairs(pairs), info)


def _notes_with_text(notes: pa.Table) -> set[str]:
    """Ids of notes whose title or content is not blank."""
    ids = _ids(notes.column("note_id"))
    texts = [notes.column(c).to_pylist() if c in notes.column_names else [None] * notes.num_rows
             for c in ("title", "content")]
    return {i for i, t, c in zip(ids, *texts) if (t or "").strip() or (c or "").strip()}


def _first_seen(events: pa.Table | None) -> dict[str, int]:
    """Note id -> its earliest event time (epoch seconds)."""
    if events is None:
        return {}
    if "timestamp" not in events.column_names:
        raise DataError("events have no timestamp column", field="timestamp")
    ts = events.column("timestamp")
    if pa.types.is_timestamp(ts.type):  # whole seconds (truncating sub-second parts is fine for first-seen)
        ts = pc.cast(pc.cast(ts, pa.timestamp("s", tz=ts.type.tz), safe=False), pa.int64())
    table = pa.table({"note_id": events.column("note_id").cast(pa.string()), "t": ts.cast(pa.int64())})
    firsts = table.group_by("note_id").aggregate([("t", "min")])
    return {k: v for k, v in zip(firsts.column("note_id").to_pylist(), firsts.column("t_min").to_pylist())
            if k is not None and v is not None}


def split_by_time(notes: TableSource | None, events: TableSource | None, pairs: TableSource,
                  test_fraction: float = 0.2) -> Split:
    """Test notes are NEW notes: first seen (earliest event; `published_at` for notes without events)
    strictly after a cutoff time, chosen as the time of the latest note of the oldest (1 - test_fraction)
    share. Notes seen at the cutoff time stay in train, so the test share can be a little smaller. Notes
    with no time at all go to train and are counted (`undated_notes_in_train`)."""
    _check_fraction(test_fraction)
    pair_table = _pairs(pairs)
    event_table = _table(events, "event", ("note_id", "timestamp")) if events is not None else None
    seen = _first_seen(event_table)
    all_notes = set(seen)
    unlisted = 0
    if notes is not None:
        note_table = _table(notes, "note", ("note_id",))
        ids = _ids(note_table.column("note_id"))
        all_notes = set(ids)
        if "published_at" in note_table.column_names:
            published = note_table.column("published_at")
            if pa.types.is_timestamp(published.type):
                published = pc.cast(published, pa.timestamp("s", tz=published.type.tz), safe=False)
            published = pc.cast(published, pa.int64())
            for note_id, t in zip(ids, published.to_pylist()):
                if note_id not in seen and t is not None:
                    seen[note_id] = t
        unlisted = len(set(seen) - all_notes)
        seen = {k: v for k, v in seen.items() if k in all_notes}
    else:
        all_notes |= set(_ids(pair_table.column("note_a"))) | set(_ids(pair_table.column("note_b")))
    dated = sorted(seen.items(), key=lambda kv: (kv[1], kv[0]))
    n_train = len(dated) - int(round(test_fraction * len(dated)))
    test: set[str] = set()
    cutoff = None
    if n_train < len(dated):
        cutoff = dated[n_train - 1][1] if n_train > 0 else dated[0][1] - 1
        test = {note_id for note_id, t in dated if t > cutoff}
    info = {"test_fraction": test_fraction, "cutoff_epoch_s": cutoff,
            "undated_notes_in_train": len(all_notes) - len(seen), "event_notes_not_in_note_table": unlisted}
    return _finish("time", sort_ids(all_notes), test, pair_table, info)


def split_by_author(notes: TableSource, pairs: TableSource, test_fraction: float = 0.2, seed: int = 0) -> Split:
    """Authors are drawn for the test side: the sorted author ids permuted by `default_rng(seed)`, the first
    round(test_fraction * authors) are test authors and all their notes are test notes, so no author is on
    both sides. Notes without an author go to train and are counted (`notes_without_author_in_train`)."""
    _check_fraction(test_fraction)
    note_table = _table(notes, "note", ("note_id", "author_id"))
    ids = _ids(note_table.column("note_id"))
    authors = note_table.column("author_id").cast(pa.string()).to_pylist()
    known_authors = sorted({a for a in authors if a not in (None, "")})
    order = np.random.default_rng(seed).permutation(len(known_authors))
    test_authors = {known_authors[i] for i in order[:int(round(test_fraction * len(known_authors)))]}
    test = {note_id for note_id, author in zip(ids, authors) if author in test_authors}
    info = {"seed": seed, "test_fraction": test_fraction, "authors": len(known_authors),
            "test_authors": len(test_authors),
            "notes_without_author_in_train": sum(1 for a in authors if a in (None, ""))}
    return _finish("author", ids, test, _pairs(pairs), info)
