"""Pictures of runs and reports (matplotlib, no display needed).

- `plot_run(run_dir)`: the loss terms of a training run's log.jsonl by step (a resumed run's repeated steps
  keep their last value), its validation metrics (`val_*`) where it logged them, and for a preference
  alignment run (DPO / DPOP / IDPOP) the chosen and rejected answers' log-probability shift against the
  reference and the margin beta*h -> run_dir/curves.png.
- `plot_runs(run_dirs, out)`: several runs side by side, one line per run, one panel per quantity (the loss,
  and the preference shifts where the runs logged them): e.g. DPO vs DPOP vs IDPOP from the same SFT model.
- `plot_popularity(reports, out_prefix)`: a popularity score report (`evaluation.popularity.score_report`) as
  three PNGs: predicted vs actual per model, calibration by decile of the prediction, and MAE bars with their
  95% bootstrap intervals per model and split (one bar per report given).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from notellm.errors import DataError
from notellm.io import atomic_path

LOSS_KEYS_FIRST = ("loss", "contrastive", "generative", "image_contrastive", "dpo", "penalty")
# log pi_theta - log pi_ref of the chosen / rejected answer, and beta*h (losses.preference): a panel of their own
PREFERENCE_KEYS = ("chosen_shift", "rejected_shift", "margin")
SKIP = {"step", "epoch", "lr", "elapsed_s", "items_per_s", "tokens_per_s", "scale", "grad_norm"}


def read_log(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "log.jsonl"
    if not path.is_file():
        raise DataError("no log.jsonl here: not a training run folder", file=str(run_dir))
    records = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            if i == len(path.read_text(encoding="utf-8").splitlines()):
                break  # a run killed while writing its last line
            raise DataError("not a JSON line", file=str(path), row=i) from None
    return records


def series(records: list[dict[str, Any]]) -> dict[str, dict[int, float]]:
    """{metric: {step: value}} of the numeric per-step records (the last value of a step wins)."""
    out: dict[str, dict[int, float]] = {}
    for r in records:
        if "event" in r or "step" not in r:
            continue
        for key, value in r.items():
            if key in SKIP or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            if math.isfinite(value):
                out.setdefault(key, {})[int(r["step"])] = float(value)
    return out


def _use_agg():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _draw(ax, data: dict[str, dict[int, float]], keys, title: str, ylabel: str, marker: str | None = None) -> None:
    from matplotlib.ticker import MaxNLocator

    for key in keys:
        steps = sorted(data[key])
        ax.plot(steps, [data[key][s] for s in steps], label=key,
                marker=marker or ("." if len(steps) < 30 else None))
    ax.set(xlabel="step", ylabel=ylabel, title=title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


def _save(fig, plt, target: Path) -> Path:
    fig.tight_layout()
    with atomic_path(target, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return target


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Loss curves (validation metrics, preference log-probability shifts) of a run as a PNG; returns its path."""
    data = series(read_log(run_dir))
    if not data:
        raise DataError("the log has no per-step values yet", file=str(Path(run_dir) / "log.jsonl"))
    plt = _use_agg()
    preference = [k for k in PREFERENCE_KEYS if k in data]
    validation = sorted(k for k in data if k.startswith("val_"))
    losses = [k for k in LOSS_KEYS_FIRST if k in data] + sorted(
        k for k in data if k not in LOSS_KEYS_FIRST and k not in preference and not k.startswith("val_"))
    panels = [p for p in (losses, validation, preference) if p]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4), squeeze=False)
    axes = iter(axes[0])
    if losses:
        _draw(next(axes), data, losses, f"training: {Path(run_dir).name}", "value")
    if validation:
        _draw(next(axes), data, validation, "validation", "recall", marker="o")
    if preference:
        ax = next(axes)
        _draw(ax, data, preference, "answer log-probability vs the reference", "nats (margin: beta*h)")
        ax.axhline(0.0, color="black", linewidth=0.8)
    return _save(fig, plt, Path(out) if out else Path(run_dir) / "curves.png")


def plot_runs(run_dirs: dict[str, str | Path] | list[str | Path], out: str | Path) -> Path:
    """Several runs in one PNG: a panel per quantity (loss, and chosen_shift / rejected_shift / margin where
    logged), a line per run (labelled by the dict key, or the folder name)."""
    named = run_dirs if isinstance(run_dirs, dict) else {Path(d).name: d for d in run_dirs}
    if not named:
        raise DataError("no run folders given")
    runs = {label: series(read_log(d)) for label, d in named.items()}
    keys = [k for k in ("loss",) + PREFERENCE_KEYS if any(k in data for data in runs.values())]
    if not keys:
        raise DataError("none of the runs logged a loss yet", file=", ".join(str(d) for d in named.values()))
    plt = _use_agg()
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        per_run = {label: data[key] for label, data in runs.items() if key in data}
        _draw(ax, per_run, list(per_run), key, "nats" if key != "loss" else "loss")
        if key in PREFERENCE_KEYS:
            ax.axhline(0.0, color="black", linewidth=0.8)
    return _save(fig, plt, Path(out))
