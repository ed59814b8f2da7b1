"""Co-occurring note pairs from user behaviour: NoteLLM's s(A->B) = sum over users i of 1/N_i.

The mining is one SQL query (`sql/pairs.sql`) run by DuckDB here (embedded, out-of-core: memory limit and a
spill folder) and by Spark SQL on a cluster (`mine_pairs_spark`, `pair_sql(config, "spark")`): the two texts
differ only in the names of two list functions and in a DuckDB-only shortcut before the final ranking.

Semantics (see docs/pairs.md for the reasons):

- Order: a user's clicks are ordered by (timestamp, seq, file order); `seq` is an optional integer column.
  Events without a timestamp column are ordered by seq and file order alone.
- Sequences: `sessions` picks what one sequence is: `none` (the user's whole history), `column` (the
  `session_id` column), `gap` (a new session after `session_gap_seconds` without a click), or `auto`
  (`column` when the events have a non-null session_id, else `none`).
- `window` mode (protocol ml-i2i-v1 exactly): for each click A, each of the next `window` clicks B of the same
  sequence with B != A adds 1/N to s(A->B), N = the number of clicks in the sequence. Repeated clicks of a note
  are clicks: they count in N and in the window (as the protocol says "clicks"), unless `dedupe_clicks`
  keeps only the first click of each note in a sequence.
- `session` mode: every ordered pair (A, B) of distinct notes of a sequence adds 1/N, N = the number of
  distinct notes in it (a repeated click adds nothing); `directed` keeps only A clicked before B.
- The sum is rounded to `round_decimals` (9) places, so that summation order (threads, engines) cannot change
  thresholds or ties. Then l <= s <= u (`min_score`, `max_score`; null = no bound) and the top `top_k` B per A
  by score, ties broken by note_b ascending (string order). Output is sorted by (note_a, score desc, note_b).
- Events of notes missing from a given note table are dropped before mining (so they take no window slot and
  do not count in N) and reported (count, distinct notes, examples); `unknown_notes: error` refuses them.
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from notellm.data.schema import PAIR_SCHEMA
from notellm.errors import ConfigError, DataError
from notellm.io import write_parquet

EventSource = Union[str, Path, pa.Table]
NoteSource = Union[str, Path, pa.Table, Iterable[str]]

_SQL_FILE = Path(__file__).with_name("sql") / "pairs.sql"
_MODES = ("window", "session")
_SESSIONS = ("auto", "none", "column", "gap")
_DIALECTS = ("duckdb", "spark")
REPORT_KEY = b"notellm.pairs"  # Parquet/Arrow schema metadata key holding the mining report (JSON)


@dataclass
class PairMiningConfig:
    """How co-occurring pairs are mined. Defaults follow the NoteLLM paper (l=0.01, u=30, t=10) and ml-i2i-v1."""

    mode: str = "window"              # window | session
    window: int = 20                  # window mode: the next W clicks of each click
    sessions: str = "auto"            # auto | none | column | gap
    session_gap_seconds: float = 1800.0
    directed: bool = False            # session mode: only pairs where A was clicked before B
    dedupe_clicks: bool = False       # window mode: only the first click of a note in a sequence counts
    min_score: float | None = 0.01    # l (inclusive); null: no lower bound
    max_score: float | None = 30.0    # u (inclusive); null: no upper bound
    top_k: int | None = 10            # t; null: keep every pair in range
    round_decimals: int = 9
    unknown_notes: str = "drop"       # drop | error: events naming notes missing from the note table
    memory_limit: str = "4GB"         # DuckDB: beyond this it spills to temp_directory
    temp_directory: str | None = None  # DuckDB spill folder; null: a fresh folder in the system temp dir
    threads: int | None = None        # DuckDB threads; null: all cores

    def validate(self) -> "PairMiningConfig":
        if self.mode not in _MODES:
            raise ConfigError(f"mode must be one of {_MODES}, got '{self.mode}'")
        if self.sessions not in _SESSIONS:
            raise ConfigError(f"sessions must be one of {_SESSIONS}, got '{self.sessions}'")
        if not isinstance(self.window, int) or self.window < 1:
            raise ConfigError(f"window must be a positive integer, got {self.window!r}")
        if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k < 1):
            raise ConfigError(f"top_k must be a positive integer or null, got {self.top_k!r}")
        if self.session_gap_seconds <= 0:
            raise ConfigError(f"session_gap_seconds must be > 0, got {self.session_gap_seconds}")
        if (self.min_score is not None and self.max_score is not None and self.min_score > self.max_score):
            raise ConfigError(f"min_score {self.min_score} is above max_score {self.max_score}")
        if not 0 <= self.round_decimals <= 15:
            raise ConfigError(f"round_decimals must be in 0..15, got {self.round_decimals}")
        if self.unknown_notes not in ("drop", "error"):
            raise ConfigError(f"unknown_notes must be 'drop' or 'error', got '{self.unknown_notes}'")
        return self


@dataclass
class PairMiningReport:
    """What a mining run saw and kept; stored as JSON in the output's Parquet metadata."""

    engine: str
    events: int = 0                # events mined (after dropping unknown notes)
    users: int = 0
    notes: int = 0                 # distinct notes in the mined events
    sessions: str = "none"         # the sequence rule actually used (auto resolved)
    unknown_events: int = 0        # events whose note is not in the note table (dropped)
    unknown_notes: int = 0
    unknown_examples: list[str] = field(default_factory=list)
    candidate_pairs: int = -1      # distinct (A, B) with s > 0 (-1: not counted by this engine)
    pairs_in_range: int = -1       # ... with l <= s <= u
    pairs_kept: int = 0            # ... in the top t of their A
    notes_with_pairs: int = 0      # distinct A with a kept pair
    seconds: float = 0.0
    config: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)


