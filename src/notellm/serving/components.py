"""What the server can be given, as small protocols, and the loaders that turn folders into them.

Any object with the right method works (the app never checks types), so tests and other deployments can
pass their own:
- embedder:   `.encode(notes) -> np.ndarray [n, dim]` (L2-normalised) and `.meta` (notellm.inference.embed.Embedder)
- tagger:     `.generate(notes) -> [GeneratedNote]` with `.tags` and `.category`
              (notellm.inference.generate.NoteGenerator, or its KnnTagger baseline)
- popularity: `.predict(notes) -> sequence of floats`, optionally `.describe() -> dict`
              (PopularityPredictor below wraps a folder written by `notellm popularity train`)
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

from notellm.errors import NotellmError

TAGGER_KINDS = ("none", "model", "knn")


class EmbedderLike(Protocol):
    meta: dict[str, Any]

    def encode(self, notes: Sequence[dict[str, Any]]) -> np.ndarray: ...


class TaggerLike(Protocol):
    def generate(self, notes: Sequence[dict[str, Any]]) -> list[Any]: ...


class PopularityLike(Protocol):
    def predict(self, notes: Sequence[dict[str, Any]]) -> Sequence[float]: ...


class PopularityPredictor:
    """A trained popularity model folder (written by `notellm popularity train`) as `.predict(notes)`.

    A draft has no publish time: it is taken as published now. A model trained with note-age features cannot
    score drafts (their age is undefined); its DataError names the feature and the API returns it as a 422.
    """

    def __init__(self, model_dir: str | Path):
        from notellm.inference.popularity import load_model

        self.model_dir = str(model_dir)
        self.loaded = load_model(model_dir)

    def predict(self, notes: Sequence[dict[str, Any]]) -> np.ndarray:
        from notellm.data.schema import notes_to_table
        from notellm.inference.popularity import predict_table

        now = datetime.now(timezone.utc).replace(microsecond=0)
        rows = [{**n, "published_at": n.get("published_at") or now} for n in notes]
        return predict_table(self.loaded, notes_to_table(rows, source="request"), source="request")

    @property
    def heldout(self) -> dict[str, Any] | None:
        return self.loaded.heldout

    @property
    def target_weights(self) -> dict[str, float] | None:
        return (self.loaded.meta.get("target") or {}).get("weights")

    def describe(self) -> dict[str, Any]:
        meta = self.loaded.meta
        return {"model": public_name(self.model_dir), "backbone": meta.get("backbone"), "target": meta.get("target", {}),
                "features": meta.get("features", {}).get("names", [])}


def load_tagger(kind: str, embedder: Any = None, notes: Any = None, n_tags: int = 5) -> Any:
    """`model`: the served NoteLLM generates (category constrained to the categories of `notes` when given);
    `knn`: the most frequent tags and category of the nearest notes of `notes` (TF-IDF); `none`: no tagger."""
    from notellm.inference.generate import GenerationSettings, KnnTagger, NoteGenerator, category_paths

    if kind not in TAGGER_KINDS:
        raise NotellmError(f"--tagger must be one of {TAGGER_KINDS}, got '{kind}'")
    if kind == "none":
        return None
    wanted = ("note_id", "title", "content", "hashtags", "category")
    rows = notes.select([c for c in wanted if c in notes.column_names]).to_pylist() if notes is not None else []
    if kind == "knn":
        if not rows or "hashtags" not in notes.column_names:
            raise NotellmError("--tagger knn needs --notes (a Note table with hashtags and categories)")
        return KnnTagger(rows, n_tags=n_tags)
    if embedder is None or not hasattr(embedder, "model"):
        raise NotellmError("--tagger model needs --model (a trained NoteLLM folder)")
    levels = embedder.model.config.prompt.category_levels
    categories = category_paths(rows, levels)
    settings = GenerationSettings(n_tags=n_tags, constrain_category=bool(categories), batch_size=8)
    return NoteGenerator(embedder.model, settings, categories=categories or None)


def public_name(model: Any) -> str | None:
    """What /health and responses may say about a model or folder: a folder's name, never its server path
    (a hub id such as `Qwen/Qwen3-0.6B` or `zero-shot:tiny-qwen3` is not a path and is kept)."""
    if model is None:
        return None
    text = str(model)
    if text.startswith("zero-shot:") or not (Path(text).is_absolute() or Path(text).exists()):
        return text
    return Path(text).name


def describe(component: Any) -> dict[str, Any] | None:
    """What /health says about a component: its own description when it has one, else its class."""
    if component is None:
        return None
    if hasattr(component, "describe"):
        info = component.describe()
        return {"class": type(component).__name__, **{k: v for k, v in info.items() if k != "categories"}}
    return {"class": type(component).__name__}
