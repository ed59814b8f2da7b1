"""ml-i2i-v1 (shared/BENCHMARKS.md): item-to-item Recall@K on MovieLens for every baseline and NoteLLM.

Stages (each cached under --out, so a killed run continues where it stopped):
  data      read_movielens -> pairs (window 20, 1/N_u, s >= 0.01, top 10) -> item split (rng 0, 20% new items)
  methods   tfidf-word, tfidf-char, bm25, e5, zero-shot Gemma (before [EMB] / mean), zero-shot-int8 (before
            [EMB] in float32 and with `--int8`), zero-shot-std (the state before [EMB] z-scored with
            training-note statistics as NoteLLM does, no projection), NoteLLM (trained with
            `notellm train configs/notellm_movielens.yaml`), GCL-only ablation (objective=gcl); hybrid-zero-shot-std
            hybrid-notellm and hybrid-gcl fuse those vectors with BM25 by reciprocal ranks (a trained run is
            reused); --tag names a trained variant so its rows sit beside earlier ones in one results.json
Every method is scored by notellm.evaluation.recall.evaluate_recall on the same test pairs and pool.

    python benchmarks/movielens_i2i.py --methods tfidf-word,tfidf-char,bm25,e5,zero-shot,notellm
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("NOTELLM_SHARED", ROOT.parent / "shared")) / "datasets" / "movielens_latest_small"


def prepare_data(out: Path) -> dict[str, Path]:
    """Notes, events, pairs and the ml-i2i-v1 item split (train/test pairs) under out/data."""
    from notellm.data.pairs import PairMiningConfig, mine_pairs
    from notellm.data.readers import read_movielens
    from notellm.data.schema import write_notes
    from notellm.data.split import split_items_ml_i2i
    from notellm.io import write_parquet

    data = out / "data"
    paths = {name: data / f"{name}.parquet" for name in ("notes", "events", "pairs", "train_pairs", "test_pairs")}
    if paths["test_pairs"].exists():
        return paths
    notes, events = read_movielens(SHARED)
    # All genres (first genre first) in `category`, so the NoteLLM prompt can show them to the embedding and
    # hashtag tasks while the category task (target: the first genre) never sees them.
    extra = [json.loads(e) if e else {} for e in notes["extra"].to_pylist()]
    genres = [x.get("genres") or c for x, c in zip(extra, notes["category"].to_pylist())]
    notes = notes.set_column(notes.column_names.index("category"), "category", pa.array(genres, pa.list_(pa.string())))
    write_notes(notes, paths["notes"])
    write_parquet(events, paths["events"])
    pairs = mine_pairs(events, PairMiningConfig(mode="window", window=20, min_score=0.01, max_score=None, top_k=10),
                       out_path=str(paths["pairs"]))
    split_items_ml_i2i(events, pairs, test_fraction=0.2, seed=0).write(data)
    return paths


def test_items(paths: dict[str, Path]) -> list[str]:
    """The pool of ml-i2i-v1 is every new (test) item that is not a query."""
    return (paths["test_pairs"].parent / "test_notes.txt").read_text().split()


def baseline_report(name: str, paths: dict[str, Path]):
    from notellm.evaluation.baselines import make_baseline
    from notellm.evaluation.recall import evaluate_recall

    return evaluate_recall(paths["notes"], paths["test_pairs"], lambda notes: make_baseline(name, notes),
                           ks=[10, 50, 100], buckets=False, name=name, pool=test_items(paths))


def with_bm25(embed_fn):
    """The hybrid retriever: `embed_fn`'s vectors fused with BM25 by reciprocal ranks (no tuning on test)."""
    from notellm.evaluation.baselines import make_baseline
    from notellm.evaluation.recall import VectorScorer
    from notellm.inference.fusion import FusedScorer

    def scorer(notes):
        dense = VectorScorer([str(n["note_id"]) for n in notes], embed_fn(notes), name="dense")
        return FusedScorer([dense, make_baseline("bm25", notes)], "rrf")
    return scorer


