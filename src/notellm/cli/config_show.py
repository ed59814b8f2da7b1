"""`notellm config show TRAINER`: every config key of a trainer with its default and meaning."""

from __future__ import annotations

import typer

from notellm.cli.common import console

app = typer.Typer(no_args_is_help=True)

TRAINERS = {
    "train": ("notellm.training.notellm", "NoteLLMTrainConfig", "notellm train (NoteLLM: GCL + CSFT)"),
    "train-multimodal": ("notellm.training.multimodal", "MultimodalTrainConfig",
                         "notellm train with a multimodal: section (NoteLLM-2)"),
    "popularity": ("notellm.training.popularity", "PopularityConfig", "notellm popularity train / eval"),
    "coldstart": ("notellm.training.coldstart", "ColdStartConfig", "notellm coldstart sft / align / eval"),
    "pairs": ("notellm.data.pairs", "PairMiningConfig", "notellm pairs"),
    "index": ("notellm.inference.index", "IndexConfig", "notellm index build"),
}


@app.command("show")
def show(trainer: str = typer.Argument(..., help=f"one of: {', '.join(TRAINERS)}")) -> None:
    """List every key (dotted for sections) with its default and what it does."""
    import importlib

    from rich.table import Table

    from notellm.config import field_docs
    from notellm.errors import ConfigError

    if trainer not in TRAINERS:
        import difflib

        close = difflib.get_close_matches(trainer, TRAINERS, n=1)
        raise ConfigError(f"no trainer '{trainer}'{f'; did you mean {close[0]!r}?' if close else ''} "
                          f"(one of: {', '.join(TRAINERS)})")
    module, name, title = TRAINERS[trainer]
    cls = getattr(importlib.import_module(module), name)
    table = Table(title=f"{title}: YAML keys (key=value on the command line)", show_lines=False)
    for col in ("key", "default", "meaning"):
        table.add_column(col, overflow="fold")
    for key, default, meaning in field_docs(cls):
        table.add_row(key, default, meaning)
    console.print(table)
