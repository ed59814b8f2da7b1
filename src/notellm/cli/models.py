"""`notellm models list | prepare`."""

from __future__ import annotations

import typer
from rich.table import Table

from notellm.cli.common import console

app = typer.Typer(no_args_is_help=True)


@app.command("list")
def list_models() -> None:
    """Show the built-in backbones and whether the offline default is prepared."""
    from notellm.models.backbone import BUILTIN, DEFAULT_BACKBONE, default_backbone_dir

    table = Table(title="backbones (any Hugging Face id or local folder works too)")
    for col in ("name", "kind", "description", "status"):
        table.add_column(col)
    for info in BUILTIN:
        status = ""
        if info.name == DEFAULT_BACKBONE:
            folder = default_backbone_dir()
            status = f"prepared at {folder}" if (folder / "config.json").exists() else "not prepared (notellm models prepare)"
        table.add_row(info.name, info.kind, info.description, status)
    console.print(table)


@app.command("prepare")
def prepare(
    name: str = typer.Argument("gemma-3-270m", help="backbone to prepare (the offline default)"),
    force: bool = typer.Option(False, help="rebuild even if the cached folder exists"),
) -> None:
    """Assemble, verify (sha256) and convert the offline default backbone into a cached safetensors folder."""
    from notellm.models.backbone import prepare_default_backbone, resolve_backbone

    path = prepare_default_backbone(force=force) if name in ("gemma-3-270m", "default") else resolve_backbone(name)
    console.print(f"[green]ready:[/] {path}")