# ---- SQL ----------------------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _sql_blocks() -> dict[str, str]:
    """The `-- name: x` blocks of pairs.sql, comments kept (they explain the query to whoever reads it)."""
    text = _SQL_FILE.read_text(encoding="utf-8")
    parts = re.split(r"^-- name: (\w+)\s*$", text, flags=re.M)
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2])}


def _block(name: str, **values: Any) -> str:
    return _sql_blocks()[name].format(**values)


def _float_literal(x: float) -> str:
    # a bare 0.01 is DECIMAL in Spark; both engines read this as the same double
    return f"CAST({float(x)!r} AS DOUBLE)"


def _score_filter(config: PairMiningConfig) -> str:
    terms = []
    if config.min_score is not None:
        terms.append(f"score >= {_float_literal(config.min_score)}")
    if config.max_score is not None:
        terms.append(f"score <= {_float_literal(config.max_score)}")
    return " AND ".join(terms) or "TRUE"


_ORDER = "t, seq NULLS LAST, ord"  # a user's clicks: time, then seq, then file order
_FILE_SHIFT = 1 << 40  # ord = file number * 2^40 + row in the file
_LIST_WORDS = {"duckdb": {"collect": "list", "explode": "unnest"},
               "spark": {"collect": "collect_list", "explode": "explode"}}


def _ctes(config: PairMiningConfig, sessions: str, dialect: str) -> list[tuple[str, str]]:
    """(name, query) of each CTE up to `raw_pairs` (one row per contribution w = 1/N to s(note_a -> note_b))."""
    if sessions not in ("none", "column", "gap"):
        raise ValueError(f"sessions must be resolved to none, column or gap, got '{sessions}'")
    words = _LIST_WORDS[dialect]
    gap_us = int(round(config.session_gap_seconds * 1e6))
    ctes = [("sessioned", _block(f"sessions_{sessions}", order=_ORDER, gap_us=gap_us))]
    if config.mode == "window":
        source = "sessioned"
        if config.dedupe_clicks:
            ctes.append(("first_clicks", _block("first_clicks", order=_ORDER)))
            source = "first_clicks"
        ctes.append(("raw_pairs", _block("window_pairs", source=source, order=_ORDER, window=config.window, **words)))
    else:
        frame_start = "1 FOLLOWING" if config.directed else "UNBOUNDED PRECEDING"
        ctes += [("session_notes", _block("session_notes", order=_ORDER)),
                 ("raw_pairs", _block("session_pairs", frame_start=frame_start, **words))]
    return ctes