def embedding_report(model: str, paths: dict[str, Path], out: Path, name: str, hybrid: bool = False,
                     **embedder):
    from notellm.evaluation.recall import evaluate_recall
    from notellm.inference.embed import Embedder

    embed = Embedder(model, **embedder).encode
    return evaluate_recall(paths["notes"], paths["test_pairs"], with_bm25(embed) if hybrid else embed,
                           ks=[10, 50, 100], buckets=False, name=name, pool=test_items(paths))


_VECTORS: dict = {}


def standardized_zero_shot_report(paths: dict[str, Path], backbone: str, hybrid: bool = False):
    """The untrained backbone with NoteLLM's per-feature standardisation (same 256 training notes, same prompt as
    configs/notellm_movielens.yaml) and no projection: what training adds beyond centring the features."""
    import pyarrow.parquet as pq
    import yaml

    from notellm.evaluation.recall import evaluate_recall
    from notellm.inference.embed import bf16_supported, embed_notes
    from notellm.models.notellm import NoteLLMConfig, build_notellm
    from notellm.data.store import NoteStore
    from notellm.training.notellm import standardizer_ids

    settings = yaml.safe_load((ROOT / "configs" / "notellm_movielens.yaml").read_text())
    model = build_notellm(NoteLLMConfig(**{**settings["model"], "backbone": backbone, "dim": 0})).eval()
    pairs = pq.read_table(paths["train_pairs"])
    store = NoteStore(str(paths["notes"]))
    ids = set(pairs["note_a"].to_pylist()) | set(pairs["note_b"].to_pylist())
    model.fit_standardizer([store[i] for i in standardizer_ids(ids, settings.get("seed", 0))])
    bf16 = bf16_supported()
    def embed(notes):
        key = (backbone, tuple(str(n["note_id"]) for n in notes))
        if key not in _VECTORS:  # the plain and hybrid rows share one embedding pass
            _VECTORS[key] = embed_notes(model, notes, bf16=bf16)
        return _VECTORS[key]
    return evaluate_recall(paths["notes"], paths["test_pairs"], with_bm25(embed) if hybrid else embed,
                           ks=[10, 50, 100], buckets=False, name="zero-shot-std", pool=test_items(paths))


