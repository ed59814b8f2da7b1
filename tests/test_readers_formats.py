"""Reader options for the files people have (issue 21): delimiter, headerless files, encoding detection,
list strings, open-style hashtags, timezone, bucketed counts, times from ObjectIds, author fields."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from notellm.data.readers import read_generic, read_mediacrawler, read_report, read_source
from notellm.data.schema import read_notes, write_notes
from notellm.errors import DataError


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def rows(table: pa.Table) -> dict[str, dict]:
    return {r["note_id"]: r for r in table.to_pylist()}


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


def test_tsv_semicolon_and_pipe_delimiters(tmp_path):
    tsv = write(tmp_path / "n.tsv", "note_id\ttitle\tlikes\na\tx, y\t3\n")
    assert rows(read_generic(tsv))["a"]["title"] == "x, y"
    assert rows(read_source("tsv", tsv).notes)["a"]["likes"] == 3
    for sep in (";", "|", "\t"):
        src = write(tmp_path / "n.csv", f"note_id{sep}title{sep}likes\na{sep}x, y{sep}3\nb{sep}z{sep}4\n")
        notes = read_generic(src)  # detected
        assert rows(notes)["a"]["title"] == "x, y" and rows(notes)["b"]["likes"] == 4
    src = write(tmp_path / "n.csv", "note_id;title\na;x,y\n")
    assert rows(read_generic(src, delimiter=";"))["a"]["title"] == "x,y"
    with pytest.raises(DataError, match="delimiter must be one of"):
        read_generic(src, delimiter=":")


def test_headerless_file_with_names(tmp_path):
    src = write(tmp_path / "n.csv", "a,first title,12\nb,second,7\n")
    notes = read_generic(src, header=False, names="note_id,title,likes")
    assert rows(notes)["b"] == {**rows(notes)["b"], "title": "second", "likes": 7} and notes.num_rows == 2
    notes = read_generic(src, {"note_id": "id"}, header=False, names=["id", "title", "likes"])
    assert notes.column("note_id").to_pylist() == ["a", "b"]
    with pytest.raises(DataError, match="needs its column names"):
        read_generic(src, header=False)
    with pytest.raises(DataError, match="must be distinct"):
        read_generic(src, header=False, names="id,id,x")
    with pytest.raises(DataError, match="wrong number of columns"):
        read_generic(src, header=False, names="note_id,title")


def test_encoding_detection_and_clear_error(tmp_path):
    for encoding, name in (("gb18030", "gb18030"), ("utf-16", "utf-16"), ("utf-8-sig", None)):
        src = write(tmp_path / "n.csv", "note_id,title\na,话题中文\n", encoding)
        notes = read_generic(src)
        assert rows(notes)["a"]["title"] == "话题中文"
        assert (f"text encoding detected: {name}" in read_report(notes)["notes"]) == (name is not None)
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"note_id,title\na,\xff\xfe\xfd\xff\n")
    with pytest.raises(DataError, match=r"not valid UTF-8 or GB18030: byte b'\\xff' at byte offset 16 \(line 2\)"):
        read_generic(bad)


def test_python_literal_and_json_list_strings(tmp_path):
    src = write(tmp_path / "n.csv", "note_id,hashtags,category\n"
                                    "a,\"['动画', '特摄']\",\"[\"\"Anime\"\", \"\"Live action\"\"]\"\n"
                                    "b,\"(\'x\',)\",a|b\nc,\"[os.system('x')]\",\n")
    got = rows(read_generic(src))
    assert got["a"]["hashtags"] == ["动画", "特摄"] and got["a"]["category"] == ["Anime", "Live action"]
    assert got["b"]["category"] == ["a", "b"]
    assert got["c"]["hashtags"] == ["os.system('x')"]  # not a literal: kept as text, never evaluated


def test_open_style_hashtags_extracted_and_removed(tmp_path):
    src = write(tmp_path / "n.csv",
                "note_id,title,content\n"
                "a,周末 #旅行 ,今天去海边 #海边 #夏天 真开心\n"
                "b,Weekend # travel tips,Went to the sea # beach and ## sunset ok\n"
                "c,t,C# is fine and #1 rank and http://x.y/#anchor and &#39;\n"
                "d,t,closed #美食[话题]# and open #甜品 end ## \n")
    got = rows(read_generic(src))
    assert got["a"]["hashtags"] == ["海边", "夏天", "旅行"]
    assert got["a"]["content"] == "今天去海边 真开心" and got["a"]["title"] == "周末"
    assert got["b"]["hashtags"] == ["beach", "sunset", "travel"]
    assert got["b"]["content"] == "Went to the sea and ok" and got["b"]["title"] == "Weekend tips"
    assert got["c"]["hashtags"] == [] and got["c"]["content"] == "C# is fine and #1 rank and http://x.y/#anchor and &#39;"
    assert got["d"]["hashtags"] == ["美食", "甜品"] and got["d"]["content"] == "closed and open end"
    assert rows(read_generic(src, open_hashtags=False))["a"]["content"] == "今天去海边 #海边 #夏天 真开心"


def test_timezone_option_and_assumption_note(tmp_path, caplog):
    src = write(tmp_path / "n.csv", "note_id,published_at\na,2024-06-06 20:00\nb,2024-06-06T20:00:00+02:00\n")
    with caplog.at_level("WARNING", logger="notellm.data.readers"):
        notes = read_generic(src)
    assert rows(notes)["a"]["published_at"] == utc(2024, 6, 6, 20)
    assert "assumed" in caplog.text and "1 'published_at' values have no timezone: read as UTC" in caplog.text
    notes = read_generic(src, timezone="Asia/Shanghai")
    assert rows(notes)["a"]["published_at"] == utc(2024, 6, 6, 12)  # Beijing is UTC+8
    assert rows(notes)["b"]["published_at"] == utc(2024, 6, 6, 18)  # an offset wins over the option
    assert "1 'published_at' values have no timezone: read as Asia/Shanghai" in read_report(notes)["notes"]
    with pytest.raises(DataError, match="unknown timezone 'Beijing'"):
        read_generic(src, timezone="Beijing")


def test_bucketed_counts_are_lower_bounds_with_a_flag(tmp_path):
    src = write(tmp_path / "n.csv", "note_id,likes,comments\na,1k+,3\nb,1w+,10万+\nc,250,7\n")
    notes = read_generic(src)
    got = rows(notes)
    assert [got[k]["likes"] for k in "abc"] == [1000, 10000, 250] and got["b"]["comments"] == 100000
    assert [got[k]["count_lower_bounds"] for k in "abc"] == [["likes"], ["likes", "comments"], []]
    notes_lines = read_report(notes)["notes"]
    assert "2 'likes' value(s) are bucketed (e.g. '1k+'): kept as lower bounds, listed in count_lower_bounds" in notes_lines
    out = write_notes(notes, tmp_path / "n.parquet")
    assert read_notes(out).column("count_lower_bounds").to_pylist() == [["likes"], ["likes", "comments"], []]
    assert "count_lower_bounds" not in read_generic(write(tmp_path / "m.csv", "note_id,likes\na,3\n")).column_names
    mc = write(tmp_path / "xhs.csv", "note_id,title,desc,liked_count\nn1,t,d,10万+\n")
    assert read_mediacrawler(mc).column("count_lower_bounds").to_pylist() == [["likes"]]


def test_published_at_from_object_id(tmp_path):
    oid = "665f3c2c000000000d00f1a2"  # 0x665f3c2c = 1717517356
    src = write(tmp_path / "n.csv", f"note_id,published_at\n{oid},\nplain,\nx1,2024-01-01 00:00\n")
    with pytest.raises(DataError, match=r"row 2, field 'note_id': 'plain' is not an ObjectId"):
        read_generic(src, published_at_from_id=True)
    notes = read_generic(src, published_at_from_id=True, on_bad_rows="skip")
    got = rows(notes)
    assert got[oid]["published_at"] == datetime.fromtimestamp(1717517356, timezone.utc)
    assert got["plain"]["published_at"] is None and got["x1"]["published_at"] == utc(2024, 1, 1)
    assert "published_at of 1 note(s) taken from the ObjectId in their note_id" in read_report(notes)["notes"]
    assert rows(read_generic(src))[oid]["published_at"] is None  # only when asked


def test_author_fields_in_the_note_table_and_popularity_features(tmp_path):
    from notellm.data.popularity import HAND_FEATURES, author_features_present, feature_frame

    src = write(tmp_path / "n.csv", "note_id,title,fans,notes_count,total_likes\na,x,1.2万,30,\nb,y,,,99\n")
    notes = read_generic(src, {"followers": "fans", "author_notes": "notes_count", "author_likes": "total_likes"})
    got = rows(notes)
    assert (got["a"]["followers"], got["a"]["author_notes"], got["b"]["author_likes"]) == (12000, 30, 99)
    assert got["b"]["followers"] is None and "fans" not in got["a"]["extra"]
    notes = read_notes(write_notes(notes, tmp_path / "n.parquet"))
    names = author_features_present(notes)
    assert names == ("log_followers", "log_author_notes", "log_author_likes")
    frame = feature_frame(notes, HAND_FEATURES + names)
    assert frame["log_followers"].tolist()[0] == pytest.approx(np.log1p(12000))
    assert np.isnan(frame["log_followers"].tolist()[1])
    plain = read_generic(write(tmp_path / "m.csv", "note_id,title\na,x\n"))
    assert author_features_present(plain) == () and "followers" not in plain.column_names
