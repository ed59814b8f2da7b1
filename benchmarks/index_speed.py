"""Vector index speed: query latency (single query and batches) and recall@10 of approximate indexes against
exact search, at 100k and 1M vectors of dimension 128.

Data (seeded): clustered by default - 1,000 Gaussian centres (sd 1 per coordinate), each vector = centre +
Gaussian noise of the same scale (`--spread 1.0`; clusters overlap), L2-normalised - because embeddings of real notes are clustered
by topic and uniformly random vectors are an unrealistically hard case for graph and quantisation indexes
(`--data random` gives them). Queries are fresh vectors from the same distribution, not indexed ones.
Exact search (IndexFlatIP) is the baseline of every ratio and the ground truth of recall@10.

    python benchmarks/index_speed.py                      # 100k and 1M, flat + hnsw + ivfpq
    python benchmarks/index_speed.py --sizes 100000 --kinds flat,hnsw --threads 2
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402


def make_data(n: int, dim: int, kind: str, rng: np.random.Generator, centres: np.ndarray | None,
              spread: float) -> np.ndarray:
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):  # in chunks: 1M x 128 float32 is 512 MB, keep temporaries small
        m = min(100_000, n - start)
        x = rng.standard_normal((m, dim), dtype=np.float32)
        if kind == "clustered":
            x = centres[rng.integers(0, len(centres), m)] + spread * x
        out[start:start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def percentiles_ms(seconds: list[float]) -> tuple[float, float]:
    p50, p99 = np.percentile(np.array(seconds) * 1e3, [50, 99])
    return float(p50), float(p99)


def time_single(index, queries: np.ndarray, k: int) -> list[float]:
    times = []
    for q in queries:
        t = time.perf_counter()
        index.search(q[None, :], k)
        times.append(time.perf_counter() - t)
    return times


def time_batches(index, queries: np.ndarray, k: int, batch: int, repeats: int) -> tuple[list[float], list[list[str]]]:
    times, ids = [], []
    for r in range(repeats):
        got = []
        t = time.perf_counter()
        for start in range(0, len(queries), batch):
            got.extend(index.search(queries[start:start + batch], k)[0])
        times.append((time.perf_counter() - t) / max(1, len(queries) // batch))
        ids = got
    return times, ids


def recall_at(approx: list[list[str]], exact: list[list[str]], k: int) -> float:
    return float(np.mean([len(set(a[:k]) & set(e[:k])) / k for a, e in zip(approx, exact)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000", help="comma-separated index sizes")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--kinds", default="flat,hnsw,ivfpq")
    parser.add_argument("--data", choices=("clustered", "random"), default="clustered")
    parser.add_argument("--spread", type=float, default=1.0, help="clustered: noise sd / centre sd")
    parser.add_argument("--queries", type=int, default=1000, help="queries for batch search and recall")
    parser.add_argument("--single", type=int, default=200, help="queries timed one at a time")
    parser.add_argument("--batch", type=int, default=100, help="queries per batch")
    parser.add_argument("--repeats", type=int, default=3, help="passes over the queries in batches")
    parser.add_argument("--threads", type=int, default=1, help="FAISS (OpenMP) threads")
    parser.add_argument("--set", nargs="*", default=[], help="IndexConfig overrides, e.g. hnsw_ef_search=128")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import faiss
    from rich.console import Console
    from rich.table import Table

    from notellm.config import load_config
    from notellm.inference.index import IndexConfig, build_index

    faiss.omp_set_num_threads(args.threads)
    console = Console(width=200)
    base_cfg = load_config(IndexConfig, None, args.set)
    data_desc = f"clustered data (spread {args.spread})" if args.data == "clustered" else "random data"
    table = Table(title=f"index speed: dim {args.dim}, {data_desc}, seed {args.seed}, k=10, "
                        f"{args.threads} FAISS thread(s), batches of {args.batch}")
    for col in ("n", "kind", "build s", "1 query p50 ms", "p99 ms", "batch p50 ms", "p99 ms", "per query ms",
                "speed-up vs flat (1 query)", "recall@10 vs exact"):
        table.add_column(col, justify="right")
    k = 10
    for n in [int(s) for s in args.sizes.split(",")]:
        rng = np.random.default_rng(args.seed)
        centres = rng.standard_normal((1000, args.dim), dtype=np.float32) if args.data == "clustered" else None
        data = make_data(n, args.dim, args.data, rng, centres, args.spread)
        queries = make_data(args.queries, args.dim, args.data, rng, centres, args.spread)
        ids = [str(i) for i in range(n)]
        exact_ids, flat_p50 = None, None
        kinds = args.kinds.split(",")
        if "flat" not in kinds:
            kinds = ["flat"] + kinds  # the ground truth and the baseline of every ratio
        for kind in kinds:
            cfg = IndexConfig(**{**vars(base_cfg), "kind": kind})
            t = time.perf_counter()
            index = build_index(ids, data, {"dim": args.dim}, config=cfg)
            build_s = time.perf_counter() - t
            single = time_single(index, queries[:args.single], k)
            batch_times, found = time_batches(index, queries, k, args.batch, args.repeats)
            if kind == "flat":
                exact_ids, flat_p50 = found, percentiles_ms(single)[0]
            s50, s99 = percentiles_ms(single)
            b50, b99 = percentiles_ms(batch_times)
            table.add_row(f"{n:,}", kind, f"{build_s:.1f}", f"{s50:.3f}", f"{s99:.3f}", f"{b50:.2f}", f"{b99:.2f}",
                          f"{b50 / args.batch:.4f}", f"{flat_p50 / s50:.1f}x", f"{recall_at(found, exact_ids, k):.3f}")
            console.print(f"done: n={n:,} {kind} (build {build_s:.1f}s)")
            del index
        del data
    console.print(table)
    console.print(f"config: {vars(base_cfg)}")


if __name__ == "__main__":
    main()
