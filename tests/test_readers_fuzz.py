"""Reader fuzzing (issue 16 (a)): every reader, through `notellm data import`, fed random rows, bytes, encodings,
numbers, dates and truncations. Each run must end in success (bad cells and rows counted as skips) or in a
clear DataError / ConfigError naming the input, never another exception, and a failed run must leave the
outputs that were there before byte-identical.

Fixed seed (derandomize) and bounded examples keep it to seconds in CI; NOTELLM_FUZZ=long runs many more
examples. NOTELLM_FUZZ_REPORT=path.json writes the counts per reader (inputs tried, imports that
succeeded, clear errors, tracebacks, damaged outputs) for benchmarks/README.md.
"""

from __future__ import annotations

import atexit
import csv
import io
import json
import os
import tempfile
from collections import Counter, defaultdict
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from notellm.data.schema import read_events, read_notes
from notellm.errors import ConfigError, DataError

settings.register_profile("notellm-readers-ci", max_examples=12, derandomize=True, deadline=None,
                          suppress_health_check=list(HealthCheck), database=None)
settings.register_profile("notellm-readers-long", max_examples=int(os.environ.get("NOTELLM_FUZZ_EXAMPLES", 2000)), derandomize=False, deadline=None,
                          suppress_health_check=list(HealthCheck), database=None)
FUZZ = settings.get_profile("notellm-readers-long" if os.environ.get("NOTELLM_FUZZ") == "long"
                            else "notellm-readers-ci")

COUNTS: dict[str, Counter] = defaultdict(Counter)
OID = "665f3c2c000000000d00f1a2"
_TRICKY = ["", " ", "Not Found", "null", "NaN", "nan", "inf", "-1", "1e400", "1w+", "10万+", "1.5万", "1,024", "1k+",
           "0x1F", "2024-06-06 12:00", "2024-06-06T12:00:00+08:00", "11/15/2019 8:55:22 AM", "9/25/2016 0:48",
           "9999-12-31", "0000-00-00", "1850-01-01", "5月12日 09:15", "2020年5月12日 09:15", "99999999999999999999",
           "-99999999999", "1717675260000", "#话题 ", "# topic", "##", "#a[话题]#", "['动画', '特摄']", "[1, [2]]",
           "[", "]", "{", '{"a": 1}', '"', '""', "'", "\n", "\r\n", "\t", ",", ";", "|", "\x00", "\ud7ff", "\u200b",
           "N1-1 N2-0", "N1-x", "N1 N2", OID, "https://weibo.com/1/A", "https://weibo.com/1/A?x=1", "UNKNOWN", "-124",
           "Emotion@Other@", "{'click': 1, 'note_idx': 1}", "[{'note_idx': 1, 'click': 1}]", "a" * 300]
_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
CELL = st.one_of(st.sampled_from(_TRICKY), _TEXT, st.integers(-10**20, 10**20).map(str),
                 st.floats(allow_nan=True, allow_infinity=True).map(repr), st.datetimes().map(str))
ENCODINGS = ("utf-8", "utf-8-sig", "gb18030", "gbk", "utf-16", "latin-1", "cp1252")


@st.composite
def delimited(draw, header: list[str] | None, delimiter: str = ",", quote: bool = True) -> bytes:
    """A delimited file: the header (if any) then rows of tricky cells (some too short or too long), written
    by the csv module or joined raw, in a random encoding, maybe cut short."""
    width = len(header) if header else draw(st.integers(1, 9))
    # most rows have the right width, so the readers get past the column count to the cells
    row = st.one_of(st.lists(CELL, min_size=width, max_size=width), st.lists(CELL, min_size=width, max_size=width),
                    st.lists(CELL, min_size=width, max_size=width), st.lists(CELL, max_size=width + 1))
    rows = draw(st.lists(row, max_size=6))
    out = io.StringIO()
    if draw(st.booleans()) and quote:
        writer = csv.writer(out, delimiter=delimiter, lineterminator=draw(st.sampled_from(["\n", "\r\n"])))
        if header:
            writer.writerow(header)
        writer.writerows(rows)
    else:
        for row in ([header] if header else []) + rows:
            out.write(delimiter.join(row) + "\n")
    return _encode(draw, out.getvalue())


