"""`notellm data split PAIRS --out DIR [--method items|time|author]`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from notellm.cli.common import console

app = typer.Typer()


@app.command("split")
def split(
    pairs: Path = typer.Argument(..., help="pair table (notellm pairs output)"),
    out: Path = typer.Option(..., "--out", "-o", help="folder for train/test pairs and note lists"),
    method: str = typer.Option("items", help="items (protocol ml-i2i-v1: needs --events; with --notes only notes "
                                             "with text are split), time (new notes: "
                                             "--events and/or --notes), author (needs --notes with author_id)"),
    events: Optional[Path] = typer.Option(None, help="event table (clicks)"),
    notes: Optional[Path] = typer.Option(None, help="note table"),
    test_fraction: float = typer.Option(0.2, help="share of items / notes / authors on the test side"),
    seed: int = typer.Option(0, help="seed of numpy.random.default_rng (items, author)"),
) -> None:
    """Split notes into train and test (test notes never appear in a training pair) and divide the pairs."""
    from notellm.data.split import split_by_author, split_by_time, split_items_ml_i2i
    from notellm.errors import ConfigError

    if method == "items":
        if events is None:
            raise ConfigError("--method items needs --events (the clicks whose items are split)")
        result = split_items_ml_i2i(events, pairs, test_fraction, seed, notes=notes)
    elif method == "time":
        if events is None and notes is None:
            raise ConfigError("--method time needs --events and/or --notes (to know when notes were first seen)")
        result = split_by_time(notes, events, pairs, test_fraction)
    elif method == "author":
        if notes is None:
            raise ConfigError("--method author needs --notes (with author_id)")
        result = split_by_author(notes, pairs, test_fraction, seed)
    else:
        raise ConfigError(f"--method must be items, time or author, got '{method}'")
    result.write(out)
    info = result.info
    console.print(f"[green]split ({result.method})[/] -> {out}: {info['train_notes']:,} train / "
                  f"{info['test_notes']:,} test notes; {info['train_pairs']:,} train / {info['test_pairs']:,} "
                  f"test pairs; {info['test_notes_in_test_pairs']:,} test notes in test pairs; "
                  f"{info['cross_pairs_dropped']:,} crossing pairs dropped")
