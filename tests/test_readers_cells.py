"""Bad cell values (issues 16 #6, 21): `on_bad_rows=error` stops with one DataError naming file, row, field and
value; `on_bad_rows=skip` leaves the cell empty, keeps the row, and counts it (row, field, value) in the report
and in the `notellm data import` summary."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from notellm.data.readers import read_generic, read_hackernews, read_mediacrawler, read_report, read_weibo, summarize
from notellm.errors import DataError


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


BAD_CELLS = ("id,title,likes,published_at,extra\n"
             "a,first,12,2024-06-06 12:01,{}\n"
             "b,second,Not Found,2024-06-07 08:00,{}\n"
             "c,third,7,Not Found,\"{\"\"k\"\": 1}\"\n"
             "d,fourth,3,2024-06-08,not json\n")


def test_bad_cell_is_an_error_naming_file_row_field_and_value(tmp_path):
    src = write(tmp_path / "n.csv", BAD_CELLS)
    with pytest.raises(DataError) as err:
        read_generic(src, {"note_id": "id"})
    assert (err.value.file, err.value.row, err.value.field) == (str(src), 3, "published_at")
    assert "'Not Found' is not a date-time" in str(err.value) and len(str(err.value).splitlines()) == 1
    counts_only = write(tmp_path / "m.csv", "id,likes\na,1\nb,Not Found\n")
    with pytest.raises(DataError, match=r"row 2, field 'likes': 'Not Found' is not a count"):
        read_generic(counts_only, {"note_id": "id"})


def test_bad_cells_skipped_and_counted_by_field(tmp_path):
    src = write(tmp_path / "n.csv", BAD_CELLS)
    notes = read_generic(src, {"note_id": "id"}, on_bad_rows="skip")
    rows = {r["note_id"]: r for r in notes.to_pylist()}
    assert list(rows) == ["a", "b", "c", "d"]  # no row lost for a bad cell
    assert rows["b"]["likes"] is None and rows["b"]["published_at"] is not None
    assert rows["c"]["published_at"] is None and rows["c"]["likes"] == 7
    assert rows["a"]["likes"] == 12 and rows["d"]["extra"] == "{}"
    report = read_report(notes)
    assert report["skipped"] == {"bad value in 'likes' (cell left empty)": 1,
                                 "bad value in 'published_at' (cell left empty)": 1,
                                 "bad value in 'extra' (cell left empty)": 1}
    assert report["examples"]["bad value in 'likes' (cell left empty)"] == [f"{src} row 2 ('Not Found')"]
    assert report["examples"]["bad value in 'extra' (cell left empty)"] == [f"{src} row 4 ('not json')"]
    lines = summarize(notes)["lines"]
    assert f"skipped 1: bad value in 'published_at' (cell left empty) (e.g. {src} row 3 ('Not Found'))" in lines


def test_out_of_range_times_are_bad_cells(tmp_path):
    src = write(tmp_path / "n.csv", "note_id,published_at\na,1717675260\nb,99999999999999999999\nc,1850-01-01\n")
    with pytest.raises(DataError, match=r"row 2, field 'published_at': .* is not a time between 1900 and 2200"):
        read_generic(src)
    notes = read_generic(src, on_bad_rows="skip")
    assert notes.column("published_at").null_count == 2
    assert read_report(notes)["skipped"] == {"bad value in 'published_at' (cell left empty)": 2}


def test_named_readers_skip_bad_cells(tmp_path):
    mc = write(tmp_path / "xhs_note.csv", "note_id,title,desc,time,liked_count\n"
                                          "n1,t,d,1717675260000,1.5万\nn2,t,d,yesterday,3\nn3,t,d,1717675260000,??\n")
    with pytest.raises(DataError, match=r"row 3, field 'liked_count': '\?\?' is not a count"):
        read_mediacrawler(mc)
    notes = read_mediacrawler(mc, on_bad_rows="skip")
    assert notes.column("likes").to_pylist() == [15000, 3, None]
    assert notes.column("published_at").null_count == 1
    hn = write(tmp_path / "hn.csv", "id,title,url,num_points,num_comments,author,created_at\n"
                                    "1,a,,5,1,x,9/25/2016 0:48\n2,b,,n/a,1,y,soon\n")
    notes = read_hackernews(hn, on_bad_rows="skip")
    assert notes.column("likes").to_pylist() == [5, None] and notes.column("published_at").null_count == 1
    assert sum(read_report(notes)["skipped"].values()) == 2
    wb = write(tmp_path / "weibo.csv", "pub_time,weibo_content,forward,comment,like,weibo_url\n"
                                       "5月12日 09:15,正文,1,2,3,https://weibo.com/1/A\n"
                                       "Not Found,正文,1,2,x,https://weibo.com/1/B\n")
    with pytest.raises(DataError, match=r"row 2, field 'like': 'x' is not a count"):
        read_weibo(wb)
    notes = read_weibo(wb, on_bad_rows="skip")
    assert notes.column("likes").to_pylist() == [3, None] and notes.column("published_at").null_count == 1


def test_cli_import_summary_prints_bad_cells(tmp_path):
    from notellm.cli import app

    src = write(tmp_path / "n.csv", BAD_CELLS)
    out = tmp_path / "notes.parquet"
    result = CliRunner().invoke(app, ["data", "import", "csv", str(src), "--out", str(out), "--map", "note_id=id",
                                      "--opt", "on_bad_rows=skip"])
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())  # rich wraps long lines
    assert f"skipped 1: bad value in 'likes' (cell left empty) (e.g. {src} row 2 ('Not Found'))" in output
    assert "'published_at' values have no timezone: read as UTC (assumed" in output
