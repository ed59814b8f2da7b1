"""Readers: map each source format onto the Note table, and onto Event / Pair tables where the source has them.

Policies, the same in every reader:
- Text: zero-width characters stripped (`text.clean_text`); inline hashtags are parsed into `hashtags`
  (`text.parse_hashtags`: <= 16 chars, at most 10; Weibo `#…#` and Kuaishou `#tag` styles by their own
  text.py functions) and removed from `content`, so the hashtag task never finds its answer in the input
  (a "tag" too long to be a hashtag keeps its words in content). A source's full tag list, where it has
  one, stays in `extra`.
- `image_paths` lists only image files that exist locally (absolute paths); references to images that are
  not here (URLs, Qilin's relative paths without the image folder) go to `extra`, so no later stage meets
  an unreadable image.
- Bad rows (`on_bad_rows`): a row with the wrong number of columns, a missing or duplicate note id
  -> "error" (default: DataError naming file, row and field) or "skip" (counted and reported, first row kept
  for duplicates). A bad cell (a count that is not a number, an unreadable time or one outside 1900-2200,
  an `extra` that is not a JSON object) -> "error" (DataError naming file, row, field and value) or
  "skip": that cell is left empty (null, never a made-up value), the row is kept, and the report counts
  it by field with the first rows and values. A file that is not valid text is always an error.
- Events and pairs naming a note that is not in the note table (`unknown_notes`): "skip" (default: counted
  and reported with file and rows), "error", or "keep" (when the notes come from elsewhere).
- Every returned table carries a report (rows, skips with reasons and example rows, merged duplicates) in
  its schema metadata: `read_report(table)`; skips are also logged as warnings.

Row numbers are data rows counted from 1 (the header line is not counted); messages add the file line
where it differs. CSV files are parsed by the csv module (quoted multi-line fields are fine) and then
handled column-wise with pandas / pyarrow; what stays per row is regex work on the text (hashtags), so a
reader takes 2-10 s of CPU per 100k notes (more for long notes).
"""

from __future__ import annotations

import ast
import codecs
import csv
import inspect
import io
import json
import logging
import math
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple, Sequence
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from notellm.data.schema import (AUTHOR_COUNT_COLUMNS, EVENT_SCHEMA, NOTE_COLUMNS, OPTIONAL_NOTE_FIELDS,
                                  PAIR_SCHEMA, notes_to_table)
from notellm.data.text import (MAX_TAG_CHARS, MAX_TAGS, clean_text, parse_count, parse_open_hashtags,
                               parse_weibo_hashtags, split_hashtags, strip_open_hashtags, strip_weibo_hashtags)
from notellm.errors import DataError

log = logging.getLogger(__name__)

REPORT_KEY = b"notellm.read_report"
BAD_ROW_POLICIES = ("error", "skip")
UNKNOWN_NOTE_POLICIES = ("skip", "error", "keep")
_EXAMPLES_PER_REASON = 5
_TIMESTAMP = pa.timestamp("s", tz="UTC")
_COUNT_FIELDS = ("likes", "collects", "comments", "shares", "impressions")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp")


# ----------------------------------------------------------------------------------------------- reports
@dataclass
class ReadReport:
    """What a reader did besides producing rows: skipped rows by reason (with example rows), merges."""

    source: str
    rows: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    merged: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def skip(self, reason: str, file: str | Path, rows: Sequence[int], detail: Sequence[str] | None = None) -> None:
        """Count `rows` of `file` as skipped for `reason`; keep the first few as examples and log them."""
        rows = [int(r) for r in rows]
        if not rows:
            return
        self.skipped[reason] = self.skipped.get(reason, 0) + len(rows)
        examples = self.examples.setdefault(reason, [])
        for i, row in enumerate(rows[: max(0, _EXAMPLES_PER_REASON - len(examples))]):
            extra = f" ({detail[i]})" if detail is not None else ""
            examples.append(f"{file} row {row}{extra}")
        log.warning("%s: skipped %d: %s (first at row %d)", file, len(rows), reason, rows[0])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _attach(table: pa.Table, report: ReadReport) -> pa.Table:
    report.rows = table.num_rows
    metadata = dict(table.schema.metadata or {})
    metadata[REPORT_KEY] = json.dumps(report.to_dict(), ensure_ascii=False).encode()
    return table.replace_schema_metadata(metadata)


def read_report(table: pa.Table) -> dict[str, Any] | None:
    """The report a reader attached to `table` (None for tables from elsewhere)."""
    raw = (table.schema.metadata or {}).get(REPORT_KEY)
    return json.loads(raw) if raw else None