def _with(ctes: list[tuple[str, str]], body: str) -> str:
    inner = ",\n".join(f"{name} AS (\n{query}\n)" for name, query in ctes)
    return f"WITH {inner}\n{body}"


def _ranking_ctes(config: PairMiningConfig, dialect: str) -> list[tuple[str, str]]:
    """CTEs after `scored`: the pairs in [l, u], or on DuckDB (with top_k) the candidates for the top t."""
    if dialect == "duckdb" and config.top_k is not None:
        return [("top_candidates", _block("top_candidates_duckdb", top_k=config.top_k,
                                          score_filter=_score_filter(config)))]
    return [("in_range", _block("in_range", score_filter=_score_filter(config)))]


def _select_sql(config: PairMiningConfig, dialect: str) -> str:
    top = f"rnk <= {config.top_k}" if config.top_k is not None else "TRUE"
    ranked = "top_candidates" if dialect == "duckdb" and config.top_k is not None else "in_range"
    return _block("select", ranked=ranked, top_filter=top)


def pair_sql(config: PairMiningConfig, dialect: str = "duckdb", sessions: str | None = None) -> str:
    """The whole mining query over a relation `clicks` (see sql/pairs.sql), for DuckDB or Spark SQL.

    The texts differ only in the list functions (DuckDB list/unnest, Spark collect_list/explode) and in one
    DuckDB-only CTE that narrows the ranking to candidates (same result, faster). `sessions` overrides
    config.sessions; `auto` (which depends on the data) is read as `column`."""
    if dialect not in _DIALECTS:
        raise ConfigError(f"dialect must be one of {_DIALECTS}, got '{dialect}'")
    config.validate()
    sessions = sessions or config.sessions
    sessions = "column" if sessions == "auto" else sessions
    ctes = _ctes(config, sessions, dialect)
    ctes.append(("scored", _block("scored", decimals=config.round_decimals)))
    ctes += _ranking_ctes(config, dialect)
    return _with(ctes, _select_sql(config, dialect)) + "\nORDER BY note_a, score DESC, note_b"


# ---- DuckDB -------------------------------------------------------------------------------------------------
def _parquet_files(path: Path) -> list[str]:
    if path.is_dir():
        files = sorted(str(p) for p in path.rglob("*.parquet"))
        if not files:
            raise DataError("folder holds no .parquet files", file=str(path))
        return files
    if not path.exists():
        raise DataError("event table does not exist", file=str(path))
    return [str(path)]


def _time_expr(column_type: str | None, engine: str) -> str:
    """SQL giving microseconds since 1970 from the event table's `timestamp` column of this type."""
    if column_type is None:  # no time: order by seq and file order alone
        return "CAST(0 AS BIGINT)"
    kind = column_type.upper()
    if kind.startswith("TIMESTAMP"):
        return "epoch_us(timestamp)" if engine == "duckdb" else "unix_micros(timestamp)"
    if kind in ("BIGINT", "INTEGER", "INT", "SMALLINT", "TINYINT", "HUGEINT", "UBIGINT", "UINTEGER", "LONG"):
        return "CAST(timestamp AS BIGINT) * 1000000"  # unix seconds
    if kind in ("DOUBLE", "FLOAT", "REAL"):
        # NaN, infinite and absurd times become NULL, which the event check reports with file and row
        finite = "isfinite(timestamp)" if engine == "duckdb" else "NOT isnan(timestamp)"
        return (f"CASE WHEN {finite} AND abs(timestamp) < 1e12 THEN CAST(ROUND(timestamp * 1000000) AS BIGINT) "
                "END")
    raise DataError(f"timestamp must be a timestamp or unix seconds, not {column_type}", field="timestamp")


