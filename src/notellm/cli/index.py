"""`notellm index build | info`: a FAISS index of note embeddings, with ids and metadata beside it."""

from __future__ import annotations

from typing import List, Optional

import typer

from notellm.cli.common import console

app = typer.Typer(no_args_is_help=True)


@app.command("build")
def build(
    embeddings: str = typer.Argument(..., help="embeddings folder written by `notellm embed`"),
    out: str = typer.Option(..., "--out", "-o", help="index folder (index.faiss, index.json, notes.parquet)"),
    kind: str = typer.Option(None, help="flat (exact, default) | hnsw | ivfpq"),
    notes: Optional[str] = typer.Option(None, help="Note table: keeps titles and categories for recommend"),
    config: Optional[str] = typer.Option(None, help="YAML with IndexConfig keys (hnsw_m, ivf_nlist, ...)"),
    overrides: Optional[List[str]] = typer.Argument(None, help="IndexConfig key=value, e.g. hnsw_ef_search=128"),
) -> None:
    """Index every embedding (cosine) and save the index atomically."""
    import time

    from notellm.config import load_config
    from notellm.data.schema import read_notes
    from notellm.inference.embed import read_embeddings
    from notellm.inference.index import IndexConfig, build_index

    cfg = load_config(IndexConfig, config, list(overrides or []) + ([f"kind={kind}"] if kind else []))
    ids, vectors, meta = read_embeddings(embeddings)
    note_table = read_notes(notes) if notes else None
    start = time.perf_counter()
    index = build_index(ids, vectors, {**meta, "embeddings": str(embeddings)}, config=cfg, notes=note_table)
    index.save(out)
    attached = "" if note_table is None else f", {len(index.notes):,} notes attached"
    console.print(f"[green]wrote[/] {out}: {cfg.kind} index of {len(index):,} x {index.dim} "
                  f"in {time.perf_counter() - start:.1f}s{attached}")


@app.command("info")
def info(index_dir: str = typer.Argument(..., help="index folder")) -> None:
    """Kind, size, dimension, config and the embedding model of an index."""
    from rich.table import Table

    from notellm.inference.index import load_index

    details = load_index(index_dir).info()
    table = Table(title=str(index_dir), show_header=False)
    for key, value in details.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        table.add_row(key, str(value))
    console.print(table)
