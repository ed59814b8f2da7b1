"""The Python API: a trained notellm model in three lines, the same numbers as the command line.

    from notellm import NoteLLM
    model = NoteLLM.from_pretrained("runs/quickstart/train/model")   # or "zero-shot:gemma-3-270m"
    vectors = model.encode(["周末去哪儿 城市周边露营地推荐", {"title": "露营", "content": "..."}])

`encode` gives exactly what `notellm embed` writes (L2-normalised float32, same prompt, pooling and precision);
`tag` what `notellm tag` writes. `PopularityModel` and `ColdStartModel` follow the same shape
(`from_pretrained`, `predict`). Each call wraps the inference modules the CLI uses, so the two cannot drift.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np



def _progress(show: bool, total: int, description: str):
    """A rich progress bar on stderr (or nothing), as a context manager with an `advance(n)` callback."""
    from contextlib import contextmanager

    @contextmanager
    def bar():
        if not show:
            yield None
            return
        from rich.console import Console
        from rich.progress import Progress

        with Progress(console=Console(stderr=True), transient=True) as progress:
            task = progress.add_task(description, total=total)
            yield lambda n: progress.advance(task, n)

    return bar()


class NoteLLM:
    """A NoteLLM (or NoteLLM-2) model folder, or `zero-shot:<backbone>[@pooling]`, for embedding and tagging."""

    def __init__(self, embedder, name: str):
        self._embedder = embedder
        self.name = name

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, *, bf16: bool | None = None, pooling: str | None = None,
                        batch_size: int = 32) -> "NoteLLM":
        """Load a folder written by `notellm train` (or `save_pretrained`), or `zero-shot:<backbone>`.
        `bf16=None` uses bf16 where the CPU/GPU supports it, as `notellm embed` does."""
        from notellm.inference.embed import Embedder

        return cls(Embedder(str(name_or_path), bf16=bf16, batch_size=batch_size, pooling=pooling),
                   str(name_or_path))

    @property
    def model(self):
        """The underlying `notellm.models.notellm.NoteLLM` (a torch module)."""
        return self._embedder.model

    @property
    def dim(self) -> int:
        return int(self._embedder.model.dim)

    @property
    def meta(self) -> dict[str, Any]:
        """What `notellm embed` writes to meta.json: backbone, pooling, prompt, dim, precision."""
        return dict(self._embedder.meta)

    def encode(self, texts_or_notes: Sequence[dict[str, Any] | str], batch_size: int | None = None,
               show_progress: bool = False) -> np.ndarray:
        """float32 [n, dim], L2-normalised. Strings become notes with that content (inline `#tag#` read as
        hashtags); dicts are Note-table rows (title, content, hashtags, category; missing fields are empty)."""
        from notellm.inference.embed import as_notes, embed_notes

        notes = as_notes(texts_or_notes)
        with _progress(show_progress, len(notes), "encode") as advance:
            return embed_notes(self.model, notes, batch_size or self._embedder.batch_size, self._embedder.bf16,
                               on_batch=advance)

    @property
    def has_popularity_head(self) -> bool:
        """Whether the folder carries a popularity head (`notellm popularity train ... model.kind=notellm-head`)."""
        return getattr(self.model, "score_head", None) is not None

    @property
    def popularity(self) -> dict[str, Any]:
        """The head's card: target (name, formula, weights) and held-out error (`heldout`), {} without a head."""
        return dict((getattr(self.model, "card_data", None) or {}).get("popularity_head") or {})

    def predict_popularity(self, texts_or_notes: Sequence[dict[str, Any] | str], batch_size: int | None = None,
                           show_progress: bool = False) -> np.ndarray:
        """The head's score per note (its target, e.g. WLAES), as `notellm serve --model` answers /popularity
        with this folder; float [n]. Same inputs as `encode`. A folder without a head raises NotellmError."""
        from notellm.inference.embed import as_notes, score_notes

        notes = as_notes(texts_or_notes)
        with _progress(show_progress, len(notes), "predict") as advance:
            return score_notes(self.model, notes, batch_size or self._embedder.batch_size, self._embedder.bf16,
                               on_batch=advance)

    def note_text(self, note: dict[str, Any] | str) -> str:
        """The exact string whose last token this model pools (see `notellm.note_text`)."""
        return note_text(note, self.model.config)

    def tag(self, texts_or_notes: Sequence[dict[str, Any] | str], n_tags: int = 3, num_beams: int = 1,
            categories: Sequence[Sequence[str]] | str | None = None, tag_strategy: str = "auto",
            max_new_tokens: int = 32, batch_size: int = 16, show_progress: bool = False) -> list[dict[str, Any]]:
        """Hashtags and a category per note, as `notellm tag`: one dict per note (note_id, tags, category,
        raw_tags, raw_category). The category is decoded inside `categories` (a list of category paths, or a
        Note table / JSON file of them; default: the notes the model was trained on) or freely when there is
        no known category set."""
        from dataclasses import asdict

        from notellm.inference.embed import as_notes
        from notellm.inference.generate import GenerationSettings, NoteGenerator, strategy_for_card

        notes = as_notes(texts_or_notes)
        card = getattr(self.model, "card_data", None)
        strategy = strategy_for_card(card) if tag_strategy == "auto" else tag_strategy
        category_set = self._category_set(categories)
        settings = GenerationSettings(n_tags=n_tags, num_beams=num_beams, tag_strategy=strategy,
                                      constrain_category=bool(category_set), max_new_tokens=max_new_tokens,
                                      batch_size=batch_size)
        generator = NoteGenerator(self.model, settings, category_set)
        with _progress(show_progress, len(notes), "tag") as advance:
            return [asdict(r) for r in generator.generate(notes, on_batch=advance)]

    def _category_set(self, categories) -> list[tuple[str, ...]]:
        from notellm.evaluation.generation import read_category_set

        levels = self.model.config.prompt.category_levels
        if categories is None:  # the training notes, as `notellm tag` finds them
            from notellm.models.folder import training_notes

            categories = training_notes(self.name) if Path(self.name).is_dir() else None
            if categories is None:
                return []
        if isinstance(categories, (str, Path)):
            return read_category_set(categories, levels)
        return sorted({tuple(p) for p in categories if p})

    def save_pretrained(self, path: str | Path) -> Path:
        """A model folder (full weights, LoRA merged) that `from_pretrained` and every `notellm` command load."""
        card = dict(getattr(self.model, "card_data", None) or {})
        extra = {k: v for k, v in card.items() if k not in ("format", "kind", "backbone", "config", "emb_token",
                                                            "weights")}
        return self.model.save(path, extra)

    def __repr__(self) -> str:
        m = self.meta
        return f"NoteLLM({self.name!r}, backbone={m['backbone']!r}, dim={m['dim']}, pooling={m['pooling']!r})"