def _encode(draw, text: str) -> bytes:
    encoding = "utf-8" if draw(st.integers(0, 2)) else draw(st.sampled_from(ENCODINGS))
    data = text.encode(encoding, errors="replace")
    if draw(st.integers(0, 5)) == 0:  # a truncated file
        data = data[: draw(st.integers(0, len(data)))]
    return data


@st.composite
def json_lines(draw, keys: list[str], array: bool = False) -> bytes:
    value = st.one_of(CELL, st.none(), st.booleans(), st.integers(-10**20, 10**20),
                      st.floats(allow_nan=False), st.lists(CELL, max_size=3), st.dictionaries(_TEXT, CELL, max_size=2))
    records = draw(st.lists(st.dictionaries(st.sampled_from(keys + ["_row", "other", ""]), value, max_size=len(keys)),
                            max_size=5))
    if array:
        text = json.dumps(records if draw(st.booleans()) else records[:1], ensure_ascii=draw(st.booleans()))
    else:
        text = "\n".join(json.dumps(r, ensure_ascii=False) if draw(st.integers(0, 6)) else draw(_TEXT) for r in records)
    return _encode(draw, text)


@st.composite
def parquet_bytes(draw, keys: list[str]) -> bytes:
    names = draw(st.lists(st.sampled_from(keys + ["other"]), min_size=1, max_size=len(keys) + 1, unique=True))
    n = draw(st.integers(0, 4))
    columns = {}
    for name in names:
        kind = draw(st.sampled_from(["str", "int", "float", "list", "null"]))
        if kind == "str":
            columns[name] = pa.array(draw(st.lists(CELL, min_size=n, max_size=n)), pa.string())
        elif kind == "int":
            columns[name] = pa.array(draw(st.lists(st.integers(-2**63, 2**63 - 1), min_size=n, max_size=n)), pa.int64())
        elif kind == "float":
            columns[name] = pa.array(draw(st.lists(st.floats(), min_size=n, max_size=n)), pa.float64())
        elif kind == "list":
            columns[name] = pa.array(draw(st.lists(st.lists(CELL, max_size=2), min_size=n, max_size=n)))
        else:
            columns[name] = pa.nulls(n)
    sink = io.BytesIO()
    pq.write_table(pa.table(columns), sink)
    data = sink.getvalue()
    return data[: draw(st.integers(0, len(data)))] if draw(st.integers(0, 4)) == 0 else data


def content(structured: st.SearchStrategy) -> st.SearchStrategy:
    """Mostly structured input, sometimes random bytes."""
    return st.one_of(structured, structured, structured, st.binary(max_size=200))


# ------------------------------------------------------------------------------------------ the readers
GENERIC = ["note_id", "title", "content", "hashtags", "category", "author_id", "published_at", "likes", "comments",
           "extra", "followers"]
MEDIACRAWLER = ["note_id", "title", "desc", "time", "user_id", "liked_count", "collected_count", "comment_count",
                "share_count", "tag_list", "image_list", "last_modify_ts"]
HACKERNEWS = ["id", "title", "url", "num_points", "num_comments", "author", "created_at"]
WEIBO = ["pub_time", "weibo_content", "forward", "comment", "like", "weibo_url", "weibo_topic"]
KUAIREC = ["video_id", "manual_cover_text", "caption", "topic_tag", "first_level_category_name"]
QILIN = ["note_idx", "note_title", "note_content", "image_path", "accum_like_num", "taxonomy1_id"]
QILIN_SEARCH = ["search_idx", "session_idx", "user_idx", "search_timestamp", "search_result_details_with_idx"]
MOVIES = ["movieId", "title", "genres"]
RATINGS = ["userId", "movieId", "rating", "timestamp"]
GOOD_MOVIES = b"movieId,title,genres\n1,A (1995),Comedy\n2,B,Drama\n"
GOOD_RATINGS = b"userId,movieId,rating,timestamp\n1,1,4.0,100\n1,2,5.0,200\n"
GOOD_NEWS = b"N1\tnews\tus\tTitle\tAbstract\thttp://x\t[]\t[]\n"

