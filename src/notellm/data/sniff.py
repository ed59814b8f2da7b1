"""`notellm data inspect FILE`: look at a source and propose the `notellm data import` command that reads it.

Detects the layout (a known dataset folder or export: MIND, Qilin, MovieLens, KuaiRec, MediaCrawler, Hacker
News, Weibo; else a generic CSV / TSV / JSONL / JSON / Parquet table), the text encoding, the delimiter and
whether there is a header line; maps source columns onto Note fields by their names (`--map`), and proposes
the options the file needs (headerless names, the time decoded from ObjectId ids, a hint for naive times).
The proposal is a starting point a person checks against the sample shown; `import` validates it.
"""

from __future__ import annotations

import csv
import io
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from notellm.data.readers import (MIND_NEWS_COLUMNS, detect_delimiter,
                                  detect_encoding)
from notellm.data.schema import AUTHOR_COUNT_COLUMNS, NOTE_COLUMNS
from notellm.errors import DataError

_SAMPLE_BYTES = 1 << 20
_SAMPLE_ROWS = 5

# Note field -> source column names that mean it (compared lower-cased, without blanks, `_`, `-`)
SYNONYMS: dict[str, tuple[str, ...]] = {
    "note_id": ("note_id", "noteid", "id", "_id", "item_id", "itemid", "news_id", "newsid", "post_id", "postid",
                "video_id", "doc_id", "docid", "mid", "note_idx"),
    "title": ("title", "headline", "subject", "name", "note_title", "display_title"),
    "content": ("content", "desc", "description", "text", "body", "abstract", "caption", "note_content", "summary"),
    "hashtags": ("hashtags", "hashtag", "tags", "tag_list", "taglist", "topics", "tag"),
    "category": ("category", "categories", "genre", "genres", "class", "section", "channel"),
    "image_paths": ("image_paths", "images", "image_list", "imagelist", "image", "image_path", "img"),
    "author_id": ("author_id", "authorid", "user_id", "userid", "uid", "author", "user", "creator", "nickname"),
    "published_at": ("published_at", "publish_time", "publishtime", "pub_time", "created_at", "create_time",
                     "createtime", "time", "date", "datetime", "timestamp", "posted_at", "created"),
    "likes": ("likes", "like", "liked_count", "like_count", "likecount", "num_likes", "digg_count", "points",
              "num_points", "upvotes", "score_likes"),
    "collects": ("collects", "collect", "collected_count", "collect_count", "favorites", "favourites", "saves"),
    "comments": ("comments", "comment", "comment_count", "commentcount", "num_comments", "replies"),
    "shares": ("shares", "share", "share_count", "sharecount", "forward", "forwards", "reposts", "retweets"),
    "impressions": ("impressions", "views", "view_count", "viewcount", "imp_num", "play_count", "reads"),
    "followers": ("followers", "fans", "follower_count", "followers_count", "fans_count", "fans_num"),
    "author_notes": ("author_notes", "notes_count", "note_count", "post_count", "posts", "author_posts"),
    "author_likes": ("author_likes", "total_likes", "liked_total", "interaction", "author_liked_count"),
}
_OBJECT_ID = re.compile(r"[0-9a-fA-F]{24}")
_NAIVE_TIME = re.compile(r"^\d{4}-\d{1,2}-\d{1,2}[ T]\d{1,2}:\d{2}(:\d{2})?$|^\d{1,2}/\d{1,2}/\d{4} \d{1,2}:\d{2}")
_NUMBER = re.compile(r"^-?\d+(\.\d+)?$")