def _clicks_select(columns: dict[str, str], engine: str, file_col: str, row_col: str, source: str) -> str:
    for required in ("user_id", "note_id"):
        if required not in columns:
            raise DataError(f"not an event table: missing column '{required}' (columns: {sorted(columns)})")
    session = "CAST(session_id AS STRING)" if "session_id" in columns else "CAST(NULL AS STRING)"
    seq = "CAST(seq AS BIGINT)" if "seq" in columns else "CAST(0 AS BIGINT)"
    return (f"SELECT CAST(user_id AS STRING) AS user_id, CAST(note_id AS STRING) AS note_id, "
            f"{_time_expr(columns.get('timestamp'), engine)} AS t, {session} AS session_id, {seq} AS seq, "
            f"{file_col} AS src_file, CAST({row_col} AS BIGINT) AS src_row FROM {source}")


def _duckdb_connect(config: PairMiningConfig, temp_dir: str):
    import duckdb

    con = duckdb.connect(":memory:")
    con.execute(f"SET memory_limit = '{config.memory_limit}'")
    con.execute(f"SET temp_directory = '{temp_dir}'")
    con.execute("SET preserve_insertion_order = false")  # lets big aggregates stream; the output is sorted anyway
    if config.threads:
        con.execute(f"SET threads = {int(config.threads)}")
    return con


def _register_events(con, events: EventSource) -> tuple[str, dict[str, str]]:
    """Create view `events_text` (the `clicks` columns, ids as strings); returns (source name, column types)."""
    import duckdb

    if isinstance(events, pa.Table):
        table = events.append_column("__src_row", pa.array(np.arange(len(events), dtype=np.int64)))
        con.register("raw_events", table)
        columns = dict(con.execute("SELECT column_name, column_type FROM (DESCRIBE raw_events)").fetchall())
        columns.pop("__src_row")
        con.execute("CREATE TEMP VIEW events_text AS "
                    + _clicks_select(columns, "duckdb", "''", "__src_row", "raw_events"))
        return "<events table>", columns
    path = Path(events)
    files = _parquet_files(path)
    source = f"read_parquet({files!r}, filename = true, file_row_number = true)"
    try:
        columns = dict(con.execute(f"SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM {source})")
                       .fetchall())
    except duckdb.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"not a readable Parquet event table ({first})", file=str(path)) from None
    for extra in ("filename", "file_row_number"):
        columns.pop(extra, None)
    con.execute("CREATE TEMP VIEW events_text AS "
                + _clicks_select(columns, "duckdb", "filename", "file_row_number", source))
    return str(path), columns


def _note_ids(notes: NoteSource) -> pa.Table:
    if isinstance(notes, (str, Path)):
        path = Path(notes)
        if not path.exists():
            raise DataError("note table does not exist", file=str(path))
        from notellm.data.schema import read_table_with

        ids = read_table_with(path, "note", ("note_id",)).column("note_id")
    elif isinstance(notes, pa.Table):
        if "note_id" not in notes.column_names:
            raise DataError("the note table has no note_id column", field="note_id")
        ids = notes.column("note_id")
    else:
        ids = pa.array([str(n) for n in notes], pa.string())
    return pa.table({"note_id": ids.cast(pa.string())})


def _first_bad_row(run: Callable[[str], list], relation: str, condition: str) -> tuple[str | None, int | None]:
    rows = run(_block("first_bad_row", relation=relation, condition=condition))
    if not rows:
        return None, None
    src_file, src_row = rows[0]
    return (src_file or None), int(src_row) + 1