def note_text(note: dict[str, Any] | str, config: Any = None) -> str:
    """The exact prompt string NoteLLM embeds, cut where its pooling reads: for the default `before_emb`
    pooling, everything before `[EMB]`, so the last token's hidden state is the note's vector. This is the input
    an exported sentence-transformers folder expects: `SentenceTransformer(folder).encode(note_text(note))`.

    `config`: a NoteLLMConfig, a notellm model folder, an exported folder, or a `NoteLLM`; default: the
    default prompt (Chinese template) and pooling."""
    from notellm.inference.embed import as_notes
    from notellm.models.notellm import NoteLLMConfig
    from notellm.models.prompts import EMB_TOKEN, TASK_EMBED, build_prompt

    cfg = _note_config(config) if config is not None else NoteLLMConfig()
    (row,) = as_notes([note])
    prefix = build_prompt(row, TASK_EMBED, cfg.prompt).prefix
    cut = prefix.index(EMB_TOKEN)
    if cfg.pooling == "before_emb":
        return prefix[:cut]
    if cfg.pooling in ("emb", "mean"):
        return prefix[: cut + len(EMB_TOKEN)]
    return prefix  # "last": the whole embedding prompt


def _note_config(config: Any):
    from notellm.models.notellm import NoteLLMConfig

    if isinstance(config, NoteLLMConfig):
        return config
    if isinstance(config, NoteLLM):
        return config.model.config
    if hasattr(config, "config") and isinstance(config.config, NoteLLMConfig):
        return config.config
    from notellm.inference.export import EXPORT_CARD

    folder = Path(config)
    for name in (EXPORT_CARD, "notellm.json"):
        if (folder / name).is_file():
            return NoteLLMConfig(**json.loads((folder / name).read_text(encoding="utf-8"))["config"])
    from notellm.errors import NotellmError

    raise NotellmError(f"{folder} is neither a notellm model folder nor an exported one (no notellm.json or "
                       f"{EXPORT_CARD})")