@dataclass
class Inspection:
    """What `inspect_source` found and the import it proposes."""

    path: str
    fmt: str
    encoding: str | None = None
    delimiter: str | None = None
    header: bool | None = None
    columns: list[str] = field(default_factory=list)
    sample: list[list[str]] = field(default_factory=list)
    column_map: dict[str, str] = field(default_factory=dict)
    options: dict[str, str] = field(default_factory=dict)
    events: bool = False
    hints: list[str] = field(default_factory=list)

    def command(self, out: str = "notes.parquet", events_out: str = "events.parquet") -> list[str]:
        """The `notellm data import` arguments (after `notellm`)."""
        args = ["data", "import", self.fmt, self.path, "--out", out]
        if self.events:
            args += ["--events-out", events_out]
        for name, column in self.column_map.items():
            args += ["--map", f"{name}={column}"]
        for key, value in self.options.items():
            args += ["--opt", f"{key}={value}"]
        return args

    def command_line(self, out: str = "notes.parquet", events_out: str = "events.parquet") -> str:
        return "notellm " + " ".join(shlex.quote(a) for a in self.command(out, events_out))


def inspect_source(path: str | Path) -> Inspection:
    """Inspect a file or folder; DataError when it is neither a known layout nor a readable table."""
    path = Path(path)
    if not path.exists():
        raise DataError("file does not exist", file=str(path))
    if path.is_dir():
        return _inspect_folder(path)
    known = _known_file(path)
    if known is not None:
        return known
    head = path.read_bytes()[:_SAMPLE_BYTES]
    if head.startswith(b"PAR1"):
        return _inspect_parquet(path)
    encoding, text = detect_encoding(head if len(head) < _SAMPLE_BYTES else _cut_to_line(head))
    if encoding is None:
        raise DataError("not a text table: neither UTF-8 nor GB18030 (give --opt encoding=NAME to import)",
                        file=str(path))
    stripped = text.lstrip()
    if stripped.startswith("{"):
        return _inspect_records(path, "jsonl", encoding, text)
    if stripped.startswith("["):
        return _inspect_records(path, "json", encoding, text)
    return _inspect_delimited(path, encoding, text)


def _cut_to_line(data: bytes) -> bytes:
    """A sample cut at its last line break, so no multi-byte character is cut in two."""
    end = data.rfind(b"\n")
    return data[: end + 1] if end > 0 else data


# ------------------------------------------------------------------------------------------- layouts
def _inspect_folder(path: Path) -> Inspection:
    from notellm.data.readers import _mind_files, _qilin_file

    try:
        news, _ = _mind_files(path)
        return _layout(path, "mind", news, events=True, columns=list(MIND_NEWS_COLUMNS),
                       hints=["MIND does not name its timezone: times are read as UTC (--opt timezone=ZONE)"])
    except DataError:
        pass
    if (path / "movies.csv").is_file() and (path / "ratings.csv").is_file():
        return _layout(path, "movielens", path / "movies.csv", events=True)
    if (path / "kuairec_caption_category.csv").is_file():
        return _layout(path, "kuairec", path / "kuairec_caption_category.csv")
    if _qilin_file(path, "notes") is not None:
        return Inspection(str(path), "qilin", events=True)
    tables = sorted(p for p in path.iterdir() if p.suffix.lower() in (".csv", ".tsv", ".jsonl", ".json", ".parquet"))
    if tables and all(_known_file(p) is not None and _known_file(p).fmt == "weibo" for p in tables):
        return Inspection(str(path), "weibo")
    raise DataError("not a folder layout notellm knows (MIND, MovieLens, KuaiRec, Qilin, Weibo); inspect one of "
                    f"its files instead: {[p.name for p in tables[:5]]}", file=str(path))


def _layout(path: Path, fmt: str, sample_file: Path, events: bool = False, columns: list[str] | None = None,
            hints: list[str] | None = None) -> Inspection:
    found = Inspection(str(path), fmt, events=events, hints=list(hints or []))
    encoding, text = detect_encoding(_cut_to_line(sample_file.read_bytes()[:_SAMPLE_BYTES]))
    if encoding is not None:
        delimiter = "\t" if sample_file.suffix == ".tsv" else ","
        rows = _rows(text, delimiter, quote=sample_file.suffix != ".tsv")
        found.columns = columns or (rows[0] if rows else [])
        found.sample = rows[:_SAMPLE_ROWS] if columns else rows[1:_SAMPLE_ROWS + 1]
    return found


