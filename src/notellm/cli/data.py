"""`notellm data import FORMAT PATH --out notes.parquet`: any supported source into the Note table."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, List, Optional

import typer

from notellm.cli.common import console

app = typer.Typer(no_args_is_help=True)

_GENERIC = ("csv", "tsv", "jsonl", "json", "parquet")


def _pairs(items: list[str], what: str) -> dict[str, str]:
    from notellm.errors import ConfigError

    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"{what} '{item}' is not of the form KEY=VALUE")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def _options(opts: list[str]) -> dict[str, Any]:
    import yaml

    # values as YAML scalars, so min_rating=4 is a number and clicks_only=false a bool
    return {k: (yaml.safe_load(v) if v != "" else "") for k, v in _pairs(opts, "--opt").items()}


@app.command("formats")
def formats() -> None:
    """List the source formats `notellm data import` reads, with their options."""
    from rich.table import Table

    from notellm.data.readers import FORMATS, reader_options

    table = Table(title="notellm data import FORMAT PATH")
    for column in ("format", "what", "options (--opt KEY=VALUE)"):
        table.add_column(column)
    for name, description in FORMATS.items():
        table.add_row(name, description, ", ".join(o for o in reader_options(name) if o != "column_map"))
    console.print(table)


@app.command("inspect")
def inspect(
    path: Path = typer.Argument(..., help="a source file or folder"),
    out: Path = typer.Option(Path("notes.parquet"), "--out", "-o", help="--out of the proposed command"),
) -> None:
    """Detect a source's format, encoding, delimiter and header, show a sample, and print the `notellm data
    import` command (with --map and --opt) that reads it: the last line of stdout."""
    from rich.markup import escape
    from rich.table import Table

    from notellm.data.sniff import inspect_source

    found = inspect_source(path)
    facts = [("format", found.fmt), ("encoding", found.encoding), ("delimiter", repr(found.delimiter)
             if found.delimiter else None), ("header line", None if found.header is None else
             ("yes" if found.header else "no (column names proposed)")), ("columns", ", ".join(found.columns))]
    for name, value in facts:
        if value:
            console.print(f"[bold]{name}:[/] {escape(str(value))}")
    if found.sample:
        sample = Table(title=f"first {len(found.sample)} rows", show_lines=False)
        for column in found.columns:
            sample.add_column(escape(column), overflow="ellipsis", max_width=30)
        for row in found.sample:
            sample.add_row(*(escape(str(c)[:60]) for c in list(row)[: len(found.columns)]))
        console.print(sample)
    if found.column_map:
        console.print("[bold]proposed --map:[/] " + escape(", ".join(f"{f}={c}" for f, c in found.column_map.items())))
    for hint in found.hints:
        console.print(f"[yellow]note:[/] {escape(hint)}")
    console.print("[bold]import with:[/]")
    print(found.command_line(str(out), str(out.with_name("events.parquet"))))


@app.command("import")
def import_notes(
    fmt: str = typer.Argument(..., metavar="FORMAT", help="source format (see `notellm data formats`)"),
    path: Path = typer.Argument(..., help="the source file or folder"),
    out: Path = typer.Option(..., "--out", "-o", help="Note table to write (Parquet)"),
    events_out: Optional[Path] = typer.Option(None, "--events-out", help="Event table (qilin, movielens)"),
    pairs_out: Optional[Path] = typer.Option(None, "--pairs-out", help="Pair table (notellm-csv with pairs_csv)"),
    maps: Optional[List[str]] = typer.Option(None, "--map", help="FIELD=COLUMN: Note field from a source column "
                                             "(csv, tsv, jsonl, json, parquet; also followers, author_notes, "
                                             "author_likes), e.g. --map note_id=id --map title=headline"),
    opts: Optional[List[str]] = typer.Option(None, "--opt", help="reader option KEY=VALUE, e.g. "
                                             "pairs_csv=pairs.csv, min_rating=4, on_bad_rows=skip"),
) -> None:
    """Read a source into the Note table (and its events / pairs); print what was read and skipped."""
    from notellm.data.readers import EVENT_FORMATS, PAIR_FORMATS, read_source
    from notellm.errors import DataError

    options = _options(opts or [])
    column_map = _pairs(maps or [], "--map")
    if column_map:
        if fmt not in _GENERIC:
            raise DataError(f"--map is for the generic formats {list(_GENERIC)}; '{fmt}' knows its columns")
        options["column_map"] = column_map
    if events_out is not None and fmt not in EVENT_FORMATS:
        raise DataError(f"format '{fmt}' has no events; --events-out is for {sorted(EVENT_FORMATS)}")
    if pairs_out is not None and (fmt not in PAIR_FORMATS or not options.get("pairs_csv")):
        raise DataError("--pairs-out needs format notellm-csv with --opt pairs_csv=PAIRS.csv")
    # the summary below shows every skip with its reason and rows; the readers' warnings would repeat them
    reader_log = logging.getLogger("notellm.data.readers")
    level = reader_log.level
    reader_log.setLevel(logging.ERROR)
    try:
        # every input (notes and events / pairs) is read and checked before any output is touched
        result = read_source(fmt, path, **options)
    finally:
        reader_log.setLevel(level)
    outputs = [("notes", result.notes, out)]
    for kind, table, target in (("events", result.events, events_out), ("pairs", result.pairs, pairs_out)):
        if table is not None:
            outputs.append((kind, table, target))
    written = _write_all([(kind, table, target) for kind, table, target in outputs if target is not None])
    for kind, table, target in outputs:
        _print_summary(kind, table, target if target in written else None)


def _write_all(outputs: list[tuple[str, Any, Path]]) -> set[Path]:
    """Write every table to a temporary file beside its target, and only when all are written rename them
    into place, so a failure leaves every pre-existing output as it was."""
    from contextlib import ExitStack

    import pyarrow as pa
    import pyarrow.parquet as pq

    from notellm.data.schema import note_table_for_writing
    from notellm.errors import DataError
    from notellm.io import atomic_path, clean_stale_temps

    for _, _, target in outputs:  # what a killed earlier run left beside this output
        clean_stale_temps(Path(target).parent, Path(target).name)
    targets = [Path(target).resolve() for _, _, target in outputs]
    if len(set(targets)) < len(targets):
        raise DataError(f"the outputs must be different files, got {[str(t) for _, _, t in outputs]}")
    with ExitStack() as stack:
        for kind, table, target in outputs:
            tmp = stack.enter_context(atomic_path(target))
            try:
                if kind == "notes":
                    table = note_table_for_writing(table)
                pq.write_table(table, tmp)
            except (pa.ArrowException, OverflowError, ValueError) as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise DataError(f"cannot write the {kind} table ({first}); nothing was replaced",
                                file=str(target)) from None
    return {target for _, _, target in outputs}


def _print_summary(kind: str, table, target: Path | None) -> None:
    from notellm.data.readers import summarize

    summary = summarize(table, kind)
    where = f"-> {target}" if target is not None else f"[yellow](not written: add --{kind}-out PATH)[/]"
    console.print(f"[green]{kind}:[/] {summary['rows']:,} rows {where}")
    for line in summary["lines"]:
        console.print(f"  {line}")
