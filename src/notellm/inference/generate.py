"""Hashtag and category generation for notes, with a NoteLLM (trained with CSFT, or zero-shot) or any causal LM.

Each note gets two generations from its Note Compression Prompt (the tags are never in the input):
- hashtags: `tag_strategy="list"` asks for `n` topics in one answer ("生成笔记3个话题：") and splits it (the
  form CSFT trains with `hashtag_target: sample`, the paper's template); `tag_strategy="beams"` asks for one
  topic ("生成笔记1个话题：", the form of `hashtag_target: removed`, the reference code: one removed tag is the
  target) and keeps the first topic of each of the best beams, so n distinct tags come from a model that only
  ever learned to name one; `strategy_for_card` picks the form a model was trained on;
- category: constrained to a known category set (`CategoryTrie`: a prefix trie over the tokenised answers,
  used as `prefix_allowed_tokens_fn`; every output is a member of the set, so the ill-formed rate is 0 by
  construction) or free (then parsed, and possibly outside the set).

Notes are batched by prompt length and left-padded; greedy or beam search; `torch.inference_mode`.
Output: a Parquet table `note_id, tags, category, raw_tags, raw_category`, whose schema metadata (key
`notellm`) records the model and the decoding (constrained or free, strategy, n, beams, category set).

`KnnTagger` is the non-LLM baseline: the most frequent tags and category path of the k nearest training notes
(cosine over TF-IDF of character 2-4 grams of title + content).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import pyarrow as pa

from notellm.data.text import clean_text, normalize_tag
from notellm.errors import NotellmError
from notellm.models.backbone import contiguous_head_input
from notellm.models.prompts import TASK_CATEGORY, TASK_HASHTAG, PromptConfig, build_prompt, parse_answer_list

TAG_STRATEGIES = ("list", "beams")
META_KEY = b"notellm"
GENERATION_SCHEMA = pa.schema(
    [
        pa.field("note_id", pa.string(), nullable=False),
        pa.field("tags", pa.list_(pa.string())),
        pa.field("category", pa.list_(pa.string())),
        pa.field("raw_tags", pa.string()),
        pa.field("raw_category", pa.string()),
    ]
)

OnBatch = Callable[[int], None]


def strategy_for_card(card: dict[str, Any] | None) -> str:
    """The tag strategy matching how a model learned hashtags: "beams" after the reference code's one-removed-tag
    target, "list" after the paper's j-topics target and for untrained (zero-shot) models."""
    if card is None or card.get("objective") == "gcl":
        return "list"
    return "list" if card.get("hashtag_target", "removed") == "sample" else "beams"


@dataclass
class GenerationSettings:
    n_tags: int = 3
    num_beams: int = 1                  # 1 = greedy
    tag_strategy: str = "list"          # list | beams (see module doc)
    constrain_category: bool = True
    repetition_penalty: float = 1.0     # HF semantics: > 1 discourages any token already in prompt or output
    max_new_tokens: int = 32            # tags and free categories (a constrained category stops at the trie's end)
    batch_size: int = 16

    def __post_init__(self):
        if self.tag_strategy not in TAG_STRATEGIES:
            raise NotellmError(f"tag_strategy must be one of {TAG_STRATEGIES}, got '{self.tag_strategy}'")
        if self.n_tags < 1 or self.num_beams < 1 or self.batch_size < 1 or self.max_new_tokens < 1:
            raise NotellmError("n_tags, num_beams, batch_size and max_new_tokens must be >= 1")


@dataclass
class GeneratedNote:
    note_id: str
    tags: list[str]
    category: list[str]
    raw_tags: str
    raw_category: str


# ---- the category set and its trie -----------------------------------------------------------------------
def category_paths(notes: Sequence[dict[str, Any]], levels: int) -> list[tuple[str, ...]]:
    """The distinct category paths (first `levels` levels, blanks stripped) of notes, sorted."""
    paths = set()
    for note in notes:
        path = tuple(c for c in (clean_text(c) for c in (note.get("category") or [])[:levels]) if c)
        if path:
            paths.add(path)
    return sorted(paths)


