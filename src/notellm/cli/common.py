"""Shared CLI plumbing: the console, user-facing errors, config overrides."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from notellm.errors import NotellmError

console = Console(stderr=True)


def run_cli(app: typer.Typer) -> int:
    """Run the app; print NotellmError (bad input, bad config) as one clear line instead of a traceback."""
    try:
        app(standalone_mode=False)
    except NotellmError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        return 2
    except typer.Exit as exc:
        return exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        console.print("[yellow]interrupted[/]")
        return 130
    except Exception as exc:  # click usage errors
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            return exc.exit_code
        raise
    return 0


def progress():
    """A rich progress bar with rate and ETA, on stderr."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console,
        disable=not sys.stderr.isatty() and False,
    )
