"""`notellm pairs EVENTS --out pairs.parquet [--config configs/pairs_default.yaml] [key=value ...]`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from notellm.cli.common import console, progress

app = typer.Typer()

_STAGES = ("reading events", "mining pairs", "ranking", "writing")


def _bound(value: float | None, unbounded: str) -> str:
    return unbounded if value is None else f"{value:g}"


@app.command("pairs")
def pairs(
    events: Path = typer.Argument(..., help="event table (Parquet file or folder): user_id, note_id, timestamp, "
                                            "optional session_id and seq"),
    overrides: Optional[List[str]] = typer.Argument(None, help="key=value overrides, e.g. mode=session top_k=20"),
    out: Path = typer.Option(..., "--out", "-o", help="output pair table (Parquet: note_a, note_b, score)"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config (configs/pairs_*.yaml)"),
    notes: Optional[Path] = typer.Option(None, "--notes", help="note table: events of other notes are dropped "
                                                               "and counted"),
    engine: str = typer.Option("duckdb", help="duckdb (embedded, out-of-core) or spark (local session)"),
    show_sql: bool = typer.Option(False, "--sql", help="print the SQL for --engine and exit"),
) -> None:
    """Mine co-occurring note pairs: s(A->B) = sum over users of 1/N, keep l <= s <= u and the top t per A."""
    from rich.table import Table

    from notellm.config import load_config
    from notellm.data.pairs import PairMiningConfig, mine_pairs_report, mine_pairs_spark, pair_sql, read_report
    from notellm.errors import ConfigError

    cfg = load_config(PairMiningConfig, config, overrides or []).validate()
    if engine not in ("duckdb", "spark"):
        raise ConfigError(f"--engine must be duckdb or spark, got '{engine}'")
    if show_sql:
        print(pair_sql(cfg, engine))
        return
    if engine == "spark":
        if notes is not None:
            raise ConfigError("--notes is only supported with --engine duckdb")
        with console.status("mining pairs on Spark"):
            report = read_report(mine_pairs_spark(events, cfg, out))
    else:
        with progress() as bar:
            task = bar.add_task("pairs", total=len(_STAGES))

            def stage(name: str) -> None:
                bar.update(task, completed=_STAGES.index(name), description=name)

            _, result = mine_pairs_report(events, cfg, out, notes=notes, on_stage=stage)
            bar.update(task, completed=len(_STAGES), description="done")
        report = result.__dict__
    summary = Table(title=f"pairs -> {out}")
    summary.add_column("")
    summary.add_column("value", justify="right")
    rows = [("engine", report["engine"]), ("mode", f"{cfg.mode} (sessions: {report['sessions']})"),
            ("events", report["events"]), ("users", report["users"]), ("notes in events", report["notes"]),
            ("events of unknown notes (dropped)", report["unknown_events"]),
            ("candidate pairs (s > 0)", report["candidate_pairs"]),
            (f"pairs with {_bound(cfg.min_score, '-inf')} <= s <= {_bound(cfg.max_score, 'inf')}",
             report["pairs_in_range"]),
            (f"pairs kept (top {cfg.top_k or 'all'} per A)", report["pairs_kept"]),
            ("notes with pairs", report["notes_with_pairs"]), ("seconds", report["seconds"])]
    for name, value in rows:
        if value == -1:  # not counted by this engine
            continue
        summary.add_row(name, f"{value:,}" if isinstance(value, int) else str(value))
    console.print(summary)
    if report["unknown_events"]:
        console.print(f"[yellow]{report['unknown_events']:,} event(s) of {report['unknown_notes']:,} note(s) not in "
                      f"{notes} were dropped, e.g. {report['unknown_examples']}[/]")