def _check_policy(name: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise DataError(f"{name} must be one of {list(allowed)}, not {value!r}", field=name)


# ------------------------------------------------------------------------------------------ file input
def _decode(path: Path, encoding: str = "utf-8", report: ReadReport | None = None) -> str:
    """The whole file as text; invalid bytes are an error naming the byte offset and line.

    encoding="auto": a UTF-16/32 byte-order mark, else UTF-8, else GB18030 (a superset of GBK/GB2312, the
    usual encoding of Chinese exports); the one used is noted in `report`."""
    if not path.is_file():
        raise DataError("file does not exist", file=str(path))
    data = path.read_bytes()
    if encoding == "auto":
        codec, text = detect_encoding(data)
        if codec is None:
            raise _decode_error(path, data, "UTF-8 or GB18030", "give its encoding, e.g. --opt encoding=big5")
        if report is not None and codec not in ("utf-8", "ascii"):
            report.notes.append(f"text encoding detected: {codec}")
        return text
    try:
        codec = codecs.lookup(encoding).name
    except LookupError:
        raise DataError(f"unknown text encoding {encoding!r}", file=str(path)) from None
    try:
        return data.decode("utf-8-sig" if codec == "utf-8" else codec)
    except UnicodeDecodeError:
        raise _decode_error(path, data, encoding, "convert the file to UTF-8 (e.g. `iconv -f GBK -t UTF-8`) or "
                                                  "give its encoding (--opt encoding=auto detects GB18030)") from None


def _decode_error(path: Path, data: bytes, encoding: str, advice: str) -> DataError:
    codec = "utf-8" if encoding == "UTF-8 or GB18030" else encoding
    try:
        data.decode(codec)
        start = 0
    except UnicodeDecodeError as exc:
        start = exc.start
    except LookupError:
        start = 0
    line = data.count(b"\n", 0, start) + 1
    return DataError(f"not valid {encoding}: byte {data[start:start + 1]!r} at byte offset {start} (line {line}); "
                     f"{advice}", file=str(path))


def detect_encoding(data: bytes) -> tuple[str | None, str]:
    """(codec, text) of `data`: by byte-order mark, else the first of UTF-8 and GB18030 that decodes it whole;
    (None, "") when neither does."""
    for bom, codec in ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
                       (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")):
        if data.startswith(bom):
            try:
                return codec, data.decode(codec)
            except UnicodeDecodeError:
                return None, ""
    for codec in ("utf-8-sig", "gb18030"):
        try:
            text = data.decode(codec)
        except UnicodeDecodeError:
            continue
        if codec == "gb18030" and "\x00" in text:  # binary junk decodes as GB18030 too often
            continue
        return ("utf-8" if codec == "utf-8-sig" else codec), text
    return None, ""


DELIMITERS = {",": ",", "\t": "\t", "tab": "\t", "\\t": "\t", ";": ";", "|": "|", "comma": ",", "semicolon": ";",
              "pipe": "|"}


def _delimiter(value: str | None, path: Path, text: str) -> str:
    """The delimiter asked for (`,`, `tab`/`\\t`, `;`, `|`), or for None: tab for .tsv, else detected."""
    if value is not None:
        if str(value) not in DELIMITERS:
            raise DataError(f"delimiter must be one of {sorted(set(DELIMITERS))}, not {value!r}", field="delimiter")
        return DELIMITERS[str(value)]
    if path.suffix.lower() in (".tsv", ".tab"):
        return "\t"
    return detect_delimiter(text)


def detect_delimiter(text: str, lines: int = 50) -> str:
    """The delimiter under which the first lines split into the same number (> 1) of columns most often
    (ties: `,` before tab, `;`, `|`); `,` when none does."""
    sample = "\n".join(text.splitlines()[:lines])
    best, best_score = ",", 0.0
    for candidate in (",", "\t", ";", "|"):
        if candidate not in sample:
            continue
        try:
            widths = [len(r) for r in csv.reader(io.StringIO(sample, newline=""), delimiter=candidate) if r]
        except csv.Error:
            continue
        if not widths:
            continue
        mode = max(set(widths), key=widths.count)
        score = widths.count(mode) / len(widths) + (0.001 * min(mode, 50) if mode > 1 else -1.0)
        if mode > 1 and score > best_score:
            best, best_score = candidate, score
    return best


def _column_names(names: str | Sequence[str] | None) -> list[str] | None:
    if names is None:
        return None
    listed = [n.strip() for n in names.split(",")] if isinstance(names, str) else [str(n).strip() for n in names]
    if not listed or any(not n for n in listed) or len(set(listed)) < len(listed):
        raise DataError(f"names must be distinct, non-empty column names, e.g. names=id,title,content; got {names!r}",
                        field="names")
    return listed


def _bad_row(policy: str, report: ReadReport | None, file: str, row: int, reason: str, detail: str) -> None:
    if policy == "error" or report is None:
        raise DataError(f"{reason}: {detail}", file=file, row=row)
    report.skip(reason, file, [row], [detail])


def _read_csv(
    path: str | Path,
    *,
    names: Sequence[str] | None = None,
    required: Sequence[str] = (),
    on_bad_rows: str = "error",
    report: ReadReport | None = None,
    join_split_lines: bool = False,
    encoding: str = "utf-8",
    delimiter: str | None = ",",
    header: bool | None = None,
    quote: bool = True,
) -> pd.DataFrame:
    """All cells as str plus `_row` (data row from 1). `names` for files without a header line (with
    header=True: names replace the file's header line). `delimiter` None: detected (tab for .tsv).

    `join_split_lines` repairs rows broken by an unquoted line break (KuaiRec): a short row whose pieces
    and the next row's add up to the right number of columns becomes one row again.
    """
    path = Path(path)
    file = str(path)
    text = _decode(path, encoding, report)
    if "\x00" in text:
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise DataError(f"the file holds a NUL character (line {line}): not a text table", file=file)
    delimiter = _delimiter(delimiter, path, text)
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # Qilin cells hold whole embedding vectors
    try:
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter,
                            quoting=csv.QUOTE_MINIMAL if quote else csv.QUOTE_NONE)
        return _parse_csv(text, file, reader, names=names,
                          header=header, required=required, on_bad_rows=on_bad_rows, report=report,
                          join_split_lines=join_split_lines)
    except csv.Error as exc:
        raise DataError(f"not a readable {'TSV' if delimiter == chr(9) else 'CSV'} file: {exc}", file=file) from None


def _parse_csv(text: str, file: str, reader: Any, *, names: Sequence[str] | None, header: bool | None,
               required: Sequence[str], on_bad_rows: str, report: ReadReport | None,
               join_split_lines: bool) -> pd.DataFrame:
    skip_header = header if header is not None else names is None
    first = next(reader, None) if skip_header else None
    if names is None:
        if first is None:
            raise DataError("empty file: no header line", file=file)
        header = [clean_text(h) for h in first]
    else:
        header = list(names)
    # a column without a name (pandas' index column) is called column_N (N from 1), as a person counts
    header = [h if h else f"column_{i}" for i, h in enumerate(header, start=1)]
    repeated = sorted({h for h in header if header.count(h) > 1})
    if repeated:
        raise DataError(f"column name(s) {repeated} appear more than once in the header", file=file)
    missing = [c for c in required if c not in header]
    if missing:
        raise DataError(f"missing column(s) {missing}; the file has {header}", file=file)
    width = len(header)
    records: list[list[str]] = []
    rows: list[int] = []
    row = 0
    pending: tuple[list[str], int, int] | None = None  # (pieces, row, line) of a row cut by a line break
    end = reader.line_num
    for record in reader:
        line, end = end + 1, reader.line_num  # the record's first line (a quoted field may span several)
        if not record:  # blank line
            continue
        if not skip_header and row == 0 and pending is None and [c.strip().lower() for c in record] == header:
            continue  # a header line in a file that should have none
        if pending is not None:
            pieces, first_row, first_line = pending
            pending = None
            joined = pieces[:-1] + [pieces[-1] + "\n" + record[0]] + record[1:]
            if len(joined) < width:
                pending = (joined, first_row, first_line)
                continue
            if len(joined) == width:
                records.append(joined)
                rows.append(first_row)
                continue
            _bad_row(on_bad_rows, report, file, first_row, "wrong number of columns",
                     f"expected {width}, found {len(pieces)} (line {first_line})")
            # and `record` is read as a row of its own
        row += 1
        if len(record) == width:
            records.append(record)
            rows.append(row)
        elif join_split_lines and len(record) < width:
            pending = (record, row, line)
        else:
            _bad_row(on_bad_rows, report, file, row, "wrong number of columns",
                     f"expected {width}, found {len(record)} (line {line})")
    if pending is not None:
        pieces, first_row, first_line = pending
        _bad_row(on_bad_rows, report, file, first_row, "wrong number of columns",
                 f"expected {width}, found {len(pieces)} (line {first_line})")
    frame = pd.DataFrame(records, columns=header, dtype=object) if records else pd.DataFrame(
        {c: pd.Series([], dtype=object) for c in header})
    frame["_row"] = np.asarray(rows, dtype=np.int64)
    return frame


def _read_jsonl(path: Path, encoding: str = "utf-8", report: ReadReport | None = None) -> pd.DataFrame:
    records, rows = [], []
    for number, line in enumerate(_decode(path, encoding, report).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"invalid JSON: {exc.msg} (column {exc.colno})", file=str(path), row=number) from None
        except RecursionError:
            raise DataError("invalid JSON: nested too deeply", file=str(path), row=number) from None
        if not isinstance(record, dict):
            raise DataError("each line must be a JSON object", file=str(path), row=number)
        records.append(record)
        rows.append(number)
    frame = pd.DataFrame.from_records(records) if records else pd.DataFrame()
    frame["_row"] = np.asarray(rows, dtype=np.int64)
    return frame


def _read_json_array(path: Path, encoding: str = "utf-8", report: ReadReport | None = None) -> pd.DataFrame:
    try:
        data = json.loads(_decode(path, encoding, report))
    except json.JSONDecodeError as exc:
        raise DataError(f"invalid JSON: {exc.msg} (line {exc.lineno})", file=str(path)) from None
    except RecursionError:
        raise DataError("invalid JSON: nested too deeply", file=str(path)) from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise DataError("expected a JSON array of objects", file=str(path))
    frame = pd.DataFrame.from_records(data) if data else pd.DataFrame()
    frame["_row"] = np.arange(1, len(frame) + 1, dtype=np.int64)
    return frame


def _read_parquet(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise DataError("file does not exist", file=str(path))
    try:
        frame = pq.read_table(path).to_pandas()
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"not a readable Parquet file: {exc}", file=str(path)) from None
    frame["_row"] = np.arange(1, len(frame) + 1, dtype=np.int64)
    return frame


def _read_table_file(path: Path, fmt: str | None = None, encoding: str = "utf-8", **csv_options: Any) -> pd.DataFrame:
    fmt = fmt or _format_of(path)
    if fmt in ("csv", "tsv"):
        if fmt == "tsv":
            csv_options.setdefault("delimiter", "\t")
        return _read_csv(path, encoding=encoding, **csv_options)
    report = csv_options.get("report")
    if fmt == "jsonl":
        return _read_jsonl(path, encoding, report)
    if fmt == "json":
        return _read_json_array(path, encoding, report)
    if fmt == "parquet":
        return _read_parquet(path)
    raise DataError(f"cannot tell the format of {path.name}: use .csv, .tsv, .jsonl, .json or .parquet", file=str(path))


def _format_of(path: Path) -> str | None:
    suffix = path.suffix.lower()
    return {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".txt": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet",
            ".pq": "parquet"}.get(suffix)


# --------------------------------------------------------------------------------- column conversions
def _is_missing(value: Any) -> bool:
    if value is None or value is pd.NA:
        return True
    kind = type(value)
    if kind is str:
        return not value or value.isspace()
    return kind is float and value != value  # NaN


def _texts(values: pd.Series) -> list[str]:
    """A text column cleaned column-wise (pyarrow string kernels), missing cells as ''."""
    text = values.astype("str").fillna("") if values.dtype != "str" else values.fillna("")
    text = text.str.replace("[\u200b\u200c\u200d\ufeff]", "", regex=True).str.strip()
    return text.tolist()


def _optional_str(values: pd.Series) -> list[str | None]:
    return [None if _is_missing(v) else _id_text(v) for v in values.tolist()]


def _id_text(value: Any) -> str:
    """Ids as text; 8.0 (an integer id that went through a float column) becomes '8'."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return clean_text(str(value))


def _show(value: Any, limit: int = 40) -> str:
    """A cell value as it appears in messages: repr, cut to `limit` characters."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    text = repr(value.item() if isinstance(value, np.generic) else value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass
class _Cells:
    """What a reader does with a cell it cannot read (`on_bad_rows`): "error" raises a DataError naming file,
    row, field and value; "skip" leaves that cell empty (null) and counts it in the report by field, with the
    rows and values of the first few. Never a made-up value in its place."""

    policy: str = "error"
    report: ReadReport | None = None

    def bad(self, file: str, row: int, field_name: str, value: Any, expected: str) -> None:
        if self.policy != "skip" or self.report is None:
            raise DataError(f"{_show(value)} is not {expected}", file=file, row=int(row), field=field_name)
        self.report.skip(f"bad value in '{field_name}' (cell left empty)", file, [int(row)], [_show(value)])


_RAISE = _Cells()
# published times outside this range are typos or unit mix-ups (and would overflow Parquet's milliseconds)
_MIN_SECONDS = -2_208_988_800  # 1900-01-01
_MAX_SECONDS = 7_258_118_400   # 2200-01-01
_TIME_RANGE = "a time between 1900 and 2200"
_OFFSET = re.compile(r"(?:[zZ]|[+-]\d{2}(?::?\d{2})?|\s(?:UTC|GMT))$")


def _counts(values: pd.Series, rows: pd.Series, file: str, field_name: str, cells: _Cells = _RAISE) -> list[int | None]:
    """Counts column-wise: plain numbers on the fast path, `1.5万` / `1w+` and junk through text.parse_count."""
    number = pd.to_numeric(values, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    good = np.isfinite(number) & (number >= 0) & (number < 2**62)
    rounded = np.rint(np.where(good, number, 0)).astype(np.int64)
    out: list[int | None] = [int(x) if g else None for x, g in zip(rounded.tolist(), good.tolist())]
    raw = values.tolist()
    row_numbers = rows.tolist()
    for i in np.flatnonzero(~good).tolist():
        try:
            out[i] = _count_value(raw[i])
        except (ValueError, TypeError, OverflowError):
            cells.bad(file, row_numbers[i], field_name, raw[i], "a count")
    return out


def _count_value(value: Any) -> int | None:
    if isinstance(value, (np.integer, np.floating)):
        value = value.item()
    if isinstance(value, (list, tuple, dict, np.ndarray)):
        raise ValueError("a list is not a count")
    count = parse_count(value)
    if count is not None and count >= 2**62:
        raise ValueError("count too large")
    return count


def _bucketed(values: pd.Series) -> np.ndarray:
    """Cells written as a bucket's lower bound (`1k+`, `1w+`, `10万+`, `100+`): the true count is larger."""
    return np.array([isinstance(v, str) and clean_text(v).endswith("+") for v in values.tolist()], dtype=bool)


def _epoch_seconds(values: pd.Series, rows: pd.Series, file: str, field_name: str,
                   cells: _Cells = _RAISE) -> list[int | None]:
    """Unix times in s, ms, us or ns (told apart by size) -> whole seconds; empty -> None."""
    number = pd.to_numeric(values, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    raw = values.tolist()
    row_numbers = rows.tolist()
    present = np.array([not _is_missing(v) for v in raw], dtype=bool)
    scale = np.select([np.abs(number) >= 1e17, np.abs(number) >= 1e14, np.abs(number) >= 1e11], [1e9, 1e6, 1e3], 1.0)
    with np.errstate(invalid="ignore"):
        seconds = np.floor(number / scale)
    out: list[int | None] = [None] * len(raw)
    for i, (s, here) in enumerate(zip(seconds.tolist(), present.tolist())):
        if not here:
            continue
        if math.isnan(s):
            cells.bad(file, row_numbers[i], field_name, raw[i], "a unix time")
        elif not _MIN_SECONDS <= s < _MAX_SECONDS:
            cells.bad(file, row_numbers[i], field_name, raw[i], _TIME_RANGE)
        else:
            out[i] = int(s)
    return out


def _check_timezone(tz: str) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(str(tz))
    except (ZoneInfoNotFoundError, ValueError):
        raise DataError(f"unknown timezone {tz!r}: use an IANA name such as 'Asia/Shanghai' or 'UTC'",
                        field="timezone") from None
    return str(tz)


def _datetimes(values: pd.Series, rows: pd.Series, file: str, field_name: str, *, fmt: str | None = None,
               tz: str = "UTC", cells: _Cells = _RAISE, report: ReadReport | None = None,
               tz_given: bool = True) -> list[int | None]:
    """Date-time text (naive ones read in `tz`; with an offset, converted) or unix times (s/ms) -> whole UTC
    seconds. An unreadable or out-of-range cell goes to `cells`. With `report`, the number of naive times and
    the zone they were read in are noted (and logged as a warning when the zone was assumed: `tz_given`)."""
    raw = values.tolist()
    row_numbers = rows.tolist()
    present = np.array([not _is_missing(v) for v in raw], dtype=bool)
    numeric = pd.to_numeric(values, errors="coerce").notna().to_numpy() & present
    out: list[int | None] = [None] * len(raw)
    if numeric.any():
        epochs = _epoch_seconds(values[numeric], rows[numeric], file, field_name, cells)
        for i, seconds in zip(np.flatnonzero(numeric).tolist(), epochs):
            out[i] = seconds
    texts = np.flatnonzero(present & ~numeric).tolist()
    if not texts:
        return out
    cleaned = [clean_text(raw[i]) if isinstance(raw[i], str) else str(raw[i]) for i in texts]
    aware = [fmt is None and bool(_OFFSET.search(t)) for t in cleaned]
    naive = len(aware) - sum(aware)
    for want_aware in (True, False):
        picked = [k for k, a in enumerate(aware) if a == want_aware]
        if not picked:
            continue
        subset = pd.Series([cleaned[k] for k in picked], dtype=object)
        try:
            parsed = pd.to_datetime(subset, format=fmt or "mixed", errors="coerce", utc=want_aware)
            seconds = _to_utc_seconds(parsed, tz)
        except (ValueError, TypeError, OverflowError, pd.errors.OutOfBoundsDatetime):
            seconds = [_one_datetime(cleaned[k], fmt, tz, want_aware) for k in picked]
        for k, s in zip(picked, seconds):
            i = texts[k]
            if s is None:
                expect = f" (expected {fmt})" if fmt else ""
                cells.bad(file, row_numbers[i], field_name, raw[i], f"a date-time{expect}")
            elif not _MIN_SECONDS <= s < _MAX_SECONDS:
                cells.bad(file, row_numbers[i], field_name, raw[i], _TIME_RANGE)
            else:
                out[i] = s
    if naive and report is not None:
        note = (f"{naive:,} '{field_name}' values have no timezone: read as {tz}"
                + ("" if tz_given else " (assumed; give --opt timezone=ZONE, e.g. Asia/Shanghai, if they are local)"))
        report.notes.append(note)
        if not tz_given:
            log.warning("%s: %s", file, note)
    return out


def _one_datetime(text: str, fmt: str | None, tz: str, aware: bool) -> int | None:
    """The slow path for a batch pandas could not parse as a whole: one cell at a time."""
    try:
        parsed = pd.to_datetime(pd.Series([text], dtype=object), format=fmt or "mixed", errors="coerce", utc=aware)
        return _to_utc_seconds(parsed, tz)[0]
    except (ValueError, TypeError, OverflowError, pd.errors.OutOfBoundsDatetime):
        return None


def _to_utc_seconds(parsed: pd.Series, tz: str) -> list[int | None]:
    if getattr(parsed.dt, "tz", None) is None:
        # a wall-clock hour that happens twice at the end of summer time is read as the first (summer) one
        parsed = parsed.dt.tz_localize(tz, ambiguous=np.ones(len(parsed), dtype=bool), nonexistent="shift_forward")
    seconds = (parsed.dt.tz_convert("UTC") - pd.Timestamp("1970-01-01", tz="UTC")) // pd.Timedelta(seconds=1)
    return [None if pd.isna(s) else int(s) for s in seconds.tolist()]


def _as_list(value: Any) -> list[str]:
    """A list field: a real list, a JSON list, `[a,b]`, or `a|b` / `a,b` text."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return [t for t in (clean_text(v) for v in value if not _is_missing(v)) if t]
    if _is_missing(value):
        return []
    text = clean_text(str(value))
    if text.startswith("["):
        loaded = _list_literal(text)
        if loaded is None:
            text = text[1:-1] if text.endswith("]") else text[1:]  # `[a,b]`: a list printed without quotes
        else:
            return [t for t in (clean_text(v) for v in loaded if not _is_missing(v) and not isinstance(v, (list, dict)))
                    if t]
    parts = text.split("|") if "|" in text else text.split(",")
    return [t for t in (p.strip() for p in parts) if t]


def _list_literal(text: str) -> list[Any] | None:
    """A JSON list (`["a", "b"]`) or a Python-literal one (`['动画', '特摄']`, as pandas writes lists), else None.
    ast.literal_eval reads literals only: no code runs."""
    try:
        loaded = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        if len(text) > 100_000:
            return None
        try:
            loaded = ast.literal_eval(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            return None
    return list(loaded) if isinstance(loaded, (list, tuple)) else None


def _clean_tags(tags: Iterable[str], max_chars: int = MAX_TAG_CHARS, max_tags: int = MAX_TAGS) -> list[str]:
    """Tags from a list field under the same rules as inline ones: no `#`/`[话题]`, <= 16 chars, <= 10."""
    out: list[str] = []
    for tag in tags:
        tag = clean_text(tag).replace("[话题]", "").strip("#").strip()
        if tag and len(tag) <= max_chars and tag not in out:
            out.append(tag)
    return out[:max_tags]


def _merge_tags(first: list[str], second: Iterable[str]) -> list[str]:
    """`first` then the tags of `second` not in it (compared case-insensitively), at most MAX_TAGS."""
    seen = {t.lower() for t in first}
    out = list(first)
    for tag in second:
        if tag.lower() not in seen:
            seen.add(tag.lower())
            out.append(tag)
    return out[:MAX_TAGS]


def _json_column(values: pd.Series) -> list[Any]:
    """A column as JSON-ready Python values: numbers as int where whole, missing cells as None."""
    values = _numeric_if_all(values)
    if pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values):
        return [None if _is_missing(v) else (v.tolist() if isinstance(v, np.ndarray) else v) for v in values.tolist()]
    number = values.astype("float64").to_numpy()
    finite = np.isfinite(number)
    if np.all(np.floor(number[finite]) == number[finite]) and (np.abs(number[finite]) < 2**53).all():
        return [int(x) if ok else None for x, ok in zip(number.tolist(), finite.tolist())]
    return [x if ok else None for x, ok in zip(number.tolist(), finite.tolist())]


def _numeric_if_all(values: pd.Series) -> pd.Series:
    """A text column whose every filled cell is a number, as numbers (for `extra`)."""
    if values.dtype != object and not pd.api.types.is_string_dtype(values):
        return values
    if values.map(lambda v: isinstance(v, (list, dict, np.ndarray))).any():
        return values
    text = values.astype("str").str.strip()
    filled = text.notna() & (text != "")
    if not filled.any():
        return values
    number = pd.to_numeric(text.where(filled, None), errors="coerce")
    return number if number[filled].notna().all() else values


def _extra_json(frame: pd.DataFrame, derived: dict[str, Sequence[Any]] | None = None) -> list[str]:
    """One JSON object per row from the given columns (empty cells left out) plus derived fields."""
    columns = {c: _json_column(frame[c]) for c in frame.columns}
    columns.update(derived or {})
    if not columns:
        return ["{}"] * len(frame)
    names = list(columns)
    return [
        json.dumps({n: v for n, v in zip(names, values) if v is not None and v != "" and v != []},
                   ensure_ascii=False, default=str)
        for values in zip(*(columns[n] for n in names))
    ]


def _check_note_ids(frame: pd.DataFrame, column: str, file: str, on_bad_rows: str, report: ReadReport) -> pd.DataFrame:
    """Rows with no note id or a repeated one: DataError, or skipped and reported (first row kept)."""
    ids = pd.Series(_optional_str(frame[column]), index=frame.index, dtype=object)
    missing = ids.isna().to_numpy()
    if missing.any():
        rows = frame["_row"].to_numpy()[missing]
        if on_bad_rows == "error":
            raise DataError("note id is missing", file=file, row=int(rows[0]), field=column)
        report.skip("note id is missing", file, rows.tolist())
    dup = ids.duplicated(keep="first").to_numpy() & ~missing
    if dup.any():
        first_rows = frame["_row"].groupby(ids.to_numpy()).first()
        positions = np.flatnonzero(dup)
        if on_bad_rows == "error":
            i = int(positions[0])
            note_id = ids.iloc[i]
            raise DataError(f"duplicate note id '{note_id}' (first seen in row {int(first_rows[note_id])})",
                            file=file, row=int(frame["_row"].iloc[i]), field=column)
        report.skip("duplicate note id (first row kept)", file, frame["_row"].to_numpy()[dup].tolist(),
                    [f"id {ids.iloc[i]}" for i in positions[:_EXAMPLES_PER_REASON].tolist()])
    keep = ~missing & ~dup
    out = frame[keep].copy()
    out["_note_id"] = ids[keep].to_numpy()
    return out


def _note_table(columns: dict[str, Sequence[Any]], source: str) -> pa.Table:
    """Column lists -> validated Note table (via schema.notes_to_table); optional Note columns (author counts,
    count_lower_bounds) are appended where any row has a value."""
    optional = {f.name: f for f in OPTIONAL_NOTE_FIELDS}
    unknown = set(columns) - set(NOTE_COLUMNS) - set(optional)
    if unknown:
        raise ValueError(f"not Note fields: {sorted(unknown)}")
    names = [n for n in columns if n in NOTE_COLUMNS]
    rows = [dict(zip(names, values)) for values in zip(*(columns[n] for n in names))]
    table = notes_to_table(rows, source=source)
    for name, column_field in optional.items():
        if name in columns and any(v is not None and v != [] for v in columns[name]):
            table = table.append_column(column_field, pa.array(list(columns[name]), type=column_field.type))
    return table


def _local_images(candidates: Sequence[list[str]], roots: Sequence[Path]) -> list[list[str]]:
    """Keep the image references that are files here (resolved against `roots`), as absolute paths."""
    out = []
    for refs in candidates:
        found = []
        for ref in refs:
            if not ref or "://" in ref:
                continue
            for root in roots:
                path = (root / ref) if not Path(ref).is_absolute() else Path(ref)
                if path.is_file():
                    found.append(str(path.resolve()))
                    break
        out.append(found)
    return out


# ------------------------------------------------------------------------------------------ events
def _event_table(frame: pd.DataFrame, *, known: set[str] | None, unknown_notes: str, report: ReadReport,
                 extra_columns: Sequence[str] = ()) -> pa.Table:
    """Frame with user_id, note_id, timestamp (UTC seconds), session_id, _file, _row -> Event table.

    Columns in `extra_columns` follow the four EVENT_SCHEMA columns.
    """
    for column in ("user_id", "note_id"):
        missing = frame[column].isna().to_numpy()
        if missing.any():
            i = int(np.flatnonzero(missing)[0])
            raise DataError(f"{column.replace('_', ' ')} is missing", file=frame["_file"].iloc[i],
                            row=int(frame["_row"].iloc[i]), field=column)
    if known is not None and unknown_notes != "keep" and len(frame):
        unknown = ~frame["note_id"].isin(known).to_numpy()
        if unknown.any():
            if unknown_notes == "error":
                i = int(np.flatnonzero(unknown)[0])
                raise DataError(f"event names note '{frame['note_id'].iloc[i]}' that is not in the note table",
                                file=frame["_file"].iloc[i], row=int(frame["_row"].iloc[i]), field="note_id")
            for file, group in frame[unknown].groupby("_file", sort=False):
                report.skip("event names a note that is not in the note table", file, group["_row"].tolist(),
                            [f"note {n}" for n in group["note_id"].head(_EXAMPLES_PER_REASON)])
            frame = frame[~unknown]
    timestamps = pa.array(frame["timestamp"].astype("Int64"), type=pa.int64()).cast(_TIMESTAMP)
    arrays = [
        pa.array(frame["user_id"].tolist(), type=pa.string()),
        pa.array(frame["note_id"].tolist(), type=pa.string()),
        timestamps,
        pa.array(frame["session_id"].tolist(), type=pa.string()),
    ]
    table = pa.Table.from_arrays(arrays, schema=EVENT_SCHEMA)
    for name in extra_columns:
        table = table.append_column(name, pa.array(frame[name], from_pandas=True))
    return table


def _pair_table(frame: pd.DataFrame, *, known: set[str], unknown_notes: str, report: ReadReport, file: str) -> pa.Table:
    a, b = frame["note_a"], frame["note_b"]
    self_pair = (a == b).to_numpy()
    report.skip("pair of a note with itself", file, frame["_row"].to_numpy()[self_pair].tolist())
    frame = frame[~self_pair]
    if unknown_notes != "keep":
        unknown = ~(frame["note_a"].isin(known) & frame["note_b"].isin(known)).to_numpy()
        if unknown.any():
            i = int(np.flatnonzero(unknown)[0])
            bad_id = frame["note_a"].iloc[i] if frame["note_a"].iloc[i] not in known else frame["note_b"].iloc[i]
            if unknown_notes == "error":
                raise DataError(f"pair names note '{bad_id}' that is not in the note table", file=file,
                                row=int(frame["_row"].iloc[i]))
            report.skip("pair names a note that is not in the note table", file,
                        frame["_row"].to_numpy()[unknown].tolist())
            frame = frame[~unknown]
    return pa.Table.from_arrays(
        [pa.array(frame["note_a"].tolist(), pa.string()), pa.array(frame["note_b"].tolist(), pa.string()),
         pa.array(np.full(len(frame), 1.0), pa.float64())],
        schema=PAIR_SCHEMA,
    )


# ------------------------------------------------------------------------------------------- NoteLLM
NOTELLM_COLUMNS = ("noteid", "title", "content", "imgid", "category")


def read_notellm_csv(
    notes_csv: str | Path,
    pairs_csv: str | Path | None = None,
    *,
    image_dir: str | Path | None = None,
    on_bad_rows: str = "error",
    unknown_notes: str = "skip",
) -> tuple[pa.Table, pa.Table | None]:
    """NoteLLM's CSV (no header: noteid,title,content,imgid,category) and its pairs file (id1,id2).

    category `Emotion@Other Emotions@` -> ['Emotion', 'Other Emotions']. `imgid` becomes an image path
    when `image_dir` (default: `images/` beside the CSV) holds `<imgid>` or `<imgid>.jpg|png|...`.
    Pairs get score 1.0.
    """
    _check_policy("on_bad_rows", on_bad_rows, BAD_ROW_POLICIES)
    _check_policy("unknown_notes", unknown_notes, UNKNOWN_NOTE_POLICIES)
    notes_csv = Path(notes_csv)
    file = str(notes_csv)
    report = ReadReport(source=f"notellm-csv {file}")
    frame = _read_csv(notes_csv, names=NOTELLM_COLUMNS, on_bad_rows=on_bad_rows, report=report)
    frame = _check_note_ids(frame, "noteid", file, on_bad_rows, report)
    split = [split_hashtags(c) for c in frame["content"].tolist()]
    imgids = _optional_str(frame["imgid"])
    image_dir = Path(image_dir) if image_dir is not None else notes_csv.parent / "images"
    images = _notellm_images(imgids, image_dir)
    notes = _note_table({
        "note_id": frame["_note_id"].tolist(),
        "title": _texts(frame["title"]),
        "content": [body for body, _ in split],
        "hashtags": [tags for _, tags in split],
        "category": [[p.strip() for p in clean_text(c).split("@") if p.strip()] for c in frame["category"].tolist()],
        "image_paths": images,
        "extra": [json.dumps({"imgid": i}, ensure_ascii=False) if i else "{}" for i in imgids],
    }, file)
    notes = _attach(notes, report)
    if pairs_csv is None:
        return notes, None
    pair_file = str(pairs_csv)
    pair_report = ReadReport(source=f"notellm-csv pairs {pair_file}")
    pairs = _read_csv(pairs_csv, names=("note_a", "note_b"), on_bad_rows=on_bad_rows, report=pair_report)
    for column in ("note_a", "note_b"):
        ids = _optional_str(pairs[column])
        missing = [r for r, v in zip(pairs["_row"].tolist(), ids) if v is None]
        if missing:
            if on_bad_rows == "error":
                raise DataError("note id is missing", file=pair_file, row=missing[0], field=column)
            pair_report.skip("note id is missing", pair_file, missing)
        pairs[column] = ids
    pairs = pairs.dropna(subset=["note_a", "note_b"])
    known = set(notes.column("note_id").to_pylist())
    table = _pair_table(pairs, known=known, unknown_notes=unknown_notes, report=pair_report, file=pair_file)
    return notes, _attach(table, pair_report)


def _notellm_images(imgids: list[str | None], image_dir: Path) -> list[list[str]]:
    if not image_dir.is_dir():
        return [[] for _ in imgids]
    present = {p.name: p for p in image_dir.iterdir() if p.is_file()}  # one listing, not a stat per note
    out = []
    for imgid in imgids:
        hit = None
        if imgid:
            for name in (imgid, *(imgid + s for s in _IMAGE_SUFFIXES)):
                if name in present:
                    hit = str(present[name].resolve())
                    break
        out.append([hit] if hit else [])
    return out


# --------------------------------------------------------------------------------------------- Qilin
_QILIN_EVENT_TABLES = ("recommendation_train", "recommendation_test", "search_train", "search_test", "dqa")
_QILIN_NOTE_FIELDS = {"note_title", "note_content", "note_idx", "image_path", "note_embedding", "taxonomy1_id",
                      "taxonomy2_id", "taxonomy3_id", "accum_like_num", "accum_collect_num", "accum_comment_num",
                      "share_num", "imp_num"}
_QILIN_DICT = re.compile(r"\{[^{}]*\}")


def _qilin_file(folder: Path, name: str) -> Path | list[Path] | None:
    """Where Qilin's table `name` lives: CSV (toy) or Parquet shards (the Hugging Face release)."""
    for base in (folder, folder / "toy_data", folder / "toy_data" / "csv", folder / "csv"):
        for candidate in (base / f"{name}.csv", base / f"{name}_toy.csv", base / f"{name}.parquet"):
            if candidate.is_file():
                return candidate
        shards = sorted((base / name).glob("**/*.parquet")) if (base / name).is_dir() else []
        if shards:
            return shards
    return None


def _qilin_frame(found: Path | list[Path], report: ReadReport) -> tuple[pd.DataFrame, str]:
    if isinstance(found, list):
        frames = []
        for shard in found:
            part = _read_parquet(shard)
            part["_file"] = str(shard)
            frames.append(part)
        return pd.concat(frames, ignore_index=True), str(found[0].parent)
    frame = _read_parquet(found) if found.suffix == ".parquet" else _read_csv(found, report=report)
    frame["_file"] = str(found)
    return frame, str(found)


def _qilin_list(value: Any) -> list[str]:
    """Qilin image paths: a real list (Parquet) or numpy's printed array `['a.jpg' 'b.jpg']` (CSV)."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return [str(v) for v in value]
    if _is_missing(value):
        return []
    return re.findall(r"'([^']*)'", str(value)) or re.findall(r'"([^"]*)"', str(value))


def read_qilin(
    folder: str | Path,
    *,
    unknown_notes: str = "skip",
    clicks_only: bool = True,
    on_bad_rows: str = "error",
    notes: str | None = None,
    sessions: str | Sequence[str] | None = None,
) -> tuple[pa.Table, pa.Table]:
    """Qilin (Xiaohongshu, SIGIR 2025): the notes table and the clicks of its recommendation, search and
    DQA sessions, from the toy CSVs or the Hugging Face Parquet release.

    Files named otherwise: `notes` = the notes file (or folder of Parquet shards), relative to `folder` or
    absolute; `sessions` = the session files (comma-separated or a list), each read as a session table
    whose source is its file stem (the layout is told by its columns, as for the standard names).

    Notes: note_id = note_idx; category = taxonomy1..3 ids (hashed, coarse to fine, cut at the first
    missing one); likes/collects/comments = accum_* (the note's lifetime totals, as RedNoob uses them),
    shares = share_num and impressions = imp_num (the log window: Qilin has no lifetime share count);
    the other counts, note_type (image/video) and the relative image paths go to `extra` (image_paths
    only lists images present under `folder`). The note embedding is dropped.
    Events: one row per impression with click = 1 (all impressions with clicks_only=False): user_id =
    user_idx, session_id = session_idx, timestamp = request/search time, plus source (table name),
    request_id (request_idx / search_idx), position, click, like, collect, comment, share, page_time and
    seq (file order). `recent_clicked_note_idxs` (no times) and user_feat are not read.
    """
    _check_policy("unknown_notes", unknown_notes, UNKNOWN_NOTE_POLICIES)
    _check_policy("on_bad_rows", on_bad_rows, BAD_ROW_POLICIES)
    folder = Path(folder)
    found = _qilin_named(folder, notes) if notes is not None else _qilin_file(folder, "notes")
    if found is None:
        raise DataError("no Qilin notes table (notes.csv, notes_toy.csv, notes.parquet or notes/*.parquet; "
                        "or name it with --opt notes=FILE)", file=str(folder))
    report = ReadReport(source=f"qilin {folder}")
    frame, file = _qilin_frame(found, report)
    missing = [c for c in ("note_idx", "note_title", "note_content") if c not in frame.columns]
    if missing:
        raise DataError(f"missing column(s) {missing} in the Qilin notes table", file=file)
    frame = _check_note_ids(frame, "note_idx", file, on_bad_rows, report)
    cells = _Cells(on_bad_rows, report)
    rows = frame["_row"]
    split = [split_hashtags(c) for c in frame["note_content"].tolist()]
    counts = {
        target: _counts(frame[source], rows, file, source, cells) if source in frame.columns else [None] * len(frame)
        for target, source in (("likes", "accum_like_num"), ("collects", "accum_collect_num"),
                               ("comments", "accum_comment_num"), ("shares", "share_num"), ("impressions", "imp_num"))
    }
    taxonomy = [c for c in ("taxonomy1_id", "taxonomy2_id", "taxonomy3_id") if c in frame.columns]
    category = _category_levels(frame[taxonomy]) if taxonomy else [[] for _ in range(len(frame))]
    image_refs = [_qilin_list(v) for v in frame["image_path"].tolist()] if "image_path" in frame.columns \
        else [[] for _ in range(len(frame))]
    note_type = pd.to_numeric(frame["note_type"], errors="coerce") if "note_type" in frame.columns else None
    derived: dict[str, Sequence[Any]] = {"image_path": image_refs}
    if note_type is not None:
        derived["note_type"] = [{1: "image", 2: "video"}.get(int(t), int(t)) if t == t else None for t in note_type]
    extra_columns = [c for c in frame.columns if c not in _QILIN_NOTE_FIELDS and not c.startswith("_")
                     and c != "note_type"]
    note_table = _note_table({
        "note_id": frame["_note_id"].tolist(),
        "title": _texts(frame["note_title"]),
        "content": [body for body, _ in split],
        "hashtags": [tags for _, tags in split],
        "category": category,
        "image_paths": _local_images(image_refs, [folder, folder.parent]),
        **counts,
        "extra": _extra_json(frame[extra_columns], derived),
    }, file)
    report.notes.append("Qilin notes have no author or publish time; counts: accum_* lifetime totals")
    session_files = None
    if sessions is not None:
        listed = [p.strip() for p in sessions.split(",")] if isinstance(sessions, str) else [str(p) for p in sessions]
        session_files = {Path(p).stem: _qilin_named(folder, p)
                         for p in listed if p}
    events = _qilin_events(folder, set(note_table.column("note_id").to_pylist()), unknown_notes, clicks_only,
                           session_files)
    return _attach(note_table, report), events


def _category_levels(frame: pd.DataFrame) -> list[list[str]]:
    """Category path from level columns, cut at the first missing level (`-124`, UNKNOWN, nan, empty)."""
    out = []
    for values in zip(*(frame[c].tolist() for c in frame.columns)):
        path = []
        for value in values:
            text = "" if _is_missing(value) else _id_text(value)
            if text in ("", "-124", "UNKNOWN", "nan", "None"):
                break
            path.append(text)
        out.append(path)
    return out


def _qilin_details(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, (list, tuple, np.ndarray)):
        return [dict(v) for v in value]
    if _is_missing(value):
        return []
    # the CSV holds numpy's printout of an array of dicts; NaN is printed as a bare `nan`
    return [ast.literal_eval(re.sub(r"\bnan\b", "None", item)) for item in _QILIN_DICT.findall(str(value))]


_QILIN_EVENT_COLUMNS = ("source", "request_id", "position", "click", "like", "collect", "comment", "share",
                        "page_time", "seq")


def _qilin_named(folder: Path, name: str) -> Path | list[Path]:
    """A Qilin table given by name: a file or a folder of Parquet shards, relative to `folder` or absolute."""
    path = Path(name) if Path(name).is_absolute() else folder / name
    if path.is_dir():
        shards = sorted(path.glob("**/*.parquet"))
        if shards:
            return shards
        raise DataError("folder holds no .parquet shards", file=str(path))
    if not path.is_file():
        raise DataError("Qilin table file does not exist", file=str(path))
    return path


def _qilin_events(folder: Path, known: set[str], unknown_notes: str, clicks_only: bool,
                  named: dict[str, Path | list[Path]] | None = None) -> pa.Table:
    report = ReadReport(source=f"qilin events {folder}")
    parts = []
    for name in (named if named is not None else _QILIN_EVENT_TABLES):
        found = named[name] if named is not None else _qilin_file(folder, name)
        if found is None:
            report.notes.append(f"no {name} table")
            continue
        frame, _ = _qilin_frame(found, report)
        detail_column = next((c for c in frame.columns if c.endswith("result_details_with_idx")), None)
        if detail_column is None or "user_idx" not in frame.columns:
            report.notes.append(f"{name}: no impression details, not read")
            continue
        for file, group in frame.groupby("_file", sort=False):
            parts.append(_qilin_impressions(group, name, file, detail_column, clicks_only))
    parts = [p for p in parts if len(p)]
    if parts:
        frame = pd.concat(parts, ignore_index=True)
        frame["seq"] = np.arange(len(frame), dtype=np.int64)
    else:
        frame = pd.DataFrame({c: pd.Series([], dtype=object)
                              for c in ("user_id", "note_id", "timestamp", "session_id", "_file", "_row",
                                        *_QILIN_EVENT_COLUMNS)})
    table = _event_table(frame, known=known, unknown_notes=unknown_notes, report=report,
                         extra_columns=_QILIN_EVENT_COLUMNS)
    return _attach(table, report)


def _qilin_impressions(frame: pd.DataFrame, name: str, file: str, detail_column: str, clicks_only: bool) -> pd.DataFrame:
    """One row per impression of one Qilin session file (clicked ones only with clicks_only)."""
    request_column = "request_idx" if "request_idx" in frame.columns else "search_idx"
    records = []
    for row, user, session, request, details in zip(
            frame["_row"].tolist(), frame["user_idx"].tolist(),
            frame["session_idx"].tolist() if "session_idx" in frame.columns else [None] * len(frame),
            frame[request_column].tolist() if request_column in frame.columns else [None] * len(frame),
            frame[detail_column].tolist()):
        try:
            items = _qilin_details(details)
        except (ValueError, SyntaxError) as exc:
            raise DataError(f"unreadable impression list: {exc}", file=file, row=row, field=detail_column) from None
        for item in items:
            item.update(_row=row, _user=user, _session=session, _request=request)
            records.append(item)
    out = pd.DataFrame.from_records(records) if records else pd.DataFrame(columns=["_row", "note_idx"])
    for column in ("click", "like", "collect", "comment", "share", "position", "page_time"):
        number = pd.to_numeric(out[column], errors="coerce") if column in out.columns else \
            pd.Series(np.nan, index=out.index)
        out[column] = number if column == "page_time" else number.astype("Int64")
    if clicks_only:
        out = out[out["click"] == 1].reset_index(drop=True)
    time = out["request_timestamp"] if "request_timestamp" in out.columns else pd.Series(np.nan, index=out.index)
    if "search_timestamp" in out.columns:
        time = time.fillna(out["search_timestamp"])
    out["timestamp"] = _epoch_seconds(time, out["_row"], file, "request_timestamp / search_timestamp")
    out["user_id"] = _optional_str(out["_user"]) if len(out) else []
    out["session_id"] = _optional_str(out["_session"]) if len(out) else []
    out["request_id"] = _optional_str(out["_request"]) if len(out) else []
    out["note_id"] = _optional_str(out["note_idx"])
    out["source"] = name
    out["_file"] = file
    return out


# ---------------------------------------------------------------------------------------- MediaCrawler
_MEDIACRAWLER_MAPPED = {"note_id", "title", "desc", "time", "user_id", "liked_count", "collected_count",
                        "comment_count", "share_count", "image_list", "_row"}
_MEDIACRAWLER_DROPPED = {"time_readable", "last_update_time_readable", "avatar"}


def read_mediacrawler(path: str | Path, *, on_bad_rows: str = "error") -> pa.Table:
    """A MediaCrawler Xiaohongshu export (CSV, JSON array or JSONL of notes).

    hashtags: the inline `#…[话题]#` tags of `desc` (U+FEFF stripped), else `tag_list`; the full tag_list
    stays in extra. Counts like `1.5万` = 15000. published_at = `time` (unix ms). image_paths: only
    `image_list` entries that are local files; URLs go to extra.image_urls. extra also keeps type,
    ip_location, note_url, source_keyword, nickname, last_update_time, crawl_date / last_modify_ts and
    `crawled_at` (UTC ISO time of the crawl, from last_modify_ts, else crawl_date).
    """
    _check_policy("on_bad_rows", on_bad_rows, BAD_ROW_POLICIES)
    path = Path(path)
    file = str(path)
    report = ReadReport(source=f"mediacrawler {file}")
    frame = _read_table_file(path, on_bad_rows=on_bad_rows, report=report, required=("note_id",))
    if "note_id" not in frame.columns:
        raise DataError(f"missing column 'note_id'; the file has {list(frame.columns)}", file=file)
    frame = _check_note_ids(frame, "note_id", file, on_bad_rows, report)
    rows = frame["_row"]
    n = len(frame)

    def column(name: str) -> pd.Series:
        return frame[name] if name in frame.columns else pd.Series([None] * n, index=frame.index, dtype=object)

    split = [split_hashtags(d) for d in column("desc").tolist()]
    tag_lists = [_as_list(v) for v in column("tag_list").tolist()]
    hashtags = [tags or _clean_tags(listed) for (_, tags), listed in zip(split, tag_lists)]
    image_refs = [_as_list(v) for v in column("image_list").tolist()]
    base = path.parent
    cells = _Cells(on_bad_rows, report)
    counts = {target: _counts(column(source), rows, file, source, cells) for target, source in (
        ("likes", "liked_count"), ("collects", "collected_count"), ("comments", "comment_count"),
        ("shares", "share_count"))}
    bounded: list[list[str]] = [[] for _ in range(n)]
    for target, source in (("likes", "liked_count"), ("collects", "collected_count"), ("comments", "comment_count"),
                           ("shares", "share_count")):
        _note_buckets(target, column(source), counts[target], bounded, report)
    extra_frame = frame[[c for c in frame.columns if c not in _MEDIACRAWLER_MAPPED | _MEDIACRAWLER_DROPPED
                         and not c.startswith("_")]]
    derived = {"image_urls": [[r for r in refs if "://" in r] for refs in image_refs],
               "crawled_at": _crawl_times(frame, rows, file, cells)}
    if "tag_list" in extra_frame.columns:
        extra_frame = extra_frame.drop(columns="tag_list")
        derived["tag_list"] = tag_lists
    notes = _note_table({
        "note_id": frame["_note_id"].tolist(),
        "title": _texts(column("title")),
        "content": [body for body, _ in split],
        "hashtags": hashtags,
        "image_paths": _local_images(image_refs, [base]),
        "author_id": _optional_str(column("user_id")),
        "published_at": _epoch_seconds(column("time"), rows, file, "time", cells),
        **counts,
        "count_lower_bounds": bounded,
        "extra": _extra_json(extra_frame, derived),
    }, file)
    return _attach(notes, report)


def _crawl_times(frame: pd.DataFrame, rows: pd.Series, file: str, cells: _Cells) -> list[str | None]:
    if "last_modify_ts" in frame.columns:
        seconds = _epoch_seconds(frame["last_modify_ts"], rows, file, "last_modify_ts", cells)
    elif "crawl_date" in frame.columns:
        seconds = _datetimes(frame["crawl_date"], rows, file, "crawl_date", tz="Asia/Shanghai", cells=cells)
    else:
        return [None] * len(frame)
    return [None if s is None else pd.Timestamp(s, unit="s", tz="UTC").isoformat() for s in seconds]


# ------------------------------------------------------------------------------------------ MovieLens
def _ml_tag(tag: Any) -> str:
    return re.sub(r"\s+", "_", clean_text(tag).lower())


def movielens_tags(tags: pd.DataFrame, max_tags: int = 10) -> dict[str, list[str]]:
    """movieId -> up to `max_tags` user tags (lower-cased, blanks to `_`), most frequent first.

    Frequency = number of rows of tags.csv with that tag on that movie; ties are broken alphabetically
    (by the normalised tag), so the result does not depend on the file's order.
    """
    if tags.empty:
        return {}
    frame = pd.DataFrame({"movie": tags["movieId"].map(_id_text), "tag": tags["tag"].map(_ml_tag)})
    frame = frame[frame["tag"] != ""]
    counts = frame.groupby(["movie", "tag"], sort=False).size().rename("n").reset_index()
    counts = counts.sort_values(["movie", "n", "tag"], ascending=[True, False, True], kind="stable")
    top = counts.groupby("movie", sort=False).head(max_tags)
    return top.groupby("movie", sort=False)["tag"].agg(list).to_dict()


def movielens_content(title: str, genres: Sequence[str], tags: Sequence[str]) -> str:
    """ml-i2i-v1 note text: `Title: <title>. Genres: <g1, g2>. Tags: #t1 #t2` (no Tags part without tags;
    `Genres: unknown` for a movie without genres)."""
    text = f"Title: {title}. Genres: {', '.join(genres) if genres else 'unknown'}."
    return f"{text} Tags: {' '.join('#' + t for t in tags)}" if tags else text


def read_movielens(folder: str | Path, min_rating: float = 3.5, max_tags: int = 10, *,
                   unknown_notes: str = "skip") -> tuple[pa.Table, pa.Table]:
    """MovieLens (ml-latest-small layout) under protocol ml-i2i-v1 (shared/BENCHMARKS.md).

    One note per movie of movies.csv: title = movie title, content = `movielens_content`, category =
    [first genre] ("unknown" when none), hashtags = the movie's top user tags (`movielens_tags`),
    extra = all genres (+ imdb/tmdb ids from links.csv when present).
    Events: ratings >= `min_rating` as clicks, sorted per user (numeric user id) by (timestamp, seq),
    with columns rating and seq = the row's position in ratings.csv (0-based), which reproduces the
    protocol's "file order" tie-break. session_id is empty.
    """
    _check_policy("unknown_notes", unknown_notes, UNKNOWN_NOTE_POLICIES)
    folder = Path(folder)
    report = ReadReport(source=f"movielens {folder}")
    movies_file = folder / "movies.csv"
    movies = _read_csv(movies_file, required=("movieId", "title", "genres"))
    movies = _check_note_ids(movies, "movieId", str(movies_file), "error", report)
    tags_file = folder / "tags.csv"
    tags = _read_csv(tags_file, required=("movieId", "tag")) if tags_file.exists() else pd.DataFrame()
    if tags.empty:
        report.notes.append("no tags.csv: notes have no hashtags")
    top_tags = movielens_tags(tags, max_tags)
    ids = movies["_note_id"].tolist()
    titles = _texts(movies["title"])
    genres = [[g.strip() for g in str(v).split("|") if g.strip() and g.strip() != "(no genres listed)"]
              if not _is_missing(v) else [] for v in movies["genres"].tolist()]
    hashtags = [top_tags.get(i, []) for i in ids]
    extra = {"genres": genres}
    links_file = folder / "links.csv"
    if links_file.exists():
        links = _read_csv(links_file, required=("movieId",))
        by_movie = {_id_text(m): r for m, r in zip(links["movieId"], links.to_dict("records"))}
        for key, column in (("imdb_id", "imdbId"), ("tmdb_id", "tmdbId")):
            if column in links.columns:
                extra[key] = [None if _is_missing(by_movie.get(i, {}).get(column)) else by_movie[i][column]
                              for i in ids]
    notes = _note_table({
        "note_id": ids,
        "title": titles,
        "content": [movielens_content(t, g, h) for t, g, h in zip(titles, genres, hashtags)],
        "hashtags": hashtags,
        "category": [[g[0]] if g else ["unknown"] for g in genres],
        "extra": _extra_json(pd.DataFrame(index=range(len(ids))), extra),
    }, str(movies_file))
    events = _movielens_events(folder / "ratings.csv", min_rating, set(ids), unknown_notes)
    return _attach(notes, report), events


def _movielens_events(ratings_file: Path, min_rating: float, known: set[str], unknown_notes: str) -> pa.Table:
    report = ReadReport(source=f"movielens ratings {ratings_file} (clicks = rating >= {min_rating})")
    file = str(ratings_file)
    ratings = _read_csv(ratings_file, required=("userId", "movieId", "rating", "timestamp"))
    rating = pd.to_numeric(ratings["rating"], errors="coerce")
    if rating.isna().any():
        i = int(np.flatnonzero(rating.isna().to_numpy())[0])
        raise DataError(f"{ratings['rating'].iloc[i]!r} is not a rating", file=file,
                        row=int(ratings["_row"].iloc[i]), field="rating")
    for column in ("userId", "movieId"):
        blank = np.array([_is_missing(v) for v in ratings[column].tolist()], dtype=bool)
        if blank.any():
            raise DataError("id is missing", file=file, row=int(ratings["_row"].iloc[int(np.flatnonzero(blank)[0])]),
                            field=column)
    frame = pd.DataFrame({
        "user_id": ratings["userId"].str.strip(),
        "note_id": ratings["movieId"].str.strip(),
        "timestamp": _epoch_seconds(ratings["timestamp"], ratings["_row"], file, "timestamp"),
        "session_id": None,
        "rating": rating.to_numpy(dtype=np.float64),
        "seq": (ratings["_row"] - 1).to_numpy(dtype=np.int64),
        "_row": ratings["_row"].to_numpy(),
        "_file": file,
    })
    frame = frame[frame["rating"] >= min_rating]
    user_order = pd.to_numeric(frame["user_id"], errors="coerce")
    frame = frame.assign(_user=user_order if user_order.notna().all() else frame["user_id"])
    frame["timestamp"] = frame["timestamp"].astype("Int64")
    frame = frame.sort_values(["_user", "timestamp", "seq"], kind="stable").reset_index(drop=True)
    table = _event_table(frame, known=known, unknown_notes=unknown_notes, report=report,
                         extra_columns=("rating", "seq"))
    return _attach(table, report)


# -------------------------------------------------------------------------------------------- KuaiRec
_KUAIREC_FILE = "kuairec_caption_category.csv"


def read_kuairec(folder: str | Path, *, on_bad_rows: str = "error") -> pa.Table:
    """KuaiRec 2.0 captions (kuairec_caption_category.csv; item_categories.csv joined when present).

    title = manual_cover_text; content = caption without its `#tag`s; hashtags = the caption's inline
    tags in order, then topic_tag entries not among them; category = first/second/third level names
    cut at the first missing one (`-124` / `UNKNOWN` = missing). Rows cut in two by an unquoted line
    break in the caption (4 in the real file) are joined again.
    """
    _check_policy("on_bad_rows", on_bad_rows, BAD_ROW_POLICIES)
    folder = Path(folder)
    path = folder if folder.is_file() else folder / _KUAIREC_FILE
    file = str(path)
    report = ReadReport(source=f"kuairec {file}")
    frame = _read_csv(path, required=("video_id", "caption"), on_bad_rows=on_bad_rows, report=report,
                      join_split_lines=True)
    frame = _check_note_ids(frame, "video_id", file, on_bad_rows, report)
    n = len(frame)

    def column(name: str) -> list[Any]:
        return frame[name].tolist() if name in frame.columns else [None] * n

    captions = column("caption")
    topic_tags = [_clean_tags(_as_list(v), 10**6, 10**6) if v != "UNKNOWN" else [] for v in column("topic_tag")]
    hashtags = [_merge_tags(parse_open_hashtags(c), _clean_tags(t)) for c, t in zip(captions, topic_tags)]
    levels = [c for c in ("first_level_category_name", "second_level_category_name", "third_level_category_name")
              if c in frame.columns]
    ids = [c for c in ("first_level_category_id", "second_level_category_id", "third_level_category_id")
           if c in frame.columns]
    derived: dict[str, Sequence[Any]] = {"topic_tag": topic_tags, "category_ids": _category_levels(frame[ids])
                                         if ids else [[] for _ in range(n)]}
    feat_file = (folder if folder.is_dir() else folder.parent) / "item_categories.csv"
    if feat_file.exists():
        feats = _read_csv(feat_file, required=("video_id", "feat"))
        by_id = dict(zip((_id_text(v) for v in feats["video_id"]), feats["feat"]))
        derived["feat"] = [[int(x) if x.lstrip("-").isdigit() else x for x in _as_list(by_id.get(i))]
                           if by_id.get(i) else None for i in frame["_note_id"].tolist()]
    notes = _note_table({
        "note_id": frame["_note_id"].tolist(),
        "title": ["" if clean_text(t) == "UNKNOWN" else clean_text(t) for t in column("manual_cover_text")],
        "content": [strip_open_hashtags(c) for c in captions],
        "hashtags": hashtags,
        "category": _category_levels(frame[levels]) if levels else [[] for _ in range(n)],
        "extra": _extra_json(pd.DataFrame(index=range(n)), derived),
    }, file)
    return _attach(notes, report)


# ---------------------------------------------------------------------------------------- Hacker News
def read_hackernews(path: str | Path, *, timezone: str = "America/New_York", on_bad_rows: str = "error") -> pa.Table:
    """Hacker News posts (id,title,url,num_points,num_comments,author,created_at[,text]).

    likes = num_points, comments = num_comments, author_id = author, content = text when the file has
    it and the post has one, else the url. created_at `M/D/YYYY H:MM` is read in `timezone` (the Kaggle
    "Hacker News Posts" data is in US Eastern time) and stored in UTC.
    """
    _check_policy("on_bad_rows", on_bad_rows, BAD_ROW_POLICIES)
    path = Path(path)
    file = str(path)
    report = ReadReport(source=f"hackernews {file}")
    frame = _read_csv(path, required=("id", "title", "created_at"), on_bad_rows=on_bad_rows, report=report)
    frame = _check_note_ids(frame, "id", file, on_bad_rows, report)
    cells = _Cells(on_bad_rows, report)
    rows = frame["_row"]
    n = len(frame)
    urls = _texts(frame["url"]) if "url" in frame.columns else [""] * n
    texts = _texts(frame["text"]) if "text" in frame.columns else [""] * n
    domains = [urlsplit(u).netloc.lower().removeprefix("www.") if u else None for u in urls]
    notes = _note_table({
        "note_id": frame["_note_id"].tolist(),
        "title": _texts(frame["title"]),
        "content": [t or u for t, u in zip(texts, urls)],
        "author_id": _optional_str(frame["author"]) if "author" in frame.columns else [None] * n,
        "published_at": _datetimes(frame["created_at"], rows, file, "created_at", fmt="%m/%d/%Y %H:%M", tz=timezone,
                                   cells=cells),
        "likes": _counts(frame["num_points"], rows, file, "num_points", cells)
        if "num_points" in frame.columns else [None] * n,
        "comments": _counts(frame["num_comments"], rows, file, "num_comments", cells)
        if "num_comments" in frame.columns else [None] * n,
        "extra": _extra_json(pd.DataFrame(index=range(n)), {"url": urls, "domain": domains}),
    }, file)
    return _attach(notes, report)


# --------------------------------------------------------------------------------------------- Weibo
_WEIBO_TIME = re.compile(r"(?:(\d{4})年)?(\d{1,2})月(\d{1,2})日\s*(\d{1,2}):(\d{2})")
_WEIBO_UI = re.compile(r"\s*(?:\.\.\.|…)?展开全文\s*$")


def _weibo_files(source: str | Path | Sequence[str | Path]) -> list[Path]:
    if isinstance(source, (str, Path)):
        source = Path(source)
        if source.is_dir():
            files = list(source.glob("*.csv"))
            if not files:
                raise DataError("no .csv files in the folder", file=str(source))
            # natural order: list_2 before list_10
            return sorted(files, key=lambda p: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)])
        return [source]
    return [Path(p) for p in source]


def read_weibo(folder_or_files: str | Path | Sequence[str | Path], *, year: int = 2020,
               timezone: str = "Asia/Shanghai",
               keep_tag_text: bool = False, on_bad_rows: str = "error") -> pa.Table:
    """Weibo posts crawled as weibo_cctv_2020 (pub_time, weibo_content, forward, comment, like, weibo_url,
    weibo_topic) from a folder of CSVs, a list of files or one file.

    Rows are deduplicated by url (without its query; files are read in natural name order, the first
    row's text is kept and each count is the largest seen, since counts only grow between crawls): the
    number merged is in the report. note_id = the post id of the url, author_id = the account id.
    pub_time `5月12日 09:15` (no year: `year`) is China time, stored in UTC; `已编辑` becomes
    extra.edited. title = weibo_topic without `#`; hashtags = the `#话题#` topics (`text.parse_weibo_hashtags`:
    free text inside, <= 32 chars); content = the post without them (with keep_tag_text=True the topic
    words stay, without `#`) and without the `...展开全文` link.
    shares = forward, comments = comment, likes = like.
    """
    _check_policy("on_bad_rows", on_bad_rows, BAD_ROW_POLICIES)
    files = _weibo_files(folder_or_files)
    report = ReadReport(source=f"weibo {files[0].parent if len(files) > 1 else files[0]} ({len(files)} files)")
    frames = []
    cells = _Cells(on_bad_rows, report)
    for path in files:
        frame = _read_csv(path, required=("pub_time", "weibo_content", "weibo_url"), on_bad_rows=on_bad_rows,
                          report=report)
        frame["_file"] = str(path)
        for target, source in (("shares", "forward"), ("comments", "comment"), ("likes", "like")):
            values = _counts(frame[source], frame["_row"], str(path), source, cells) if source in frame.columns \
                else [None] * len(frame)
            frame[target] = pd.array(values, dtype="Int64")
        frame["_published"] = _weibo_times(frame, str(path), year, timezone, cells)
        frames.append(frame)
    frame = pd.concat(frames, ignore_index=True)
    frame["_key"] = [_canonical_url(u) for u in frame["weibo_url"].tolist()]
    missing = frame["_key"].isna().to_numpy()
    if missing.any():
        i = int(np.flatnonzero(missing)[0])
        if on_bad_rows == "error":
            raise DataError("weibo_url (the note id) is missing", file=frame["_file"].iloc[i],
                            row=int(frame["_row"].iloc[i]), field="weibo_url")
        for file, group in frame[missing].groupby("_file", sort=False):
            report.skip("weibo_url (the note id) is missing", file, group["_row"].tolist())
        frame = frame[~missing]
    largest = frame.groupby("_key", sort=False)[["shares", "comments", "likes"]].max()
    first = frame.drop_duplicates("_key", keep="first").set_index("_key")
    merged = len(frame) - len(first)
    if merged:
        report.merged["rows with a url seen before (files overlap)"] = merged
        changed = int((first[["shares", "comments", "likes"]].fillna(-1) != largest.fillna(-1)).any(axis=1).sum())
        report.notes.append(f"{merged} duplicate rows merged by url; {changed} posts took a larger count from a duplicate")
    first[["shares", "comments", "likes"]] = largest
    first = first.reset_index()
    parts = [urlsplit(k).path.strip("/").split("/") for k in first["_key"]]
    contents, truncated = [], []
    for raw in first["weibo_content"].tolist():
        text = clean_text(raw)
        cut = _WEIBO_UI.search(text)
        truncated.append(True if cut else None)
        text = text[: cut.start()] if cut else text
        contents.append(text)
    body = [re.sub(r"#([^#\n]+)#", r"\1", t) if keep_tag_text else strip_weibo_hashtags(t) for t in contents]
    body = [re.sub(r"【\s*】", "", b).strip() for b in body]
    topics = _texts(first["weibo_topic"]) if "weibo_topic" in first.columns else [""] * len(first)
    notes = _note_table({
        "note_id": [p[-1] for p in parts],
        "title": [t.replace("#", "").strip() for t in topics],
        "content": body,
        "hashtags": [parse_weibo_hashtags(t) for t in contents],
        "author_id": [p[0] if len(p) > 1 else None for p in parts],
        "published_at": [None if pd.isna(s) else int(s) for s in first["_published"].tolist()],
        "likes": first["likes"].astype(object).where(first["likes"].notna(), None).tolist(),
        "comments": first["comments"].astype(object).where(first["comments"].notna(), None).tolist(),
        "shares": first["shares"].astype(object).where(first["shares"].notna(), None).tolist(),
        "extra": _extra_json(pd.DataFrame(index=range(len(first))), {
            "url": first["_key"].tolist(), "weibo_topic": topics,
            "edited": [True if "已编辑" in str(t) else None for t in first["pub_time"].tolist()],
            "truncated": truncated, "file": [Path(f).name for f in first["_file"]], "row": first["_row"].tolist()}),
    }, report.source)
    return _attach(notes, report)


def _canonical_url(url: Any) -> str | None:
    if _is_missing(url):
        return None
    parts = urlsplit(clean_text(url))
    if not parts.netloc:
        return clean_text(url)
    return f"{parts.scheme or 'https'}://{parts.netloc}{parts.path.rstrip('/')}"


def _weibo_times(frame: pd.DataFrame, file: str, year: int, tz: str, cells: _Cells = _RAISE) -> list[int | None]:
    """`5月12日 09:15` (no year: `year`), `2020年5月12日 09:15` or any date-time text, read as `tz`."""
    wall: list[str | None] = []
    for raw in frame["pub_time"].tolist():
        m = None if _is_missing(raw) else _WEIBO_TIME.search(str(raw))
        if m:
            y, mo, d, h, mi = m.groups()
            wall.append(f"{y or year}-{int(mo):02d}-{int(d):02d} {int(h):02d}:{mi}")
        else:
            wall.append(raw)
    return _datetimes(pd.Series(wall, dtype=object), frame["_row"], file, "pub_time", tz=tz, cells=cells)


# ---------------------------------------------------------------------------------------------- MIND
MIND_NEWS_COLUMNS = ("NewsID", "Category", "SubCategory", "Title", "Abstract", "URL", "TitleEntities",
                     "AbstractEntities")
MIND_BEHAVIOR_COLUMNS = ("ImpressionID", "UserID", "Time", "History", "Impressions")
_MIND_TIME = "%m/%d/%Y %I:%M:%S %p"
_MIND_EVENT_COLUMNS = ("source", "impression_id", "click", "seq")


def _mind_files(folder: Path) -> tuple[Path, Path]:
    """news.tsv and behaviors.tsv in `folder` (or in its one subfolder that has both, e.g. MINDsmall_train)."""
    candidates = [folder] + (sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else [])
    for base in candidates:
        if (base / "news.tsv").is_file() and (base / "behaviors.tsv").is_file():
            return base / "news.tsv", base / "behaviors.tsv"
    raise DataError("no MIND files: expected news.tsv and behaviors.tsv in the folder", file=str(folder))


def read_mind(folder: str | Path, *, timezone: str = "UTC", clicks_only: bool = True, on_bad_rows: str = "error",
              unknown_notes: str = "skip") -> tuple[pa.Table, pa.Table]:
    """MIND (Microsoft News Dataset) as Microsoft documents it: news.tsv (no header: NewsID, Category,
    SubCategory, Title, Abstract, URL, TitleEntities, AbstractEntities) and behaviors.tsv (ImpressionID,
    UserID, Time `11/15/2019 8:55:22 AM`, History `N1 N2`, Impressions `N3-1 N4-0`). The files are not
    quoted: a `"` in a title is text.

    Notes: note_id = NewsID, title = Title, content = Abstract, category = [Category, SubCategory],
    extra = url and the Wikidata ids of the title / abstract entities.
    Events: each user's History once (the first behaviours row of the user), as clicks in listed order
    with source "history" and the time of the user's first impression (MIND gives no earlier time; the
    order is kept by seq), then every clicked impression (every impression with clicks_only=False) with
    source "impression", its Time, session_id = ImpressionID and click 0/1. Times are read in `timezone`
    (MIND does not name one). `notellm pairs` and `notellm data split --notes` read the events as they are.
    """
    _check_policy("on_bad_rows", on_bad_rows, BAD_ROW_POLICIES)
    _check_policy("unknown_notes", unknown_notes, UNKNOWN_NOTE_POLICIES)
    tz = _check_timezone(timezone)
    news_file, behaviors_file = _mind_files(Path(folder))
    file = str(news_file)
    report = ReadReport(source=f"mind {news_file.parent}")
    news = _read_csv(news_file, names=MIND_NEWS_COLUMNS, header=False, delimiter="\t", quote=False,
                     on_bad_rows=on_bad_rows, report=report)
    news = _check_note_ids(news, "NewsID", file, on_bad_rows, report)
    cells = _Cells(on_bad_rows, report)
    rows = news["_row"].tolist()
    entities = {name: [_mind_entities(v, file, r, name, cells) for v, r in zip(news[name].tolist(), rows)]
                for name in ("TitleEntities", "AbstractEntities")}
    notes = _note_table({
        "note_id": news["_note_id"].tolist(),
        "title": _texts(news["Title"]),
        "content": _texts(news["Abstract"]),
        "category": [[clean_text(c) for c in pair if not _is_missing(c) and clean_text(c)]
                     for pair in zip(news["Category"].tolist(), news["SubCategory"].tolist())],
        "extra": _extra_json(pd.DataFrame(index=range(len(news))), {
            "url": _texts(news["URL"]), "title_entities": entities["TitleEntities"],
            "abstract_entities": entities["AbstractEntities"]}),
    }, file)
    report.notes.append("MIND news have no author, publish time or counts")
    events = _mind_events(behaviors_file, set(notes.column("note_id").to_pylist()), tz, clicks_only, on_bad_rows,
                          unknown_notes)
    return _attach(notes, report), events


def _mind_entities(value: Any, file: str, row: int, name: str, cells: _Cells) -> list[str]:
    """The WikidataIds of a MIND entity list (JSON); an unreadable list is a bad cell."""
    if _is_missing(value):
        return []
    try:
        loaded = json.loads(value)
    except (json.JSONDecodeError, RecursionError):
        loaded = None
    if not isinstance(loaded, list):
        cells.bad(file, row, name, value, "a JSON list of entities")
        return []
    return [str(e["WikidataId"]) for e in loaded if isinstance(e, dict) and e.get("WikidataId")]


def _mind_events(path: Path, known: set[str], tz: str, clicks_only: bool, on_bad_rows: str,
                 unknown_notes: str) -> pa.Table:
    file = str(path)
    report = ReadReport(source=f"mind behaviors {file}" + (" (clicks)" if clicks_only else ""))
    cells = _Cells(on_bad_rows, report)
    frame = _read_csv(path, names=MIND_BEHAVIOR_COLUMNS, header=False, delimiter="\t", quote=False,
                      on_bad_rows=on_bad_rows, report=report)
    times = _datetimes(frame["Time"], frame["_row"], file, "Time", fmt=_MIND_TIME, tz=tz, cells=cells,
                       report=report)
    first_time: dict[str, int] = {}
    for user, seconds in zip(frame["UserID"].tolist(), times):
        if seconds is not None and not _is_missing(user):
            key = clean_text(user)
            first_time[key] = min(first_time.get(key, seconds), seconds)
    history: list[tuple] = []
    impressions: list[tuple] = []
    seen_users: set[str] = set()
    for row, impression, user, seconds, past, shown in zip(
            frame["_row"].tolist(), frame["ImpressionID"].tolist(), frame["UserID"].tolist(), times,
            frame["History"].tolist(), frame["Impressions"].tolist()):
        user = None if _is_missing(user) else clean_text(user)
        if user is None:
            if on_bad_rows == "error":
                raise DataError("user id is missing", file=file, row=row, field="UserID")
            report.skip("user id is missing", file, [row])
            continue
        if user not in seen_users:
            seen_users.add(user)
            for news_id in ("" if _is_missing(past) else str(past)).split():
                history.append((user, news_id, first_time.get(user), f"history-{user}", "history", None, 1, row))
        for item in ("" if _is_missing(shown) else str(shown)).split():
            news_id, _, label = item.rpartition("-")
            if not news_id or label not in ("0", "1"):
                cells.bad(file, row, "Impressions", item, "an impression like N123-1 or N123-0")
                continue
            if clicks_only and label != "1":
                continue
            impressions.append((user, news_id, seconds, clean_text(impression), "impression", clean_text(impression),
                                int(label), row))
    records = history + impressions
    columns = ("user_id", "note_id", "timestamp", "session_id", "source", "impression_id", "click", "_row")
    out = pd.DataFrame.from_records(records, columns=columns) if records else \
        pd.DataFrame({c: pd.Series([], dtype=object) for c in columns})
    out["seq"] = np.arange(len(out), dtype=np.int64)
    out["click"] = out["click"].astype("int64")
    out["_file"] = file
    missing_time = out["timestamp"].isna().to_numpy()
    if missing_time.any():  # only possible where a bad Time was skipped: those rows cannot be ordered
        report.skip("event without a readable time (its behaviours row had a bad Time)", file,
                    out["_row"].to_numpy()[missing_time].tolist())
        out = out[~missing_time]
    out = out.sort_values(["user_id", "timestamp", "seq"], kind="stable").reset_index(drop=True)
    table = _event_table(out, known=known, unknown_notes=unknown_notes, report=report,
                         extra_columns=_MIND_EVENT_COLUMNS)
    report.notes.append(f"{len(seen_users):,} users; history clicks carry the time of the user's first impression")
    return _attach(table, report)


# -------------------------------------------------------------------------------------------- generic
def read_generic(path: str | Path, column_map: dict[str, str] | None = None, *, fmt: str | None = None,
                 encoding: str = "auto", on_bad_rows: str = "error", keep_extra: bool = True,
                 delimiter: str | None = None, header: bool = True, names: str | Sequence[str] | None = None,
                 timezone: str | None = None, published_at_from_id: bool = False,
                 open_hashtags: bool = True) -> pa.Table:
    """Any CSV / TSV / JSONL / JSON / Parquet table of notes, by extension (or `fmt`), with `column_map` from
    Note fields (and the optional author fields followers, author_notes, author_likes) to source columns; a
    field not mapped is taken from a column of the same name.

    Text files: `encoding` "auto" (UTF-8, else GB18030, or by byte-order mark) or a codec name; CSV
    `delimiter` detected (tab for .tsv) or given (`,`, `tab`, `;`, `|`); `header=False` with
    `names=a,b,c` for a file without a header line (with header=True, names replace the header).
    List fields accept real lists, JSON lists, Python-literal lists (`['动画', '特摄']`) or `a|b` / `a,b`
    text. Where a row has no hashtags (or there is no hashtags column) they are taken from the text:
    closed `#…#` tags, and with open_hashtags also open ones (`#话题 `, `# topic`); inline tags are
    removed from title and content either way, and stray `#` / `##` with them.
    published_at: unix s/ms or date-time text; naive times are read in `timezone` (default UTC, and the
    report says it was assumed), an offset is converted. With published_at_from_id, a note without a time
    takes it from its ObjectId-style id (24 hex digits, the first 8 = unix seconds). Counts accept `1.5万`;
    bucketed counts (`1k+`, `1w+`, `10万+`) keep their lower bound and name the field in the
    `count_lower_bounds` column (and are counted in the report). Source columns not mapped go into extra
    (keep_extra=False drops them).
    """
    _check_policy("on_bad_rows", on_bad_rows, BAD_ROW_POLICIES)
    path = Path(path)
    file = str(path)
    fmt = fmt or _format_of(path)
    if fmt == "tsv":
        fmt, delimiter = "csv", "\t" if delimiter is None else delimiter
    if fmt not in ("csv", "jsonl", "json", "parquet"):
        raise DataError(f"cannot tell the format of {path.name}: use .csv, .tsv, .jsonl, .json or .parquet, "
                        "or name the format", file=file)
    tz = _check_timezone(timezone) if timezone is not None else "UTC"
    report = ReadReport(source=f"{fmt} {file}")
    column_map = dict(column_map or {})
    fields = list(NOTE_COLUMNS) + list(AUTHOR_COUNT_COLUMNS)
    unknown = sorted(set(column_map) - set(fields))
    if unknown:
        raise DataError(f"--map names {unknown}, which are not Note fields; Note fields: {fields}", file=file)
    column_names = _column_names(names)
    if not header and column_names is None:
        raise DataError("a file without a header line needs its column names: --opt names=id,title,content",
                        file=file, field="names")
    if fmt == "csv":
        frame = _read_csv(path, names=column_names, header=header, on_bad_rows=on_bad_rows, report=report,
                          encoding=encoding, delimiter=delimiter)
    else:
        if column_names is not None or not header or delimiter is not None:
            raise DataError(f"delimiter, header and names are CSV/TSV options; {fmt} files name their columns",
                            file=file)
        frame = _read_table_file(path, fmt, encoding, report=report)
    available = [c for c in frame.columns if not str(c).startswith("_")]
    source_of = {f: column_map.get(f, f) for f in fields if column_map.get(f, f) in frame.columns}
    absent = {f: c for f, c in column_map.items() if c not in frame.columns}
    if absent:
        raise DataError(f"mapped column(s) not in the file: {absent}; the file has {available}", file=file)
    if "note_id" not in source_of:
        raise DataError(f"no note id column: map one with --map note_id=COLUMN; the file has {available}",
                        file=file, field="note_id")
    frame = _check_note_ids(frame, source_of["note_id"], file, on_bad_rows, report)
    cells = _Cells(on_bad_rows, report)
    rows = frame["_row"]
    n = len(frame)

    def values(name: str) -> list[Any]:
        return frame[source_of[name]].tolist() if name in source_of else [None] * n

    titles = _texts(frame[source_of["title"]]) if "title" in source_of else [""] * n
    contents = [_cell_text(c) for c in values("content")]
    inline = [_inline_hashtags(t, c, open_hashtags) for t, c in zip(titles, contents)]
    published = _datetimes(frame[source_of["published_at"]], rows, file, source_of["published_at"], tz=tz,
                           cells=cells, report=report, tz_given=timezone is not None) \
        if "published_at" in source_of else [None] * n
    if published_at_from_id:
        published = _times_from_ids(frame["_note_id"].tolist(), published, rows.tolist(), file, cells, report)
    columns: dict[str, Sequence[Any]] = {
        "note_id": frame["_note_id"].tolist(),
        "title": [t for t, _, _ in inline],
        "content": [c for _, c, _ in inline],
        # the hashtags column where a row has tags there, else the inline tags of content and title
        "hashtags": [_clean_tags(_as_list(v)) or tags for v, (_, _, tags) in zip(values("hashtags"), inline)],
        "category": [_as_list(v) for v in values("category")],
        "image_paths": [_as_list(v) for v in values("image_paths")],
        "author_id": _optional_str(frame[source_of["author_id"]]) if "author_id" in source_of else [None] * n,
        "published_at": published,
    }
    bounded: list[list[str]] = [[] for _ in range(n)]
    for name in _COUNT_FIELDS + AUTHOR_COUNT_COLUMNS:
        if name not in source_of:
            columns[name] = [None] * n
            continue
        source = frame[source_of[name]]
        columns[name] = _counts(source, rows, file, source_of[name], cells)
        _note_buckets(name, source, columns[name], bounded, report)
    if any(bounded):
        columns["count_lower_bounds"] = bounded
    rest = [c for c in available if c not in source_of.values()] if keep_extra else []
    extra = _extra_json(frame[rest])
    if "extra" in source_of:  # a source that already has an extra JSON column: merge it in
        extra = [_merge_extra(e, v, file, r, cells) for e, v, r in zip(extra, values("extra"), rows.tolist())]
    columns["extra"] = extra
    return _attach(_note_table(columns, file), report)


def _cell_text(value: Any) -> str:
    if _is_missing(value):
        return ""
    if isinstance(value, (list, tuple, dict, np.ndarray)):
        return clean_text(json.dumps(value.tolist() if isinstance(value, np.ndarray) else value,
                                     ensure_ascii=False, default=str))
    return clean_text(str(value))


def _note_buckets(name: str, source: pd.Series, values: list[int | None], bounded: list[list[str]],
                  report: ReadReport) -> None:
    """Mark the rows of count `name` written as a bucket (`1w+`): the stored value is its lower bound."""
    marks = _bucketed(source)
    hits = [i for i in np.flatnonzero(marks).tolist() if values[i] is not None]
    for i in hits:
        bounded[i].append(name)
    if hits:
        example = clean_text(source.iloc[hits[0]])
        report.notes.append(f"{len(hits):,} '{name}' value(s) are bucketed (e.g. {example!r}): kept as lower "
                            "bounds, listed in count_lower_bounds")


def _times_from_ids(ids: list[str], published: list[int | None], rows: list[int], file: str, cells: _Cells,
                    report: ReadReport) -> list[int | None]:
    """Fill missing publish times from ObjectId-style ids: 24 hex digits, the first 8 the unix time (s)."""
    out = list(published)
    decoded = 0
    for i, (note_id, seconds) in enumerate(zip(ids, published)):
        if seconds is not None:
            continue
        if not _OBJECT_ID.fullmatch(note_id):
            cells.bad(file, rows[i], "note_id", note_id, "an ObjectId (24 hex digits) to take the time from")
            continue
        seconds = int(note_id[:8], 16)
        if not _MIN_SECONDS <= seconds < _MAX_SECONDS:
            cells.bad(file, rows[i], "note_id", note_id, f"an ObjectId holding {_TIME_RANGE}")
            continue
        out[i] = seconds
        decoded += 1
    if decoded:
        report.notes.append(f"published_at of {decoded:,} note(s) taken from the ObjectId in their note_id")
    return out


_OBJECT_ID = re.compile(r"[0-9a-fA-F]{24}")
# an open tag: `#` (or a malformed `##`, or `# ` as machine translation writes it) then word characters up to
# a blank, punctuation or the end; not inside a word, a URL anchor or an HTML entity (`&#39;`)
_OPEN_TAG = re.compile(r"(?<![\w&#/])#{1,2} ?(\w+)")
_STRAY_HASH = re.compile(r"(?<!\S)#+(?!\S)|(?<!\S)#+(?=[^\w\s])")
_SPACES = re.compile(r"[^\S\n]+")
_EDGES = re.compile(r" *\n *")


def _inline_hashtags(title: str, content: str, open_style: bool) -> tuple[str, str, list[str]]:
    """(title, content, tags): closed `#…#` tags of content, then (open_style) open ones of content and title,
    removed from the text; tags too long to be hashtags keep their words; stray `#`s go too."""
    body, tags = split_hashtags(content)
    if not open_style:
        return title, body, tags
    body, body_tags = _strip_open_tags(body)
    title, title_tags = _strip_open_tags(title)
    return title, body, _merge_tags(tags, body_tags + title_tags)


def _strip_open_tags(text: str) -> tuple[str, list[str]]:
    if "#" not in text:
        return text, []
    found: list[str] = []

    def take(match: re.Match) -> str:
        tag = match.group(1)
        if tag.isdigit() or len(tag) > MAX_TAG_CHARS:  # `#1` is a rank, a long run is words
            return tag if len(tag) > MAX_TAG_CHARS else match.group(0)
        found.append(tag)
        return " "

    text = _STRAY_HASH.sub(" ", _OPEN_TAG.sub(take, text))
    text = _EDGES.sub("\n", _SPACES.sub(" ", text)).strip()
    return text, _merge_tags([], found)


def _merge_extra(base: str, value: Any, file: str, row: int, cells: _Cells = _RAISE) -> str:
    if _is_missing(value):
        return base
    original = value
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (json.JSONDecodeError, RecursionError):
            value = None
    if not isinstance(value, dict):
        cells.bad(file, row, "extra", original, "a JSON object")
        return base
    return json.dumps({**json.loads(base), **value}, ensure_ascii=False, default=str)


# ------------------------------------------------------------------------------------------- dispatch
class ReadResult(NamedTuple):
    """What `read_source` returns: the notes, and the events / pairs where the format has them."""

    notes: pa.Table
    events: pa.Table | None = None
    pairs: pa.Table | None = None


FORMATS: dict[str, str] = {
    "notellm-csv": "NoteLLM CSV without header (noteid,title,content,imgid,category); option pairs_csv=PATH",
    "qilin": "Qilin folder (notes + recommendation/search/DQA sessions), toy CSV or Hugging Face Parquet",
    "mediacrawler": "MediaCrawler Xiaohongshu export (xhs_note.csv / .json / .jsonl)",
    "movielens": "MovieLens folder (movies, ratings, tags), protocol ml-i2i-v1",
    "kuairec": "KuaiRec 2.0 captions folder (kuairec_caption_category.csv)",
    "hackernews": "Hacker News posts CSV (id,title,url,num_points,num_comments,author,created_at)",
    "weibo": "Weibo posts (weibo_cctv_2020 layout): a folder of CSVs or one CSV",
    "mind": "MIND news folder (news.tsv + behaviors.tsv): notes and click events (history + clicked impressions)",
    "csv": "any CSV (delimiter detected, or headerless with names=...); --map FIELD=COLUMN",
    "tsv": "any tab-separated file; --map FIELD=COLUMN",
    "jsonl": "any JSON-lines file; --map FIELD=COLUMN",
    "json": "any JSON array of objects; --map FIELD=COLUMN",
    "parquet": "any Parquet file; --map FIELD=COLUMN",
}


def _notellm_source(path: Path, **options: Any) -> ReadResult:
    notes, pairs = read_notellm_csv(path, **options)
    return ReadResult(notes, None, pairs)


def _pair_source(reader: Callable[..., tuple[pa.Table, pa.Table]]) -> Callable[..., ReadResult]:
    def read(path: Path, **options: Any) -> ReadResult:
        notes, events = reader(path, **options)
        return ReadResult(notes, events, None)

    read.__wrapped__ = reader  # type: ignore[attr-defined]  # so option checking sees the real signature
    return read


def _notes_source(reader: Callable[..., pa.Table]) -> Callable[..., ReadResult]:
    def read(path: Path, **options: Any) -> ReadResult:
        return ReadResult(reader(path, **options))

    read.__wrapped__ = reader  # type: ignore[attr-defined]
    return read


def _generic_source(fmt: str) -> Callable[..., ReadResult]:
    def read(path: Path, **options: Any) -> ReadResult:
        return ReadResult(read_generic(path, fmt=fmt, **options))

    read.__wrapped__ = read_generic  # type: ignore[attr-defined]
    return read


_notellm_source.__wrapped__ = read_notellm_csv  # type: ignore[attr-defined]
_READERS: dict[str, Callable[..., ReadResult]] = {
    "notellm-csv": _notellm_source,
    "qilin": _pair_source(read_qilin),
    "mediacrawler": _notes_source(read_mediacrawler),
    "movielens": _pair_source(read_movielens),
    "kuairec": _notes_source(read_kuairec),
    "hackernews": _notes_source(read_hackernews),
    "weibo": _notes_source(read_weibo),
    "mind": _pair_source(read_mind),
    "csv": _generic_source("csv"),
    "tsv": _generic_source("tsv"),
    "jsonl": _generic_source("jsonl"),
    "json": _generic_source("json"),
    "parquet": _generic_source("parquet"),
}


def reader_options(fmt: str) -> list[str]:
    """The keyword options a format's reader takes (beyond the path)."""
    reader = inspect.unwrap(_reader(fmt))
    params = list(inspect.signature(reader).parameters.values())[1:]
    return [p.name for p in params if p.name != "fmt" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def _reader(fmt: str) -> Callable[..., ReadResult]:
    if fmt not in _READERS:
        raise DataError(f"unknown format {fmt!r}; known formats: {', '.join(FORMATS)}", field="format")
    return _READERS[fmt]


def read_source(fmt: str, path: str | Path, **options: Any) -> ReadResult:
    """Read `path` with the reader of format `fmt` (one of FORMATS); options go to that reader."""
    reader = _reader(fmt)
    allowed = reader_options(fmt)
    wrong = sorted(set(options) - set(allowed))
    if wrong:
        raise DataError(f"format {fmt!r} takes no option(s) {wrong}; it takes {allowed}", field="options")
    return reader(Path(path), **options)


EVENT_FORMATS = frozenset({"qilin", "movielens", "mind"})
PAIR_FORMATS = frozenset({"notellm-csv"})


# -------------------------------------------------------------------------------------------- summary
def _time_range(column: pa.ChunkedArray) -> str:
    import pyarrow.compute as pc

    known = column.drop_null() if column.null_count else column
    if len(known) == 0:
        return "none"
    low, high = pc.min(known).as_py(), pc.max(known).as_py()
    missing = f" ({column.null_count:,} without)" if column.null_count else ""
    return f"{low:%Y-%m-%d %H:%M} .. {high:%Y-%m-%d %H:%M} UTC{missing}"


def summarize(table: pa.Table, kind: str = "notes") -> dict[str, Any]:
    """Facts about a table a reader returned, as printed by `notellm data import`: rows, skips with reasons,
    merges, and per kind: hashtags per note and date range (notes), users and time range (events)."""
    import pyarrow.compute as pc

    lines: list[str] = []
    out: dict[str, Any] = {"rows": table.num_rows, "lines": lines}
    report = read_report(table) or {}
    for reason, count in report.get("skipped", {}).items():
        examples = "; ".join(report.get("examples", {}).get(reason, [])[:3])
        lines.append(f"skipped {count:,}: {reason} (e.g. {examples})")
    for reason, count in report.get("merged", {}).items():
        lines.append(f"merged {count:,}: {reason}")
    lines.extend(report.get("notes", []))
    if kind == "notes" and table.num_rows:
        tag_counts = pc.list_value_length(table.column("hashtags")).fill_null(0)
        out["hashtags_per_note"] = pc.mean(tag_counts).as_py()
        out["share_with_hashtags"] = pc.mean(pc.greater(tag_counts, 0).cast(pa.float64())).as_py()
        categorised = pc.mean(pc.greater(pc.list_value_length(table.column("category")).fill_null(0), 0)
                              .cast(pa.float64())).as_py()
        lines.append(f"hashtags per note {out['hashtags_per_note']:.2f} "
                     f"({out['share_with_hashtags']:.0%} of notes have one); category on {categorised:.0%}")
        lines.append(f"published: {_time_range(table.column('published_at'))}")
        filled = [name for name in _COUNT_FIELDS if table.column(name).null_count < table.num_rows]
        lines.append(f"counts: {', '.join(filled) if filled else 'none'}")
    elif kind == "events" and table.num_rows:
        out["users"] = pc.count_distinct(table.column("user_id")).as_py()
        out["notes"] = pc.count_distinct(table.column("note_id")).as_py()
        lines.append(f"{out['users']:,} users, {out['notes']:,} notes; time: {_time_range(table.column('timestamp'))}")
    elif kind == "pairs" and table.num_rows:
        notes = pc.count_distinct(pa.concat_arrays([table.column("note_a").combine_chunks(),
                                                    table.column("note_b").combine_chunks()])).as_py()
        lines.append(f"{notes:,} distinct notes in pairs")
    return out
