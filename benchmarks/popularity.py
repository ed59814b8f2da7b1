"""Popularity prediction (protocol xhs-pop-v1): LoRA LLM regression and a stack against honest baselines.

Datasets (../shared/datasets):
- xhs: xhs_mediacrawler_hanseylee, target WLAES = 1.0 ln(likes+1) + 0.5 ln(collects+1) + 0.2 ln(comments+1);
  author split (primary) and time split (secondary), each with and without note age in the GBDT features;
- weibo: weibo_cctv_2020 (one author), target 1.0 ln(likes+1) + 0.5 ln(shares+1) + 0.2 ln(comments+1)
  (Weibo has no collects); random and time split; no crawl time, so no note age.

Per split: the LLM (configs/popularity_<dataset>.yaml: Gemma 3 270M + LoRA + head) is cross-fitted with
`eval.stack_folds` fold models (each trained on the other folds of the training rows, under the config's
time budget); the LLM row is the mean of the fold models' test scores; the stack is LightGBM on
hand + TF-IDF SVD + cross-fitted TF-IDF ridge score + author history (+ age) + the out-of-fold LLM score;
the blend is a ridge over the out-of-fold scores of that LightGBM (without the LLM) and of the LLM.
Every row is scored on the same test notes with 95% bootstrap intervals; `mae - mean` is the paired MAE
difference against the mean predictor, and the lines under each table compare the stack and the LLM with
LightGBM hand+TF-IDF (paired) in the same run.

    OMP_WAIT_POLICY=PASSIVE nice .venv/bin/python benchmarks/popularity.py --datasets xhs --splits author
    OMP_WAIT_POLICY=PASSIVE nice .venv/bin/python benchmarks/popularity.py --datasets weibo --splits random,time

LLM scores are cached in --out/<dataset>/<split>/llm.npz keyed by the config (use --retrain to refit).
Exits 0 with a message when ../shared is absent.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("NOTELLM_SHARED", ROOT.parent / "shared"))
DATASETS = {
    "xhs": dict(config=ROOT / "configs" / "popularity_xhs.yaml",
                path=SHARED / "datasets" / "xhs_mediacrawler_hanseylee" / "xhs_note.csv",
                splits=["author", "time"], ages=[True, False]),
    "weibo": dict(config=ROOT / "configs" / "popularity_weibo.yaml", path=SHARED / "datasets" / "weibo_cctv_2020",
                  splits=["random", "time"], ages=[False]),
}
COLUMNS = ["model", "mae", "rmse", "r2", "spearman", "mae - mean", "mae - LightGBM all", "spearman - LightGBM all",
           "best-note hit"]
REFERENCE = "LightGBM hand+TF-IDF"


def llm_scores(cfg, data, out: Path, retrain: bool, log, targets=None):
    """Cross-fitted LLM scores, cached under `out` for this exact config, split (and `targets`)."""
    import numpy as np

    from notellm.evaluation.popularity import LLMScores
    from notellm.training.popularity import cross_fit_llm

    training = {k: v for k, v in asdict(cfg).items() if k not in ("eval", "output_dir", "data")}
    key_src = json.dumps({"training": training, "folds": cfg.eval.stack_folds,
                          "max_notes": cfg.eval.stack_max_notes, "eval_seed": cfg.eval.seed,
                          "pooled": cfg.eval.stack_embedding_dims > 0, "data": cfg.data.path,
                          **({"targets": hashlib.sha1(np.nan_to_num(targets).tobytes()).hexdigest()}
                             if targets is not None else {})}, sort_keys=True)
    key = hashlib.sha1(key_src.encode()).hexdigest()[:12]
    cache = out / f"llm-{key}.npz"
    if cache.exists() and not retrain:
        z = np.load(cache, allow_pickle=False)
        info = json.loads(str(z["info"]))
        log(f"LLM scores from cache {cache}")
        return LLMScores(z["test"], z["oof"], z["test_pooled"] if "test_pooled" in z else None,
                         z["oof_pooled"] if "oof_pooled" in z else None, info), cache
    t = time.time()
    llm = cross_fit_llm(replace(cfg, output_dir=str(out / f"llm-{key}")), data, log=log, targets=targets)
    out.mkdir(parents=True, exist_ok=True)
    arrays = dict(test=llm.test, oof=llm.oof, info=json.dumps(llm.info))
    if llm.test_pooled is not None:
        arrays.update(test_pooled=llm.test_pooled, oof_pooled=llm.oof_pooled)
    tmp = cache.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(cache)
    log(f"LLM cross-fit done in {time.time() - t:.0f}s")
    return llm, cache


def compare_line(y, preds, name: str, reference: str, cfg) -> str:
    from notellm.evaluation.regression import bootstrap_metrics

    if name not in preds or reference not in preds:
        return ""
    ints = bootstrap_metrics(y, {reference: preds[reference], name: preds[name]}, baseline=reference,
                             n_boot=cfg.eval.bootstrap, seed=cfg.eval.seed)
    d = ints[name]["mae_diff"]
    sp = ints[name]["spearman"].value - ints[reference]["spearman"].value
    verdict = "better" if d.high < 0 else "worse" if d.low > 0 else "no clear difference"
    return (f"- {name} vs {reference}: MAE {d.value:+.3f} [{d.low:+.3f}, {d.high:+.3f}] ({verdict}), "
            f"Spearman {sp:+.3f}")


def run_split(name: str, spec: dict, split: str, args, log) -> list[dict]:
    from notellm.config import load_config
    from notellm.evaluation.regression import markdown_table
    from notellm.io import write_json
    from notellm.evaluation.plots import plot_popularity
    from notellm.evaluation.popularity import baseline_predictions, llm_note_vectors, residual_targets, score_report
    from notellm.training.popularity import PopularityConfig, prepare

    overrides = [f"data.path={spec['path']}", f"split.kind={split}"] + list(args.override)
    cfg = load_config(PopularityConfig, spec["config"], overrides)
    out = Path(args.out) / name / split
    data = prepare(cfg)
    log(f"{name}/{split}: {int((~data.test).sum())} train, {int(data.test.sum())} test notes")
    llm, cache = (None, None) if args.no_llm else llm_scores(cfg, data, out, args.retrain, log)
    vectors = {}
    for feature_spec in args.llm_features:  # issue 20: LLM note embeddings as LightGBM features
        t = time.time()
        vectors[feature_spec] = llm_note_vectors(feature_spec, data, out / "features", regressor_input={
            "max_length": cfg.model.max_length, "suffix": cfg.model.suffix})
        log(f"note vectors {feature_spec}: {vectors[feature_spec].shape} in {time.time() - t:.0f}s")
    residual = residual_age = None
    if args.residual:  # issue 20: an LLM trained on what LightGBM all leaves unexplained (cross-fitted)
        residual_age = spec["ages"][0]
        targets = residual_targets(cfg.eval, cfg.split.kind, data, use_age=residual_age)
        residual, _ = llm_scores(cfg, data, out, args.retrain, log, targets=targets)
    history_llm = None
    if args.history_k:  # issue 20: the author's k previous posts with their scores in the prompt
        hcfg = load_config(PopularityConfig, spec["config"], overrides + [
            f"model.history_k={args.history_k}", f"model.max_length={args.history_max_length}"])
        history_llm, _ = llm_scores(hcfg, data, out, args.retrain, log)
    results = []
    for use_age in spec["ages"]:
        t = time.time()
        preds = baseline_predictions(cfg.eval, cfg.split.kind, data, llm, use_age=use_age,
                                     use_history=cfg.eval.use_history, log=log, note_vectors=vectors or None,
                                     residual=residual if use_age == residual_age else None)
        if history_llm is not None:
            history_row = f"LoRA LLM, history k={args.history_k} in the prompt"
            preds[history_row] = history_llm.test
            extra = baseline_predictions(cfg.eval, cfg.split.kind, data, history_llm, use_age=use_age,
                                         use_history=cfg.eval.use_history)
            preds[f"stack: LightGBM all + LLM (history k={args.history_k})"] = extra["stack: LightGBM all + LLM"]
        cfg.eval.use_age = use_age
        report = score_report(cfg.eval, cfg.split.kind, cfg.target.resolved(), data, preds)
        report.update(dataset=name, use_age=use_age, use_history=cfg.eval.use_history, seconds_baselines=round(time.time() - t, 1),
                      llm_cache=str(cache) if cache else None, llm_training=llm.info if llm else None,
                      config=asdict(cfg))
        y = data.y[data.test_idx]
        stacks = ("stack: LightGBM all + LLM", "blend: ridge(LightGBM all, LLM)")
        lines = [compare_line(y, preds, n, REFERENCE, cfg) for n in ("LoRA LLM", *stacks)]
        llm_rows = [n for n in preds if ("LLM" in n and n != "LightGBM all, no LLM")]
        lines += [compare_line(y, preds, n, "LightGBM all, no LLM", cfg) for n in llm_rows if n != "LoRA LLM"]
        title = (f"### {name}, {split} split, {'with' if use_age else 'without'} note age — "
                 f"{report['train_notes']} train / {report['test_notes']} test notes, target {report['target']}")
        gbdt = "hand features" + (" + note age" if use_age else "") + (" + author history" if cfg.eval.use_history else "")
        print(f"\n{title}\n\nEvery LightGBM row and the stack see {gbdt}.\n\n{markdown_table(report['rows'], COLUMNS)}\n"
              + "\n".join(l for l in lines if l), flush=True)
        if llm is not None:
            secs = [round(i["seconds"]) for i in llm.info]
            steps = [f"{i['steps']}/{i['steps_planned']}" for i in llm.info]
            print(f"- LLM: {len(llm.info)} fold models, training seconds {secs}, steps {steps}, "
                  f"bf16={llm.info[0]['bf16']}", flush=True)
        write_json(report, out / f"report-age{int(use_age)}.json")
        pictures = plot_popularity(report, out / f"report-age{int(use_age)}")
        print(f"- pictures: {', '.join(str(p) for p in pictures.values())}", flush=True)
        results.append(report)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="xhs,weibo")
    parser.add_argument("--splits", default="", help="comma list; default: the dataset's splits")
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench_popularity"))
    parser.add_argument("--override", action="append", default=[], help="config key=value (repeatable)")
    parser.add_argument("--retrain", action="store_true", help="ignore cached LLM scores")
    parser.add_argument("--no-llm", action="store_true", help="baselines only")
    parser.add_argument("--llm-features", action="append", default=[],
                        help="note embeddings as LightGBM features (repeatable): frozen:<backbone>@mean|last, "
                             "zero-shot:<backbone>[@pooling] or a NoteLLM folder")
    parser.add_argument("--residual", action="store_true",
                        help="also cross-fit the LLM on LightGBM all's cross-fitted residuals (final = sum)")
    parser.add_argument("--history-k", type=int, default=0,
                        help="also cross-fit the LLM with the author's k previous posts and scores in the prompt")
    parser.add_argument("--history-max-length", type=int, default=160, help="model.max_length of that LLM")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    if not (SHARED / "datasets").is_dir():
        print(f"{SHARED / 'datasets'} is not present: nothing to benchmark")
        return 0
    log = (lambda m: print(f"  {m}", file=sys.stderr, flush=True)) if args.verbose else (lambda m: None)
    for name in [d for d in args.datasets.split(",") if d]:
        if name not in DATASETS:
            parser.error(f"unknown dataset {name!r}; known: {sorted(DATASETS)}")
        spec = DATASETS[name]
        if not Path(spec["path"]).exists():
            print(f"{spec['path']} is not present: skipping {name}")
            continue
        splits = [s for s in args.splits.split(",") if s] or spec["splits"]
        reports = []
        for split in splits:
            reports += run_split(name, spec, split, args, log)
        if len(reports) > 1:
            from notellm.evaluation.plots import plot_popularity

            labels = [f"{r['split']}{', no age' if not r['use_age'] else ''}" for r in reports]
            models = [m for m in reports[0]["predictions"] if m not in ("note_id", "target", "mean", "median")]
            models = [m for m in models if all(m in r["metrics"] for r in reports)]
            paths = plot_popularity(reports, Path(args.out) / name / "splits", models=models, labels=labels)
            print(f"- per-split bars: {paths['bars']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
