"""Regression metrics for popularity: MAE, RMSE, R2, Spearman, paired bootstrap intervals, best-note ranking.

Bootstrap: the test rows are resampled with replacement `n` times; the same resamples serve every model,
so the interval of a difference (model MAE minus the mean baseline's MAE) is paired. Intervals are the
2.5 and 97.5 percentiles.

Ranking test: for each author with at least two test notes, does the model's top-scored note have the
author's highest true target (a tie for the true top counts as a hit)? Ties among the model's top scores
are broken at random, in expectation, so a constant predictor scores exactly `chance`: the rate a random
order reaches (mean over authors of (#notes tied at the true top) / (#notes)).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
from scipy.stats import rankdata

METRICS = ("mae", "rmse", "r2", "spearman")


def _check(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y, p = np.asarray(y, dtype=float), np.asarray(p, dtype=float)
    if y.shape != p.shape or y.ndim != 1:
        raise ValueError(f"targets and predictions must be 1-d of the same length, got {y.shape} and {p.shape}")
    if not (np.isfinite(y).all() and np.isfinite(p).all()):
        raise ValueError("targets and predictions must be finite")
    return y, p


def _rowwise_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=-1, keepdims=True)
    b = b - b.mean(axis=-1, keepdims=True)
    denom = np.sqrt((a * a).sum(axis=-1) * (b * b).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (a * b).sum(axis=-1) / denom, np.nan)


def _metrics_rows(y: np.ndarray, p: np.ndarray) -> dict[str, np.ndarray]:
    """Metrics for each row of 2-d arrays (one bootstrap resample per row)."""
    err = p - y
    sst = ((y - y.mean(axis=-1, keepdims=True)) ** 2).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        r2 = np.where(sst > 0, 1.0 - (err ** 2).sum(axis=-1) / sst, np.nan)
    spearman = _rowwise_pearson(rankdata(y, axis=-1), rankdata(p, axis=-1))
    return {"mae": np.abs(err).mean(axis=-1), "rmse": np.sqrt((err ** 2).mean(axis=-1)), "r2": r2,
            "spearman": spearman}


def regression_metrics(y: Sequence[float], p: Sequence[float]) -> dict[str, float]:
    """MAE, RMSE, R2 (1 - SSE/SST), Spearman rank correlation (average ranks for ties)."""
    y, p = _check(np.asarray(y), np.asarray(p))
    return {k: float(v[0]) for k, v in _metrics_rows(y[None, :], p[None, :]).items()}


@dataclass
class Interval:
    value: float
    low: float
    high: float

    def text(self, digits: int = 3) -> str:
        if not np.isfinite(self.value):
            return "n/a"
        return f"{self.value:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def _interval(point: float, samples: np.ndarray, lo_q: float, hi_q: float) -> Interval:
    """Percentile interval; NaN resamples (Spearman of a constant predictor) are left out, all-NaN -> NaN."""
    finite = samples[np.isfinite(samples)]
    if len(finite) == 0:
        return Interval(point, float("nan"), float("nan"))
    return Interval(point, float(np.percentile(finite, lo_q)), float(np.percentile(finite, hi_q)))


def bootstrap_indices(n: int, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def bootstrap_metrics(y: Sequence[float], predictions: Mapping[str, Sequence[float]], baseline: str | None = "mean",
                      n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> dict[str, dict[str, Interval]]:
    """Per model: each metric with its percentile interval, and `mae_diff` (model MAE - baseline MAE,
    paired over the same resamples; negative = better than the baseline)."""
    y = np.asarray(y, dtype=float)
    idx = bootstrap_indices(len(y), n_boot, seed)
    yb = y[idx]
    per_model: dict[str, dict[str, np.ndarray]] = {}
    out: dict[str, dict[str, Interval]] = {}
    lo_q, hi_q = 100 * alpha / 2, 100 * (1 - alpha / 2)
    for name, p in predictions.items():
        y_checked, p = _check(y, np.asarray(p))
        point = regression_metrics(y_checked, p)
        boots = _metrics_rows(yb, p[idx])
        per_model[name] = boots
        out[name] = {m: _interval(point[m], boots[m], lo_q, hi_q) for m in METRICS}
    if baseline is not None and baseline in predictions:
        base_mae = per_model[baseline]["mae"]
        base_point = out[baseline]["mae"].value
        for name in predictions:
            diff = per_model[name]["mae"] - base_mae
            out[name]["mae_diff"] = Interval(out[name]["mae"].value - base_point, float(np.percentile(diff, lo_q)),
                                             float(np.percentile(diff, hi_q)))
    return out


def paired_differences(y: Sequence[float], predictions: Mapping[str, Sequence[float]], reference: str,
                       n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> dict[str, dict[str, Interval]]:
    """Per model: MAE and Spearman minus the `reference` model's, over the same resamples (paired).
    MAE below zero / Spearman above zero = better than the reference; `clear` when the interval excludes 0."""
    y = np.asarray(y, dtype=float)
    idx = bootstrap_indices(len(y), n_boot, seed)
    yb = y[idx]
    lo_q, hi_q = 100 * alpha / 2, 100 * (1 - alpha / 2)
    ref_p = _check(y, np.asarray(predictions[reference]))[1]
    ref_point, ref_boot = regression_metrics(y, ref_p), _metrics_rows(yb, ref_p[idx])
    out: dict[str, dict[str, Interval]] = {}
    for name, p in predictions.items():
        p = _check(y, np.asarray(p))[1]
        point, boot = regression_metrics(y, p), _metrics_rows(yb, p[idx])
        out[name] = {m: _interval(point[m] - ref_point[m], boot[m] - ref_boot[m], lo_q, hi_q)
                     for m in ("mae", "spearman")}
    return out


def best_note_ranking(y: Sequence[float], p: Sequence[float], groups: Sequence[Any], min_notes: int = 2) -> dict[str, float]:
    """Share of authors (with >= `min_notes` test notes) whose top-predicted note is their best note."""
    y, p = _check(np.asarray(y), np.asarray(p))
    by_group: dict[Any, list[int]] = {}
    for i, g in enumerate(groups):
        if g is not None and g != "":
            by_group.setdefault(g, []).append(i)
    hits, chance, authors = 0.0, 0.0, 0
    for rows in by_group.values():
        if len(rows) < min_notes:
            continue
        rows_arr = np.asarray(rows)
        best = y[rows_arr] == y[rows_arr].max()
        picked = p[rows_arr] == p[rows_arr].max()  # a tie for the top pick is broken at random: expected hit
        hits += float(best[picked].mean())
        chance += best.mean()
        authors += 1
    if authors == 0:
        return {"authors": 0, "hit_rate": float("nan"), "chance": float("nan")}
    return {"authors": authors, "hit_rate": hits / authors, "chance": chance / authors}


def markdown_table(rows: Sequence[Mapping[str, str]], columns: Sequence[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def result_rows(intervals: Mapping[str, Mapping[str, Interval]], ranking: Mapping[str, Mapping[str, float]] | None = None,
                digits: int = 3, versus: Mapping[str, Mapping[str, Interval]] | None = None,
                label: str = "reference") -> list[dict[str, str]]:
    """One printable row per model: metric [low, high], MAE difference to the baseline, paired MAE and Spearman
    differences to a reference model (`versus`, from `paired_differences`), ranking hit rate."""
    rows = []
    for name, ints in intervals.items():
        row = {"model": name}
        for m in METRICS:
            row[m] = ints[m].text(digits)
        if "mae_diff" in ints:
            row["mae - mean"] = ints["mae_diff"].text(digits)
        if versus and name in versus:
            row[f"mae - {label}"] = versus[name]["mae"].text(digits)
            row[f"spearman - {label}"] = versus[name]["spearman"].text(digits)
        if ranking and name in ranking and ranking[name]["authors"]:
            r = ranking[name]
            plural = "s" if r["authors"] != 1 else ""
            row["best-note hit"] = f"{r['hit_rate']:.2f} (chance {r['chance']:.2f}, {int(r['authors'])} author{plural})"
        rows.append(row)
    return rows
