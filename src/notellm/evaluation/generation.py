"""The papers' generation metrics, identical for every model and baseline.

Category (NoteLLM: Acc. and Ill.):
- accuracy per level: among notes whose true category has level k (within the generated levels), the share
  whose prediction has the same level k after `normalize_label` (blanks removed, lower case); `path`: the
  whole predicted path equals the true path cut to the generated levels;
- ill-formed rate: the share of predictions whose path is not in the category set (an empty answer counts).

Hashtags (NoteLLM: BLEU4, ROUGE1/2/L), on notes that have at least one true tag:
- text = each tag segmented with jieba (lower-cased, tokens without a word character dropped), the tags'
  tokens concatenated in order;
- BLEU-4: nltk `corpus_bleu`, uniform weights, `SmoothingFunction().method1` (epsilon 0.1 for empty n-gram
  counts), one reference per note. Corpus BLEU is the headline figure: tag answers are 2-8 tokens, so a
  sentence BLEU-4 is mostly smoothing (a note without a matching 4-gram scores ~0.1^(1/4) times its
  other precisions); the mean of sentence BLEU-4 (same smoothing) is reported too as `bleu4_sentence`;
- ROUGE-1/2/L: `rouge_score` F-measure averaged over notes, with a whitespace tokenizer over the jieba tokens
  (its default tokenizer keeps only [a-z0-9] and would drop every Chinese character);
- tag-set precision / recall / F1: a predicted tag counts when it equals a true tag after
  `notellm.data.text.normalize_tag`; micro-averaged (matches summed over notes), plus macro F1.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pyarrow as pa

from notellm.data.text import clean_text, normalize_tag
from notellm.errors import DataError

_WORD_CHAR = re.compile(r"\w")


# ---- text ------------------------------------------------------------------------------------------------
def segment(text: str) -> list[str]:
    """jieba tokens of `text`, lower-cased, without blanks and punctuation."""
    import jieba

    _quiet_jieba()
    return [t for t in jieba.lcut(clean_text(text).lower()) if _WORD_CHAR.search(t)]


def tag_tokens(tags: Sequence[str]) -> list[str]:
    """Each tag segmented on its own (no word spans two tags), in order."""
    return [tok for tag in tags for tok in segment(tag.strip().strip("#"))]


def normalize_label(label: str) -> str:
    return re.sub(r"\s+", "", clean_text(label)).lower()


def _quiet_jieba() -> None:
    import logging

    import jieba

    jieba.setLogLevel(logging.WARNING)


# ---- hashtag metrics -------------------------------------------------------------------------------------
def bleu4(hypotheses: Sequence[Sequence[str]], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """Corpus BLEU-4 and mean sentence BLEU-4 (nltk, smoothing method1) over token lists, one reference each."""
    from nltk.translate.bleu_score import SmoothingFunction, corpus_bleu, sentence_bleu

    if not hypotheses:
        return {"bleu4": math.nan, "bleu4_sentence": math.nan}
    smooth = SmoothingFunction().method1
    refs = [[list(r)] for r in references]
    hyps = [list(h) for h in hypotheses]
    corpus = corpus_bleu(refs, hyps, smoothing_function=smooth)
    sentence = [sentence_bleu(r, h, smoothing_function=smooth) if h else 0.0 for r, h in zip(refs, hyps)]
    return {"bleu4": float(corpus), "bleu4_sentence": float(sum(sentence) / len(sentence))}


class _WhitespaceTokenizer:
    """rouge_score tokenizer for text that is already tokenised (tokens joined by blanks)."""

    @staticmethod
    def tokenize(text: str) -> list[str]:
        return text.split()


def rouge(hypotheses: Sequence[Sequence[str]], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measure over notes (rouge_score on whitespace-joined tokens)."""
    from rouge_score import rouge_scorer

    if not hypotheses:
        return {"rouge1": math.nan, "rouge2": math.nan, "rougeL": math.nan}
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=_WhitespaceTokenizer())
    totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for hyp, ref in zip(hypotheses, references):
        scores = scorer.score(" ".join(ref), " ".join(hyp))
        for key in totals:
            totals[key] += scores[key].fmeasure
    return {k: v / len(hypotheses) for k, v in totals.items()}


