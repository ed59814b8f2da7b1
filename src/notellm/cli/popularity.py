"""`notellm popularity train | predict | eval`: RedNoob-style popularity regression (LoRA LLM + head), or a head on
a frozen NoteLLM (`model.kind=notellm-head`); predict and eval take either folder (its card's kind decides)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from notellm.cli.common import ProgressCallback, console, load_cli_config

app = typer.Typer(no_args_is_help=True)

CONFIG = typer.Argument(..., help="YAML config (configs/popularity_*.yaml)")
OVERRIDES = typer.Argument(None, help="key=value overrides, e.g. split.kind=time epochs=2 model.backbone=tiny-qwen3")


def _config(config: str, overrides: Optional[List[str]]):
    from notellm.training.popularity import PopularityConfig

    return load_cli_config(PopularityConfig, config, overrides)


def _log(message: str) -> None:
    console.print(f"[dim]{message}[/]")


def _parse_features(items: Optional[List[str]]) -> dict[str, float]:
    from notellm.errors import DataError

    out: dict[str, float] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep:
            raise DataError(f"--feature {item!r} is not NAME=VALUE", field="feature")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise DataError(f"--feature {item!r}: {value!r} is not a number", field=name.strip()) from None
    return out


@app.command("train")
def train(config: str = CONFIG, overrides: Optional[List[str]] = OVERRIDES) -> None:
    """LoRA + regression head on the split's training notes -> OUTPUT/model (adapter, head, card with the held-out
    test error). `model.kind=notellm-head model.backbone=NOTELLM_FOLDER` (or zero-shot:<backbone>) trains only a
    head on the frozen NoteLLM instead: OUTPUT/model is then one folder for embeddings, tags and popularity.
    Resumable: a rerun continues from the last checkpoint. `notellm config show popularity` lists every key."""
    from notellm.config import save_config
    from notellm.data.popularity import describe_target
    from notellm.models.folder import read_card
    from notellm.training.popularity import train as run_train

    cfg = _config(config, overrides)
    console.print(f"[bold]target[/] {cfg.target.name}: {describe_target(cfg.target.resolved())} (natural log); "
                  f"split {cfg.split.kind}; backbone {cfg.model.backbone}")
    save_config(cfg, Path(cfg.output_dir) / "config.yaml")
    path = run_train(cfg, [ProgressCallback()])
    card = read_card(path)
    heldout = card.get("heldout") or (card.get("popularity_head") or {}).get("heldout")  # notellm-head: in its section
    if heldout:
        console.print(f"test MAE {heldout['mae']:.3f} RMSE {heldout['rmse']:.3f} R2 {heldout['r2']:.3f} "
                      f"Spearman {heldout['spearman']:.3f} on {heldout['notes']} notes")
    console.print(f"[green]saved[/] {path}")


@app.command("predict")
def predict(
    model_dir: str = typer.Argument(..., help="a folder written by `notellm popularity train`: a popularity model, "
                                              "or a NoteLLM folder with a popularity head (model.kind=notellm-head)"),
    notes: Optional[str] = typer.Option(None, help="a Note-table parquet: one score per row"),
    title: Optional[str] = typer.Option(None, help="one note's title"),
    content: Optional[str] = typer.Option(None, help="one note's text (inline #话题[话题]# tags are read as hashtags)"),
    published_at: Optional[str] = typer.Option(None, help="one note's publish time (ISO), for time features"),
    as_of: Optional[str] = typer.Option(None, help="crawl time (ISO) for note age, when notes carry no extra.crawled_at"),
    feature: Optional[List[str]] = typer.Option(None, help="NAME=VALUE for a head feature (repeatable)"),
    out: Optional[str] = typer.Option(None, help="write note_id, score to this parquet"),
    bf16: str = typer.Option("auto", help="auto | true | false"),
) -> None:
    """Print the predicted score (the model's target, e.g. WLAES) for one note or a Note table."""
    import pyarrow as pa

    from notellm.data.schema import empty_note, notes_to_table, read_notes
    from notellm.data.text import parse_hashtags, strip_hashtags
    from notellm.errors import DataError
    from notellm.io import write_parquet
    from notellm.inference.popularity import load_model, predict_table

    if (notes is None) == (title is None and content is None):
        raise DataError("give either --notes PARQUET or --title/--content for one note")
    overrides = _parse_features(feature)
    if notes is not None:
        table, source = read_notes(notes), notes
    else:
        row = empty_note("note")
        row.update(title=title or "", content=strip_hashtags(content or ""), hashtags=parse_hashtags(content or ""))
        if published_at is not None:
            import pandas as pd

            try:
                when = pd.Timestamp(published_at)
            except ValueError:
                raise DataError(f"{published_at!r} is not a date-time", field="published_at") from None
            row["published_at"] = (when.tz_localize("UTC") if when.tzinfo is None else when).to_pydatetime()
        table, source = notes_to_table([row]), "<command line>"
    loaded = load_model(model_dir)
    scores = predict_table(loaded, table, source, as_of=as_of, feature_overrides=overrides, bf16=bf16)
    target = loaded.meta["target"]
    if notes is None:
        print(f"{scores[0]:.4f}")
        console.print(f"[dim]{target['name']} = {target['formula']}[/]")
        return
    ids = table.column("note_id").to_pylist()
    if out:
        write_parquet(pa.table({"note_id": ids, "score": scores}), out)
        console.print(f"[green]wrote[/] {len(ids)} scores to {out}")
    else:
        for note_id, score in zip(ids, scores):
            sys.stdout.write(f"{note_id}\t{score:.4f}\n")
    console.print(f"[dim]{target['name']} = {target['formula']}[/]")


@app.command("eval")
def evaluate(
    config: str = CONFIG,
    overrides: Optional[List[str]] = OVERRIDES,
    model: Optional[str] = typer.Option(None, help="a trained model folder to score on the same test notes (a "
                                        "popularity model, or a NoteLLM folder with a popularity head)"),
    stack: bool = typer.Option(False, help="also cross-fit LLMs (eval.stack_folds) and the stacked GBDT (slow)"),
    json_out: Optional[str] = typer.Option(None, "--json", help="write the full report (intervals, ranking, test "
                                           "predictions) here, with its pictures beside it (-scatter/-calibration/"
                                           "-bars .png)"),
) -> None:
    """Mean, median, TF-IDF ridge, LightGBM baselines (and the model / stack) on one split, with bootstrap 95% intervals."""
    from rich.table import Table

    from notellm.evaluation.regression import METRICS
    from notellm.io import write_json
    from notellm.training.popularity import evaluate as run_eval

    cfg = _config(config, overrides)
    report = run_eval(cfg, model_dir=model, stack=stack, log=_log, callbacks=[ProgressCallback()])
    table = Table(title=f"{report['split']} split: {report['train_notes']} train / {report['test_notes']} test notes, "
                        f"target {report['target']}, note age {'on' if report['use_age'] else 'off'}, "
                        f"author history {'on' if report['use_history'] else 'off'} (95% bootstrap intervals)")
    columns = ["model", *METRICS, "mae - mean", "mae - LightGBM all", "spearman - LightGBM all", "best-note hit"]
    for col in columns:
        table.add_column(col, justify="left" if col == "model" else "right")
    for row in report["rows"]:
        table.add_row(*(row.get(c, "") for c in columns))
    console.print(table)
    if json_out:
        from notellm.evaluation.plots import plot_popularity

        write_json(report, json_out)
        pictures = plot_popularity(report, Path(json_out).with_suffix(""))
        console.print(f"[green]wrote[/] {json_out} and {', '.join(p.name for p in pictures.values())}")
