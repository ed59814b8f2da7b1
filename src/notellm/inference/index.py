"""A FAISS vector index of note embeddings, with the note ids and embedding metadata beside it.

    index_dir/index.faiss   the FAISS index (inner product on L2-normalised vectors = cosine)
    index_dir/index.json    ids (row order), dim, metric, kind, the index config, the embedding metadata
    index_dir/notes.parquet optional: note_id, title, category of the indexed notes (titles in tables,
                            the category filter of `neighbours_of`)

Kinds: `flat` (exact, IndexFlatIP; the default), `hnsw` (IndexHNSWFlat: graph search, no training),
`ivfpq` (inverted lists + product quantisation: compact, trained on the vectors, approximate).
The folder is written into a temporary folder beside it and renamed into place whole (`notellm.io.atomic_dir`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from notellm.errors import ConfigError, DataError
from notellm.io import atomic_dir, read_json

KINDS = ("flat", "hnsw", "ivfpq")
INDEX_FILE, META_FILE, NOTES_FILE = "index.faiss", "index.json", "notes.parquet"
METRIC = "cosine (inner product of L2-normalised vectors)"


@dataclass
class IndexConfig:
    kind: str = "flat"
    hnsw_m: int = 32                  # graph degree: more = better recall, more memory
    hnsw_ef_construction: int = 80
    hnsw_ef_search: int = 64          # candidates searched per query: the recall/latency knob
    ivf_nlist: int = 0                # inverted lists; 0 = about 4 * sqrt(n), at least 39 training vectors each
    ivf_nprobe: int = 16              # lists visited per query
    pq_m: int = 0                     # sub-quantisers; 0 = dim / 4 (must divide dim)
    pq_nbits: int = 8
    train_size: int = 0               # ivfpq training sample; 0 = 50 per centroid (IVF and PQ), at most n
    seed: int = 0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ConfigError(f"index kind must be one of {KINDS}, got '{self.kind}'")


def _as_matrix(vectors: Any, what: str) -> np.ndarray:
    x = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise DataError(f"{what} must be a 2-d array [n, dim], got shape {x.shape}")
    if not np.isfinite(x).all():
        raise DataError(f"{what} contain NaN or infinite values")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)  # cosine; vectors that are already unit length are unchanged


def _make_faiss_index(x: np.ndarray, cfg: IndexConfig):
    import faiss

    n, d = x.shape
    if cfg.kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif cfg.kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = cfg.hnsw_ef_construction
        index.hnsw.efSearch = cfg.hnsw_ef_search
    else:
        pq_m = cfg.pq_m or max(1, d // 4)
        if d % pq_m:
            raise ConfigError(f"pq_m={pq_m} must divide the vector dimension {d}")
        need = 39 * (1 << cfg.pq_nbits)  # faiss wants ~39 training points per centroid
        if n < need:
            raise DataError(f"IVF-PQ with pq_nbits={cfg.pq_nbits} needs at least {need} vectors to train, got {n}; "
                            f"use kind=flat or hnsw, or lower pq_nbits")
        nlist = cfg.ivf_nlist or int(4 * math.sqrt(n))
        nlist = max(1, min(nlist, n // 39))
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFPQ(quantizer, d, nlist, pq_m, cfg.pq_nbits, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = cfg.seed
        index.pq.cp.seed = cfg.seed
        index.train(_training_sample(x, cfg.train_size or 50 * max(nlist, 1 << cfg.pq_nbits), cfg.seed))
        index.nprobe = min(cfg.ivf_nprobe, nlist)
    index.add(x)
    return index


def _training_sample(x: np.ndarray, size: int, seed: int) -> np.ndarray:
    """A seeded random subset: k-means cost grows with the sample, and ~50 points per centroid suffice."""
    if size >= len(x):
        return x
    rows = np.sort(np.random.default_rng(seed).choice(len(x), size, replace=False))
    return x[rows]


class NoteIndex:
    """Note ids + a FAISS index over their embeddings (+ optionally the notes' titles and categories)."""

    def __init__(self, ids: Sequence[str], index, meta: dict[str, Any], config: IndexConfig,
                 notes: pa.Table | None = None, path: str | Path | None = None):
        self.ids = [str(i) for i in ids]
        self.row = {note_id: i for i, note_id in enumerate(self.ids)}
        if len(self.row) != len(self.ids):
            raise DataError("note ids of the index are not unique")
        if index.ntotal != len(self.ids):
            raise DataError(f"the index holds {index.ntotal} vectors but {len(self.ids)} note ids",
                            file=str(path) if path else None)
        self.index, self.meta, self.config, self.path = index, dict(meta), config, path
        self.notes = notes
        self._categories: dict[str, list[str]] | None = None
        self._titles: dict[str, str] | None = None

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def __len__(self) -> int:
        return len(self.ids)

    # ---- queries ----
    def check_dim(self, dim: int, what: str = "query vectors") -> None:
        if dim != self.dim:
            raise DataError(f"{what} have dimension {dim} but the index{f' {self.path}' if self.path else ''} "
                            f"holds vectors of dimension {self.dim} (model {self.meta.get('model', '?')})")

    def search(self, vectors: Any, k: int = 10) -> tuple[list[list[str]], np.ndarray]:
        """The k nearest notes of each query vector: (ids per query, cosine scores [n, k]); fewer than k ids
        (and -inf scores) when the index has fewer notes than k or an approximate index finds fewer."""
        x = _as_matrix(vectors, "query vectors")
        self.check_dim(x.shape[1])
        k = max(1, min(int(k), len(self)))
        scores, rows = self.index.search(x, k)
        ids = [[self.ids[r] for r in row if r >= 0] for row in rows]
        return ids, np.where(rows >= 0, scores, -np.inf)

    def vector_of(self, note_id: str) -> np.ndarray:
        """The stored vector of an indexed note (approximate for ivfpq, which keeps only codes)."""
        if note_id not in self.row:
            raise DataError(f"note id '{note_id}' is not in the index ({len(self):,} notes"
                            f"{f' in {self.path}' if self.path else ''})", field="note_id")
        if self.config.kind == "ivfpq" and not getattr(self, "_direct_map", False):
            self.index.make_direct_map()
            self._direct_map = True
        return self.index.reconstruct(self.row[note_id])

    def neighbours_of(self, note_id: str, k: int = 10, exclude_self: bool = True,
                      category: str | None = None) -> list[tuple[str, float]]:
        """The k notes nearest to an indexed note, as (note_id, cosine)."""
        exclude = {note_id} if exclude_self else set()
        return self.neighbours_of_vector(self.vector_of(note_id), k, exclude=exclude, category=category)

    def neighbours_of_vector(self, vector: Any, k: int = 10, exclude: set[str] = frozenset(),
                             category: str | None = None) -> list[tuple[str, float]]:
        """The k notes nearest to a vector; `category` keeps notes whose category (any level) equals it.
        Filters are applied to an over-fetched result list that grows until k notes pass or the index is done."""
        categories = self.categories() if category is not None else None
        fetch = (k + len(exclude)) * (4 if category is not None else 1)
        while True:
            ids, scores = self.search(vector, fetch)
            hits = [(i, float(s)) for i, s in zip(ids[0], scores[0])
                    if i not in exclude and (categories is None or category in categories.get(i, ()))]
            if len(hits) >= k or fetch >= len(self):
                return hits[:k]
            fetch = min(len(self), fetch * 4)

    # ---- the attached notes ----
    def categories(self) -> dict[str, list[str]]:
        if self.notes is None or "category" not in self.notes.column_names:
            raise DataError("this index has no notes table attached, so it cannot filter by category "
                            "(build it with --notes notes.parquet)")
        if self._categories is None:
            self._categories = dict(zip(self.notes.column("note_id").to_pylist(),
                                        (c or [] for c in self.notes.column("category").to_pylist())))
        return self._categories

    @property
    def has_notes(self) -> bool:
        return self.notes is not None

    def labels(self, ids: Sequence[str]) -> dict[str, tuple[str | None, list[str] | None]]:
        """(title, category) of each of `ids` found in the attached notes (the rows a recommendation shows)."""
        return note_labels(self.notes, ids)

    def titles(self) -> dict[str, str]:
        if self.notes is None:
            return {}
        if self._titles is None:
            self._titles = dict(zip(self.notes.column("note_id").to_pylist(), self.notes.column("title").to_pylist()))
        return self._titles

    # ---- persistence ----
    @staticmethod
    def load(index_dir: str | Path) -> "NoteIndex":
        return load_index(index_dir)

    def info(self) -> dict[str, Any]:
        return {"kind": self.config.kind, "count": len(self), "dim": self.dim, "metric": METRIC,
                "config": asdict(self.config), "embedding": self.meta, "notes_attached": self.notes is not None}

    def save(self, out_dir: str | Path) -> Path:
        """Write the folder whole: it replaces `out_dir` in one rename, so a reader (or a kill) never sees the
        ids of one build beside the vectors of another."""
        import faiss

        out = Path(out_dir)
        _check_replaceable(out)
        with atomic_dir(out) as tmp:
            faiss.write_index(self.index, str(tmp / INDEX_FILE))
            if self.notes is not None:
                pq.write_table(self.notes, tmp / NOTES_FILE)
            (tmp / META_FILE).write_text(json.dumps({**self.info(), "ids": self.ids}, ensure_ascii=False, indent=2,
                                                    default=str), encoding="utf-8")
        self.path = out
        return out


def _check_replaceable(out: Path) -> None:
    """An index folder replaces `out` whole: refuse a file, or a folder that holds anything but an index."""
    if out.is_file():
        raise ConfigError(f"--out {out} is a file; give a folder for the index")
    if out.is_dir() and any(out.iterdir()) and not (out / META_FILE).is_file():
        raise ConfigError(f"--out {out} is a folder that is not an index (no {META_FILE}); choose a new folder: "
                          f"it is replaced whole")


def build_index(ids: Sequence[str], vectors: Any, meta: dict[str, Any] | None = None, kind: str | None = None,
                config: IndexConfig | None = None, notes: pa.Table | None = None) -> NoteIndex:
    """Index `vectors` (rows L2-normalised here) under `ids`. `notes`: a Note table whose rows for these ids
    (note_id, title, category) are kept with the index."""
    cfg = config or IndexConfig()
    if kind is not None:
        cfg = IndexConfig(**{**asdict(cfg), "kind": kind})
    x = _as_matrix(vectors, "vectors")
    if len(ids) != x.shape[0]:
        raise DataError(f"{len(ids)} note ids but {x.shape[0]} vectors")
    if x.shape[0] == 0:
        raise DataError("no vectors to index")
    meta = dict(meta or {})
    if meta.get("dim") not in (None, x.shape[1]):
        raise DataError(f"the embedding metadata says dimension {meta['dim']} but the vectors have {x.shape[1]}")
    return NoteIndex(ids, _make_faiss_index(x, cfg), meta, cfg, _notes_subset(notes, ids))


def _notes_subset(notes: pa.Table | None, ids: Sequence[str]) -> pa.Table | None:
    if notes is None:
        return None
    wanted = set(map(str, ids))
    note_ids = notes.column("note_id").to_pylist()
    keep = [i for i, n in enumerate(note_ids) if str(n) in wanted]
    cols = [c for c in ("note_id", "title", "category") if c in notes.column_names]
    return notes.select(cols).take(pa.array(keep, type=pa.int64()))


def note_labels(notes: pa.Table | None, ids: Sequence[str]) -> dict[str, tuple[str | None, list[str] | None]]:
    """(title, category) of each of `ids` that is in `notes` (a missing category is [], as `categories`)."""
    if notes is None:
        return {}
    note_ids = [str(i) for i in notes.column("note_id").to_pylist()]
    titles = dict(zip(note_ids, notes.column("title").to_pylist()))
    categories = dict(zip(note_ids, (c or [] for c in notes.column("category").to_pylist()))) \
        if "category" in notes.column_names else {}
    return {i: (titles.get(i), categories.get(i)) for i in ids if i in titles}


def load_index(index_dir: str | Path) -> NoteIndex:
    import faiss

    path = Path(index_dir)
    for name in (INDEX_FILE, META_FILE):
        if not (path / name).exists():
            raise DataError(f"not an index folder (missing {name}); build one with `notellm index build`",
                            file=str(path))
    try:
        info = read_json(path / META_FILE)
        index = faiss.read_index(str(path / INDEX_FILE))
    except (OSError, ValueError, RuntimeError) as exc:  # faiss reports a damaged file as RuntimeError
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"damaged index folder ({first}); build it again", file=str(path)) from None
    if not isinstance(info, dict) or not isinstance(info.get("ids"), list):
        raise DataError(f"damaged index folder ({META_FILE} has no list of ids); build it again", file=str(path))
    if index.d != info["dim"]:
        raise DataError(f"{INDEX_FILE} has dimension {index.d} but {META_FILE} says {info['dim']}", file=str(path))
    cfg = IndexConfig(**info["config"])
    if cfg.kind == "hnsw":  # search-time settings are not part of the FAISS file
        index.hnsw.efSearch = cfg.hnsw_ef_search
    elif cfg.kind == "ivfpq":
        faiss.extract_index_ivf(index).nprobe = min(cfg.ivf_nprobe, faiss.extract_index_ivf(index).nlist)
    notes = None
    if (path / NOTES_FILE).exists():
        notes = pq.read_table(path / NOTES_FILE)
    return NoteIndex(info["ids"], index, info.get("embedding", {}), cfg, notes, path)