# reader name -> (format, strategy of {relative path: bytes}, extra CLI args)
Files = dict[str, bytes]
POLICY = st.sampled_from([[], ["--opt", "on_bad_rows=skip"], ["--opt", "on_bad_rows=skip"]])


def _one(name: str, strategy: st.SearchStrategy) -> st.SearchStrategy:
    return strategy.map(lambda data: {name: data})


READERS: dict[str, tuple[str, st.SearchStrategy, st.SearchStrategy]] = {
    "csv": ("csv", _one("n.csv", content(delimited(GENERIC))), POLICY),
    "csv (delimiter detected)": ("csv", _one("n.csv", content(st.sampled_from([";", "|", "\t"]).flatmap(
        lambda d: delimited(GENERIC, d)))), POLICY),
    "csv (headerless, names)": ("csv", _one("n.csv", content(delimited(None))), POLICY.map(
        lambda p: p + ["--opt", "header=false", "--opt", "names=note_id,title,content,likes,published_at"])),
    "csv (timezone, published_at_from_id)": ("csv", _one("n.csv", content(delimited(GENERIC))), POLICY.map(
        lambda p: p + ["--opt", "timezone=Asia/Shanghai", "--opt", "published_at_from_id=true"])),
    "tsv": ("tsv", _one("n.tsv", content(delimited(GENERIC, "\t"))), POLICY),
    "jsonl": ("jsonl", _one("n.jsonl", content(json_lines(GENERIC))), POLICY),
    "json": ("json", _one("n.json", content(json_lines(GENERIC, array=True))), POLICY),
    "parquet": ("parquet", _one("n.parquet", content(parquet_bytes(GENERIC))), POLICY),
    "mediacrawler": ("mediacrawler", _one("xhs_note.csv", content(delimited(MEDIACRAWLER))), POLICY),
    "mediacrawler (jsonl)": ("mediacrawler", _one("xhs_note.jsonl", content(json_lines(MEDIACRAWLER))), POLICY),
    "hackernews": ("hackernews", _one("hn.csv", content(delimited(HACKERNEWS))), POLICY),
    "weibo": ("weibo", _one("weibo.csv", content(delimited(WEIBO))), POLICY),
    "kuairec": ("kuairec", _one("kuairec_caption_category.csv", content(delimited(KUAIREC))), POLICY),
    "notellm-csv": ("notellm-csv", _one("notes.csv", content(delimited(None))), POLICY),
    "movielens": ("movielens", st.one_of(
        content(delimited(MOVIES)).map(lambda d: {"movies.csv": d, "ratings.csv": GOOD_RATINGS}),
        content(delimited(RATINGS)).map(lambda d: {"movies.csv": GOOD_MOVIES, "ratings.csv": d})), st.just([])),
    "qilin": ("qilin", st.tuples(content(delimited(QILIN)), content(delimited(QILIN_SEARCH))).map(
        lambda p: {"notes.csv": p[0], "search_train.csv": p[1]}), POLICY),
    "mind": ("mind", st.one_of(
        content(delimited(None, "\t", quote=False)).map(lambda d: {"news.tsv": d, "behaviors.tsv": b"1\tU1\t"
                                                                   b"11/15/2019 8:55:22 AM\tN1\tN1-1\n"}),
        content(delimited(None, "\t", quote=False)).map(lambda d: {"news.tsv": GOOD_NEWS, "behaviors.tsv": d})),
        POLICY),
}
# inputs that crashed main before issue 16/21 (found by the long profile): always tried, whatever the seed draws
_HEADER = ",".join(GENERIC).encode()
REGRESSIONS: dict[str, list[tuple[Files, list[str]]]] = {
    "csv": [({"n.csv": _HEADER + b"\na,,,,,,-99999999999,,,,\n"}, []),
            ({"n.csv": _HEADER + b"\na,,,,,,1.4757395e+20,,,,\n"}, []),
            ({"n.csv": _HEADER + b"\na,,,,,,9999-12-31,1e400,inf,,\n"}, ["--opt", "on_bad_rows=skip"])],
    "mediacrawler": [({"xhs_note.csv": b"note_id,time,liked_count\nn1,-99999999999999,Not Found\n"},
                      ["--opt", "on_bad_rows=skip"])],
    "weibo": [({"weibo.csv": b"pub_time,weibo_content,weibo_url,like\nNot Found,x,https://weibo.com/1/A,1w+\n"}, [])],
}
EVENT_READERS = {"movielens", "qilin", "mind"}
FOLDER_READERS = {"movielens", "qilin", "mind", "kuairec"}


