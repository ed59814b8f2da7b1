"""`notellm recommend`: the nearest notes of an indexed note, or of a new note embedded with a model."""

from __future__ import annotations

from typing import Optional

import typer

from notellm.cli.common import console

app = typer.Typer()


@app.command("recommend")
def recommend(
    index: Optional[str] = typer.Option(None, "--index", "-i",
                                        help="index folder (notellm index build); --backend faiss"),
    note_id: Optional[str] = typer.Option(None, "--note-id", help="an indexed note"),
    note_json: Optional[str] = typer.Option(None, "--note-json",
                                            help='a new note, e.g. \'{"title": "..", "content": "..", "hashtags": []}\''),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="model folder that embeds --note-json"),
    k: int = typer.Option(10, "-k", help="how many notes"),
    category: Optional[str] = typer.Option(None, help="keep notes of this category (any level), e.g. 美食"),
    as_json: bool = typer.Option(False, "--json", help="print JSON to stdout instead of a table"),
    hybrid_notes: Optional[str] = typer.Option(None, "--hybrid-notes",
                                               help="Note table (Parquet) of the indexed notes: fuse the dense "
                                                    "neighbours with BM25 over their text (hybrid retrieval)"),
    fusion: str = typer.Option("rrf", help="with --hybrid-notes: rrf | weighted (--dense-weight)"),
    dense_weight: float = typer.Option(0.5, help="with --fusion weighted: weight of the dense scores"),
    backend: str = typer.Option("faiss", help="faiss (the --index folder) | milvus (a built collection)"),
    milvus_uri: Optional[str] = typer.Option(None, help="milvus-lite file (runs/notes.db) or http://host:19530"),
    collection: str = typer.Option("notes", help="Milvus collection (--backend milvus)"),
) -> None:
    """Recommend the k notes most similar (cosine) to a note, or by dense + BM25 fused (--hybrid-notes)."""
    import json

    from rich.table import Table

    from notellm.errors import NotellmError
    from notellm.inference.store import open_index

    if (note_id is None) == (note_json is None):
        raise NotellmError("give exactly one of --note-id and --note-json")
    if fusion not in ("rrf", "weighted"):
        raise NotellmError(f"--fusion must be rrf or weighted, got '{fusion}'")
    if k < 1:
        raise NotellmError(f"-k must be a whole number of notes >= 1, got {k}")
    idx = open_index(backend, index, milvus_uri, collection)
    if note_id is not None:
        vector, exclude, source = idx.vector_of(note_id), {note_id}, note_id
    else:
        if model is None:
            raise NotellmError("--note-json needs --model (the model that made the index's embeddings)")
        note = _parse_note(note_json)
        vector, exclude, source = _embed_new_note(note, model, idx), set(), "the given note"
    if hybrid_notes is None:
        hits = idx.neighbours_of_vector(vector, k=k, exclude=exclude, category=category)
    else:
        from notellm.inference.fusion import hybrid_neighbours

        lexical, texts = _lexical(hybrid_notes, idx)
        query_text = texts.get(note_id) if note_id is not None else _note_text(note)
        if query_text is None:
            from notellm.errors import DataError

            raise DataError(f"note '{note_id}' is not in the Note table", file=hybrid_notes, field="note_id")
        hits = hybrid_neighbours(idx, vector, query_text, lexical, k=k, exclude=exclude, category=category,
                                 method=fusion, weights=[dense_weight, 1.0 - dense_weight])
        source += f" (dense + BM25, {fusion})"
    labels = idx.labels([i for i, _ in hits])
    rows = [{"rank": r, "note_id": i, "score": round(s, 4), "title": labels.get(i, (None, None))[0],
             "category": labels.get(i, (None, None))[1]} for r, (i, s) in enumerate(hits, 1)]
    titles = idx.has_notes
    if as_json:
        typer.echo(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    table = Table(title=f"notes like {source}" + (f" in {category}" if category else ""))
    for col in ("rank", "note_id", "score") + (("title", "category") if titles else ()):
        table.add_column(col, justify="right" if col in ("rank", "score") else "left")
    for row in rows:
        cells = [str(row["rank"]), row["note_id"], f"{row['score']:.3f}"]
        if titles:
            cells += [row["title"] or "", " / ".join(row["category"] or [])]
        table.add_row(*cells)
    console.print(table)


def _parse_note(note_json: str) -> dict:
    import json

    from notellm.data.schema import empty_note
    from notellm.errors import DataError

    try:
        given = json.loads(note_json)
    except json.JSONDecodeError as exc:
        raise DataError(f"--note-json is not valid JSON: {exc}", field="note-json") from exc
    if not isinstance(given, dict):
        raise DataError("--note-json must be a JSON object with title and content", field="note-json")
    return {**empty_note(str(given.get("note_id", "new"))), **given}


def _note_text(note: dict) -> str:
    from notellm.inference.lexical import note_text

    return note_text(note)


def _lexical(notes_path: str, idx):
    """A BM25 collection over the indexed notes' text, read from their Note table."""
    from notellm.data.schema import read_notes
    from notellm.errors import DataError
    from notellm.inference.lexical import BM25Scorer

    indexed = set(idx.ids)
    texts = {str(row["note_id"]): _note_text(row) for row in read_notes(notes_path).to_pylist()
             if str(row["note_id"]) in indexed}
    if not texts:
        raise DataError("none of the index's notes are in this Note table", file=notes_path, field="note_id")
    return BM25Scorer(texts), texts


def _embed_new_note(note: dict, model: str, idx):
    from notellm.errors import DataError
    from notellm.inference.embed import load_embedder

    embedder = load_embedder(model)
    dim = embedder.meta.get("dim")
    if dim is not None and dim != idx.dim:
        raise DataError(f"model {model} makes vectors of dimension {dim} but the index {idx.path} holds "
                        f"dimension {idx.dim} (built from {idx.meta.get('model', '?')})")
    for key in ("model", "pooling"):
        if idx.meta.get(key) not in (None, embedder.meta.get(key)):
            console.print(f"[yellow]warning:[/] the index was built with {key} {idx.meta.get(key)!r}, "
                          f"the query is embedded with {embedder.meta.get(key)!r}")
    return embedder.encode([note])[0]