# ------------------------------------------------------------------------------------------------ popularity
POPULARITY_PLOTS = ("scatter", "calibration", "bars")
_SKIP_MODELS = ("mean", "median")


def _report_models(report: dict[str, Any], models: list[str] | None) -> list[str]:
    preds = report.get("predictions")
    if not preds:
        raise DataError("this popularity report has no predictions (written by an older notellm): re-run eval")
    names = [m for m in preds if m not in ("note_id", "target")]
    if models is None:
        return [m for m in names if m not in _SKIP_MODELS]
    missing = [m for m in models if m not in names]
    if missing:
        raise DataError(f"the report has no model {missing[0]!r}; it has {names}")
    return list(models)


def decile_calibration(y, p, bins: int = 10) -> tuple[list[float], list[float]]:
    """(mean prediction, mean target) in each of `bins` equal-count groups of notes sorted by prediction."""
    import numpy as np

    order = np.argsort(np.asarray(p, dtype=float), kind="stable")
    groups = [g for g in np.array_split(order, min(bins, len(order))) if len(g)]
    y, p = np.asarray(y, dtype=float), np.asarray(p, dtype=float)
    return [float(p[g].mean()) for g in groups], [float(y[g].mean()) for g in groups]


def popularity_figures(reports: dict[str, Any] | list[dict[str, Any]], models: list[str] | None = None,
                       labels: list[str] | None = None) -> dict[str, Any]:
    """Matplotlib figures {scatter, calibration, bars} of one report (scatter and calibration use the first
    report; bars show every report side by side, labelled by `labels` or each report's split)."""
    import numpy as np

    plt = _use_agg()
    reports = [reports] if isinstance(reports, dict) else list(reports)
    first = reports[0]
    names = _report_models(first, models)
    y = np.asarray(first["predictions"]["target"], dtype=float)
    lo, hi = float(y.min()), float(y.max())
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    scatter, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.8 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        p = np.asarray(first["predictions"][name], dtype=float)
        ax.scatter(y, p, s=6, alpha=0.5)
        ax.plot([lo, hi], [lo, hi], color="grey", lw=1, ls="--")
        mae = first["metrics"][name]["mae"]["value"]
        ax.set(title=f"{name}\nMAE {mae:.3f}", xlabel="actual", ylabel="predicted")
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    scatter.suptitle(f"{first['split']} split: {first['test_notes']} test notes, target {first['target']}",
                     fontsize=9)
    scatter.tight_layout()

    calibration, ax = plt.subplots(figsize=(6, 5))
    for name in names:
        mp, my = decile_calibration(y, first["predictions"][name])
        ax.plot(mp, my, marker="o", ms=3, label=name)
    ax.plot([lo, hi], [lo, hi], color="grey", lw=1, ls="--", label="perfect")
    ax.set(xlabel="mean prediction (decile of the prediction)", ylabel="mean actual", title="calibration by decile")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    calibration.tight_layout()

    labels = labels or [f"{r['split']} split" for r in reports]
    bars, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(names) * len(reports) + 2), 4.5))
    width = 0.8 / len(reports)
    for k, (report, label) in enumerate(zip(reports, labels)):
        shown = [n for n in names if n in report["metrics"]]
        x = np.array([names.index(n) for n in shown]) + (k - (len(reports) - 1) / 2) * width
        ints = [report["metrics"][n]["mae"] for n in shown]
        values = np.array([i["value"] for i in ints])
        err = np.array([[i["value"] - i["low"] for i in ints], [i["high"] - i["value"] for i in ints]])
        ax.bar(x, values, width, yerr=err, capsize=3, label=label)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set(ylabel="MAE (95% bootstrap interval)", title="test MAE by model and split")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    bars.tight_layout()
    return {"scatter": scatter, "calibration": calibration, "bars": bars}


def plot_popularity(reports: dict[str, Any] | list[dict[str, Any]], out_prefix: str | Path,
                    models: list[str] | None = None, labels: list[str] | None = None) -> dict[str, Path]:
    """Write `<out_prefix>-scatter.png`, `-calibration.png`, `-bars.png`; returns their paths."""
    plt = _use_agg()
    figures = popularity_figures(reports, models, labels)
    out_prefix = Path(out_prefix)
    paths = {}
    for kind, fig in figures.items():
        target = out_prefix.with_name(f"{out_prefix.name}-{kind}.png")
        with atomic_path(target, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=110, format="png")
        plt.close(fig)
        paths[kind] = target
    return paths
