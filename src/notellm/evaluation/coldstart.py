"""Cold-start evaluation (MultiSmpLLM): greedy answers of each model on the test questions, robust number
parsing, MAE and Spearman (SRC) per k-shot, answers that are not a number counted; LightGBM on per-user history
features and two trivial history baselines (the mean and the last of the k past scores) in the same table,
with a paired bootstrap interval of each MAE difference against one model."""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import pyarrow as pa

from notellm.data.coldstart import (ColdStartExample, DataSourceConfig, examples_to_table, load_notes,
                                    read_instruction_set)
from notellm.io import write_json, write_parquet

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


@dataclass
class EvalConfig:
    models: list[str] = field(default_factory=lambda: ["sft", "align-dpo", "align-idpop"])  # under output_dir
    batch_size: int = 16
    max_new_tokens: int = 8
    lightgbm: bool = True
    history_baselines: bool = True      # mean / last score of the k past posts
    compare_to: str = "sft"             # bootstrap 95% interval of (model MAE - this model's MAE)


def history_features(examples: Sequence[ColdStartExample], notes: pa.Table | None = None) -> "Any":
    """Per-question features for LightGBM: statistics of the k past scores, plus the asked post's title
    length, hour, weekday, hashtag count, first category and hours since the user's previous post."""
    import numpy as np
    import pandas as pd

    rows = []
    cols = {c: notes.column(c).to_pylist() for c in ("title", "published_at", "hashtags", "category")} if notes is not None else None
    for e in examples:
        s = np.asarray(e.history_scores, dtype=float)
        f = dict(hist_mean=s.mean(), hist_last=s[-1], hist_std=s.std(), hist_min=s.min(), hist_max=s.max(),
                 hist_first=s[0], hist_trend=s[-1] - s[0])
        if cols is not None:
            when, prev = cols["published_at"][e.target_row], cols["published_at"][e.history_rows[-1]]
            f.update(title_chars=len(cols["title"][e.target_row] or ""), hour=when.hour, weekday=when.weekday(),
                     n_tags=len(cols["hashtags"][e.target_row] or []),
                     hours_since_prev=(when - prev).total_seconds() / 3600,
                     category=(cols["category"][e.target_row] or ["-"])[0])
        rows.append(f)
    frame = pd.DataFrame(rows)
    if "category" in frame:
        frame["category"] = frame["category"].astype("category")
    return frame


def lightgbm_predictions(
    train: Sequence[ColdStartExample], test: Sequence[ColdStartExample], notes: pa.Table | None, seed: int = 0
) -> list[float]:
    """One LightGBM (L1 objective, as MAE is the metric) per k, trained on the k-shot labelled questions."""
    import lightgbm as lgb

    preds: dict[int, float] = {}
    for k in sorted({e.shots for e in test}):
        tr = [e for e in train if e.shots == k]
        te_idx = [i for i, e in enumerate(test) if e.shots == k]
        feats = history_features(tr + [test[i] for i in te_idx], notes)
        if "category" in feats:  # the same category levels for train and test
            feats["category"] = feats["category"].astype(str).astype("category")
        x_tr, x_te = feats.iloc[: len(tr)], feats.iloc[len(tr):]
        model = lgb.LGBMRegressor(objective="l1", n_estimators=200, learning_rate=0.05, num_leaves=15,
                                  min_child_samples=10, subsample=0.8, subsample_freq=1, colsample_bytree=0.8,
                                  random_state=seed, verbose=-1)
        model.fit(x_tr, [e.target for e in tr])
        for i, p in zip(te_idx, model.predict(x_te)):
            preds[i] = float(p)
    return [preds[i] for i in range(len(test))]


def score_predictions(targets: Sequence[float], predictions: Sequence[float | None],
                      fallback: Sequence[float]) -> dict[str, Any]:
    """MAE and Spearman (SRC) on the answers that are numbers; non-numbers counted; MAE with non-numbers
    replaced by `fallback` (the mean of the user's past scores) so every model is scored on every question;
    how many distinct numbers the model answered and the share of its most common one (a collapsed model
    answers one constant: distinct 1, share 1)."""
    from collections import Counter

    import numpy as np

    from notellm.evaluation.regression import regression_metrics

    t = np.asarray(targets, dtype=float)
    ok = np.array([p is not None for p in predictions])
    p = np.array([np.nan if v is None else v for v in predictions], dtype=float)
    filled = np.where(ok, p, np.asarray(fallback, dtype=float))
    res: dict[str, Any] = dict(n=len(t), non_number=int((~ok).sum()), non_number_rate=float((~ok).mean()))
    if ok.sum() >= 2:
        parsed = regression_metrics(t[ok], p[ok])  # Spearman is NaN when every answer is the same number
        res["mae"], res["src"] = parsed["mae"], parsed["spearman"]
    else:
        res["mae"], res["src"] = float("nan"), float("nan")
    res["mae_filled"] = float(np.abs(filled - t).mean())
    counts = Counter(round(float(v), 6) for v in p[ok])
    res["distinct_answers"] = len(counts)
    if counts:
        value, n = counts.most_common(1)[0]
        res["top_answer"], res["top_answer_share"] = value, n / int(ok.sum())
    return res


