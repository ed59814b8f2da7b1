"""`notellm quickstart`: demo corpus -> pairs -> split -> zero-shot Recall@K -> short LoRA training -> Recall@K."""

from __future__ import annotations

from pathlib import Path

import typer

from notellm.cli.common import console, progress

app = typer.Typer()


@app.command("quickstart")
def quickstart(
    out: str = typer.Option("runs/quickstart", help="folder for every artefact of the run"),
    notes: int = typer.Option(3000, help="demo notes to generate"),
    backbone: str = typer.Option("gemma-3-270m", help="backbone (the offline default, any HF id or folder)"),
    train_minutes: float = typer.Option(4.0, help="wall-clock budget of the LoRA training run (0: skip training)"),
    batch_size: int = typer.Option(8, help="pairs per training step"),
    seed: int = typer.Option(0),
) -> None:
    """Run every stage on a generated demo corpus and print zero-shot vs trained Recall@K.

    Each stage writes a file you can open (Parquet, JSON, a model folder); running it again reuses what is
    already there, and a killed training run resumes from its last checkpoint.
    """
    from rich.table import Table

    root = Path(out)
    data = _data_stages(root, notes, seed)
    test_pairs = data["test_pairs"]
    results = {"zero-shot (PromptEOL-style, before [EMB])": _recall(f"zero-shot:{backbone}", data, root / "emb_zero")}
    if train_minutes > 0:
        model_dir = _train(root, data, backbone, train_minutes, batch_size, seed)
        results["NoteLLM (GCL + CSFT, LoRA)"] = _recall(str(model_dir), data, root / "emb_trained")
    table = Table(title=f"I2I Recall@K on the demo corpus's new notes ({test_pairs.name})")
    ks = next(iter(results.values())).ks
    table.add_column("model")
    for k in ks:
        table.add_column(f"R@{k}", justify="right")
    for name, report in results.items():
        table.add_row(name, *(f"{report.overall.recall[k]:.3f}" for k in ks))
    console.print(table)
    pool = next(iter(results.values()))
    console.print(f"pool {pool.pool_size} new notes, {pool.n_queries} queries; artefacts in {root}/")
    if train_minutes > 0:
        # plain print, one command per line: a console would wrap them at its width and they could not be pasted
        print("\nnext:", flush=True)
        for command in (f"notellm index build {root}/emb_trained --out {root}/index --notes {data['notes']}",
                        f"notellm recommend --index {root}/index --note-id {pool.per_query[0]['query']} -k 5",
                        f"notellm serve --model {root}/train/model --index {root}/index --notes {data['notes']}"):
            print(f"  {command}", flush=True)


def _data_stages(root: Path, n_notes: int, seed: int) -> dict[str, Path]:
    from notellm.data.demo import generate_demo, write_demo
    from notellm.data.pairs import PairMiningConfig, mine_pairs
    from notellm.data.split import split_by_time

    paths = {"notes": root / "data" / "notes.parquet", "events": root / "data" / "events.parquet",
             "pairs": root / "data" / "pairs.parquet", "train_pairs": root / "data" / "train_pairs.parquet",
             "test_pairs": root / "data" / "test_pairs.parquet"}
    if not paths["notes"].exists():
        console.print("[bold]data[/] demo corpus, pairs, time split")
        corpus = generate_demo(n_notes=n_notes, seed=seed)
        write_demo(corpus, root / "data")
        console.print(f"[green]demo corpus[/] {corpus.notes.num_rows} notes, {corpus.events.num_rows} click events")
    if not paths["pairs"].exists():
        pairs = mine_pairs(str(paths["events"]), PairMiningConfig(mode="session"), out_path=str(paths["pairs"]))
        console.print(f"[green]pairs[/] {pairs.num_rows} co-occurring note pairs (s = sum 1/N_i, top 10 per note)")
    if not paths["test_pairs"].exists():
        split_by_time(paths["notes"], paths["events"], paths["pairs"], test_fraction=0.2).write(root / "data")
        console.print("[green]split[/] by time: test notes are new notes never seen in training")
    return paths


def _recall(model: str, data: dict[str, Path], out: Path):
    from notellm.evaluation.recall import evaluate_recall
    from notellm.inference.embed import embed_table, read_embeddings

    if not (out / "meta.json").exists():
        console.print(f"[bold]embedding[/] every note with {model} (loading the model first)")
        with progress() as bar:
            embed_table(str(data["notes"]), model, str(out), progress=bar)
    ids, vectors, _ = read_embeddings(out)
    from notellm.evaluation.recall import default_ks

    pool = (data["test_pairs"].parent / "test_notes.txt").read_text(encoding="utf-8").split()
    report = evaluate_recall(data["notes"], data["test_pairs"], (ids, vectors), buckets=False, name=model,
                             pool=pool, ks=default_ks(len(pool), (10, 50, 100, 1000)))
    report.write_json(out / "recall.json")
    return report


def _train(root: Path, data: dict[str, Path], backbone: str, minutes: float, batch_size: int, seed: int) -> Path:
    from notellm.cli.common import ProgressCallback
    from notellm.models.notellm import NoteLLMConfig
    from notellm.training.engine import Engine
    from notellm.training.notellm import NoteLLMRecipe, NoteLLMTrainConfig

    model_dir = root / "train" / "model"
    if (model_dir / "notellm.json").exists():
        return model_dir
    cfg = NoteLLMTrainConfig(notes=str(data["notes"]), train_pairs=str(data["train_pairs"]),
                             output_dir=str(root / "train"), model=NoteLLMConfig(backbone=backbone),
                             batch_size=batch_size, time_budget_min=minutes, lr=1e-4, save_every=20, log_every=10,
                             seed=seed, scheduler="constant_with_warmup", warmup_steps=5)  # ends by time
    console.print(f"[bold]training[/] LoRA for up to {minutes:g} min (resumes if interrupted)")
    Engine(NoteLLMRecipe(cfg), [ProgressCallback()]).run()
    return model_dir
