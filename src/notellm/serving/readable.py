"""Popularity a creator can read: where a predicted score falls among the indexed notes, and how sure it is.

- Percentile: the share of reference notes whose popularity is below the score, overall and among notes of
  the same top-level category. The reference is the served Note table's observed popularity (the model's own
  target, e.g. WLAES, computed from its likes/collects/comments columns) when it has those columns; else
  the target quantiles of the model's held-out notes (saved in its folder at training time).
- Interval: the model's held-out error (also saved in its folder): `score + residual quantiles 10..90`, an
  80% interval; `margin` is the 80th percentile of the absolute error. Two drafts whose scores differ by no
  more than the margin are "too close to call".
"""

from __future__ import annotations

from typing import Any

import numpy as np

MIN_CATEGORY_NOTES = 5  # fewer reference notes than this in a category: no category percentile


class PopularityContext:
    def __init__(self, reference: np.ndarray | None, categories: list[str | None] | None, source: str,
                 heldout: dict[str, Any] | None):
        self.source, self.heldout = source, heldout or {}
        self.reference = None if reference is None else np.sort(reference[np.isfinite(reference)])
        self.by_category: dict[str, np.ndarray] = {}
        if reference is not None and categories is not None:
            groups: dict[str, list[float]] = {}
            for value, category in zip(reference, categories):
                if category and np.isfinite(value):
                    groups.setdefault(category, []).append(float(value))
            self.by_category = {c: np.sort(v) for c, v in groups.items() if len(v) >= MIN_CATEGORY_NOTES}

    @classmethod
    def build(cls, model: Any, notes=None) -> "PopularityContext | None":
        """From a popularity component (its `heldout` and `target_weights`, when it has them) and the Note table."""
        heldout = getattr(model, "heldout", None)
        heldout = heldout() if callable(heldout) else heldout
        weights = getattr(model, "target_weights", None)
        if notes is not None and weights and all(c in notes.column_names for c, w in weights.items() if w):
            from notellm.data.popularity import target_values

            values = target_values(notes, weights, missing="nan")
            cats = ([(c or [None])[0] for c in notes.column("category").to_pylist()]
                    if "category" in notes.column_names else None)
            if np.isfinite(values).sum() >= MIN_CATEGORY_NOTES:
                return cls(values, cats, f"{int(np.isfinite(values).sum()):,} indexed notes (observed popularity)",
                           heldout)
        if heldout and heldout.get("score_quantiles"):
            return cls(np.asarray(heldout["score_quantiles"], dtype=float), None,
                       f"the model's {heldout.get('notes', '?')} held-out notes (observed popularity)", heldout)
        if heldout:
            return cls(None, None, "", heldout)
        return None

    @staticmethod
    def _percentile(sorted_values: np.ndarray, score: float) -> float:
        below = np.searchsorted(sorted_values, score, side="left")
        at = np.searchsorted(sorted_values, score, side="right") - below
        return round(100.0 * (below + 0.5 * at) / len(sorted_values), 1)

    def explain(self, score: float, category: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"percentile": None, "interval": None}
        if self.reference is not None and len(self.reference):
            pct = {"overall": self._percentile(self.reference, score), "among": self.source, "category": None}
            if category and category in self.by_category:
                ref = self.by_category[category]
                pct["category"] = {"name": category, "percentile": self._percentile(ref, score), "notes": len(ref)}
            out["percentile"] = pct
        residual = self.heldout.get("residual_quantiles") or {}
        abs_error = self.heldout.get("abs_error_quantiles") or {}
        if "10" in residual and "90" in residual and "80" in abs_error:
            out["interval"] = {"low": score + float(residual["10"]), "high": score + float(residual["90"]),
                               "coverage": 0.8, "margin": float(abs_error["80"]),
                               "from": f"the model's error on {self.heldout.get('notes', '?')} held-out notes"}
        return out
