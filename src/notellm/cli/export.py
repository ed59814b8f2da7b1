"""`notellm export`: a sentence-transformers folder, embeddings as Parquet/Arrow, an index as a FAISS file."""

from __future__ import annotations

from typing import Optional

import typer

from notellm.cli.common import console

app = typer.Typer(no_args_is_help=True)


@app.command("sentence-transformers")
def sentence_transformers(
    model: str = typer.Argument(..., help="a trained model folder, or zero-shot:<backbone>"),
    out: str = typer.Option(..., "--out", "-o", help="output folder (SentenceTransformer(out) loads it)"),
    max_seq_length: int = typer.Option(512, help="tokens the exported model reads"),
) -> None:
    """LoRA merged, last-token pooling at NoteLLM's position, projection as Dense, Normalize.

    Encode `notellm.note_text(note, OUT)` (the note's prompt, cut where NoteLLM pools), not the raw text.
    """
    from notellm.inference.export import export_sentence_transformers

    with console.status("exporting (loading the model, merging LoRA, writing)"):
        path = export_sentence_transformers(model, out, max_seq_length=max_seq_length)
    console.print(f"[green]wrote[/] {path}")
    print(f"python -c \"from sentence_transformers import SentenceTransformer; import notellm; "
          f"print(SentenceTransformer('{path}').encode([notellm.note_text({{'title': 'hello'}}, '{path}')]).shape)\"")


@app.command("embeddings")
def embeddings(
    embeddings_dir: str = typer.Argument(..., help="a folder written by `notellm embed`"),
    out: str = typer.Option(..., "--out", "-o", help="output file: .parquet, or .arrow/.feather (Arrow IPC)"),
    notes: Optional[str] = typer.Option(None, help="Note table whose metadata columns (title, hashtags, "
                                                   "category, author, time, counts) go beside each vector"),
) -> None:
    """One row per note: note_id, embedding (fixed-size float32 list), metadata; for vector-database import."""
    from notellm.inference.export import export_embeddings

    path = export_embeddings(embeddings_dir, out, notes)
    console.print(f"[green]wrote[/] {path}")


@app.command("faiss")
def faiss_file(
    index_dir: str = typer.Argument(..., help="a folder written by `notellm index build`"),
    out: str = typer.Option(..., "--out", "-o", help="output FAISS file; OUT.ids.txt gets each row's note id"),
) -> None:
    """The index as a plain FAISS file (`faiss.read_index`) with a note-id sidecar."""
    from notellm.inference.export import export_faiss

    index_path, ids_path = export_faiss(index_dir, out)
    console.print(f"[green]wrote[/] {index_path} and {ids_path}")