def _check_events(run: Callable[[str], list], relation: str, config: PairMiningConfig, source: str,
                  has_time: bool) -> tuple[dict[str, int], str]:
    """Count events, users, notes; raise DataError (file, row, field) on missing values; resolve sessions."""
    names = ("events", "users", "notes", "missing_user", "missing_note", "missing_time", "missing_session")
    facts = dict(zip(names, (int(v or 0) for v in run(_block("check", relation=relation))[0])))
    problems = [("missing_user", "user_id IS NULL OR user_id = ''", "user_id"),
                ("missing_note", "note_id IS NULL OR note_id = ''", "note_id"),
                ("missing_time", "t IS NULL", "timestamp")]
    for key, condition, column in problems:
        if facts[key]:
            file, row = _first_bad_row(run, relation, condition)
            raise DataError(f"{facts[key]} event(s) have no {column} (the first is shown)",
                            file=file or source, row=row, field=column)
    sessions = config.sessions
    if sessions == "auto":
        sessions = "column" if facts["missing_session"] < facts["events"] else "none"
    if sessions == "column" and facts["missing_session"]:
        file, row = _first_bad_row(run, relation, "session_id IS NULL")
        raise DataError(f"{facts['missing_session']} event(s) have no session_id but sessions='column'",
                        file=file or source, row=row, field="session_id")
    if sessions == "gap" and not has_time:
        raise ConfigError("sessions='gap' needs a timestamp column in the events")
    return facts, sessions


def _drop_unknown_notes(con, notes: NoteSource, config: PairMiningConfig, source: str,
                        report: PairMiningReport) -> str:
    """View `events_known`: the events of notes in the note table; the others are counted in the report
    (or refused with unknown_notes=error). Returns the view's name."""
    con.register("known_notes", _note_ids(notes))
    unknown = "NOT EXISTS (SELECT 1 FROM known_notes k WHERE k.note_id = e.note_id)"
    count, distinct = con.execute(
        f"SELECT COUNT(*), COUNT(DISTINCT note_id) FROM events_text e WHERE {unknown}").fetchall()[0]
    if count:
        examples = [r[0] for r in con.execute(
            f"SELECT DISTINCT note_id FROM events_text e WHERE {unknown} ORDER BY note_id LIMIT 5").fetchall()]
        report.unknown_events, report.unknown_notes, report.unknown_examples = int(count), int(distinct), examples
        if config.unknown_notes == "error":
            file, row = _first_bad_row(lambda q: con.execute(q).fetchall(), "events_text e", unknown)
            raise DataError(f"{count} event(s) name {distinct} note(s) missing from the note table, e.g. "
                            f"{examples}", file=file or source, row=row, field="note_id")
    con.execute(f"CREATE TEMP VIEW events_known AS SELECT * FROM events_text e WHERE NOT ({unknown})")
    return "events_known"


def _encode_clicks(con, relation: str) -> None:
    """View `clicks` with integer note codes that follow the note ids' string order (so ties still break by
    note id): integer keys make DuckDB's big aggregate and the ranking sort much faster than strings. User and
    session ids stay strings (partitioning on them costs no more than on integers)."""
    con.execute("CREATE TEMP TABLE note_codes AS SELECT note_id, CAST(ROW_NUMBER() OVER (ORDER BY note_id) AS BIGINT)"
                f" AS code FROM (SELECT DISTINCT note_id FROM {relation}) notes")
    con.execute("CREATE TEMP TABLE file_numbers AS " + _block("file_numbers", relation=relation))
    con.execute(f"""CREATE TEMP VIEW clicks AS
        SELECT e.user_id, n.code AS note_id, e.t, e.session_id, e.seq, f.file_number * {_FILE_SHIFT} + e.src_row AS ord
        FROM {relation} e JOIN note_codes n ON n.note_id = e.note_id JOIN file_numbers f ON f.src_file = e.src_file""")


