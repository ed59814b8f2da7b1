"""Splits (notellm.data.split): ml-i2i-v1 items, new notes by time, disjoint authors; never any leakage."""

from __future__ import annotations

import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from notellm.data.schema import PAIR_SCHEMA, notes_to_table
from notellm.data.split import (divide_pairs, read_split, sort_ids, split_by_author, split_by_time,
                                split_items_ml_i2i)
from notellm.errors import DataError


def pair_table(pairs) -> pa.Table:
    return pa.table({"note_a": [p[0] for p in pairs], "note_b": [p[1] for p in pairs],
                     "score": [float(p[2]) for p in pairs]}, schema=PAIR_SCHEMA)


def clicks(note_ids, times=None) -> pa.Table:
    times = times if times is not None else list(range(len(note_ids)))
    return pa.table({"user_id": ["u"] * len(note_ids), "note_id": list(note_ids),
                     "timestamp": pa.array(times, pa.int64()).cast(pa.timestamp("s", tz="UTC"))})


def pair_notes(table: pa.Table) -> set[str]:
    return set(table.column("note_a").to_pylist()) | set(table.column("note_b").to_pylist())


def test_sort_ids_numeric_when_all_ids_are_integers():
    assert sort_ids(["10", "2", "1", "2"]) == ["1", "2", "10"]
    assert sort_ids(["b10", "b2", "a"]) == ["a", "b10", "b2"]


def test_ml_i2i_items_exactly_as_the_protocol():
    # ids "1".."10" sorted numerically; default_rng(0).permutation(10) = [4 6 2 7 3 5 9 0 8 1];
    # round(0.2 * 10) = 2 test items: positions 4 and 6 -> ids "5" and "7" (a string sort would give "4", "6")
    events = clicks([str(i) for i in (3, 10, 1, 5, 7, 2, 9, 4, 6, 8, 5)])
    pairs = pair_table([("5", "7", 0.5), ("7", "5", 0.5), ("5", "1", 0.3), ("1", "2", 0.2), ("3", "4", 0.1)])
    split = split_items_ml_i2i(events, pairs, test_fraction=0.2, seed=0)
    assert split.test_notes == ["5", "7"]
    assert split.train_notes == ["1", "2", "3", "4", "6", "8", "9", "10"]
    assert split.test_pairs.column("note_a").to_pylist() == ["5", "7"]
    assert split.train_pairs.column("note_a").to_pylist() == ["1", "3"]
    assert split.info["cross_pairs_dropped"] == 1 and split.info["clicked_items"] == 10
    assert split.info["test_notes_in_test_pairs"] == 2


def test_divide_pairs_counts_crossing_and_unknown_pairs():
    pairs = pair_table([("a", "b", 1), ("c", "d", 1), ("a", "c", 1), ("a", "x", 1)])
    train, test, counts = divide_pairs(pairs, test_notes={"c", "d"}, train_notes={"a", "b"})
    assert train.column("note_a").to_pylist() == ["a"] and test.column("note_a").to_pylist() == ["c"]
    assert counts == {"pairs": 4, "train_pairs": 1, "test_pairs": 1, "cross_pairs_dropped": 1,
                      "pairs_with_unknown_notes_dropped": 1}


def test_time_split_test_notes_are_new_notes():
    # first seen: a..j at t = 1..10 (a is clicked again at t=20: first seen stays 1); 30% -> h, i, j
    ids = list("abcdefghij")
    events = clicks(ids + ["a"], list(range(1, 11)) + [20])
    pairs = pair_table([("h", "i", 1), ("a", "b", 1), ("a", "j", 1), ("i", "j", 1)])
    split = split_by_time(None, events, pairs, test_fraction=0.3)
    assert split.test_notes == ["h", "i", "j"]
    assert split.info["cutoff_epoch_s"] == 7
    assert pair_notes(split.test_pairs) == {"h", "i", "j"} and pair_notes(split.train_pairs) == {"a", "b"}
    assert split.info["cross_pairs_dropped"] == 1


def test_time_split_ties_at_the_cutoff_stay_in_train_and_published_at_fills_in():
    # g and h are first seen at the same time as the cutoff note: strictly after the cutoff means train
    events = clicks(list("abcdefgh"), [1, 2, 3, 4, 5, 6, 7, 7])
    notes = notes_to_table([{"note_id": n} for n in "abcdefgh"] + [
        {"note_id": "z", "published_at": 100}, {"note_id": "q"}])  # z: no events, published late; q: undated
    split = split_by_time(notes, events, pair_table([]), test_fraction=0.4)
    # dated: a..h and z (9); round(0.4 * 9) = 4 test -> cutoff = time of the 5th oldest (e, t=5)
    assert split.test_notes == ["f", "g", "h", "z"]
    assert "q" in split.train_notes and split.info["undated_notes_in_train"] == 1
    # round(0.125 * 8) = 1 test note, but the newest (h, t=7) ties with the cutoff note g: none is new
    split = split_by_time(None, events, pair_table([]), test_fraction=0.125)
    assert split.test_notes == [] and split.info["cutoff_epoch_s"] == 7


