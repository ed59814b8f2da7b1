"""Lexical retrieval: the note text that word-based methods read, its tokens (jieba for Chinese runs) and Okapi
BM25. It sits below evaluation/ because `recommend` and the server fuse BM25 with dense vectors at query time
(inference/fusion.py), and evaluation/baselines.py scores it under the recall protocol.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Sequence

import numpy as np

from notellm.data.text import clean_text

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
        return self._score_tokens([self.tokens[i] for i in query_ids], pool_ids)

    def score_texts(self, texts: Sequence[str], pool_ids: Sequence[str]) -> np.ndarray:
        """BM25 of free texts (e.g. a new note's `note_text`) against pool notes of this collection."""
        missing = [i for i in pool_ids if i not in self.tokens]
        if missing:
            from notellm.errors import DataError

            raise DataError(f"{len(missing)} note(s) have no text for BM25, e.g. {missing[:3]}", field="note_id")
        return self._score_tokens([tokenize(t) for t in texts], pool_ids)

    def _score_tokens(self, query_tokens: list[list[str]], pool_ids: Sequence[str]) -> np.ndarray:
        if tuple(pool_ids) != self._pool_key:
            self._index_pool(pool_ids)
        queries = self._counter.transform(query_tokens)  # unseen terms score 0
        return np.asarray((queries @ self._weights_t).todense(), dtype=np.float64)