def _note_table(items: Sequence[dict[str, Any] | str]):
    """A Note table from note dicts or strings (missing fields empty), for the popularity model."""
    from notellm.data.schema import empty_note, notes_to_table
    from notellm.inference.embed import as_notes

    rows = []
    for i, note in enumerate(as_notes(items)):
        row = empty_note(str(note.get("note_id", i)))
        row.update({k: v for k, v in note.items() if k in row})
        rows.append(row)
    return notes_to_table(rows, "<notes>")


class PopularityModel:
    """A folder written by `notellm popularity train`: `predict(notes)` gives its target (e.g. WLAES) per note,
    as `notellm popularity predict` does."""

    def __init__(self, loaded, name: str):
        self._loaded = loaded
        self.name = name

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "PopularityModel":
        from notellm.inference.popularity import load_model

        return cls(load_model(path), str(path))

    @property
    def target(self) -> dict[str, Any]:
        """The target's name, formula and weights."""
        return dict(self._loaded.meta["target"])

    def predict(self, texts_or_notes: Sequence[dict[str, Any] | str], as_of: str | None = None,
                features: dict[str, float] | None = None, batch_size: int = 16, bf16: str = "auto",
                show_progress: bool = False) -> np.ndarray:
        """Scores, one per note. Notes are dicts (Note-table fields; `published_at` and author history feed the
        time features a model may use) or strings (the body). `features` sets a head feature for every note."""
        from notellm.inference.popularity import predict_table

        table = _note_table(texts_or_notes)
        with _progress(show_progress, table.num_rows, "predict") as advance:
            scores = predict_table(self._loaded, table, "<notes>", as_of=as_of, feature_overrides=features,
                                   bf16=bf16, batch_size=batch_size, on_batch=advance)
        return np.asarray(scores, dtype=float)


class ColdStartModel:
    """A folder written by `notellm coldstart sft|align`: a new post's score from its author's past posts."""

    def __init__(self, predictor, name: str):
        self._predictor = predictor
        self.name = name

    @classmethod
    def from_pretrained(cls, path: str | Path, *, bf16: bool | None = None, batch_size: int = 8) -> "ColdStartModel":
        from notellm.inference.coldstart import ColdStartPredictor

        return cls(ColdStartPredictor(str(path), bf16=bf16, batch_size=batch_size), str(path))

    @staticmethod
    def prompt(past_posts: Sequence[dict[str, Any]], past_scores: Sequence[float], new_post: dict[str, Any],
               user_id: str = "user", instructions: Any = None) -> str:
        """The instruction for one new post (the training prompt: `data.coldstart.PromptWriter`); posts are
        Note-table dicts, scores the author's past scores (ln(likes+1) by default)."""
        from notellm.data.coldstart import InstructionConfig, PromptWriter

        if len(past_posts) != len(past_scores):
            raise ValueError(f"{len(past_posts)} past posts but {len(past_scores)} scores")
        table = _note_table([*past_posts, new_post] if all("note_id" in p for p in [*past_posts, new_post])
                            else [dict(p, note_id=str(i)) for i, p in enumerate([*past_posts, new_post])])
        writer = PromptWriter(table, instructions or InstructionConfig())
        n = len(past_posts)
        return writer.prompt(user_id, list(range(n)), list(past_scores), n)

    def predict(self, prompts: Sequence[str]) -> list[float | None]:
        """The predicted score per prompt (None where the answer was not a number)."""
        if isinstance(prompts, str):
            raise TypeError("pass a list of prompts")
        return self._predictor.predict(list(prompts))

    def answers(self, prompts: Sequence[str]) -> list[str]:
        """The raw generated answers."""
        return self._predictor.answers(list(prompts))