def tag_prf(predicted: Sequence[Sequence[str]], gold: Sequence[Sequence[str]]) -> dict[str, float]:
    """Micro precision / recall / F1 of tag sets (exact match after normalize_tag), and macro F1 over notes."""
    hits = n_pred = n_gold = 0
    macro = []
    for pred, true in zip(predicted, gold):
        p = {normalize_tag(t) for t in pred} - {""}
        g = {normalize_tag(t) for t in true} - {""}
        match = len(p & g)
        hits, n_pred, n_gold = hits + match, n_pred + len(p), n_gold + len(g)
        macro.append(2 * match / (len(p) + len(g)) if (p or g) else 0.0)
    precision = hits / n_pred if n_pred else 0.0
    recall = hits / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"tag_precision": precision, "tag_recall": recall, "tag_f1": f1,
            "tag_macro_f1": sum(macro) / len(macro) if macro else math.nan}


# ---- category metrics ------------------------------------------------------------------------------------
def category_accuracy(predicted: Sequence[Sequence[str]], gold: Sequence[Sequence[str]],
                      levels: int) -> dict[str, Any]:
    """Accuracy per level (1-based keys), the whole-path accuracy, and how many notes each counts."""
    correct = [0] * levels
    counts = [0] * levels
    path_hits = path_n = 0
    for pred, true in zip(predicted, gold):
        p = [normalize_label(c) for c in pred]
        t = [normalize_label(c) for c in true[:levels] if normalize_label(c)]
        if not t:
            continue
        path_n += 1
        path_hits += p == t
        for k in range(len(t)):
            counts[k] += 1
            correct[k] += len(p) > k and p[k] == t[k]
    out: dict[str, Any] = {f"cat_acc_l{k + 1}": correct[k] / counts[k] if counts[k] else math.nan
                           for k in range(levels)}
    out["cat_acc_path"] = path_hits / path_n if path_n else math.nan
    out["n_category"] = path_n
    out["n_per_level"] = counts
    return out


def ill_formed_rate(predicted: Sequence[Sequence[str]], category_set: Sequence[Sequence[str]]) -> float:
    """Share of predicted paths that are not in the category set (after normalize_label)."""
    allowed = {tuple(normalize_label(c) for c in path) for path in category_set}
    if not predicted:
        return math.nan
    bad = sum(tuple(normalize_label(c) for c in pred) not in allowed for pred in predicted)
    return bad / len(predicted)


# ---- the report ------------------------------------------------------------------------------------------
@dataclass
class GenerationReport:
    name: str
    n_notes: int                     # predictions evaluated
    n_tagged: int                    # of which have at least one true tag (hashtag metrics)
    metrics: dict[str, float]
    n_per_level: list[int]
    decoding: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def write_json(self, path: str | Path) -> Path:
        from notellm.io import write_json

        return write_json(self.to_dict(), path)

    def table(self):
        return report_table([self])


METRIC_LABELS = [("bleu4", "BLEU-4"), ("rouge1", "ROUGE-1"), ("rouge2", "ROUGE-2"), ("rougeL", "ROUGE-L"),
                 ("tag_precision", "tag P"), ("tag_recall", "tag R"), ("tag_f1", "tag F1")]


def report_table(reports: Sequence[GenerationReport], title: str = "generation"):
    """One row per report: hashtag metrics, category accuracy per level and path, ill-formed rate."""
    from rich.table import Table

    levels = max((len(r.n_per_level) for r in reports), default=0)
    cols = METRIC_LABELS + [(f"cat_acc_l{k}", f"cat L{k}") for k in range(1, levels + 1)] + \
        [("cat_acc_path", "cat path"), ("ill_formed", "ill-formed")]
    table = Table(title=title)
    table.add_column("system")
    table.add_column("notes", justify="right")
    for _, label in cols:
        table.add_column(label, justify="right")
    for r in reports:
        cells = []
        for key, _ in cols:
            value = r.metrics.get(key)
            cells.append("-" if value is None or (isinstance(value, float) and math.isnan(value))
                         else f"{value:.3f}")
        table.add_row(r.name, f"{r.n_notes} ({r.n_tagged} tagged)", *cells)
    return table


def _category_set(notes: Sequence[dict[str, Any]], levels: int) -> list[tuple[str, ...]]:
    from notellm.inference.generate import category_paths

    return category_paths(notes, levels)