def _known_file(path: Path) -> Inspection | None:
    """A file of a named reader's export, told by its header."""
    if path.suffix.lower() != ".csv":
        return None
    encoding, text = detect_encoding(_cut_to_line(path.read_bytes()[:65536]))
    if encoding is None:
        return None
    rows = _rows(text, ",")
    header = set(rows[0]) if rows else set()
    for fmt, needed in (("weibo", {"pub_time", "weibo_content", "weibo_url"}),
                        ("mediacrawler", {"note_id", "desc", "liked_count"}),
                        ("hackernews", {"id", "title", "num_points", "created_at"})):
        if needed <= header:
            return Inspection(str(path), fmt, encoding=encoding, delimiter=",", header=True, columns=rows[0],
                              sample=rows[1:_SAMPLE_ROWS + 1])
    return None


# ---------------------------------------------------------------------------------------- generic files
def _rows(text: str, delimiter: str, quote: bool = True, limit: int = 200) -> list[list[str]]:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter,
                        quoting=csv.QUOTE_MINIMAL if quote else csv.QUOTE_NONE)
    out = []
    try:
        for row in reader:
            if row:
                out.append(row)
            if len(out) >= limit:
                break
    except csv.Error:
        pass
    return out


def _inspect_delimited(path: Path, encoding: str, text: str) -> Inspection:
    delimiter = "\t" if path.suffix.lower() in (".tsv", ".tab") else detect_delimiter(text)
    rows = _rows(text, delimiter)
    if not rows:
        raise DataError("empty file: nothing to inspect", file=str(path))
    fmt = "tsv" if delimiter == "\t" else "csv"
    found = Inspection(str(path), fmt, encoding=encoding, delimiter=delimiter)
    found.header = _has_header(rows)
    if found.header:
        found.columns, data = [c.strip() for c in rows[0]], rows[1:]
    else:
        data = rows
        found.columns = _guess_names(data)
    found.sample = data[:_SAMPLE_ROWS]
    if encoding not in ("utf-8", "ascii"):
        found.options["encoding"] = encoding
    if delimiter in (";", "|"):  # by name: `|` alone is not a plain YAML value for --opt
        found.options["delimiter"] = {";": "semicolon", "|": "pipe"}[delimiter]
    if not found.header:
        found.options["header"] = "false"
        found.options["names"] = ",".join(found.columns)
    _propose_map(found, data)
    return found


def _has_header(rows: list[list[str]]) -> bool:
    """A first row of distinct, short, non-numeric names, not shaped like the rows after it."""
    first = [c.strip() for c in rows[0]]
    if any(not c or _NUMBER.match(c) or len(c) > 40 or _OBJECT_ID.fullmatch(c) for c in first):
        return False
    if len(set(first)) < len(first):
        return False
    if len(rows) == 1:
        return True
    known = {s.replace("_", "") for names in SYNONYMS.values() for s in names}
    if any(_norm(c) in known for c in first):
        return True
    # a column whose later cells are numbers under a word in the first row: a header
    rest = rows[1:21]
    for j, name in enumerate(first):
        cells = [r[j].strip() for r in rest if j < len(r) and r[j].strip()]
        if cells and all(_NUMBER.match(c) for c in cells):
            return True
    return False


def _guess_names(rows: list[list[str]]) -> list[str]:
    """Column names for a headerless file: note_id for a first column of distinct values, title and content for
    the shorter and the longer text column, count-looking columns col<N>."""
    width = max(len(r) for r in rows)
    names = [f"col{j + 1}" for j in range(width)]
    columns = [[r[j].strip() for r in rows if j < len(r)] for j in range(width)]
    if columns[0] and len(set(columns[0])) == len(columns[0]) and all(columns[0]):
        names[0] = "note_id"
    texts = [j for j in range(1, width) if columns[j] and not all(_NUMBER.match(c) for c in columns[j] if c)]
    by_length = sorted(texts, key=lambda j: sum(len(c) for c in columns[j]) / max(1, len(columns[j])))
    if len(by_length) >= 2:
        names[by_length[0]], names[by_length[-1]] = "title", "content"
    elif by_length:
        names[by_length[0]] = "content"
    return names


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", str(name)).lower()


