"""`notellm plot RUN_DIR [RUN_DIR ...]`: a PNG of training runs' loss curves (validation metrics, preference
log-probability shifts)."""

from __future__ import annotations

from typing import List, Optional

import typer

from notellm.cli.common import console
from notellm.errors import ConfigError

app = typer.Typer()


@app.command("plot")
def plot(
    run_dirs: List[str] = typer.Argument(..., help="training output_dirs (each holds log.jsonl)"),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="PNG to write (default RUN_DIR/curves.png; "
                                                                 "needed for several runs)"),
) -> None:
    """One run: its loss terms by step, validation Recall@K where logged, and for DPO / DPOP / IDPOP the chosen
    and rejected answers' log-probability shift against the reference. Several runs: one line per run."""
    from notellm.evaluation.plots import plot_run, plot_runs

    if len(run_dirs) == 1:
        console.print(f"[green]wrote[/] {plot_run(run_dirs[0], out)}")
        return
    if not out:
        raise ConfigError("several runs go into one picture: give --out FILE.png")
    console.print(f"[green]wrote[/] {plot_runs(run_dirs, out)}")