def _mine_on_connection(con, events: EventSource, config: PairMiningConfig, notes: NoteSource | None,
                        report: PairMiningReport, stage: Callable[[str], None]) -> pa.Table:
    """Read, check and encode the events, then run the query in two steps (so the report can count the
    candidate pairs): `scored` into a temporary table, then the ranking, decoded back to note ids."""
    stage("reading events")
    source, columns = _register_events(con, events)
    relation = "events_text" if notes is None else _drop_unknown_notes(con, notes, config, source, report)
    facts, report.sessions = _check_events(lambda q: con.execute(q).fetchall(), relation, config, source,
                                           "timestamp" in columns)
    report.events, report.users, report.notes = facts["events"], facts["users"], facts["notes"]
    _encode_clicks(con, relation)
    stage("mining pairs")
    scored = _block("scored", decimals=config.round_decimals)
    con.execute("CREATE TEMP TABLE scored AS " + _with(_ctes(config, report.sessions, "duckdb"), scored))
    report.candidate_pairs = con.execute("SELECT COUNT(*) FROM scored").fetchall()[0][0]
    report.pairs_in_range = con.execute(f"SELECT COUNT(*) FROM scored WHERE {_score_filter(config)}").fetchall()[0][0]
    stage("ranking")
    ranking = _ranking_ctes(config, "duckdb") + [("kept", _select_sql(config, "duckdb"))]
    return con.sql(_with(ranking, """
        SELECT a.note_id AS note_a, b.note_id AS note_b, kept.score
        FROM kept JOIN note_codes a ON a.code = kept.note_a JOIN note_codes b ON b.code = kept.note_b
        ORDER BY kept.note_a, kept.score DESC, kept.note_b""")).to_arrow_table()


def _finish(table: pa.Table, report: PairMiningReport, started: float) -> pa.Table:
    table = _as_pair_table(table)
    report.pairs_kept = table.num_rows
    report.notes_with_pairs = len(pc.unique(table.column("note_a"))) if table.num_rows else 0
    report.seconds = round(time.perf_counter() - started, 3)
    return table.replace_schema_metadata({REPORT_KEY: report.to_json()})


def mine_pairs_report(events: EventSource, config: PairMiningConfig | None = None,
                      out_path: str | Path | None = None, notes: NoteSource | None = None,
                      on_stage: Callable[[str], None] | None = None) -> tuple[pa.Table, PairMiningReport]:
    """Mine pairs with DuckDB; returns (pairs with PAIR_SCHEMA, report). See the module docstring.
    `on_stage` is called with the name of each stage as it starts (for progress bars)."""
    config = (config or PairMiningConfig()).validate()
    stage = on_stage or (lambda _name: None)
    started = time.perf_counter()
    report = PairMiningReport(engine="duckdb", config=asdict(config))
    with tempfile.TemporaryDirectory(prefix="notellm-pairs-", dir=config.temp_directory) as temp_dir:
        con = _duckdb_connect(config, temp_dir)
        try:
            table = _mine_on_connection(con, events, config, notes, report, stage)
        finally:
            con.close()
    table = _finish(table, report, started)
    if out_path is not None:
        stage("writing")
        write_parquet(table, out_path)
    return table, report


def mine_pairs(events: EventSource, config: PairMiningConfig | None = None, out_path: str | Path | None = None,
               notes: NoteSource | None = None) -> pa.Table:
    """Mine co-occurring note pairs with DuckDB: a table with PAIR_SCHEMA (note_a, note_b, score).

    `events`: a Parquet file or folder, or an Arrow table (EVENT_SCHEMA, optional `seq`). `notes`: a note table
    (path or Arrow) or note ids; events naming other notes are dropped and counted in the report, which is in
    the result's schema metadata (`read_report`). With `out_path` the table is also written atomically."""
    return mine_pairs_report(events, config, out_path, notes)[0]


def read_report(table_or_path: pa.Table | str | Path) -> dict[str, Any] | None:
    """The mining report stored in a pair table's (or Parquet file's) metadata, if any."""
    schema = (table_or_path.schema if isinstance(table_or_path, pa.Table)
              else pq.read_schema(table_or_path))
    raw = (schema.metadata or {}).get(REPORT_KEY)
    return json.loads(raw) if raw else None


def _as_pair_table(table: pa.Table) -> pa.Table:
    return pa.table({name: table.column(name).cast(PAIR_SCHEMA.field(name).type) for name in PAIR_SCHEMA.names},
                    schema=PAIR_SCHEMA)


