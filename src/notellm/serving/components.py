"""What the server can be given, as small protocols, and the loaders that turn folders into them.

Any object with the right method works (the app never checks types), so tests and other deployments can
pass their own:
- embedder:   `.encode(notes) -> np.ndarray [n, dim]` (L2-normalised) and `.meta` (notellm.inference.embed.Embedder)
- tagger:     `.generate(notes) -> [GeneratedNote]` with `.tags` and `.category`
              (notellm.inference.generate.NoteGenerator, or its KnnTagger baseline)
- popularity: `.predict(notes) -> sequence of floats`, optionally `.describe() -> dict`
              (PopularityPredictor below wraps a folder written by `notellm popularity train`;
              NoteLLMHeadPopularity the head of a NoteLLM folder trained with model.kind=notellm-head)
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


class NoteLLMHeadPopularity:
    """The popularity head of the served NoteLLM folder (`notellm popularity train ... model.kind=notellm-head`)
    as `.predict(notes)`: the same model embeds, tags and scores. Its card's `popularity_head` section gives the
    target and the held-out error (percentile and interval), as a popularity folder's card does."""

    def __init__(self, embedder: Any):
        if getattr(embedder.model, "score_head", None) is None:
            raise NotellmError("the served model has no popularity head: give --popularity-model DIR, or train a "
                               "head on it (`notellm popularity train CONFIG model.kind=notellm-head`)")
        self.embedder = embedder
        self.card = (getattr(embedder.model, "card_data", None) or {}).get("popularity_head") or {}

    def predict(self, notes: Sequence[dict[str, Any]]) -> np.ndarray:
        from notellm.inference.embed import as_notes, score_notes

        return score_notes(self.embedder.model, as_notes(notes), self.embedder.batch_size, self.embedder.bf16)

    @property
    def heldout(self) -> dict[str, Any] | None:
        return self.card.get("heldout")

    @property
    def target_weights(self) -> dict[str, float] | None:
        return (self.card.get("target") or {}).get("weights")

    def describe(self) -> dict[str, Any]:
        return {"model": public_name(self.embedder.meta.get("model")), "backbone": self.embedder.meta.get("backbone"),
                "target": self.card.get("target", {}), "features": [], "head": "notellm"}


def has_popularity_head(embedder: Any) -> bool:
    return getattr(getattr(embedder, "model", None), "score_head", None) is not None


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


class ColdStartScorer:
    """A cold-start folder (written by `notellm coldstart sft` / `align`) for drafts: the prompt is the one the
    model was trained on (data.coldstart.PromptWriter) over the author's past posts with their scores, then
    the draft; the model's answer is parsed as a number (None: it did not answer with one).

    `author_posts(author_id)`: the author's last posts and scores from the served Note table (oldest first),
    scored as the instruction data scores them (ScoreConfig: weighted ln(count+1))."""

    def __init__(self, model_dir: str | Path, language: str = "en", notes: Any = None, max_posts: int = 10,
                 predictor: Any = None):
        from notellm.data.coldstart import InstructionConfig

        if predictor is None:
            from notellm.inference.coldstart import ColdStartPredictor

            predictor = ColdStartPredictor(str(model_dir))
        self.predictor, self.model_dir, self.max_posts = predictor, str(model_dir), max_posts
        self.cfg = InstructionConfig(language=language)
        self.notes = notes

    def prompt(self, draft: dict[str, Any], past: Sequence[dict[str, Any]], author_id: str | None) -> str:
        from dataclasses import replace

        from notellm.data.coldstart import PromptWriter
        from notellm.data.schema import notes_to_table

        rows = [{k: v for k, v in p.items() if k != "score"} for p in past] + [dict(draft)]
        cfg = replace(self.cfg, include_user_id=bool(author_id))
        writer = PromptWriter(notes_to_table(rows, source="request"), cfg, source="request")
        return writer.prompt(author_id or "", list(range(len(past))), [float(p["score"]) for p in past], len(past))

    def author_posts(self, author_id: str) -> list[dict[str, Any]]:
        from notellm.data.coldstart import popularity_scores

        if self.notes is None or "author_id" not in self.notes.column_names:
            return []
        table = self.notes
        rows = [i for i, a in enumerate(table.column("author_id").to_pylist()) if a == author_id]
        if not rows:
            return []
        import pyarrow as pa

        mine = table.take(pa.array(rows, type=pa.int64()))
        scores = popularity_scores(mine, self.cfg.score, source="notes")
        posts = [{**r, "score": s} for r, s in zip(mine.to_pylist(), scores)]
        posts.sort(key=lambda p: (p.get("published_at") is None, p.get("published_at") or 0))
        return posts[-self.max_posts:]

    def answer(self, prompts: Sequence[str]) -> list[tuple[str, float | None]]:
        from notellm.evaluation.numbers import parse_number

        texts = self.predictor.answers(list(prompts))
        return [(t, parse_number(t)) for t in texts]

    def describe(self) -> dict[str, Any]:
        return {"model": public_name(self.model_dir), "language": self.cfg.language}
