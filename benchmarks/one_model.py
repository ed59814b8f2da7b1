"""The one-model row (issue 20, item 4): one NoteLLM folder that embeds, tags and scores popularity, against a
separate popularity model, on the demo corpus (`notellm data demo`).

1. The popularity head is trained on the frozen NoteLLM (`notellm popularity train configs/popularity_head_demo.yaml
   model.backbone=NOTELLM`): the one folder. Its I2I Recall@K on the corpus's new notes (time split, as the quick
   start measures it) must equal the base folder's, since the base never trains: both are printed, and whether
   the two folders' vectors are bit-identical.
2. A separate RedNoob model (configs/popularity_demo.yaml: LoRA + regression head, `model.kind` default) is
   trained on the same split, under the same time budget.
3. `notellm popularity eval`'s report (training.popularity.evaluate) scores both folders beside the mean and
   LightGBM-all baselines on the same test notes: MAE / Spearman with 95% bootstrap intervals, the paired MAE
   and Spearman differences to LightGBM all, and the head's paired differences to the RedNoob model.

Full size (Gemma 3 270M; the NoteLLM of the quick start, on the quick start's data so that Recall@K is on that
model's held-out new notes):

    notellm quickstart
    OMP_WAIT_POLICY=PASSIVE nice .venv/bin/python benchmarks/one_model.py \
        --notellm-model runs/quickstart/train/model --data runs/quickstart/data --time-budget-min 10

`--notellm-model zero-shot:gemma-3-270m` (the default) puts the head on the untrained backbone instead, on a
demo corpus of `--notes` notes generated under OUT/data. Every stage's output under --out (default
runs/bench_one_model) is reused when run again (embeddings, trained folders); the tables go to stdout and
OUT/report.json. A smoke run with the random test backbone:

    .venv/bin/python benchmarks/one_model.py --notellm-model zero-shot:tiny-qwen3 --rednoob-backbone tiny-qwen3 \
        --override lora.top_layers=0 --notes 200 --time-budget-min 0.2 --bootstrap 100 --out /tmp/bench_one_model
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from popularity import COLUMNS  # noqa: E402  (benchmarks/popularity.py: the popularity table's columns)
from notellm.device import cpu_model  # noqa: E402

HEAD, REDNOOB = "NoteLLM + popularity head (one folder)", "RedNoob: LoRA LLM + head (separate model)"
SHOWN = ("mean", "LightGBM all, no LLM", REDNOOB, HEAD)


def demo_data(folder: Path, n_notes: int, seed: int) -> dict[str, Path]:
    """The demo corpus, its co-click pairs and the time split (new notes for Recall@K), unless already there."""
    from notellm.data.demo import generate_demo, write_demo
    from notellm.data.pairs import PairMiningConfig, mine_pairs
    from notellm.data.split import split_by_time

    paths = {name: folder / f"{name}.parquet" for name in ("notes", "events", "pairs", "test_pairs")}
    if not paths["notes"].exists():
        write_demo(generate_demo(n_notes=n_notes, seed=seed), folder)
    if not paths["test_pairs"].exists():
        if not paths["pairs"].exists():
            mine_pairs(str(paths["events"]), PairMiningConfig(mode="session"), out_path=str(paths["pairs"]))
        split_by_time(paths["notes"], paths["events"], paths["pairs"], test_fraction=0.2).write(folder)
    return paths


def recall(model: str, data: dict[str, Path], out: Path):
    """(Recall@K report on the time split's new notes, the vectors), as `notellm quickstart` measures it."""
    from notellm.evaluation.recall import default_ks, evaluate_recall
    from notellm.inference.embed import embed_table, read_embeddings

    if not (out / "meta.json").exists():
        embed_table(str(data["notes"]), model, str(out))
    ids, vectors, _ = read_embeddings(out)
    pool = (data["test_pairs"].parent / "test_notes.txt").read_text(encoding="utf-8").split()
    report = evaluate_recall(data["notes"], data["test_pairs"], (ids, vectors), buckets=False, name=model,
                             pool=pool, ks=default_ks(len(pool), (10, 50, 100, 1000)))
    return report, vectors


def train_popularity(config: str, overrides: list[str]) -> tuple[Path, float]:
    """A popularity folder trained with `notellm popularity train CONFIG OVERRIDES` (resumed when there)."""
    from notellm.config import load_config
    from notellm.training.popularity import PopularityConfig, train

    started = time.time()
    folder = train(load_config(PopularityConfig, ROOT / "configs" / config, overrides))
    return folder, time.time() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--notellm-model", default="zero-shot:gemma-3-270m",
                        help="the base NoteLLM: a folder (`notellm train`) or zero-shot:<backbone>")
    parser.add_argument("--data", default=None, help="a demo-corpus folder (default: OUT/data, generated)")
    parser.add_argument("--notes", type=int, default=1000, help="demo notes when the corpus is generated")
    parser.add_argument("--rednoob-backbone", default="gemma-3-270m", help="backbone of the separate model")
    parser.add_argument("--override", action="append", default=[],
                        help="a key=value of the separate model's config (configs/popularity_demo.yaml), repeatable")
    parser.add_argument("--time-budget-min", type=float, default=10.0, help="per trained model")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench_one_model"))
    args = parser.parse_args()
    import numpy as np

    from notellm.config import load_config
    from notellm.evaluation.popularity import score_report
    from notellm.evaluation.regression import markdown_table
    from notellm.io import write_json
    from notellm.models.folder import read_card
    from notellm.training.popularity import PopularityConfig, evaluate, prepare

    out = Path(args.out)
    print(f"CPU: {cpu_model()} ({os.cpu_count()} cores visible); load average {os.getloadavg()[0]:.1f}", flush=True)
    data = demo_data(Path(args.data) if args.data else out / "data", args.notes, args.seed)
    shared = [f"data.path={data['notes']}", f"time_budget_min={args.time_budget_min}", f"seed={args.seed}"]
    head, head_s = train_popularity("popularity_head_demo.yaml", shared + [
        f"output_dir={out / 'head'}", f"model.backbone={args.notellm_model}"])
    rednoob, rednoob_s = train_popularity("popularity_demo.yaml", shared + [
        f"output_dir={out / 'rednoob'}", f"model.backbone={args.rednoob_backbone}", *args.override])

    base_report, base_vectors = recall(args.notellm_model, data, out / "emb_base")
    head_report, head_vectors = recall(str(head), data, out / "emb_one")
    ks = base_report.ks
    print(f"\n### Recall@K on the demo corpus's new notes (pool {base_report.pool_size}, "
          f"{base_report.n_queries} queries)\n")
    print(markdown_table([{"model": name, **{f"R@{k}": f"{r.overall.recall[k]:.4f}" for k in ks}}
                          for name, r in ((f"base NoteLLM ({args.notellm_model})", base_report),
                                          ("one folder (base + popularity head)", head_report))],
                         ["model", *(f"R@{k}" for k in ks)]))
    print(f"- vectors bit-identical: {np.array_equal(base_vectors, head_vectors)}", flush=True)

    # the eval config of the demo (no note age: demo notes carry no crawl time); the head's split is the same
    cfg = load_config(PopularityConfig, ROOT / "configs" / "popularity_demo.yaml",
                      shared + [f"output_dir={out / 'eval'}", f"eval.bootstrap={args.bootstrap}",
                                f"eval.seed={args.seed}"])
    prepared = prepare(cfg)
    report = evaluate(cfg, data=prepared, models={HEAD: head, REDNOOB: rednoob})
    versus = score_report(cfg.eval, cfg.split.kind, cfg.target.resolved(), prepared,
                          {k: np.asarray(v) for k, v in report["predictions"].items() if k in (HEAD, REDNOOB)},
                          reference=REDNOOB)["versus_reference"][HEAD]
    print(f"\n### Popularity ({report['target']}), {report['split']} split: {report['train_notes']} train / "
          f"{report['test_notes']} test notes, 95% bootstrap intervals\n")
    print(markdown_table([r for r in report["rows"] if r["model"] in SHOWN], COLUMNS))
    mae, rho = versus["mae"], versus["spearman"]
    print(f"- one folder - RedNoob (paired): MAE {mae['value']:+.3f} [{mae['low']:+.3f}, {mae['high']:+.3f}], "
          f"Spearman {rho['value']:+.3f} [{rho['low']:+.3f}, {rho['high']:+.3f}]")
    trained = {"head": read_card(head)["popularity_head"]["train"], "rednoob": read_card(rednoob)["train"]}
    print(f"- training (budget {args.time_budget_min:g} min each): " + "; ".join(
        f"{name} {t['steps']}/{t['planned_steps']} steps, {t['seconds']:.0f} s in steps" for name, t in trained.items())
        + f"; wall time of this run {head_s:.0f} s / {rednoob_s:.0f} s (loading, the head's feature pass and "
          f"held-out scoring included; a finished run resumed only reloads); folders {head}, {rednoob}", flush=True)
    write_json({"recall": {"ks": ks, "base": base_report.overall.recall, "one": head_report.overall.recall,
                           "identical_vectors": bool(np.array_equal(base_vectors, head_vectors))},
                "popularity": {k: v for k, v in report.items() if k != "predictions"},
                "one_vs_rednoob": versus, "training": trained, "seconds": {"head": head_s, "rednoob": rednoob_s},
                "args": vars(args)}, out / "report.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