def _propose_map(found: Inspection, data: list[list[str]]) -> None:
    """--map for Note fields whose source column has another name, and the options the data calls for."""
    by_norm = {}
    for c in found.columns:
        by_norm.setdefault(_norm(c), c)
    used: set[str] = set()
    source_of: dict[str, str] = {}
    for target in list(NOTE_COLUMNS) + list(AUTHOR_COUNT_COLUMNS):
        if target == "extra":
            continue
        for synonym in (target, *SYNONYMS.get(target, ())):
            column = by_norm.get(_norm(synonym))
            if column is not None and column not in used:
                source_of[target] = column
                used.add(column)
                break
    if "note_id" not in source_of and found.columns:
        first = found.columns[0]
        values = [r[0] for r in data if r] if data and isinstance(data[0], list) else []
        if first not in used and (not values or len(set(values)) == len(values)):
            source_of["note_id"] = first
            found.hints.append(f"no column is named like an id: the first column {first!r} is proposed as note_id")
    found.column_map = {f: c for f, c in source_of.items() if f != c}
    if "note_id" not in source_of:
        found.hints.append("no note id column found: add --map note_id=COLUMN")
        return
    index = {c: j for j, c in enumerate(found.columns)}

    def values(name: str) -> list[str]:
        j = index.get(source_of.get(name, ""), None)
        if j is None:
            return []
        return [str(r[j]).strip() for r in data if isinstance(r, list) and j < len(r) and str(r[j]).strip()]

    ids = values("note_id")
    if "published_at" not in source_of and ids and all(_OBJECT_ID.fullmatch(i) for i in ids):
        found.options["published_at_from_id"] = "true"
        found.hints.append("ids are ObjectIds (24 hex digits): the publish time is decoded from them")
    times = values("published_at")
    if times and any(_NAIVE_TIME.match(t) for t in times):
        found.hints.append("times have no timezone: read as UTC unless you add --opt timezone=ZONE "
                           "(e.g. Asia/Shanghai for Beijing time)")
    if any(v.endswith("+") for name in ("likes", "collects", "comments", "shares") for v in values(name)):
        found.hints.append("bucketed counts (`1w+`) are kept as lower bounds and flagged in count_lower_bounds")


def _inspect_records(path: Path, fmt: str, encoding: str, text: str) -> Inspection:
    records: list[dict[str, Any]] = []
    if fmt == "jsonl":
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                break  # a cut last line of the sample, or a bad line `import` will name
            if isinstance(record, dict):
                records.append(record)
            if len(records) >= 200:
                break
    else:
        try:
            data = json.loads(path.read_text(encoding=encoding))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"invalid JSON: {exc}", file=str(path)) from None
        records = [r for r in (data if isinstance(data, list) else [data]) if isinstance(r, dict)][:200]
    if not records:
        raise DataError(f"no JSON objects to inspect ({fmt})", file=str(path))
    columns: list[str] = []
    for record in records:
        columns.extend(k for k in record if k not in columns)
    found = Inspection(str(path), fmt, encoding=encoding, columns=columns)
    found.sample = [[_cell(r.get(c)) for c in columns] for r in records[:_SAMPLE_ROWS]]
    if encoding not in ("utf-8", "ascii"):
        found.options["encoding"] = encoding
    _propose_map(found, [[_cell(r.get(c)) for c in columns] for r in records])
    return found


def _inspect_parquet(path: Path) -> Inspection:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(path)
        table = file.read_row_groups([0]) if file.num_row_groups else file.schema_arrow.empty_table()
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"not a readable Parquet file ({str(exc).splitlines()[0]})", file=str(path)) from None
    rows = table.slice(0, 200).to_pylist()
    found = Inspection(str(path), "parquet", columns=table.column_names)
    found.sample = [[_cell(r.get(c)) for c in found.columns] for r in rows[:_SAMPLE_ROWS]]
    _propose_map(found, [[_cell(r.get(c)) for c in found.columns] for r in rows])
    return found


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)
