"""NoteLLM-2 on a synthetic multimodal note set: text-only, early fusion, mICL, late fusion, mICL + late
fusion (and the last with the vision tower frozen, as the reference code's no_grad left it), trained on the same
pairs with the same budget (steps, batch, lr, seed), then I2I Recall@K.

Data (`notellm.data.synthetic_mm`, generated here): 192 clusters (8 topics x 6 colours x 4 shapes) of 8 notes;
the text says the topic, a 32x32 PNG shows the colour and shape; pairs join notes of one cluster. Test notes are
new notes (2 per cluster, one test pair each), so the pool holds one partner per cluster: R@1 = 1 needs both
modalities; a perfect text-only model reaches about R@10 = 10/24.

Models: the tiny-qwen3 backbone (random weights, real Qwen3 tokenizer) fully fine-tuned (LoRA on a random
backbone would only slow learning) and a tiny random CLIP vision tower (no vision weights exist offline),
trained. Each trained model is saved, reloaded through `inference.embed.load_model_for_embedding` (the path
`notellm embed` takes) and scored with `notellm.evaluation.recall.evaluate_recall` (the DESIGN.md protocol).

    python benchmarks/multimodal.py                      # 6 variants: ~1.5 CPU-minutes, 5-8 min on a busy 2-core box
    python benchmarks/multimodal.py --variants text,micl+late --steps 36
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

VARIANTS = {
    "text": dict(images=False),
    "early": dict(micl=False, late_fusion=False),
    "micl": dict(micl=True, late_fusion=False),
    "late": dict(micl=False, late_fusion=True),
    "micl+late": dict(micl=True, late_fusion=True),
    "micl+late-frozen": dict(micl=True, late_fusion=True, train_vision=False),  # the reference code's no_grad
}
LABELS = {"text": "text-only", "early": "early fusion (image tokens only)", "micl": "mICL",
          "late": "late fusion", "micl+late": "mICL + late fusion",
          "micl+late-frozen": "mICL + late fusion, tower frozen"}


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {list(VARIANTS)}")
    ap.add_argument("--steps", type=int, default=72, help="optimizer steps per variant (36 = one epoch)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--vision-lr", type=float, default=None, help="lr of tower, connector, fusion (default: --lr)")
    ap.add_argument("--backbone", default="tiny-qwen3")
    ap.add_argument("--tower", default="tiny-clip", help="tiny-clip | tiny-siglip | a CLIP/SigLIP folder")
    ap.add_argument("--connector", default="mlp", choices=["mlp", "qformer"])
    ap.add_argument("--frozen-tower", action="store_true", help="freeze the vision tower (connector still trains)")
    ap.add_argument("--lora", action="store_true", help="LoRA instead of full fine-tuning of the backbone")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--topics", type=int, default=8, help="data: topics (text), <= 8")
    ap.add_argument("--colours", type=int, default=6, help="data: colours (image), <= 6")
    ap.add_argument("--shapes", type=int, default=4, help="data: shapes (image), <= 4")
    ap.add_argument("--notes-per-cluster", type=int, default=8)
    ap.add_argument("--ks", default="1,5,10,20")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="keep data and models here (default: a temporary folder)")
    return ap.parse_args()


def train_variant(name: str, data: dict, args, out: Path) -> dict:
    from notellm.models.multimodal import MultimodalSettings
    from notellm.models.notellm import NoteLLMConfig
    from notellm.training.engine import Engine
    from notellm.training.multimodal import MultimodalRecipe, MultimodalTrainConfig

    options = {"train_vision": not args.frozen_tower, **VARIANTS[name]}
    settings = MultimodalSettings(vision_tower=args.tower, connector=args.connector, vision_lr=args.vision_lr,
                                  **options)
    cfg = MultimodalTrainConfig(
        notes=str(data["notes"]), train_pairs=str(data["train_pairs"]), output_dir=str(out / name),
        model=NoteLLMConfig(backbone=args.backbone, dim=64, max_length=96), multimodal=settings,
        objective="gcl", batch_size=args.batch_size, epochs=1000, max_steps=args.steps, lr=args.lr,
        warmup_ratio=0.05, bf16="false", save_every=0, log_every=max(1, args.steps // 4), seed=args.seed,
        lora={"enabled": args.lora})
    shutil.rmtree(cfg.output_dir, ignore_errors=True)
    summary = Engine(MultimodalRecipe(cfg)).run()
    return {"model_dir": out / name / "model", "seconds": summary["seconds"], "steps": summary["steps"],
            "loss": summary["last"].get("loss", float("nan")), "images_skipped": summary["images_skipped"]}


def evaluate(model_dir: Path, data: dict, ks: list[int]):
    import pyarrow.parquet as pq

    from notellm.data.schema import read_notes
    from notellm.evaluation.recall import evaluate_recall
    from notellm.inference.embed import Embedder

    pairs = pq.read_table(data["test_pairs"])
    ids = sorted(set(pairs["note_a"].to_pylist()) | set(pairs["note_b"].to_pylist()))
    rows = {r["note_id"]: r for r in read_notes(data["notes"]).to_pylist()}
    embedder = Embedder(str(model_dir), bf16=False, batch_size=32)  # load_model_for_embedding's dispatch
    vectors = embedder.encode([rows[i] for i in ids])
    report = evaluate_recall(None, pairs, (ids, vectors), ks=ks, buckets=False, name=str(model_dir))
    return report, top1_errors(report, rows, dict(zip(ids, vectors)))


def top1_errors(report, rows: dict, vectors: dict) -> dict[str, int]:
    """Which cluster attributes the top-ranked pool note gets wrong, over all queries (from the note's `extra`):
    tells whether a model misses the topic (text), the colour or the shape (image)."""
    import json

    import numpy as np

    queries = [q["query"] for q in report.per_query]
    pool = [q["partner"] for q in report.per_query]  # the protocol's pool here: test notes minus queries
    top = (np.stack([vectors[q] for q in queries]) @ np.stack([vectors[p] for p in pool]).T).argmax(1)
    counts = {"topic": 0, "colour": 0, "shape": 0}
    for query, j in zip(queries, top):
        a, b = json.loads(rows[query]["extra"]), json.loads(rows[pool[j]]["extra"])
        for key in counts:
            counts[key] += a[key] != b[key]
    return counts


def main() -> int:
    args = parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from notellm.data.synthetic_mm import SyntheticMMConfig, generate_synthetic_mm

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    ks = [int(k) for k in args.ks.split(",")]
    keep = args.out is not None
    out = Path(args.out) if keep else Path(tempfile.mkdtemp(prefix="notellm-mm-bench-"))
    started = time.time()
    data = generate_synthetic_mm(out / "data", SyntheticMMConfig(
        n_topics=args.topics, n_colours=args.colours, n_shapes=args.shapes,
        notes_per_cluster=args.notes_per_cluster, seed=args.seed))
    results = {}
    for name in variants:
        trained = train_variant(name, data, args, out)
        report, errors = evaluate(trained["model_dir"], data, ks)
        results[name] = (dict(trained, errors=errors), report)
    print_table(results, ks, args, time.time() - started)
    if not keep:
        shutil.rmtree(out, ignore_errors=True)
    return 0


def print_table(results: dict, ks: list[int], args, total_seconds: float) -> None:
    first = next(iter(results.values()))[1]
    print(f"\nNoteLLM-2 synthetic multimodal I2I (pool {first.pool_size}, {first.n_queries} queries); backbone "
          f"{args.backbone} ({'LoRA' if args.lora else 'full fine-tune'}), tower {args.tower} "
          f"({'frozen' if args.frozen_tower else 'trained'}), connector {args.connector}; {args.steps} steps x "
          f"{args.batch_size} pairs, lr {args.lr}, seed {args.seed}; {platform.machine()}, "
          f"{args.threads} threads; total {total_seconds:.0f} s")
    header = ("| variant | " + " | ".join(f"R@{k}" for k in ks) + f" | R@{ks[0]} vs text-only | "
              "top-1 wrong topic / colour / shape | train s | last loss |")
    print(header)
    print("|" + "---|" * (len(ks) + 5))
    base = results.get("text")
    for name, (trained, report) in results.items():
        r = report.overall
        cells = " | ".join(f"{r.recall[k]:.3f} ±{r.stderr[k]:.3f}" for k in ks)
        ratio = "n/a"
        if base is not None and base[1].overall.recall[ks[0]] > 0:
            ratio = f"{r.recall[ks[0]] / base[1].overall.recall[ks[0]]:.2f}x"
        wrong = " / ".join(str(trained["errors"][k]) for k in ("topic", "colour", "shape"))
        print(f"| {LABELS[name]} | {cells} | {ratio} | {wrong} | {trained['seconds']:.0f} | {trained['loss']:.3f} |")
    skipped = sum(t["images_skipped"] for t, _ in results.values())
    print(f"\n± = binomial standard error. top-1 wrong: over the {first.n_queries} queries, how often the best-"
          f"ranked pool note differs from the query in topic (text), colour or shape (image). "
          f"Images skipped as unreadable: {skipped}. Recall protocol: "
          f"notellm.evaluation.recall.evaluate_recall (greedy pair de-duplication, pool = test notes minus queries, "
          f"ties count against).")


if __name__ == "__main__":
    raise SystemExit(main())
