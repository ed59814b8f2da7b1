"""Pictures of runs and reports (matplotlib, no display needed).

- `plot_run(run_dir)`: the loss terms of a training run's log.jsonl by step (a resumed run's repeated steps
  keep their last value), its validation metrics (`val_*`) where it logged them, and for a preference
  alignment run (DPO / DPOP / IDPOP) the chosen and rejected answers' log-probability shift against the
  reference and the margin beta*h -> run_dir/curves.png.
- `plot_runs(run_dirs, out)`: several runs side by side, one line per run, one panel per quantity (the loss,
  and the preference shifts where the runs logged them): e.g. DPO vs DPOP vs IDPOP from the same SFT model.
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