def test_author_split_is_disjoint():
    rng = random.Random(5)
    rows = [{"note_id": f"n{i}", "author_id": f"a{rng.randrange(12)}" if i % 17 else None} for i in range(200)]
    notes = notes_to_table(rows)
    pairs = pair_table([(f"n{rng.randrange(200)}", f"n{rng.randrange(200)}", rng.random()) for _ in range(600)])
    split = split_by_author(notes, pairs, test_fraction=0.25, seed=3)
    author = {r["note_id"]: r["author_id"] for r in rows}
    test_authors = {author[n] for n in split.test_notes}
    train_authors = {author[n] for n in split.train_notes} - {None}
    assert not test_authors & train_authors
    assert len(test_authors) == split.info["test_authors"] == round(0.25 * 12)
    assert split.info["notes_without_author_in_train"] == 12  # n0, n17, ..., n187
    assert not set(split.test_notes) & pair_notes(split.train_pairs)
    assert pair_notes(split.test_pairs) <= set(split.test_notes)
    assert split.info["train_pairs"] + split.info["test_pairs"] + split.info["cross_pairs_dropped"] == 600


@pytest.mark.parametrize("method", ["items", "time"])
def test_no_leakage_on_random_data(method):
    rng = random.Random(1)
    ids = [f"n{i}" for i in range(300)]
    events = clicks([rng.choice(ids) for _ in range(2000)], [rng.randrange(1000) for _ in range(2000)])
    pairs = pair_table([(rng.choice(ids), rng.choice(ids), 1.0) for _ in range(3000)])
    split = (split_items_ml_i2i(events, pairs) if method == "items" else split_by_time(None, events, pairs))
    assert not set(split.test_notes) & set(split.train_notes)
    assert not set(split.test_notes) & pair_notes(split.train_pairs)
    assert pair_notes(split.test_pairs) <= set(split.test_notes)
    assert 0.15 < len(split.test_notes) / (len(split.test_notes) + len(split.train_notes)) < 0.25


def test_write_read_round_trip_and_cli(tmp_path):
    from notellm.cli import app

    events = clicks([str(i) for i in range(1, 11)])
    pairs = pair_table([("5", "7", 0.5), ("1", "2", 0.2)])
    split = split_items_ml_i2i(events, pairs)
    split.write(tmp_path / "direct")
    again = read_split(tmp_path / "direct")
    assert again.test_notes == split.test_notes and again.train_pairs.equals(split.train_pairs)
    assert (tmp_path / "direct" / "test_notes.txt").read_text() == "5\n7\n"

    pq.write_table(events, tmp_path / "events.parquet")
    pq.write_table(pairs, tmp_path / "pairs.parquet")
    result = CliRunner().invoke(app, ["data", "split", str(tmp_path / "pairs.parquet"), "--out",
                                      str(tmp_path / "cli"), "--events", str(tmp_path / "events.parquet")])
    assert result.exit_code == 0, result.output
    assert read_split(tmp_path / "cli").test_notes == ["5", "7"]


def test_bad_inputs():
    with pytest.raises(DataError, match="test_fraction"):
        split_items_ml_i2i(clicks(["a"]), pair_table([]), test_fraction=1.5)
    with pytest.raises(DataError, match="missing column"):
        split_by_author(notes_to_table([{"note_id": "a"}]).drop_columns(["author_id"]), pair_table([]))
    with pytest.raises(DataError, match="does not exist"):
        split_items_ml_i2i("/nonexistent/events.parquet", pair_table([]))


def test_time_split_reads_sub_second_timestamps():
    # microsecond timestamps (as the synthetic benchmark writes) are truncated to seconds for first-seen
    events = pa.table({"note_id": ["a", "b", "c"],
                       "timestamp": pa.array([1_500_000, 2_700_000, 9_100_000], pa.timestamp("us", tz="UTC"))})
    split = split_by_time(None, events, pair_table([("b", "c", 1.0)]), test_fraction=1 / 3)
    assert split.test_notes == ["c"] and split.info["cutoff_epoch_s"] == 2
