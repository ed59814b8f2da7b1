"""`notellm tag`: generate hashtags and a category for every note of a Note table."""

from __future__ import annotations

from typing import Optional

import typer

from notellm.cli.common import console, progress

app = typer.Typer()


@app.command("tag")
def tag(
    model: str = typer.Option(..., "--model", "-m",
                              help="a trained model folder, zero-shot:<backbone> (the untrained backbone with the "
                                   "same prompt), or knn (the k-nearest-training-notes baseline, needs --train-notes)"),
    notes: str = typer.Option(..., help="Note table (Parquet) to tag"),
    out: str = typer.Option(..., "--out", "-o", help="output Parquet: note_id, tags, category, raw_tags, raw_category"),
    n_tags: int = typer.Option(3, help="hashtags per note (at most)"),
    beams: int = typer.Option(1, help="beam width (1 = greedy)"),
    constrain_category: bool = typer.Option(True, "--constrain-category/--free-category",
                                            help="decode the category inside the known category set (a prefix "
                                                 "trie), or freely"),
    categories: Optional[str] = typer.Option(None, help="the category set: a Note table or a JSON list of paths "
                                                        "(default: the model's training notes, else --train-notes)"),
    tag_strategy: str = typer.Option("auto", help="list: ask for n topics in one answer; beams: ask for one topic "
                                                  "and keep the first topic of each of 2n beams; auto: the form the "
                                                  "model trained on (its hashtag_target), list when zero-shot"),
    train_notes: Optional[str] = typer.Option(None, help="training Note table (knn baseline; default category set)"),
    k: int = typer.Option(10, help="knn: neighbours voting"),
    levels: int = typer.Option(2, help="knn: category levels predicted (LLMs use their prompt's category_levels)"),
    repetition_penalty: float = typer.Option(1.0, help="> 1 discourages repeating prompt or output tokens"),
    max_new_tokens: int = typer.Option(32, help="new tokens for the tags and a free category"),
    batch_size: int = typer.Option(16, help="notes per generation batch (sorted by prompt length)"),
    limit: Optional[int] = typer.Option(None, help="tag only the first N notes"),
    bf16: bool = typer.Option(None, "--bf16/--fp32", help="default: bf16 where the CPU/GPU supports it"),
) -> None:
    """Tag notes with a NoteLLM (hashtags + category) or a baseline; write a Parquet table."""
    from notellm.data.schema import read_notes
    from notellm.inference.generate import write_generations

    rows = read_notes(notes).select(["note_id", "title", "content", "hashtags", "category"]).to_pylist()
    rows = rows[:limit] if limit else rows
    if model == "knn":
        generator, meta = _knn(train_notes, k, n_tags, levels)
    else:
        generator, meta = _llm(model, n_tags, beams, constrain_category, categories, tag_strategy, train_notes,
                               repetition_penalty, max_new_tokens, batch_size, bf16)
    with progress() as bar:
        task = bar.add_task(f"tag ({meta['category_decoding']} category)", total=len(rows))
        results = generator.generate(rows, on_batch=lambda n: bar.advance(task, n))
    write_generations(results, {**meta, "model": model, "notes": notes}, out)
    console.print(f"[green]wrote[/] {out}: {len(results)} notes; category decoding: {meta['category_decoding']}, "
                  f"tags: {meta['tag_strategy']}")


def _knn(train_notes: str | None, k: int, n_tags: int, levels: int):
    from notellm.data.schema import read_notes
    from notellm.errors import NotellmError
    from notellm.inference.generate import KnnTagger

    if not train_notes:
        raise NotellmError("--model knn needs --train-notes (the notes whose tags and categories vote)")
    train = read_notes(train_notes).select(["note_id", "title", "content", "hashtags", "category"]).to_pylist()
    tagger = KnnTagger(train, k=k, n_tags=n_tags, levels=levels)
    return tagger, tagger.describe()


def _llm(model: str, n_tags: int, beams: int, constrain: bool, categories: str | None, tag_strategy: str,
         train_notes: str | None, repetition_penalty: float, max_new_tokens: int, batch_size: int,
         bf16: bool | None):
    from notellm.inference.embed import bf16_supported
    from notellm.inference.generate import (GenerationSettings, NoteGenerator, load_generation_model,
                                            strategy_for_card)

    if tag_strategy == "auto":
        tag_strategy = strategy_for_card(_card(model))
    settings = GenerationSettings(n_tags=n_tags, num_beams=beams, tag_strategy=tag_strategy,
                                  constrain_category=constrain, repetition_penalty=repetition_penalty,
                                  max_new_tokens=max_new_tokens, batch_size=batch_size)
    # the category set first: a missing one is an error before minutes of model loading
    category_set = _category_set(model, categories, train_notes, _category_levels(model), required=constrain)
    lm = load_generation_model(model, bf16=bf16_supported() if bf16 is None else bf16)
    generator = NoteGenerator(lm, settings, category_set)
    return generator, generator.describe()


def _card(model: str) -> dict | None:
    """A trained model's card (notellm.json); None for zero-shot:<backbone> and plain backbones."""
    from pathlib import Path

    from notellm.models.folder import read_card

    return read_card(model) if (Path(model) / "notellm.json").is_file() else None


def _category_levels(model: str) -> int:
    """The category levels the model's prompt generates (its model card; the prompt default for zero-shot)."""
    from notellm.models.prompts import PromptConfig

    prompt = (_card(model) or {}).get("config", {}).get("prompt", {})
    return int(prompt.get("category_levels", PromptConfig().category_levels))


def _category_set(model: str, categories: str | None, train_notes: str | None, levels: int, required: bool):
    """--categories, else --train-notes, else the notes the model was trained on (train_config.json)."""
    from pathlib import Path

    from notellm.errors import NotellmError
    from notellm.evaluation.generation import read_category_set
    from notellm.models.folder import training_notes

    source = categories or train_notes
    if source is None and Path(model).is_dir():
        source = training_notes(model)
    if source is None:
        if required:
            raise NotellmError("constrained category decoding needs the category set: pass --categories (a Note "
                               "table or JSON list of paths) or --train-notes, or use --free-category")
        return None
    console.print(f"category set: {source}")
    return read_category_set(source, levels)
