"""Hard negatives for GCL: for each anchor note, the training notes a cheap retriever ranks highest that are
not its known partners (FlagEmbedding's and sentence-transformers' `mine_hard_negatives` practice).

Sources: `bm25` (Okapi BM25 over the notes' text) or an embeddings folder written by `notellm embed` (e.g. the
zero-shot model: cosine). Mining runs once at setup, deterministically; each pair then draws one negative per
epoch from its anchor's list (`draw_negative`), so a resumed run draws the same ones.

Random in-batch negatives rarely share a topic with the anchor; mined ones do, which is what teaches a model
to rank within a topic. The price: some mined "negatives" are unlabelled positives, which is why the loss can
mask those scoring above the positive (`false_negative_margin`).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from notellm.errors import ConfigError, DataError

_BLOCK = 512  # anchors scored at a time: 512 x candidates floats


def known_partners(pairs: Sequence[tuple[str, str]]) -> dict[str, set[str]]:
    partners: dict[str, set[str]] = defaultdict(set)
    for a, b in pairs:
        partners[a].add(b)
        partners[b].add(a)
    return partners


def _score_fn(source: str, ids: list[str], notes: dict[str, dict]) -> tuple[Callable[[list[str]], np.ndarray], float]:
    """(score, floor): score(anchor ids) -> [len(anchors), len(ids)] similarity of each anchor to every
    candidate; candidates scoring <= floor are no evidence of anything (BM25 0: no shared word)."""
    if source == "bm25":
        from notellm.inference.lexical import BM25Scorer, note_text

        bm25 = BM25Scorer({i: note_text(notes[i]) for i in ids})
        pool = tuple(ids)
        return (lambda anchors: bm25.score(anchors, pool)), 0.0
    folder = Path(source)
    if not folder.is_dir():
        raise ConfigError(f"hard_negatives must be none, bm25 or an embeddings folder (notellm embed), "
                          f"got {source!r}")
    from notellm.inference.embed import read_embeddings

    emb_ids, vectors, _ = read_embeddings(folder)
    row = {note_id: i for i, note_id in enumerate(emb_ids)}
    missing = [i for i in ids if i not in row]
    if missing:
        raise DataError(f"{len(missing)} training note(s) have no vector, e.g. {missing[:3]}", file=str(folder),
                        field="note_id")
    x = np.asarray(vectors, dtype=np.float32)[[row[i] for i in ids]]
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    index = {note_id: i for i, note_id in enumerate(ids)}
    return (lambda anchors: x[[index[a] for a in anchors]] @ x.T), -np.inf


def mine_hard_negatives(pairs: Sequence[tuple[str, str]], notes: dict[str, dict], source: str,
                        depth: int = 30, skip_top: int = 0,
                        on_block: Callable[[int], None] | None = None) -> dict[str, list[str]]:
    """{anchor note_a: up to `depth` candidate negatives, best first}: the notes of the pairs ranked by `source`,
    leaving out the anchor, every known partner of it, and the `skip_top` best-ranked others (the likeliest
    unlabelled positives). Anchors whose candidates all score 0 (BM25: no shared word) get none."""
    if depth < 1 or skip_top < 0:
        raise ConfigError(f"hard_negative_depth must be >= 1 and skip_top >= 0, got {depth}, {skip_top}")
    ids = sorted({n for pair in pairs for n in pair})
    anchors = sorted({a for a, _ in pairs})
    partners = known_partners(pairs)
    score, floor = _score_fn(source, ids, notes)
    mined: dict[str, list[str]] = {}
    want = depth + skip_top
    for start in range(0, len(anchors), _BLOCK):
        block = anchors[start:start + _BLOCK]
        scores = score(block)
        for anchor, row in zip(block, scores):
            order = np.argsort(-row, kind="stable")
            picked = []
            for j in order:
                if len(picked) == want or row[j] <= floor:
                    break
                if ids[j] != anchor and ids[j] not in partners[anchor]:
                    picked.append(ids[j])
            mined[anchor] = picked[skip_top:]
        if on_block:
            on_block(len(block))
    return mined


def draw_negative(candidates: list[str], fallback: Sequence[str], seed: int, epoch: int, index: int) -> str:
    """One of the anchor's mined negatives, drawn from (seed, epoch, pair index): new each epoch, the same on
    resume. An anchor with none gets a random note of `fallback` (every pair has exactly one negative, so all
    processes gather batches of one shape; the loss masks a draw that is the anchor or its partner)."""
    rng = np.random.default_rng([seed, epoch, index, 13])
    pool = candidates or fallback
    return pool[int(rng.integers(len(pool)))]
