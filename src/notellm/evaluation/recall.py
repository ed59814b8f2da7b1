"""I2I Recall@K exactly as NoteLLM measures it (reference `eval_recall.py`; BENCHMARKS.md ml-i2i-v1).

Protocol:
1. Sort the test pairs by descending score (ties keep file order) and keep them greedily so that no note
   appears in two kept pairs.
2. Queries = the first ends of the kept pairs; each query's partner is its second end.
3. Pool = the test notes (every note in the test pairs, or a given candidate list) except the queries.
4. Score every pool note against each query (cosine for vectors, or any asymmetric score such as BM25).
5. The partner's rank = the number of OTHER pool notes whose score is >= the partner's score, so ties count
   against the model (a constant scorer ranks every partner last). R@K = share of queries with rank < K.

Buckets (the paper's Table 3 and the reference's short/long query and target files), on the same pool:
- exposure of the query note: impressions, or likes when the table has no impressions. low = value <= the
  30th percentile of the queries' values, high = value > the 90th percentile (the paper: low exposure is the
  bottom 30% of notes, high the top 10%); configurable. Queries without a value are left out of both.
- length (characters of the cleaned content) of the query note and of its partner: short = length <= the
  median of the queries' (resp. partners') lengths, long = above it; the quantile is configurable.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence, Union, runtime_checkable

import numpy as np
import pyarrow as pa

from notellm.errors import DataError

DEFAULT_KS = (10, 50, 100, 1_000, 10_000, 100_000)
PROTOCOL = ("NoteLLM I2I: pairs by descending score, kept greedily (no note twice); pool = test notes minus "
            "queries; rank = other pool notes scoring >= the partner (ties count against); R@K = share rank < K")
_SCORE_BLOCK = 1 << 24  # scores computed per block of queries: at most ~16M floats (64 MB) at a time


# ---- scorers ----------------------------------------------------------------------------------------------
@runtime_checkable
class Scorer(Protocol):
    """Scores pool notes for queries: `score(query_ids, pool_ids)` -> float array [len(query_ids), len(pool_ids)]."""

    def score(self, query_ids: Sequence[str], pool_ids: Sequence[str]) -> np.ndarray: ...


class VectorScorer:
    """Cosine similarity of note vectors (dense numpy or scipy sparse, e.g. TF-IDF); rows are L2-normalised here,
    so vectors that are already normalised are unchanged. An all-zero vector scores 0 against everything."""

    def __init__(self, ids: Sequence[str], vectors: Any, name: str = "vectors"):
        ids = [str(i) for i in ids]
        if len(ids) != vectors.shape[0]:
            raise DataError(f"{len(ids)} note ids but {vectors.shape[0]} vectors")
        self.row = {note_id: i for i, note_id in enumerate(ids)}
        if len(self.row) != len(ids):
            raise DataError("note ids of the vectors are not unique")
        self.vectors = _l2_normalise(vectors)
        self.name = name
        self._pool_ref: Sequence[str] | None = None
        self._pool_key: tuple[str, ...] | None = None
        self._pool_t = None

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def rows(self, ids: Sequence[str]) -> np.ndarray:
        missing = [i for i in ids if i not in self.row]
        if missing:
            raise DataError(f"{len(missing)} note(s) have no vector, e.g. {missing[:3]}", field="note_id")
        return np.fromiter((self.row[i] for i in ids), dtype=np.int64, count=len(ids))

    def score(self, query_ids: Sequence[str], pool_ids: Sequence[str]) -> np.ndarray:
        # the pool is the same for every block of queries: gather and transpose it once (a tuple cannot change,
        # so the same tuple object skips the comparison)
        same_tuple = isinstance(pool_ids, tuple) and pool_ids is self._pool_ref
        if not same_tuple and tuple(pool_ids) != self._pool_key:
            pool_t = self.vectors[self.rows(pool_ids)].T
            self._pool_t = pool_t.tocsr() if hasattr(pool_t, "tocsr") else np.ascontiguousarray(pool_t)
            self._pool_key = tuple(pool_ids)
        self._pool_ref = pool_ids
        scores = self.vectors[self.rows(query_ids)] @ self._pool_t
        return np.asarray(scores.todense() if hasattr(scores, "todense") else scores, dtype=np.float64)


def _l2_normalise(vectors: Any) -> Any:
    if hasattr(vectors, "tocsr"):  # scipy sparse
        from sklearn.preprocessing import normalize

        return normalize(vectors.tocsr().astype(np.float64), norm="l2", copy=True)
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2:
        raise DataError(f"vectors must be a 2-d array [n, dim], got shape {vectors.shape}")
    if not np.isfinite(vectors).all():
        raise DataError("vectors contain NaN or infinite values")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


ScoreSource = Union[Scorer, tuple, Mapping[str, Any]]


def as_scorer(source: ScoreSource) -> Scorer:
    """A Scorer from a Scorer, an `(ids, vectors)` pair, or a `{note_id: vector}` mapping."""
    if isinstance(source, Scorer):
        return source
    if isinstance(source, tuple) and len(source) == 2:
        return VectorScorer(source[0], source[1])
    if isinstance(source, Mapping):
        ids = list(source)
        return VectorScorer(ids, np.stack([np.asarray(source[i], dtype=np.float32) for i in ids]) if ids
                            else np.zeros((0, 1), np.float32))
    raise TypeError(f"cannot score with {type(source).__name__}: give (ids, vectors), a dict or a Scorer")


# ---- the protocol -----------------------------------------------------------------------------------------
def dedupe_pairs(pairs: Sequence[tuple[str, str, float]]) -> list[int]:
    """Indices of the pairs kept: by descending score (stable: ties keep input order), a pair is kept only if
    neither of its notes is already in a kept pair."""
    order = sorted(range(len(pairs)), key=lambda i: -pairs[i][2])
    used: set[str] = set()
    kept = []
    for i in order:
        a, b, _ = pairs[i]
        if a in used or b in used:
            continue
        used.update((a, b))
        kept.append(i)
    return kept


def partner_ranks(query_ids: Sequence[str], partner_ids: Sequence[str], pool_ids: Sequence[str],
                  scores: ScoreSource) -> np.ndarray:
    """0-based rank of each query's partner in the pool: the number of other pool notes (not the partner, not
    the query itself) scoring >= the partner. Ties count against."""
    if len(query_ids) != len(partner_ids):
        raise ValueError(f"{len(query_ids)} queries but {len(partner_ids)} partners")
    same = [q for q, p in zip(query_ids, partner_ids) if q == p]
    if same:
        raise DataError(f"{len(same)} quer(ies) are their own partner, e.g. {same[:3]}", field="note_id")
    pool = tuple(dict.fromkeys(str(p) for p in pool_ids))  # duplicates would count twice against the partner
    column = {note_id: j for j, note_id in enumerate(pool)}
    missing = [p for p in partner_ids if p not in column]
    if missing:
        raise DataError(f"{len(missing)} partner note(s) are not in the candidate pool, e.g. {missing[:3]}",
                        field="note_id")
    scorer = as_scorer(scores)
    ranks = np.empty(len(query_ids), dtype=np.int64)
    block = max(1, _SCORE_BLOCK // max(1, len(pool)))
    for start in range(0, len(query_ids), block):
        queries = [str(q) for q in query_ids[start:start + block]]
        s = np.asarray(scorer.score(queries, pool), dtype=np.float64)
        if s.shape != (len(queries), len(pool)):
            raise ValueError(f"scorer returned shape {s.shape}, expected {(len(queries), len(pool))}")
        if np.isnan(s).any():
            raise DataError("the scorer returned NaN scores")
        rows = np.arange(len(queries))
        partner_cols = np.array([column[p] for p in partner_ids[start:start + block]])
        partner_score = s[rows, partner_cols]
        self_cols = np.array([column.get(q, -1) for q in queries])
        has_self = self_cols >= 0
        s[rows[has_self], self_cols[has_self]] = -np.inf  # a query never competes with its own partner
        # -1: the partner itself is always counted by `>=`
        ranks[start:start + len(queries)] = (s >= partner_score[:, None]).sum(axis=1) - 1
    return ranks


def recall_from_ranks(ranks: np.ndarray, ks: Iterable[int]) -> dict[int, float]:
    ranks = np.asarray(ranks)
    return {int(k): float((ranks < k).mean()) if len(ranks) else float("nan") for k in ks}


def recall_at_k(query_ids: Sequence[str], partner_ids: Sequence[str], pool_ids: Sequence[str],
                scores: ScoreSource, ks: Iterable[int] = (10, 50, 100)) -> dict[int, float]:
    """R@K for each K: the share of queries whose partner ranks < K among `pool_ids` (ties count against).

    `scores`: `(ids, vectors)`, `{note_id: vector}` (cosine), or a Scorer (e.g. BM25)."""
    return recall_from_ranks(partner_ranks(query_ids, partner_ids, pool_ids, scores), ks)


def choose_dense_weight(query_ids: Sequence[str], partner_ids: Sequence[str], pool_ids: Sequence[str],
                        dense: ScoreSource, lexical: Scorer, ks: Iterable[int] = (10, 50, 100),
                        grid: Sequence[float] = tuple(np.linspace(0, 1, 11))) -> tuple[float, dict[float, float]]:
    """The weight of the dense scores in a weighted dense + lexical fusion that maximises mean R@K on
    validation pairs (never the test pairs): (best weight, mean recall per weight tried)."""
    from notellm.inference.fusion import FusedScorer

    dense = as_scorer(dense)
    ks = list(ks)
    tried = {}
    for w in grid:
        fused = FusedScorer([dense, lexical], "weighted", [float(w), 1.0 - float(w)])
        recall = recall_at_k(query_ids, partner_ids, pool_ids, fused, ks)
        tried[round(float(w), 4)] = float(np.mean(list(recall.values())))
    best = max(tried, key=lambda w: (tried[w], -abs(w - 0.5)))  # ties: the more even mix
    return best, tried


def default_ks(pool_size: int, ks: Iterable[int] = DEFAULT_KS) -> list[int]:
    """The standard K that a pool of this size allows (K < pool size; R@K is 1 by definition otherwise)."""
    return [k for k in ks if k < pool_size] or [max(1, pool_size - 1)]


# ---- report -----------------------------------------------------------------------------------------------
@dataclass
class RecallResult:
    """R@K of one group of queries, with the binomial standard error sqrt(p(1-p)/n)."""

    n_queries: int
    recall: dict[int, float]
    stderr: dict[int, float]
    rule: str = ""

    @classmethod
    def from_ranks(cls, ranks: np.ndarray, ks: Sequence[int], rule: str = "") -> "RecallResult":
        recall = recall_from_ranks(ranks, ks)
        n = len(ranks)
        stderr = {k: math.sqrt(p * (1 - p) / n) if n else float("nan") for k, p in recall.items()}
        return cls(n, recall, stderr, rule)


@dataclass
class RecallConfig:
    ks: list[int] | None = None          # None: DEFAULT_KS that are < pool size
    buckets: bool = True
    low_exposure: float = 0.30           # low = bottom 30% of the queries' exposure (paper Table 3)
    high_exposure: float = 0.10          # high = top 10%
    length_quantile: float = 0.5         # short <= this quantile of content length < long


@dataclass
class RecallReport:
    ks: list[int]
    pool_size: int
    n_pairs: int                         # test pairs read
    n_queries: int                       # pairs kept after greedy de-duplication
    overall: RecallResult
    buckets: dict[str, RecallResult] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)   # bucket -> why it is not reported
    scorer: str = ""
    protocol: str = PROTOCOL
    per_query: list[dict[str, Any]] = field(default_factory=list)  # query, partner, rank

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def write_json(self, path: str | Path) -> Path:
        from notellm.io import write_json

        return write_json(self.to_dict(), path)

    def table(self):
        """A rich Table: one row for all queries, one per bucket (R@K ± its standard error); rules below."""
        from rich.table import Table

        groups = {"all": self.overall, **self.buckets}
        table = Table(title=f"I2I Recall@K ({self.scorer}; pool {self.pool_size:,}, {self.n_queries:,} queries "
                            f"from {self.n_pairs:,} test pairs)",
                      caption="\n".join(f"{name}: {r.rule}" for name, r in groups.items() if name != "all"),
                      caption_justify="left")
        table.add_column("queries", no_wrap=True)
        table.add_column("n", justify="right")
        for k in self.ks:
            table.add_column(f"R@{k}", justify="right", no_wrap=True)
        for name, result in groups.items():
            table.add_row(name, f"{result.n_queries:,}",
                          *(f"{result.recall[k]:.3f}±{result.stderr[k]:.3f}" for k in self.ks))
        return table


# ---- the whole evaluation from tables ---------------------------------------------------------------------
EmbedFn = Callable[[list[dict[str, Any]]], Any]


def read_test_pairs(pairs: pa.Table | str | Path) -> tuple[list[tuple[str, str, float]], int]:
    """(pairs, skipped self-pairs) from a Pair table (`note_a`, `note_b`, `score`) or its Parquet path."""
    source = "<table>"
    if not isinstance(pairs, pa.Table):
        import pyarrow.parquet as pq

        source = str(pairs)
        if not Path(pairs).exists():
            raise DataError("pair table does not exist", file=source)
        pairs = pq.read_table(pairs)
    missing = [c for c in ("note_a", "note_b", "score") if c not in pairs.column_names]
    if missing:
        raise DataError(f"not a pair table: missing column(s) {missing}", file=source)
    rows, skipped = [], 0
    for i, (a, b, s) in enumerate(zip(*(pairs.column(c).to_pylist() for c in ("note_a", "note_b", "score"))), 1):
        for name, value in (("note_a", a), ("note_b", b), ("score", s)):
            if value is None or (name == "score" and not math.isfinite(float(value))):
                raise DataError(f"{name} is missing or not a number", file=source, row=i, field=name)
        if str(a) == str(b):
            skipped += 1  # a note paired with itself says nothing about recall
            continue
        rows.append((str(a), str(b), float(s)))
    return rows, skipped


def _note_rows(notes: pa.Table | str | Path, wanted: set[str]) -> dict[str, dict[str, Any]]:
    if not isinstance(notes, pa.Table):
        from notellm.data.schema import read_notes

        notes = read_notes(notes)
    cols = [c for c in ("note_id", "title", "content", "hashtags", "category", "image_paths",
                        "likes", "impressions") if c in notes.column_names]
    ids = notes.column("note_id").to_pylist()
    keep = [i for i, note_id in enumerate(ids) if str(note_id) in wanted]
    rows = notes.select(cols).take(pa.array(keep, type=pa.int64())).to_pylist()
    return {str(r["note_id"]): r for r in rows}


def _exposure_buckets(queries: list[str], notes: dict[str, dict], cfg: RecallConfig
                      ) -> tuple[dict[str, np.ndarray], dict[str, str], str]:
    """Boolean masks over queries for low / high exposure, the rules, or why there are none."""
    for column in ("impressions", "likes"):
        values = [notes[q].get(column) for q in queries]
        if any(v is not None for v in values):
            break
    else:
        return {}, {}, "the notes table has neither impressions nor likes"
    known = np.array([v is not None for v in values])
    x = np.array([v if v is not None else np.nan for v in values], dtype=np.float64)
    lo = float(np.quantile(x[known], cfg.low_exposure))
    hi = float(np.quantile(x[known], 1 - cfg.high_exposure))
    masks = {"exposure:low": known & (x <= lo), "exposure:high": known & (x > hi)}
    unknown = f"; {int((~known).sum())} without a value left out" if not known.all() else ""
    rules = {"exposure:low": f"query {column} <= {lo:g} (bottom {cfg.low_exposure:.0%}){unknown}",
             "exposure:high": f"query {column} > {hi:g} (top {cfg.high_exposure:.0%}){unknown}"}
    return masks, rules, ""


def _length_buckets(role: str, ids: list[str], notes: dict[str, dict], cfg: RecallConfig
                    ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    from notellm.data.text import clean_text

    lengths = np.array([len(clean_text(notes[i].get("content"))) for i in ids], dtype=np.float64)
    cut = float(np.quantile(lengths, cfg.length_quantile))
    return ({f"{role}:short": lengths <= cut, f"{role}:long": lengths > cut},
            {f"{role}:short": f"{role} note content <= {cut:g} chars", f"{role}:long": f"{role} note content > {cut:g} chars"})


def _resolve_scores(embeddings: ScoreSource | EmbedFn, notes: dict[str, dict], order: list[str]) -> tuple[Scorer, str]:
    if isinstance(embeddings, Scorer) or isinstance(embeddings, (tuple, Mapping)):
        return as_scorer(embeddings), getattr(embeddings, "name", "embeddings")
    if callable(embeddings):  # embed_fn(list of note dicts) -> vectors, or a Scorer built on those notes
        missing = [i for i in order if i not in notes]
        if missing:
            raise DataError(f"{len(missing)} test note(s) are not in the notes table, e.g. {missing[:3]}",
                            field="note_id")
        out = embeddings([notes[i] for i in order])
        if isinstance(out, Scorer):
            return out, getattr(out, "name", getattr(embeddings, "__name__", "scorer"))
        return VectorScorer(order, out), getattr(embeddings, "__name__", "embed_fn")
    raise TypeError(f"cannot score with {type(embeddings).__name__}")


def evaluate_recall(notes_table: pa.Table | str | Path | None, test_pairs_table: pa.Table | str | Path,
                    embeddings: ScoreSource | EmbedFn, ks: Sequence[int] | None = None, buckets: bool = True,
                    pool: Iterable[str] | None = None, config: RecallConfig | None = None,
                    name: str | None = None) -> RecallReport:
    """The NoteLLM I2I protocol on a Pair table (see the module doc).

    embeddings: `(ids, vectors)`, `{id: vector}`, a Scorer, or `embed_fn(note dicts) -> vectors | Scorer`
    (called once on the queries + pool, in that order). pool: candidate note ids (default: every note of the
    test pairs); queries are always removed from it. The notes table is needed for buckets and embed_fn.
    """
    cfg = replace(config or RecallConfig(), **({"ks": list(ks)} if ks is not None else {}))
    pairs, _ = read_test_pairs(test_pairs_table)
    if not pairs:
        raise DataError("no test pairs (after removing pairs of a note with itself)")
    kept = dedupe_pairs(pairs)
    queries = [pairs[i][0] for i in kept]
    partners = [pairs[i][1] for i in kept]
    query_set = set(queries)
    candidates = pool if pool is not None else (n for a, b, _ in pairs for n in (a, b))
    pool_ids = [n for n in dict.fromkeys(str(c) for c in candidates) if n not in query_set]
    wanted = query_set | set(pool_ids)
    notes = _note_rows(notes_table, wanted) if notes_table is not None and (buckets or callable(embeddings)) else {}
    scorer, scorer_name = _resolve_scores(embeddings, notes, queries + pool_ids)
    ranks = partner_ranks(queries, partners, pool_ids, scorer)
    report_ks = list(cfg.ks) if cfg.ks else default_ks(len(pool_ids))
    report = RecallReport(
        ks=report_ks, pool_size=len(pool_ids), n_pairs=len(pairs), n_queries=len(queries),
        overall=RecallResult.from_ranks(ranks, report_ks, "every kept test pair"), scorer=name or scorer_name,
        per_query=[{"query": q, "partner": p, "rank": int(r)} for q, p, r in zip(queries, partners, ranks)],
    )
    if buckets and cfg.buckets:
        _add_buckets(report, ranks, queries, partners, notes, cfg)
    return report


def _add_buckets(report: RecallReport, ranks: np.ndarray, queries: list[str], partners: list[str],
                 notes: dict[str, dict], cfg: RecallConfig) -> None:
    missing = [n for n in queries + partners if n not in notes]
    if missing:
        report.skipped["all buckets"] = (f"{len(missing)} test note(s) are not in the notes table "
                                         f"(e.g. {missing[:3]})")
        return
    masks, rules, why = _exposure_buckets(queries, notes, cfg)
    if why:
        report.skipped["exposure"] = why
    for role, ids in (("query", queries), ("partner", partners)):
        m, r = _length_buckets(role, ids, notes, cfg)
        masks.update(m)
        rules.update(r)
    for name, mask in masks.items():
        report.buckets[name] = RecallResult.from_ranks(ranks[mask], report.ks, rules[name])