def evaluate_generation(predictions: pa.Table, notes: pa.Table, *, category_set: Sequence[Sequence[str]] | None = None,
                        levels: int | None = None, name: str = "model", decoding: dict[str, Any] | None = None,
                        pred_file: str = "<predictions>") -> GenerationReport:
    """Score a generation table (note_id, tags, category) against the Note table's hashtags and category.

    Every predicted note id must be in `notes` (else DataError naming the row). `levels`: category levels
    compared (default: the generated levels recorded in `decoding`, else the longest predicted path).
    `category_set`: for the ill-formed rate (default: the set recorded in `decoding`, else the paths of `notes`).
    """
    decoding = dict(decoding or {})
    truth = {r["note_id"]: r for r in notes.select(["note_id", "hashtags", "category"]).to_pylist()}
    rows = predictions.select(["note_id", "tags", "category"]).to_pylist()
    for i, row in enumerate(rows, start=1):
        if row["note_id"] not in truth:
            raise DataError(f"note id '{row['note_id']}' is not in the note table", file=pred_file, row=i,
                            field="note_id")
    pred_tags = [row["tags"] or [] for row in rows]
    pred_cats = [row["category"] or [] for row in rows]
    gold = [truth[row["note_id"]] for row in rows]
    if levels is None:
        levels = int(decoding.get("category_levels") or max((len(c) for c in pred_cats), default=1) or 1)
    if category_set is None:
        category_set = decoding.get("categories") or _category_set(gold, levels)

    tagged = [i for i, g in enumerate(gold) if g["hashtags"]]
    hyps = [tag_tokens(pred_tags[i]) for i in tagged]
    refs = [tag_tokens(gold[i]["hashtags"]) for i in tagged]
    metrics: dict[str, Any] = {}
    metrics.update(bleu4(hyps, refs))
    metrics.update(rouge(hyps, refs))
    metrics.update(tag_prf([pred_tags[i] for i in tagged], [gold[i]["hashtags"] for i in tagged]))
    cat = category_accuracy(pred_cats, [g["category"] or [] for g in gold], levels)
    n_per_level = cat.pop("n_per_level")
    cat.pop("n_category")
    metrics.update(cat)
    metrics["ill_formed"] = ill_formed_rate(pred_cats, category_set)
    metrics["tags_per_note"] = sum(len(t) for t in pred_tags) / len(pred_tags) if pred_tags else math.nan
    decoding.pop("categories", None)  # the set is long; the report keeps its size
    decoding["category_set_size"] = len(category_set)
    return GenerationReport(name=name, n_notes=len(rows), n_tagged=len(tagged), metrics=metrics,
                            n_per_level=n_per_level, decoding=decoding)


def evaluate_files(pred_path: str | Path, notes_path: str | Path, categories: str | Path | None = None,
                   levels: int | None = None) -> GenerationReport:
    """`notellm eval generation`: read the generation table and the Note table, score them."""
    from notellm.data.schema import read_notes
    from notellm.inference.generate import read_generations

    predictions, meta = read_generations(pred_path)
    notes = read_notes(notes_path)
    category_set = read_category_set(categories, levels or int(meta.get("category_levels") or 2)) \
        if categories else None
    name = str(meta.get("model") or Path(pred_path).stem)
    return evaluate_generation(predictions, notes, category_set=category_set, levels=levels, name=name,
                               decoding=meta, pred_file=str(pred_path))


def read_category_set(path: str | Path, levels: int) -> list[tuple[str, ...]]:
    """A category set: a Note table (its category paths cut to `levels`) or a JSON list of paths."""
    from notellm.data.schema import read_notes
    from notellm.io import read_json

    path = Path(path)
    if not path.exists():
        raise DataError("category set file does not exist", file=str(path))
    if path.suffix == ".json":
        data = read_json(path)
        if not isinstance(data, list) or not all(isinstance(p, list) and all(isinstance(c, str) for c in p)
                                                 for p in data):
            raise DataError("expected a JSON list of category paths (lists of strings)", file=str(path))
        return sorted({tuple(p) for p in data if p})
    table = read_notes(path).select(["category"])
    return _category_set(table.to_pylist(), levels)
