"""Pictures of runs and reports (matplotlib, no display needed).

- `plot_run(run_dir)`: the loss terms of a training run's log.jsonl by step (a resumed run's repeated steps
  keep their last value), and its validation metrics (`val_*`) where it logged them -> run_dir/curves.png.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from notellm.errors import DataError
from notellm.io import atomic_path

LOSS_KEYS_FIRST = ("loss", "contrastive", "generative", "image_contrastive", "dpo", "penalty")
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


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Loss curves (and validation metrics) of a run as a PNG; returns its path."""
    data = series(read_log(run_dir))
    if not data:
        raise DataError("the log has no per-step values yet", file=str(Path(run_dir) / "log.jsonl"))
    plt = _use_agg()
    from matplotlib.ticker import MaxNLocator

    losses = [k for k in LOSS_KEYS_FIRST if k in data] + sorted(k for k in data if k not in LOSS_KEYS_FIRST
                                                                  and not k.startswith("val_"))
    validation = sorted(k for k in data if k.startswith("val_"))
    panels = 1 + bool(validation)
    fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 4), squeeze=False)
    ax = axes[0][0]
    for key in losses:
        steps = sorted(data[key])
        ax.plot(steps, [data[key][s] for s in steps], label=key, marker="." if len(steps) < 30 else None)
    ax.set(xlabel="step", ylabel="value", title=f"training: {Path(run_dir).name}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    if validation:
        ax = axes[0][1]
        for key in validation:
            steps = sorted(data[key])
            ax.plot(steps, [data[key][s] for s in steps], label=key, marker="o")
        ax.set(xlabel="step", ylabel="recall", title="validation")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    target = Path(out) if out else Path(run_dir) / "curves.png"
    with atomic_path(target, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return target