class CategoryTrie:
    """Prefix trie over token ids of every allowed answer (each ends with eos).

    `allowed(generated)` lists the tokens that keep `generated` on a path of the trie. A sequence that already
    ended (or, impossibly, left the trie) may only continue with padding, which HF adds to finished rows anyway.
    """

    def __init__(self, sequences: Sequence[Sequence[int]], pad_id: int):
        if not sequences:
            raise NotellmError("the category set is empty: nothing to constrain the generation to")
        self.root: dict[int, dict] = {}
        for seq in sequences:
            node = self.root
            for token in seq:
                node = node.setdefault(int(token), {})
        self.pad_id = int(pad_id)
        self.depth = max(len(s) for s in sequences)

    @classmethod
    def from_paths(cls, tokenizer, paths: Sequence[Sequence[str]], prompt: PromptConfig) -> "CategoryTrie":
        """Tokenise each path exactly as CSFT tokenises the category answer (answer alone, then eos)."""
        eos = tokenizer.eos_token_id
        sequences = [tokenizer(category_answer(p, prompt), add_special_tokens=False)["input_ids"] + [eos]
                     for p in paths]
        return cls(sequences, tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos)

    def allowed(self, generated: Sequence[int]) -> list[int]:
        node = self.root
        for token in generated:
            node = node.get(int(token))
            if node is None:
                return [self.pad_id]
        return list(node) or [self.pad_id]


def category_answer(path: Sequence[str], prompt: PromptConfig) -> str:
    """The answer text the category task is trained on, built by the prompt code itself (never out of sync)."""
    cfg = PromptConfig(**{**asdict(prompt), "category_levels": len(path)})
    return build_prompt({"category": list(path)}, TASK_CATEGORY, cfg).answer


