"""The MIND reader (issue 21): news.tsv + behaviors.tsv as Microsoft documents them -> notes and click events
that `notellm pairs` and `notellm data split` read directly."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from notellm.data.readers import read_mind, read_report, read_source
from notellm.errors import DataError

ENT = '[{"Label": "PGA Tour", "Type": "O", "WikidataId": "Q910409", "Confidence": 1.0, "OccurrenceOffsets": [0], "SurfaceForms": ["PGA Tour"]}]'
NEWS = (f"N1\tsports\tgolf\tPGA Tour \"winners\"\tA golf story.\thttps://x/N1\t{ENT}\t[]\n"
        "N2\tnews\tnewsus\tSecond title\t\thttps://x/N2\t[]\t[]\n"
        "N3\tlifestyle\tfood\tThird\tAbout food.\thttps://x/N3\t[]\t[]\n"
        "N4\tnews\tnewsworld\tFourth\tWorld.\thttps://x/N4\t[]\t[]\n"
        "N5\tvideo\tvideo\t\t\thttps://x/N5\t[]\t[]\n")
BEHAVIORS = ("1\tU1\t11/15/2019 8:55:22 AM\tN1 N2\tN3-1 N4-0\n"
             "2\tU2\t11/15/2019 9:00:00 PM\tN2\tN1-1 N3-1 N5-1\n"
             "3\tU1\t11/15/2019 10:00:00 AM\tN1 N2\tN4-1 N9-1\n"
             "4\tU3\t11/14/2019 12:30:00 AM\t\tN3-0\n")


def mind(folder: Path, news: str = NEWS, behaviors: str = BEHAVIORS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "news.tsv").write_text(news, encoding="utf-8")
    (folder / "behaviors.tsv").write_text(behaviors, encoding="utf-8")
    return folder


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


def test_mind_notes_and_events(tmp_path):
    notes, events = read_mind(mind(tmp_path / "MINDsmall_train"))
    rows = {r["note_id"]: r for r in notes.to_pylist()}
    assert rows["N1"]["title"] == 'PGA Tour "winners"' and rows["N1"]["content"] == "A golf story."
    assert rows["N1"]["category"] == ["sports", "golf"] and '"title_entities": ["Q910409"]' in rows["N1"]["extra"]
    assert rows["N2"]["content"] == "" and notes.num_rows == 5
    got = [(e["user_id"], e["note_id"], e["source"], e["timestamp"], e["session_id"]) for e in events.to_pylist()]
    assert got == [
        ("U1", "N1", "history", utc(2019, 11, 15, 8, 55, 22), "history-U1"),
        ("U1", "N2", "history", utc(2019, 11, 15, 8, 55, 22), "history-U1"),
        ("U1", "N3", "impression", utc(2019, 11, 15, 8, 55, 22), "1"),
        ("U1", "N4", "impression", utc(2019, 11, 15, 10), "3"),
        ("U2", "N2", "history", utc(2019, 11, 15, 21), "history-U2"),
        ("U2", "N1", "impression", utc(2019, 11, 15, 21), "2"),
        ("U2", "N3", "impression", utc(2019, 11, 15, 21), "2"),
        ("U2", "N5", "impression", utc(2019, 11, 15, 21), "2"),
    ]
    assert read_report(events)["skipped"] == {"event names a note that is not in the note table": 1}  # N9
    _, everything = read_mind(tmp_path / "MINDsmall_train", clicks_only=False, timezone="America/New_York")
    assert everything.num_rows == 10 and sorted(set(everything.column("click").to_pylist())) == [0, 1]
    assert everything.column("timestamp").to_pylist()[0] == utc(2019, 11, 15, 13, 55, 22)
    assert read_source("mind", tmp_path).events.num_rows == 8  # the folder above MINDsmall_train works too


def test_mind_bad_values(tmp_path):
    folder = mind(tmp_path / "m", behaviors=BEHAVIORS + "5\tU4\tyesterday\tN1\tN2-1\n6\tU5\t11/15/2019 1:00:00 AM\t\tN2-x\n")
    with pytest.raises(DataError, match=r"behaviors.tsv, row 5, field 'Time': 'yesterday' is not a date-time"):
        read_mind(folder)
    _, events = read_mind(folder, on_bad_rows="skip")
    skipped = read_report(events)["skipped"]
    assert skipped["bad value in 'Time' (cell left empty)"] == 1
    assert skipped["bad value in 'Impressions' (cell left empty)"] == 1
    assert skipped["event without a readable time (its behaviours row had a bad Time)"] == 2
    with pytest.raises(DataError, match="no MIND files"):
        read_mind(tmp_path / "nothing_here")
    bad_news = mind(tmp_path / "b", news=NEWS + "N6\tnews\n")
    with pytest.raises(DataError, match=r"news.tsv, row 6: wrong number of columns: expected 8, found 2"):
        read_mind(bad_news)


def test_mind_events_feed_pairs_and_split(tmp_path):
    from notellm.cli import app

    runner = CliRunner()
    folder = mind(tmp_path / "m")
    notes, events, pairs = tmp_path / "notes.parquet", tmp_path / "events.parquet", tmp_path / "pairs.parquet"
    result = runner.invoke(app, ["data", "import", "mind", str(folder), "--out", str(notes),
                                 "--events-out", str(events)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["pairs", str(events), "--out", str(pairs), "top_k=null", "max_score=null"])
    assert result.exit_code == 0, result.output
    mined = {(r["note_a"], r["note_b"]) for r in pq.read_table(pairs).to_pylist()}
    # sessions from session_id: U1's history (N1 N2) is one, each impression another (U2's: N1 N3 N5)
    assert mined == {("N1", "N2"), ("N1", "N3"), ("N1", "N5"), ("N3", "N5")}
    result = runner.invoke(app, ["pairs", str(events), "--out", str(tmp_path / "all.parquet"), "top_k=null",
                                 "max_score=null", "sessions=none"])
    assert result.exit_code == 0, result.output
    assert ("N3", "N4") in {(r["note_a"], r["note_b"]) for r in pq.read_table(tmp_path / "all.parquet").to_pylist()}
    result = runner.invoke(app, ["data", "split", str(pairs), "--out", str(tmp_path / "split"), "--events",
                                 str(events), "--notes", str(notes), "--test-fraction", "0.25"])
    assert result.exit_code == 0, result.output
    info = __import__("json").loads((tmp_path / "split" / "split.json").read_text())
    assert info["clicked_items_without_text"] == 1 and info["clicked_items"] == 4  # N5 has no text
    split_notes = (tmp_path / "split" / "train_notes.txt").read_text().split() + \
        (tmp_path / "split" / "test_notes.txt").read_text().split()
    assert sorted(split_notes) == ["N1", "N2", "N3", "N4"]