def filled_predictions(predictions: Sequence[float | None], fallback: Sequence[float]) -> list[float]:
    return [f if p is None else p for p, f in zip(predictions, fallback)]


def model_folder(output_dir: str | Path, name: str) -> Path:
    """A model named in eval.models: a stage under output_dir (`sft`, `align-idpop`: its model/), or a folder."""
    stage = Path(output_dir) / name
    if (stage / "model").is_dir():
        return stage / "model"
    if stage.is_dir():
        return stage
    return Path(name)


def evaluate(output_dir: str | Path, ecfg: EvalConfig, data: DataSourceConfig, models: Sequence[str] | None = None,
             bf16: bool = False, log: Log = _quiet) -> dict[str, Any]:
    """Answers of each model on the test questions, LightGBM and history baselines; metrics per k-shot.
    Writes output_dir/eval/predictions.parquet and metrics.json."""
    import numpy as np

    from notellm.evaluation.numbers import parse_number
    from notellm.evaluation.regression import bootstrap_metrics
    from notellm.inference.coldstart import generate_answers
    from notellm.models.coldstart import load_coldstart_model

    out = Path(output_dir)
    train, test, pref = read_instruction_set(out)
    targets = [e.target for e in test]
    fallback = [float(np.mean(e.history_scores)) for e in test]
    predictions: dict[str, list[float | None]] = {}
    raw: dict[str, list[str]] = {}
    for name in models if models is not None else ecfg.models:
        model, tokenizer, mcfg = load_coldstart_model(model_folder(out, name), bf16=bf16)
        start = time.time()
        answers = generate_answers(model, tokenizer, [e.prompt for e in test], mcfg.max_length,
                                   max_new_tokens=ecfg.max_new_tokens, batch_size=ecfg.batch_size, bf16=bf16,
                                   with_logprobs=False)
        raw[name] = [a[0].text for a in answers]
        predictions[name] = [parse_number(a) for a in raw[name]]
        log(f"{name}: answered {len(test)} questions in {time.time() - start:.0f}s")
        del model
        gc.collect()
    if ecfg.history_baselines:
        predictions["history-mean"] = fallback
        predictions["history-last"] = [e.history_scores[-1] for e in test]
    if ecfg.lightgbm:
        notes, _ = load_notes(data)
        labelled = train + pref  # the labelled questions the LLM pipeline saw (SFT and alignment)
        predictions["lightgbm"] = lightgbm_predictions(labelled, test, notes, seed=data.seed)
    # Paired bootstrap over test questions of (model MAE - baseline MAE), non-numbers filled as in mae_filled.
    baseline = ecfg.compare_to if ecfg.compare_to in predictions else None
    boots = bootstrap_metrics(targets, {n: filled_predictions(p, fallback) for n, p in predictions.items()},
                              baseline=baseline, seed=data.seed)
    metrics: dict[str, Any] = {}
    for name, preds in predictions.items():
        metrics[name] = {"all": score_predictions(targets, preds, fallback)}
        if "mae_diff" in boots[name]:
            d = boots[name]["mae_diff"]
            metrics[name]["all"][f"mae_filled_minus_{baseline}"] = [d.value, d.low, d.high]
        for k in sorted({e.shots for e in test}):
            idx = [i for i, e in enumerate(test) if e.shots == k]
            metrics[name][f"{k}-shot"] = score_predictions([targets[i] for i in idx], [preds[i] for i in idx],
                                                           [fallback[i] for i in idx])
    pred_table = examples_to_table(test).drop_columns(["prompt"])
    for name, preds in predictions.items():
        pred_table = pred_table.append_column(f"pred:{name}", pa.array(preds, pa.float64()))
    for name, texts in raw.items():
        pred_table = pred_table.append_column(f"raw:{name}", pa.array(texts, pa.string()))
    write_parquet(pred_table, out / "eval" / "predictions.parquet")
    write_json(metrics, out / "eval" / "metrics.json")
    return metrics


def metrics_rows(metrics: dict[str, Any], shots: Iterable[int]) -> list[list[str]]:
    """Table rows: model, then MAE / SRC / non-number share per k-shot."""
    rows = []
    for name, per in metrics.items():
        row = [name]
        for k in shots:
            m = per[f"{k}-shot"]
            row += [f"{m['mae']:.3f}", f"{m['src']:.3f}", f"{m['non_number']}/{m['n']}"]
        rows.append(row)
    return rows
