"""`notellm plot RUN_DIR`: a PNG of a training run's loss curves (and validation metrics)."""

from __future__ import annotations

from typing import Optional

import typer

from notellm.cli.common import console

app = typer.Typer()


@app.command("plot")
def plot(
    run_dir: str = typer.Argument(..., help="a training output_dir (holds log.jsonl)"),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="PNG to write (default RUN_DIR/curves.png)"),
) -> None:
    """Plot the loss terms by step, and validation Recall@K where the run logged it."""
    from notellm.evaluation.plots import plot_run

    console.print(f"[green]wrote[/] {plot_run(run_dir, out)}")
