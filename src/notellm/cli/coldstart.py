"""`notellm coldstart sft | align | eval`: MultiSmpLLM cold-start popularity with IDPOP alignment."""

from __future__ import annotations

from typing import List, Optional

import typer
from rich.table import Table

from notellm.cli.common import ProgressCallback, console, load_cli_config

app = typer.Typer(no_args_is_help=True)

CONFIG = typer.Argument(..., help="YAML config (configs/coldstart_*.yaml)")
OVERRIDES = typer.Argument(None, help="key=value overrides, e.g. epochs=1 data.main_users=50 model.backbone=tiny-qwen3")


def _config(config: str, overrides: Optional[List[str]]):
    from notellm.training.coldstart import ColdStartConfig

    return load_cli_config(ColdStartConfig, config, overrides)


def _log(message: str) -> None:
    console.print(f"[dim]{message}[/]")


@app.command("sft")
def sft(config: str = CONFIG, overrides: Optional[List[str]] = OVERRIDES) -> None:
    """Build the instruction data and fine-tune (LoRA or Freeze), loss on answer tokens only -> OUTPUT/sft/model.
    Resumable; `notellm config show coldstart` lists every key."""
    from notellm.config import save_config
    from notellm.training.coldstart import train_sft

    cfg = _config(config, overrides)
    save_config(cfg, f"{cfg.output_dir}/config.yaml")
    path = train_sft(cfg, [ProgressCallback()])
    console.print(f"[green]saved[/] {path}")


@app.command("align")
def align(config: str = CONFIG, overrides: Optional[List[str]] = OVERRIDES) -> None:
    """Sample the SFT model for preference pairs (cached), then DPO / DPOP / IDPOP (align.loss) ->
    OUTPUT/align-<loss>/model. Shared knobs given here (lr=, epochs=, batch_size=, max_steps=, ...) set
    alignment's values (the `align:` section); the top-level ones in the file are SFT's."""
    from notellm.training.coldstart import align_overrides, train_alignment

    cfg = _config(config, align_overrides(overrides or []))
    path = train_alignment(cfg, [ProgressCallback()])
    console.print(f"[green]saved[/] {path}")


@app.command("eval")
def evaluate(
    config: str = CONFIG,
    overrides: Optional[List[str]] = OVERRIDES,
    models: Optional[str] = typer.Option(None, help="comma-separated stages under OUTPUT or model folders "
                                                    "(default: eval.models)"),
) -> None:
    """MAE, Spearman (SRC) and non-number answers per k-shot, against LightGBM and history baselines."""
    from notellm.evaluation.coldstart import metrics_rows
    from notellm.training.coldstart import evaluate as run_eval

    cfg = _config(config, overrides)
    names = [m.strip() for m in models.split(",") if m.strip()] if models else None
    metrics = run_eval(cfg, names, log=_log)
    shots = cfg.data.instructions.shots
    table = Table(title=f"cold-start popularity ({cfg.output_dir}/eval/metrics.json)")
    table.add_column("model")
    for k in shots:
        for col in ("MAE", "SRC", "non-num"):
            table.add_column(f"{k}-shot {col}", justify="right")
    for row in metrics_rows(metrics, shots):
        table.add_row(*row)
    console.print(table)
