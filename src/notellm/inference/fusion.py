"""Hybrid retrieval: one ranking from several retrievers over the same candidates (dense NoteLLM + BM25).

Two fusions:
- `rrf`: reciprocal-rank fusion, sum over retrievers of 1 / (k + rank) (Cormack et al. 2009, k = 60). It needs
  no tuning and ignores how each retriever's scores are scaled, which is why it is the default: cosines sit in
  [-1, 1] while BM25 scores grow with the query's length.
- `weighted`: sum of weight_i * z_i, each retriever's scores z-scored over the candidates of the query (so the
  weight means the same for every query); the weight of the dense part is chosen on validation pairs
  (`evaluation.recall.choose_dense_weight`).

Ties get the worst rank they span (`rankdata(method="max")`), as ties count against in the recall protocol: a
retriever that cannot tell candidates apart (BM25 with no shared word) gives them all its lowest contribution.
"""

from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np

FUSIONS = ("rrf", "weighted")
RRF_K = 60


class _Scores(Protocol):
    def score(self, query_ids: Sequence[str], pool_ids: Sequence[str]) -> np.ndarray: ...


def reciprocal_rank_fusion(score_matrices: Sequence[np.ndarray], k: int = RRF_K) -> np.ndarray:
    """Fused scores [queries, candidates]: sum of 1 / (k + rank), rank 1 = each retriever's best candidate."""
    from scipy.stats import rankdata

    fused = np.zeros(np.shape(score_matrices[0]), dtype=np.float64)
    for scores in score_matrices:
        ranks = rankdata(-np.asarray(scores, dtype=np.float64), method="max", axis=1)
        fused += 1.0 / (k + ranks)
    return fused


def weighted_fusion(score_matrices: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """Fused scores: sum of weight * (scores z-scored over each query's candidates)."""
    if len(weights) != len(score_matrices):
        raise ValueError(f"{len(score_matrices)} retrievers but {len(weights)} weights")
    fused = np.zeros(np.shape(score_matrices[0]), dtype=np.float64)
    for scores, weight in zip(score_matrices, weights):
        scores = np.asarray(scores, dtype=np.float64)
        std = scores.std(axis=1, keepdims=True)
        fused += weight * (scores - scores.mean(axis=1, keepdims=True)) / np.where(std > 0, std, 1.0)
    return fused


def fuse(score_matrices: Sequence[np.ndarray], method: str = "rrf", weights: Sequence[float] | None = None,
         rrf_k: int = RRF_K) -> np.ndarray:
    if method == "rrf":
        return reciprocal_rank_fusion(score_matrices, rrf_k)
    if method == "weighted":
        return weighted_fusion(score_matrices, weights or [1.0] * len(score_matrices))
    raise ValueError(f"unknown fusion '{method}'; choose from {', '.join(FUSIONS)}")


class FusedScorer:
    """A Scorer (evaluation.recall's protocol) whose scores fuse those of other scorers on the same candidates."""

    def __init__(self, scorers: Sequence[_Scores], method: str = "rrf", weights: Sequence[float] | None = None,
                 rrf_k: int = RRF_K, name: str | None = None):
        if method not in FUSIONS:
            raise ValueError(f"unknown fusion '{method}'; choose from {', '.join(FUSIONS)}")
        self.scorers, self.method, self.weights, self.rrf_k = list(scorers), method, weights, rrf_k
        parts = " + ".join(getattr(s, "name", type(s).__name__) for s in self.scorers)
        detail = f"weights {', '.join(f'{w:g}' for w in weights)}" if method == "weighted" and weights else method
        self.name = name or f"hybrid {parts} ({detail})"

    def score(self, query_ids: Sequence[str], pool_ids: Sequence[str]) -> np.ndarray:
        return fuse([s.score(query_ids, pool_ids) for s in self.scorers], self.method, self.weights, self.rrf_k)


def fuse_hits(hit_lists: Sequence[Sequence[tuple[str, float]]], k: int, method: str = "rrf",
              weights: Sequence[float] | None = None, rrf_k: int = RRF_K) -> list[tuple[str, float]]:
    """Fuse ranked (note_id, score) lists of one query (each retriever's top candidates) into the top k.

    A candidate missing from a retriever's list gets that list's worst rank + 1 (RRF) or its lowest score
    (weighted): it was not in that retriever's top, so it ranks below everything that was."""
    ids = list(dict.fromkeys(note_id for hits in hit_lists for note_id, _ in hits))
    if not ids:
        return []
    column = {note_id: j for j, note_id in enumerate(ids)}
    matrices = []
    for hits in hit_lists:
        floor = min((s for _, s in hits), default=0.0) - 1.0
        row = np.full(len(ids), floor, dtype=np.float64)
        for note_id, score in hits:
            row[column[note_id]] = score
        matrices.append(row[None, :])
    fused = fuse(matrices, method, weights, rrf_k)[0]
    order = np.argsort(-fused, kind="stable")[:k]
    return [(ids[j], float(fused[j])) for j in order]


def hybrid_neighbours(index, query_vector: np.ndarray, query_text: str, lexical, k: int = 10,
                      exclude: set[str] = frozenset(), category: str | None = None, depth: int = 100,
                      method: str = "rrf", weights: Sequence[float] | None = None) -> list[tuple[str, float]]:
    """The k notes of a NoteIndex nearest to a query by dense + BM25 fused: each retriever's top `depth`
    candidates (after the same exclusions and category filter) are fused by `fuse_hits`.

    `lexical`: a BM25Scorer over (at least) the index's notes; notes without text take no part in BM25."""
    depth = max(depth, k)
    dense = index.neighbours_of_vector(query_vector, k=depth, exclude=exclude, category=category)
    categories = index.categories() if category is not None else None
    pool = tuple(i for i in index.ids if i in lexical.tokens and i not in exclude
                 and (categories is None or category in categories.get(i, ())))
    lexical_hits: list[tuple[str, float]] = []
    if pool:
        scores = lexical.score_texts([query_text], pool)[0]
        top = np.argsort(-scores, kind="stable")[:depth]
        lexical_hits = [(pool[j], float(scores[j])) for j in top if scores[j] > 0]  # 0: no shared word
    return fuse_hits([dense, lexical_hits], k, method, weights)
