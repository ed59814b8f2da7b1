"""`notellm data demo`: generate the seeded synthetic Xiaohongshu-style corpus (notes, click events, truth)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from notellm.cli.common import console

app = typer.Typer(no_args_is_help=True)


@app.command("demo")
def demo(
    notes: int = typer.Option(1000, "--notes", min=1, help="number of notes (1k ... 1M)"),
    out: Path = typer.Option(Path("data/demo"), "--out", "-o", help="folder for notes/events/truth parquet"),
    users: Optional[int] = typer.Option(None, "--users", min=0, help="users with click sessions [default: notes/4]"),
    seed: int = typer.Option(0, "--seed", help="random seed: the same seed gives identical files"),
    start: str = typer.Option("2024-01-01", "--start", help="first publish day (ISO date, UTC)"),
    days: int = typer.Option(90, "--days", min=1, help="publish times spread over this many days"),
) -> None:
    """Generate a demo corpus of notes with engagement, users' click sessions and the latent truth."""
    import time

    from rich.table import Table

    from notellm.data.demo import generate_demo, write_demo

    began = time.perf_counter()
    corpus = generate_demo(notes, n_users=users, seed=seed, start=start, days=days)
    generated = time.perf_counter() - began
    paths = write_demo(corpus, out)
    summary = corpus.summary()
    table = Table(title=f"demo corpus (seed {seed})", show_header=False)
    for key in ("notes", "authors", "topics", "categories", "users", "sessions", "events", "median_likes",
                "start", "observed_at"):
        value = summary[key]
        table.add_row(key, f"{value:,}" if isinstance(value, int) else str(value))
    table.add_row("generated in", f"{generated:.2f}s")
    table.add_row("written in", f"{time.perf_counter() - began - generated:.2f}s")
    console.print(table)
    for name, path in paths.items():
        console.print(f"[green]wrote[/] {name}: {path}")
