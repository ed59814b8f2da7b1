"""`notellm data inspect` (issue 21): for each hand-made shape it detects the layout and proposes a command,
and that exact command imports the file with the expected values."""

from __future__ import annotations

import shlex
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from notellm.data.schema import read_notes
from notellm.data.sniff import inspect_source
from notellm.errors import DataError

OID = "665f3c2c000000000d00f1a2"


def _movielens(folder: Path) -> None:
    folder.mkdir()
    (folder / "movies.csv").write_text("movieId,title,genres\n1,A (1995),Comedy\n2,B (1996),Drama\n")
    (folder / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,100\n1,2,5.0,200\n")


def _mind(folder: Path) -> None:
    folder.mkdir()
    (folder / "news.tsv").write_text("N1\tnews\tus\tFirst \"title\"\tAbstract one.\thttp://x\t[]\t[]\n"
                                     "N2\tsports\tgolf\tSecond\tAbstract two.\thttp://y\t[]\t[]\n")
    (folder / "behaviors.tsv").write_text("1\tU1\t11/15/2019 8:55:22 AM\tN1\tN2-1\n")


# name -> (writer of the file or folder, expected fmt, note id -> {field: value} checked after import)
SHAPES = {
    "synonyms.csv": (lambda p: p.write_text("id,headline,body,tags,like_count,create_time\n"
                                            "1,Hello,A body #x,\"['动画', '特摄']\",1w+,2024-06-06 12:00\n"
                                            "2,Hi,Other,[],3,2024-06-07 12:00\n"),
                     "csv", {"1": {"title": "Hello", "hashtags": ["动画", "特摄"], "likes": 10000}}),
    "semicolon.csv": (lambda p: p.write_text("note_id;title;content;likes\na;x, y;body;3\nb;z;w;4\n"),
                      "csv", {"a": {"title": "x, y", "likes": 3}}),
    "pipe.txt": (lambda p: p.write_text("note_id|title|likes\na|x|3\nb|y|4\n"), "csv", {"b": {"likes": 4}}),
    "tabs.csv": (lambda p: p.write_text("note_id\ttitle\tcomments\na\tx, y\t5\n"), "tsv",
                 {"a": {"title": "x, y", "comments": 5}}),
    "plain.tsv": (lambda p: p.write_text("id\ttitle\tcontent\n7\tT\tC #话题 ok\n"), "tsv",
                  {"7": {"content": "C ok", "hashtags": ["话题"]}}),
    "headerless.csv": (lambda p: p.write_text("a1,Short,A much longer body of text,12\n"
                                              "b2,Tiny,Another longer body text,7\n"), "csv",
                       {"a1": {"title": "Short", "content": "A much longer body of text"}}),
    "gbk.csv": (lambda p: p.write_bytes("note_id,title\n1,中文标题\n".encode("gbk")), "csv",
                {"1": {"title": "中文标题"}}),
    "objectid.csv": (lambda p: p.write_text(f"_id,title\n{OID},x\n"), "csv", {OID: {"title": "x"}}),
    "records.jsonl": (lambda p: p.write_text('{"post_id": "p1", "text": "body", "likes": "1.5万"}\n'
                                             '{"post_id": "p2", "text": "more", "likes": 2}\n'),
                      "jsonl", {"p1": {"content": "body", "likes": 15000}}),
    "records.json": (lambda p: p.write_text('[{"id": 1, "title": "x", "fans": 300}]'), "json",
                     {"1": {"title": "x", "followers": 300}}),
    "table.parquet": (lambda p: pq.write_table(pa.table({"item_id": ["i1"], "description": ["d"]}), p),
                      "parquet", {"i1": {"content": "d"}}),
    "xhs_note.csv": (lambda p: p.write_text("note_id,title,desc,time,liked_count\nn1,t,d #a[话题]#,1717675260000,5\n"),
                     "mediacrawler", {"n1": {"hashtags": ["a"], "likes": 5}}),
    "movielens": (_movielens, "movielens", {"1": {"title": "A (1995)"}}),
    "MINDsmall_train": (_mind, "mind", {"N1": {"title": 'First "title"', "content": "Abstract one."}}),
}


@pytest.mark.parametrize("name", list(SHAPES))
def test_inspect_proposes_a_command_that_imports(tmp_path, name):
    from notellm.cli import app

    make, fmt, expected = SHAPES[name]
    source = tmp_path / name
    make(source)
    found = inspect_source(source)
    assert found.fmt == fmt
    out = tmp_path / "out" / "notes.parquet"
    line = found.command_line(str(out), str(tmp_path / "out" / "events.parquet"))
    args = shlex.split(line)
    assert args[0] == "notellm"
    result = CliRunner().invoke(app, args[1:])
    assert result.exit_code == 0, (line, result.output, result.exception)
    notes = {r["note_id"]: r for r in read_notes(out).to_pylist()}
    for note_id, values in expected.items():
        assert {k: notes[note_id][k] for k in values} == values, line
    if name == "objectid.csv":
        assert "published_at_from_id=true" in line and notes[OID]["published_at"] is not None
    if found.events:
        assert pq.read_table(tmp_path / "out" / "events.parquet").num_rows > 0


def test_inspect_cli_prints_sample_and_command(tmp_path):
    from notellm.cli import app

    source = tmp_path / "n.csv"
    SHAPES["synonyms.csv"][0](source)
    result = CliRunner().invoke(app, ["data", "inspect", str(source), "--out", "x.parquet"])
    assert result.exit_code == 0, result.output
    output = result.output
    assert "proposed --map" in output and "Hello" in output
    last = output.strip().splitlines()[-1]
    assert last.startswith("notellm data import csv ") and "--map note_id=id" in last and "--out x.parquet" in last


def test_inspect_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        inspect_source(tmp_path / "missing.csv")
    (tmp_path / "x.bin").write_bytes(b"\xff\xfe\xfd\xff" * 10 + b"\x81")
    with pytest.raises(DataError, match="neither UTF-8 nor GB18030"):
        inspect_source(tmp_path / "x.bin")
    (tmp_path / "folder").mkdir()
    with pytest.raises(DataError, match="not a folder layout"):
        inspect_source(tmp_path / "folder")
