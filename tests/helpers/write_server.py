"""A real uvicorn server with writes for kill -9 tests and the load benchmark, without torch: its embedder
is a deterministic hash of the text (numpy only), so the process starts in a second or two.

    python tests/helpers/write_server.py --port P --write-log FILE --token T [--notes N] [--dim D]
        [--milvus-uri FILE]       # the vectors in a milvus-lite collection (filled from the index when empty)
"""

from __future__ import annotations

import argparse
import hashlib

import numpy as np


class HashEmbedder:
    """Unit vectors seeded by a hash of title+content: the same text gives the same vector."""

    def __init__(self, dim: int):
        self.meta = {"model": "hash-embedder", "dim": dim}
        self.dim = dim

    def encode(self, notes):
        rows = []
        for note in notes:
            seed = int.from_bytes(hashlib.sha256((note["title"] + "\n" + note["content"]).encode()).digest()[:8],
                                  "little")
            v = np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)
            rows.append(v / np.linalg.norm(v))
        return np.stack(rows)


def build(notes: int, dim: int, seed: int = 0):
    """An index of `notes` random unit vectors (ids n0..): random vectors stand in for embeddings at scale."""
    from notellm.inference.index import build_index

    x = np.random.default_rng(seed).standard_normal((notes, dim)).astype(np.float32)
    return build_index([f"n{i}" for i in range(notes)], x, {"model": "hash-embedder", "dim": dim})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--write-log", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--notes", type=int, default=200)
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--kind", default="flat")
    parser.add_argument("--milvus-uri", default=None)
    args = parser.parse_args()

    import uvicorn

    from notellm.serving.app import create_app

    index = build(args.notes, args.dim)
    if args.kind != "flat":
        from notellm.inference.index import build_index

        index = build_index(index.ids, np.stack([index.vector_of(i) for i in index.ids]), index.meta, kind=args.kind)
    if args.milvus_uri:  # as `notellm serve --backend milvus --index`: a restart keeps the collection's rows
        from notellm.serving.app import _milvus_store

        index = _milvus_store(index, args.milvus_uri, "notes")
    app = create_app(index=index, embedder=HashEmbedder(args.dim), write_log=args.write_log, api_key=args.token)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