# ---- the generator ---------------------------------------------------------------------------------------
class NoteGenerator:
    """Generate hashtags and a category for notes with a NoteLLM (`.lm`, `.tokenizer`, `.config.prompt`)."""

    def __init__(self, model, settings: GenerationSettings | None = None,
                 categories: Sequence[Sequence[str]] | None = None):
        self.model = model
        self.settings = settings or GenerationSettings()
        self.prompt: PromptConfig = model.config.prompt
        self.tokenizer = model.tokenizer
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        contiguous_head_input(model.lm)
        self.categories = [tuple(p) for p in categories] if categories else []
        self._answers = {category_answer(p, self.prompt).strip(): p for p in self.categories}
        self.trie = None
        if self.settings.constrain_category:
            if not self.categories:
                raise NotellmError("constrained category decoding needs the category set (or use free decoding)")
            self.trie = CategoryTrie.from_paths(self.tokenizer, self.categories, self.prompt)

    @classmethod
    def from_lm(cls, lm, tokenizer, prompt: PromptConfig | None = None, max_length: int = 256,
                **kwargs) -> "NoteGenerator":
        """Any HF causal LM + tokenizer: wrapped as an untrained NoteLLM (adds `[EMB]`, which the prompt names)."""
        from notellm.models.notellm import NoteLLM, NoteLLMConfig

        config = NoteLLMConfig(backbone=getattr(lm.config, "_name_or_path", "") or "custom", dim=0,
                               max_length=max_length, prompt=prompt or PromptConfig())
        return cls(NoteLLM(lm, tokenizer, config), **kwargs)

    def describe(self) -> dict[str, Any]:
        s = self.settings
        return {"category_decoding": "constrained" if s.constrain_category else "free",
                "tag_strategy": s.tag_strategy, "n_tags": s.n_tags, "num_beams": s.num_beams,
                "repetition_penalty": s.repetition_penalty, "max_new_tokens": s.max_new_tokens,
                "category_levels": self.prompt.category_levels, "language": self.prompt.language,
                "categories": [list(p) for p in self.categories]}

    def generate(self, notes: Sequence[dict[str, Any]], on_batch: OnBatch | None = None,
                 tasks: Sequence[str] = ("tags", "category")) -> list[GeneratedNote]:
        """Tags and category for every note, in the notes' order (`tasks` may skip one: it stays empty)."""
        import torch

        unknown = set(tasks) - {"tags", "category"}
        if unknown:
            raise NotellmError(f"unknown generation task(s) {sorted(unknown)}: use tags, category")

        tag_prompts = [build_prompt(n, TASK_HASHTAG, self.prompt, n_tags=self._prompt_n()) for n in notes]
        cat_prompts = [build_prompt(n, TASK_CATEGORY, self.prompt) for n in notes]
        tag_ids = self._prefix_ids(tag_prompts)
        cat_ids = self._prefix_ids(cat_prompts)
        order = sorted(range(len(notes)), key=lambda i: len(cat_ids[i]))
        results: list[GeneratedNote | None] = [None] * len(notes)
        with torch.inference_mode():
            for start in range(0, len(order), self.settings.batch_size):
                idx = order[start: start + self.settings.batch_size]
                tag_texts = self._generate_tags([tag_ids[i] for i in idx]) if "tags" in tasks else [[]] * len(idx)
                cat_texts = self._generate_category([cat_ids[i] for i in idx]) if "category" in tasks \
                    else [""] * len(idx)
                for i, tags_raw, cat_raw in zip(idx, tag_texts, cat_texts):
                    results[i] = GeneratedNote(
                        note_id=str(notes[i]["note_id"]), tags=self._parse_tags(tags_raw),
                        category=self._parse_category(cat_raw),
                        raw_tags="\n".join(t.strip() for t in tags_raw), raw_category=cat_raw.strip())
                if on_batch:
                    on_batch(len(idx))
        return results  # type: ignore[return-value]

    # internals
    def _prompt_n(self) -> int:
        return 1 if self.settings.tag_strategy == "beams" else self.settings.n_tags

    def _prefix_ids(self, prompts) -> list[list[int]]:
        """Prompt token ids, truncated exactly as in training (NoteLLM.tokenize without answers)."""
        rows, _ = self.model.tokenize(prompts, with_answers=False)
        return rows

    def _left_pad(self, rows: list[list[int]]):
        import torch

        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r):] = torch.tensor(r)
            mask[i, width - len(r):] = 1
        device = self.model.lm.get_input_embeddings().weight.device
        return ids.to(device), mask.to(device)

    def _run(self, rows: list[list[int]], num_beams: int, num_return: int, max_new_tokens: int,
             allowed: Callable[[list[int]], list[int]] | None = None, stop: bool = True) -> list[str]:
        """Generate; return the decoded new text of every returned sequence (num_return per row, in order)."""
        ids, mask = self._left_pad(rows)
        width = ids.shape[1]
        tok = self.tokenizer
        kwargs: dict[str, Any] = dict(
            max_new_tokens=max_new_tokens, do_sample=False, num_beams=num_beams, num_return_sequences=num_return,
            repetition_penalty=self.settings.repetition_penalty, eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id, top_p=None, top_k=None, temperature=None)
        if allowed is not None:
            kwargs["prefix_allowed_tokens_fn"] = lambda _batch_id, seq: allowed(seq[width:].tolist())
        elif stop:
            # an untrained model seldom emits eos: stop at the end of the answer sentence instead
            from transformers import StoppingCriteriaList

            stops = ("。", "\n") if self.prompt.language == "zh" else ("\n",)
            kwargs["stopping_criteria"] = StoppingCriteriaList([_StopAfter(tok, width, stops)])
        out = self.model.lm.generate(input_ids=ids, attention_mask=mask, **kwargs)
        return tok.batch_decode(out[:, width:], skip_special_tokens=True)

    def _generate_tags(self, rows: list[list[int]]) -> list[list[str]]:
        s = self.settings
        if s.tag_strategy == "beams":
            beams = max(s.num_beams, 2 * s.n_tags)  # spare beams: several may name the same tag
            texts = self._run(rows, beams, beams, s.max_new_tokens)
            return [texts[i * beams:(i + 1) * beams] for i in range(len(rows))]
        return [[t] for t in self._run(rows, s.num_beams, 1, s.max_new_tokens)]

    def _generate_category(self, rows: list[list[int]]) -> list[str]:
        s = self.settings
        if self.trie is not None:
            return self._run(rows, s.num_beams, 1, self.trie.depth, allowed=self.trie.allowed)
        return self._run(rows, s.num_beams, 1, s.max_new_tokens)

    def _parse_category(self, text: str) -> list[str]:
        """The set's own path when the answer is one of the set's answers (a name may hold a comma), else split."""
        path = self._answers.get(text.strip())
        return list(path) if path is not None else parse_answer_list(text, self.prompt.language)

    def _parse_tags(self, texts: list[str]) -> list[str]:
        """Distinct tags (by normalised form), at most n: all of one answer (list) or the first of each beam."""
        per_text = [parse_answer_list(t, self.prompt.language) for t in texts]
        if self.settings.tag_strategy == "beams":
            per_text = [items[:1] for items in per_text]
        tags, seen = [], set()
        for items in per_text:
            for tag in items:
                key = normalize_tag(tag)
                if key and key not in seen:
                    seen.add(key)
                    tags.append(tag.strip().strip("#"))
        return tags[: self.settings.n_tags]


class _StopAfter:
    """Stop a row once its new text contains one of `stops`. (HF's `stop_strings` preprocesses the whole
    vocabulary on every `generate` call: seconds each with 150k-260k tokens; decoding a few new tokens is not.)"""

    def __init__(self, tokenizer, width: int, stops: Sequence[str]):
        self.tokenizer, self.width, self.stops = tokenizer, width, tuple(stops)

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        texts = self.tokenizer.batch_decode(input_ids[:, self.width:], skip_special_tokens=True)
        return torch.tensor([any(s in t for s in self.stops) for t in texts], device=input_ids.device)