def _run(reader: str, files: Files, options: list[str]) -> None:
    from notellm.cli import app

    fmt, _, _ = READERS[reader]
    counts = COUNTS[reader]
    counts["inputs tried"] += 1
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        src_dir = root / "src"
        src_dir.mkdir()
        for name, data in files.items():
            (src_dir / name).write_bytes(data)
        source = src_dir if fmt in FOLDER_READERS else src_dir / next(iter(files))
        out, events = root / "notes.parquet", root / "events.parquet"
        out.write_bytes(b"a previous good output")
        events.write_bytes(b"previous events")
        args = ["data", "import", fmt, str(source), "--out", str(out)] + options
        if fmt in EVENT_READERS:
            args += ["--events-out", str(events)]
        result = CliRunner().invoke(app, args)
        error = result.exception
        if error is None or (isinstance(error, SystemExit) and error.code == 0):
            counts["imported"] += 1
            notes = read_notes(out)  # what was written reads back as a Note table
            assert notes.num_rows >= 0
            if fmt in EVENT_READERS:
                read_events(events)
            return
        if not isinstance(error, (DataError, ConfigError)):
            counts["tracebacks"] += 1
            raise AssertionError(f"{reader}: {type(error).__name__}: {error} for {files!r} {options}") from error
        counts["clear errors"] += 1
        message = str(error)
        if os.environ.get("NOTELLM_FUZZ_SHOW"):
            print(reader, "|", message.replace(str(src_dir), "SRC")[:150])
        assert "\n" not in message.strip() or isinstance(error, ConfigError), message
        assert str(src_dir) in message or "option" in message or "must be" in message, message
        if out.read_bytes() != b"a previous good output" or events.read_bytes() != b"previous events":
            counts["damaged outputs"] += 1
            raise AssertionError(f"{reader}: a failed import changed an output")
        leftovers = sorted(p.name for p in root.iterdir() if p.name not in ("src", "notes.parquet", "events.parquet"))
        assert not leftovers, leftovers


def _fuzz_test(reader: str) -> Callable[[], None]:
    _, files, options = READERS[reader]

    def test(files: Files, options: list[str]) -> None:
        _run(reader, files, options)

    for files_example, options_example in REGRESSIONS.get(reader, []):
        test = example(files=files_example, options=options_example)(test)
    test = FUZZ(given(files=files, options=options)(test))

    test.__name__ = f"test_fuzz_{reader}"
    return test


for _reader in READERS:
    _name = "test_fuzz_" + "".join(c if c.isalnum() else "_" for c in _reader)
    globals()[_name] = _fuzz_test(_reader)


def _write_report() -> None:
    target = os.environ.get("NOTELLM_FUZZ_REPORT")
    if target and COUNTS:
        Path(target).write_text(json.dumps({k: dict(v) for k, v in COUNTS.items()}, indent=2, ensure_ascii=False))


atexit.register(_write_report)
