"""`notellm index build | info`: a FAISS index of note embeddings, with ids and metadata beside it, or the same
vectors in a Milvus collection (`--backend milvus --milvus-uri`)."""

from __future__ import annotations

from typing import List, Optional

import typer

from notellm.cli.common import console

app = typer.Typer(no_args_is_help=True)


@app.command("build")
def build(
    embeddings: str = typer.Argument(..., help="embeddings folder written by `notellm embed`"),
    out: Optional[str] = typer.Option(None, "--out", "-o",
                                      help="index folder (index.faiss, index.json, notes.parquet); --backend faiss"),
    kind: str = typer.Option(None, help="flat (exact, default) | hnsw | ivfpq"),
    notes: Optional[str] = typer.Option(None, help="Note table: keeps titles and categories for recommend"),
    config: Optional[str] = typer.Option(None, help="YAML with IndexConfig keys (hnsw_m, ivf_nlist, ...)"),
    overrides: Optional[List[str]] = typer.Argument(None, help="IndexConfig key=value, e.g. hnsw_ef_search=128"),
    backend: str = typer.Option("faiss", help="faiss (an index folder, --out) | milvus (a collection)"),
    milvus_uri: Optional[str] = typer.Option(None, help="milvus-lite file (runs/notes.db) or http://host:19530"),
    collection: str = typer.Option("notes", help="Milvus collection to build (--backend milvus)"),
    replace: bool = typer.Option(False, "--replace",
                                 help="rebuild an existing Milvus collection (the old one answers until the new "
                                      "one is complete); an --out folder is always replaced whole"),
) -> None:
    """Index every embedding (cosine) and save the index atomically."""
    import time

    from notellm.config import load_config
    from notellm.data.schema import read_notes
    from notellm.errors import ConfigError
    from notellm.inference.embed import read_embeddings
    from notellm.inference.index import IndexConfig, build_index
    from notellm.inference.store import build_milvus, check_backend

    check_backend(backend, out, milvus_uri, "--out")
    cfg = load_config(IndexConfig, config, list(overrides or []) + ([f"kind={kind}"] if kind else []))
    if backend == "milvus" and (cfg.kind != "flat" or overrides or config):
        raise ConfigError("--kind and IndexConfig settings are for --backend faiss; the Milvus collection is "
                          "FLAT (exact)")
    ids, vectors, meta = read_embeddings(embeddings)
    note_table = read_notes(notes) if notes else None
    start = time.perf_counter()
    if backend == "milvus":
        store = build_milvus(ids, vectors, {**meta, "embeddings": str(embeddings)}, milvus_uri, collection,
                             notes=note_table, replace=replace)
        attached = "" if note_table is None else ", titles and categories attached"
        console.print(f"[green]wrote[/] {milvus_uri} collection {collection}: flat (exact) Milvus collection of "
                      f"{len(store):,} x {store.dim} in {time.perf_counter() - start:.1f}s{attached}")
        return
    index = build_index(ids, vectors, {**meta, "embeddings": str(embeddings)}, config=cfg, notes=note_table)
    index.save(out)
    attached = "" if note_table is None else f", {len(index.notes):,} notes attached"
    console.print(f"[green]wrote[/] {out}: {cfg.kind} index of {len(index):,} x {index.dim} "
                  f"in {time.perf_counter() - start:.1f}s{attached}")


@app.command("info")
def info(
    index_dir: Optional[str] = typer.Argument(None, help="index folder (--backend faiss)"),
    backend: str = typer.Option("faiss", help="faiss (an index folder) | milvus (a collection)"),
    milvus_uri: Optional[str] = typer.Option(None, help="milvus-lite file (runs/notes.db) or http://host:19530"),
    collection: str = typer.Option("notes", help="Milvus collection (--backend milvus)"),
) -> None:
    """Kind, size, dimension, config and the embedding model of an index."""
    from rich.table import Table

    from notellm.inference.store import check_backend, describe_index, open_index

    check_backend(backend, index_dir, milvus_uri, "INDEX_DIR")
    details = describe_index(open_index(backend, index_dir, milvus_uri, collection))
    table = Table(title=str(index_dir) if backend == "faiss" else f"{milvus_uri} ({collection})", show_header=False)
    for key, value in details.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        table.add_row(key, str(value))
    console.print(table)
