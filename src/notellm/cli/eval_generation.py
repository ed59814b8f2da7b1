"""`notellm eval generation`: BLEU-4, ROUGE-1/2/L, tag P/R/F1, category accuracy and ill-formed rate."""

from __future__ import annotations

from typing import List, Optional

import typer

from notellm.cli.common import console

app = typer.Typer()


@app.command("generation")
def generation(
    pred: List[str] = typer.Option(..., help="generation table(s) from `notellm tag` (repeat to compare)"),
    notes: str = typer.Option(..., help="Note table with the true hashtags and categories"),
    categories: Optional[str] = typer.Option(None, help="category set for the ill-formed rate: a Note table or a "
                                                        "JSON list of paths (default: the set recorded by "
                                                        "`notellm tag`, else the categories of --notes)"),
    levels: Optional[int] = typer.Option(None, help="category levels compared (default: those generated)"),
    out: Optional[str] = typer.Option(None, help="write the report(s) as JSON here"),
) -> None:
    """Score generated hashtags and categories exactly as the NoteLLM paper measures them."""
    from notellm.evaluation.generation import evaluate_files, report_table
    from notellm.io import write_json

    reports = [evaluate_files(p, notes, categories=categories, levels=levels) for p in pred]
    console.print(report_table(reports))
    for r in reports:
        console.print(f"{r.name}: category decoding {r.decoding.get('category_decoding', '?')}, tags "
                      f"{r.decoding.get('tag_strategy', '?')}; {r.metrics['tags_per_note']:.2f} tags per note; "
                      f"BLEU-4 is corpus-level (mean sentence BLEU-4 {r.metrics['bleu4_sentence']:.3f})")
    if out:
        write_json([r.to_dict() for r in reports] if len(reports) > 1 else reports[0].to_dict(), out)
        console.print(f"[green]wrote[/] {out}")
