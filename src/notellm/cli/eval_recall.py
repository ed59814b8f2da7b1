"""`notellm eval recall`: I2I Recall@K under the NoteLLM protocol, for embeddings or a baseline."""

from __future__ import annotations

from typing import Optional

import typer

from notellm.cli.common import console

app = typer.Typer()


@app.command("recall")
def recall(
    notes: str = typer.Option(..., help="Note table (Parquet) holding the test notes"),
    pairs: str = typer.Option(..., help="test Pair table (note_a, note_b, score)"),
    embeddings: Optional[str] = typer.Option(None, help="embeddings folder (notellm embed)"),
    baseline: Optional[str] = typer.Option(None, help="tfidf-word | tfidf-char | bm25 | e5 (with --embeddings: "
                                                      "fused with them, a hybrid retriever)"),
    fusion: str = typer.Option("rrf", help="how --embeddings and --baseline are fused: rrf (reciprocal ranks) | "
                                           "weighted (z-scored scores, --dense-weight)"),
    dense_weight: float = typer.Option(0.5, help="weight of the embeddings in --fusion weighted (the baseline "
                                                 "gets 1 - it); choose it on validation pairs, not the test"),
    ks: Optional[str] = typer.Option(None, help="comma-separated K, e.g. 10,50,100 (default: 10,50,100,1k,... < pool)"),
    pool: str = typer.Option("pairs", help="candidates: 'pairs' (notes of the test pairs), 'notes' (every note of "
                                           "--notes), or a Note table / text file of note ids"),
    buckets: bool = typer.Option(True, help="also report exposure and length buckets"),
    out: Optional[str] = typer.Option(None, help="write the report as JSON here"),
) -> None:
    """Keep test pairs greedily (no note twice), rank the pool for each query, report R@K (ties count against)."""
    from notellm.errors import NotellmError
    from notellm.evaluation.recall import evaluate_recall

    if embeddings is None and baseline is None:
        raise NotellmError("give --embeddings, --baseline, or both (a hybrid of the two)")
    if fusion not in ("rrf", "weighted"):
        raise NotellmError(f"--fusion must be rrf or weighted, got '{fusion}'")
    if not 0.0 <= dense_weight <= 1.0:
        raise NotellmError(f"--dense-weight must be in [0, 1], got {dense_weight}")
    try:
        k_list = [int(k) for k in ks.split(",")] if ks else None
    except ValueError:
        raise NotellmError(f"--ks must be comma-separated integers, got '{ks}'") from None
    if k_list is not None and (not k_list or min(k_list) < 1):
        raise NotellmError(f"--ks must be whole numbers >= 1 (how many neighbours count), got '{ks}'")
    if baseline is not None:
        from notellm.evaluation.baselines import BASELINES

        if baseline not in BASELINES:
            raise NotellmError(f"unknown baseline '{baseline}'; choose from {', '.join(BASELINES)}")
    candidates = _pool(pool, notes)
    dense = None
    if embeddings is not None:
        from notellm.evaluation.recall import VectorScorer
        from notellm.inference.embed import read_embeddings

        ids, vectors, meta = read_embeddings(embeddings)
        dense = VectorScorer(ids, vectors, name=f"{meta.get('model', embeddings)} ({meta.get('pooling', '?')})")
    if baseline is None:
        report = evaluate_recall(notes, pairs, dense, ks=k_list, buckets=buckets, pool=candidates, name=dense.name)
    else:
        from notellm.evaluation.baselines import make_baseline
        from notellm.inference.fusion import FusedScorer

        def scorer(rows):
            lexical = make_baseline(baseline, rows)
            if dense is None:
                return lexical
            return FusedScorer([dense, lexical], fusion, [dense_weight, 1.0 - dense_weight])

        with console.status(f"scoring with {baseline}" + (f" fused with {embeddings}" if dense else "")):
            report = evaluate_recall(notes, pairs, scorer, ks=k_list, buckets=buckets, pool=candidates)
    console.print(report.table())
    for what, why in report.skipped.items():
        console.print(f"[yellow]{what} not reported:[/] {why}")
    if out:
        report.write_json(out)
        console.print(f"[green]wrote[/] {out}")


def _pool(pool: str, notes: str) -> list[str] | None:
    from pathlib import Path

    from notellm.errors import DataError

    if pool == "pairs":
        return None
    if pool == "notes":
        path = Path(notes)
    else:
        path = Path(pool)
        if not path.exists():
            raise DataError("candidate pool file does not exist (or use --pool pairs / notes)", file=pool)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        if "note_id" not in pq.read_schema(path).names:
            raise DataError("candidate pool table has no note_id column", file=str(path))
        table = pq.read_table(path, columns=["note_id"])
        return [str(i) for i in table.column("note_id").to_pylist()]
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