# ---- Spark --------------------------------------------------------------------------------------------------
def local_spark(threads: int = 2, memory: str = "2g", quick_jit: bool = False):
    """A local SparkSession (UTC, few shuffle partitions, no UI, quiet) for tests and single machines.

    `quick_jit`: the JVM compiles with its fast tier only, which roughly halves the time of small jobs
    (tests) and costs throughput on big ones."""
    from pyspark.sql import SparkSession

    builder = SparkSession.builder
    if quick_jit:
        builder = builder.config("spark.driver.extraJavaOptions", "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC")
    session = (builder.master(f"local[{threads}]").appName("notellm-pairs")
               .config("spark.sql.session.timeZone", "UTC")
               .config("spark.sql.shuffle.partitions", str(max(1, threads)))
               .config("spark.ui.enabled", "false")
               .config("spark.ui.showConsoleProgress", "false")
               .config("spark.driver.memory", memory)
               .getOrCreate())
    session.sparkContext.setLogLevel("ERROR")
    return session


_SPARK_TYPES = {"timestamp": "TIMESTAMP", "timestamp_ntz": "TIMESTAMP", "bigint": "BIGINT", "int": "INT",
                "smallint": "SMALLINT", "tinyint": "TINYINT", "double": "DOUBLE", "float": "FLOAT"}


def spark_pairs_dataframe(spark, events_path: str | Path, config: PairMiningConfig,
                          report: PairMiningReport | None = None):
    """The mined pairs as a Spark DataFrame (lazy): for a cluster, write it with `.write.parquet(...)`.

    Reads the Parquet events, checks them like the DuckDB path (DataError naming file, row, field), builds the
    view `clicks` (ids stay strings) and returns `spark.sql(pair_sql(config, "spark"))`."""
    config.validate()
    raw = spark.read.parquet(str(events_path))
    columns = {f.name: _SPARK_TYPES.get(f.dataType.simpleString(), f.dataType.simpleString().upper())
               for f in raw.schema.fields}
    # file order: Spark exposes each row's file and position as hidden metadata columns
    raw.selectExpr("*", "_metadata.file_path AS __src_file", "_metadata.row_index AS __src_row") \
        .createOrReplaceTempView("raw_events")
    spark.sql("CREATE OR REPLACE TEMP VIEW events_text AS "
              + _clicks_select(columns, "spark", "__src_file", "__src_row", "raw_events"))
    report = report or PairMiningReport(engine="spark")
    facts, report.sessions = _check_events(lambda q: [tuple(r) for r in spark.sql(q).collect()], "events_text",
                                           config, str(events_path), "timestamp" in columns)
    report.events, report.users, report.notes = facts["events"], facts["users"], facts["notes"]
    spark.sql("CREATE OR REPLACE TEMP VIEW file_numbers AS " + _block("file_numbers", relation="events_text"))
    spark.sql(f"""CREATE OR REPLACE TEMP VIEW clicks AS
        SELECT e.user_id, e.note_id, e.t, e.session_id, e.seq, f.file_number * {_FILE_SHIFT} + e.src_row AS ord
        FROM events_text e JOIN file_numbers f ON f.src_file = e.src_file""")
    return spark.sql(pair_sql(config, "spark", sessions=report.sessions))


def mine_pairs_spark(events_path: str | Path, config: PairMiningConfig | None = None,
                     out: str | Path | None = None, spark=None) -> pa.Table:
    """The same query on Spark SQL (a local session unless `spark` is given); result and `out` as mine_pairs."""
    config = (config or PairMiningConfig()).validate()
    started = time.perf_counter()
    session = spark or local_spark()
    report = PairMiningReport(engine="spark", config=asdict(config))
    frame = spark_pairs_dataframe(session, events_path, config, report)
    table = _finish(frame.toArrow(), report, started)
    if out is not None:
        write_parquet(table, out)
    return table