# ---- the k-nearest-notes baseline ------------------------------------------------------------------------
class KnnTagger:
    """Most frequent tags and category path of the k nearest training notes.

    Nearest by cosine over TF-IDF of character 2-4 grams (word-boundary aware, sublinear tf) of title + content,
    fitted on the training notes. Ties in frequency are broken by the summed similarity of the neighbours that
    carry the tag, then alphabetically, so the result is deterministic.
    """

    def __init__(self, train_notes: Sequence[dict[str, Any]], k: int = 10, n_tags: int = 3, levels: int = 2,
                 ngram_range: tuple[int, int] = (2, 4)):
        from sklearn.feature_extraction.text import TfidfVectorizer

        if not train_notes:
            raise NotellmError("the k-NN baseline needs training notes")
        self.k, self.n_tags, self.levels = k, n_tags, levels
        self.tags = [list(n.get("hashtags") or []) for n in train_notes]
        self.paths = [tuple(c for c in (n.get("category") or [])[:levels] if c) for n in train_notes]
        self.vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=ngram_range, sublinear_tf=True,
                                          lowercase=True)
        self.matrix = self.vectorizer.fit_transform([self.text(n) for n in train_notes])

    @staticmethod
    def text(note: dict[str, Any]) -> str:
        return f"{clean_text(note.get('title'))} {clean_text(note.get('content'))}".strip()

    def describe(self) -> dict[str, Any]:
        return {"category_decoding": "knn-vote", "tag_strategy": "knn-vote", "n_tags": self.n_tags, "k": self.k,
                "category_levels": self.levels,
                "neighbours": "cosine over TF-IDF char_wb 2-4 grams of title + content"}

    def generate(self, notes: Sequence[dict[str, Any]], on_batch: OnBatch | None = None,
                 chunk: int = 256) -> list[GeneratedNote]:
        import numpy as np

        out: list[GeneratedNote] = []
        for start in range(0, len(notes), chunk):
            part = notes[start: start + chunk]
            sims = (self.vectorizer.transform([self.text(n) for n in part]) @ self.matrix.T).toarray()
            for note, row in zip(part, sims):
                top = np.argsort(-row, kind="stable")[: self.k]
                tags = self._vote([(t, row[j]) for j in top for t in self.tags[j]], key=normalize_tag)
                paths = self._vote([(self.paths[j], row[j]) for j in top if self.paths[j]], key=lambda p: p)
                out.append(GeneratedNote(str(note["note_id"]), tags[: self.n_tags],
                                         list(paths[0]) if paths else [], "", ""))
            if on_batch:
                on_batch(len(part))
        return out

    @staticmethod
    def _vote(items: list[tuple[Any, float]], key: Callable[[Any], Any]) -> list[Any]:
        count: Counter = Counter()
        weight: dict[Any, float] = {}
        first: dict[Any, Any] = {}
        for item, sim in items:
            k = key(item)
            if not k:
                continue
            count[k] += 1
            weight[k] = weight.get(k, 0.0) + float(sim)
            first.setdefault(k, item)
        ranked = sorted(count, key=lambda k: (-count[k], -weight[k], str(k)))
        return [first[k] for k in ranked]


# ---- loading models and writing results ------------------------------------------------------------------
def load_generation_model(model: str, bf16: bool = False):
    """A trained model folder, or `zero-shot:<backbone>`: the untrained backbone with the same prompt."""
    from notellm.inference.embed import load_model_for_embedding

    return load_model_for_embedding(model, bf16)


def generations_to_table(rows: Sequence[GeneratedNote], meta: dict[str, Any]) -> pa.Table:
    table = pa.table({name: [getattr(r, name) for r in rows] for name in GENERATION_SCHEMA.names},
                     schema=GENERATION_SCHEMA)
    return table.replace_schema_metadata({META_KEY: json.dumps(meta, ensure_ascii=False).encode("utf-8")})


def write_generations(rows: Sequence[GeneratedNote], meta: dict[str, Any], path: str | Path) -> Path:
    from notellm.io import write_parquet

    return write_parquet(generations_to_table(rows, meta), path)


def read_generations(path: str | Path) -> tuple[pa.Table, dict[str, Any]]:
    """The generation table and its metadata (model, decoding, category set)."""
    from notellm.data.schema import read_table_with

    table = read_table_with(path, "generation", ("note_id", "tags", "category"))
    raw = (table.schema.metadata or {}).get(META_KEY)
    return table, (json.loads(raw.decode("utf-8")) if raw else {})