def train(config: str, overrides: list[str]) -> None:
    cmd = [sys.executable, "-m", "notellm.cli", "train", config, *overrides]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/ml")
    parser.add_argument("--methods", default="tfidf-word,tfidf-char,bm25,e5,zero-shot,notellm")
    parser.add_argument("--backbone", default="gemma-3-270m")
    parser.add_argument("--train-overrides", default="", help="extra key=value for notellm train, comma-separated")
    parser.add_argument("--tag", default="", help="appended to trained methods' labels, e.g. 'dim 0'")
    parser.add_argument("--reference", default="NoteLLM GCL + CSFT",
                        help="method whose paired Recall@K differences to every other stored method are printed")
    args = parser.parse_args()
    if not SHARED.is_dir():
        print(f"skipped: {SHARED} is not present")
        return
    out = ROOT / args.out
    paths = prepare_data(out)
    methods = args.methods.split(",")
    overrides = [o for o in args.train_overrides.split(",") if o]
    results: dict[str, object] = {}
    trained: set[Path] = set()  # runs trained by this invocation
    started = time.time()
    for method in methods:
        t0 = time.time()
        if method in ("tfidf-word", "tfidf-char", "bm25", "e5"):
            report = baseline_report(method, paths)
        elif method == "zero-shot":
            for pooling in ("before_emb", "mean"):
                name = f"{args.backbone} zero-shot ({pooling})"
                results[name] = embedding_report(f"zero-shot:{args.backbone}@{pooling}", paths, out, name)
            continue
        elif method == "zero-shot-int8":  # `notellm embed --int8` against the same model in float32
            model = f"zero-shot:{args.backbone}@before_emb"
            for label, quantize in (("float32", None), ("int8", "int8")):
                name = f"{args.backbone} zero-shot (before_emb), {label}"
                t0 = time.time()
                results[name] = embedding_report(model, paths, out, name, bf16=False, quantize=quantize)
                print(f"{name}: {time.time() - t0:.0f} s", flush=True)
            continue
        elif method in ("zero-shot-std", "hybrid-zero-shot-std"):
            hybrid = method.startswith("hybrid")
            report = standardized_zero_shot_report(paths, args.backbone, hybrid)
            method = f"{args.backbone} zero-shot (before_emb, standardised)" + (" + BM25 (RRF)" if hybrid else "")
        elif method in ("notellm", "gcl", "hybrid-notellm", "hybrid-gcl"):
            hybrid = method.startswith("hybrid-")
            method = method.removeprefix("hybrid-")
            run = out / method
            if run not in trained:  # gcl then hybrid-gcl: score the same model, do not train it once more
                trained.add(run)
                train("configs/notellm_movielens.yaml",
                      [f"output_dir={run}", f"notes={paths['notes']}", f"train_pairs={paths['train_pairs']}",
                       f"model.backbone={args.backbone}", *(["objective=gcl"] if method == "gcl" else []),
                       *overrides])
            label = ("NoteLLM GCL + CSFT" if method == "notellm" else "GCL only (no CSFT)") + \
                (f" [{args.tag}]" if args.tag else "") + (" + BM25 (RRF)" if hybrid else "")
            report = embedding_report(str(run / "model"), paths, out, label, hybrid)
            method = label
        else:
            raise SystemExit(f"unknown method {method}")
        results[method] = report
        print(f"{method}: {time.time() - t0:.0f} s", flush=True)
    first = next(iter(results.values()))
    print(f"\nml-i2i-v1: pool {first.pool_size} new items, {first.n_queries} queries "
          f"({time.time() - started:.0f} s in all)")
    print("| method | R@10 | R@50 | R@100 |\n|---|---|---|---|")
    for name, r in results.items():
        rec = r.overall.recall
        print(f"| {name} | {rec[10]:.3f} | {rec[50]:.3f} | {rec[100]:.3f} |")
    summary = {name: {"recall": r.overall.recall, "stderr": r.overall.stderr, "pool": r.pool_size,
                      "queries": r.n_queries, "ranks": [q["rank"] for q in r.per_query]}
               for name, r in results.items()}
    previous = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else {}
    merged = {**previous, **summary}  # methods run earlier stay
    (out / "results.json").write_text(json.dumps(merged, indent=2))
    print_paired_differences(merged, args.reference)


def print_paired_differences(results: dict, reference: str, ks=(10, 50, 100), draws: int = 10_000) -> None:
    """Recall@K of `reference` minus each other method, with a 95% paired bootstrap interval over the queries
    (every method answers the same queries in the same order, so per-query hits pair up)."""
    import numpy as np

    if reference not in results or "ranks" not in results[reference]:
        return
    ref = np.array(results[reference]["ranks"])
    picks = np.random.default_rng(0).integers(0, len(ref), size=(draws, len(ref)))
    print(f"\n{reference} minus each method, Recall@K [95% paired bootstrap, {draws:,} draws]:")
    for name, other in results.items():
        if name == reference or len(other.get("ranks", [])) != len(ref):
            continue
        theirs = np.array(other["ranks"])
        cells = []
        for k in ks:
            diff = (ref < k).astype(float) - (theirs < k)  # ranks are 0-based: a hit at K is rank < K
            boot = diff[picks].mean(axis=1)
            cells.append(f"R@{k} {diff.mean():+.3f} [{np.percentile(boot, 2.5):+.3f}, {np.percentile(boot, 97.5):+.3f}]")
        print(f"  vs {name}: " + "; ".join(cells))


if __name__ == "__main__":
    main()
