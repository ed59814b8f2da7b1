"""NoteLLM-2 on a synthetic multimodal note set: text-only, early fusion, mICL, late fusion, mICL + late
fusion (and the last with the vision tower frozen, as the reference code's no_grad left it), trained on the same
pairs with the same budget (steps, batch, lr, seed), then I2I Recall@K.

Data (`notellm.data.synthetic_mm`, generated here): 192 clusters (8 topics x 6 colours x 4 shapes) of 8 notes;
the text says the topic, a 32x32 PNG shows the colour and shape; pairs join notes of one cluster. Test notes are
new notes (2 per cluster, one test pair each), so the pool holds one partner per cluster: R@1 = 1 needs both
modalities; a perfect text-only model reaches about R@10 = 10/24.

Models: the tiny-qwen3 backbone (random weights, real Qwen3 tokenizer) fully fine-tuned (LoRA on a random
backbone would only slow learning) and a tiny random CLIP vision tower, trained. Each trained model is saved, reloaded through `inference.embed.load_model_for_embedding` (the path
`notellm embed` takes) and scored with `notellm.evaluation.recall.evaluate_recall` (the DESIGN.md protocol).

    python benchmarks/multimodal.py                      # 6 variants: ~1.5 CPU-minutes, 5-8 min on a busy 2-core box
    python benchmarks/multimodal.py --variants text,micl+late --steps 36

`--data detail` (`notellm.data.synthetic_mm_detail`): the decisive detail is only in the image. 72 clusters =
6 topics (text) x 4 shapes x 1-3 objects (image), colour random per note (a nuisance), 112 px PNGs; the test
pool holds, per query, 11 hard negatives of its topic differing from the partner only in the image and 5 of its
visual class differing only in the text. Training batches are built of hard negatives too (half the pairs of a
batch from one topic, half from another with the same shapes and counts: `HardNegativeRecipe`). Runs are
`tower/variant`; towers: `tiny` (random tiny CLIP at 56 px, trained), `dinov2-frozen` and `dinov2-trained` (the
pretrained offline DINOv2-S/14 at 112 px, `multimodal.vision_tower: dinov2-s-offline`, needs the vision extra).
A frozen tower's features are computed once per image and shared by the runs (same numbers as recomputing:
the tower is deterministic in eval mode); evaluation reloads the saved model and recomputes everything.
Intervals: 95% percentile bootstrap over queries (1000 resamples), and for each image variant the paired
bootstrap of its R@1 minus early fusion's on the same tower.

    python benchmarks/multimodal.py --data detail        # 9 runs; add dinov2-trained/micl+late if time allows
"""

from __future__ import annotations

import argparse
import hashlib
import json
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


TOWERS = {  # --data detail: tower preset -> (vision_tower spec, train_vision)
    "tiny": ('tiny-clip:{"image_size": 56}', True),
    "dinov2-frozen": ('dinov2-s-offline:{"image_size": 112}', False),
    "dinov2-trained": ('dinov2-s-offline:{"image_size": 112}', True),
}
DETAIL_RUNS = ("text,tiny/early,tiny/micl,tiny/late,tiny/micl+late,"
               "dinov2-frozen/early,dinov2-frozen/micl,dinov2-frozen/late,dinov2-frozen/micl+late")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="colour", choices=["colour", "detail"],
                    help="colour: synthetic_mm (the first table); detail: synthetic_mm_detail (hard negatives)")
    ap.add_argument("--runs", default=DETAIL_RUNS, help=f"--data detail: comma-separated tower/variant, towers "
                    f"{list(TOWERS)}; 'text' alone is text-only")
    ap.add_argument("--patch-pool", type=int, default=4, help="--data detail: image tokens = n x n per image")
    ap.add_argument("--boot", type=int, default=1000, help="--data detail: bootstrap resamples over queries")
    ap.add_argument("--tower-lr", type=float, default=5e-5,
                    help="--data detail: lr of a pretrained tower that trains (connector and fusion keep --lr)")
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
    if args.data == "detail":
        return main_detail(args)
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


# ---- --data detail ---------------------------------------------------------------------------------------
_FROZEN_FEATURES: dict[tuple[str, bytes], tuple] = {}  # (tower spec, image digest) -> (patch feats, pooled)


def cache_frozen_features(model) -> None:
    """Memoise a frozen tower's output per preprocessed image, shared by all runs with that tower: the tower is
    in eval mode and deterministic, so a cached row is the row it would compute again."""
    import torch

    compute, spec = model.vision_features, model.settings.vision_tower

    def vision_features(pixel_values):
        keys = [(spec, hashlib.blake2b(row.numpy().tobytes(), digest_size=16).digest()) for row in pixel_values]
        todo = sorted({i for i, k in enumerate(keys) if k not in _FROZEN_FEATURES})
        if todo:
            feats, pooled = compute(pixel_values[todo])
            for j, i in enumerate(todo):
                _FROZEN_FEATURES[keys[i]] = (feats[j].clone(), pooled[j].clone())
        rows = [_FROZEN_FEATURES[k] for k in keys]
        return torch.stack([f for f, _ in rows]), torch.stack([p for _, p in rows])

    model.vision_features = vision_features


def hard_negative_recipe(tower_lr: float, cache_features: bool):
    """MultimodalRecipe with hard-negative batches (see the module doc) and, for a pretrained tower that
    trains, its own lr; everything else is the library's recipe."""
    from collections import defaultdict

    import numpy as np

    from notellm.training.multimodal import MultimodalRecipe
    from notellm.training.notellm import item_notes

    class HardNegativeRecipe(MultimodalRecipe):
        def build_model(self):
            model = super().build_model()
            if cache_features and not self.args.multimodal.train_vision:
                cache_frozen_features(model)
            return model

        def param_groups(self, module):
            groups = super().param_groups(module)
            if not (self.args.multimodal.images and self.args.multimodal.train_vision and cache_features):
                return groups
            tower = {id(p) for p in self.model.tower.parameters()}
            for g in groups:
                g["params"] = [p for p in g["params"] if id(p) not in tower]
            return groups + [{"params": list(self.model.tower.parameters()), "lr": tower_lr}]

        def epoch_batches(self, epoch: int, global_batch: int):
            """Half a batch from one topic (distinct shape x count), half from another with the same visual
            classes where it has them: every pair meets negatives that differ from it only in the image and
            negatives that differ only in the text."""
            rng = np.random.default_rng([self.args.seed, epoch, 11])
            left: dict[str, dict[tuple, list[int]]] = defaultdict(lambda: defaultdict(list))
            for index in rng.permutation(len(self.items)):
                topic, shape, count, _ = item_notes(self.items[int(index)])[0].split("-")  # the generator's ids
                left[topic][(shape, count)].append(int(index))
            half, batches = global_batch // 2, []
            while True:
                sizes = {t: sum(map(len, v.values())) for t, v in left.items()}
                ready = [t for t, n in sizes.items() if n >= half]
                if len(ready) < 2 or len(batches) * global_batch >= len(self.items):
                    return batches
                ta, tb = rng.choice(ready, size=2, replace=False)
                visuals = [v for v, idx in left[ta].items() if idx]
                visuals = [visuals[i] for i in rng.permutation(len(visuals))]
                batch = []
                while len(batch) < half:  # distinct visual classes first, repeats only when it runs short
                    for v in visuals:
                        if len(batch) < half and left[ta][v]:
                            batch.append((left[ta][v].pop(), v))
                out = [i for i, _ in batch]
                for _, v in batch:
                    source = v if left[tb][v] else next(u for u, idx in left[tb].items() if idx)
                    out.append(left[tb][source].pop())
                batches.append(np.array([out[i] for i in rng.permutation(len(out))]))

    return HardNegativeRecipe


def train_detail_run(run: str, data: dict, args, out: Path) -> dict:
    from notellm.models.multimodal import MultimodalSettings
    from notellm.models.notellm import NoteLLMConfig
    from notellm.training.engine import Engine
    from notellm.training.multimodal import MultimodalTrainConfig

    tower_name, _, variant = run.partition("/")
    if run == "text":
        spec, train_vision, variant = TOWERS["tiny"][0], True, "text"
    else:
        spec, train_vision = TOWERS[tower_name]
    settings = MultimodalSettings(vision_tower=spec, train_vision=train_vision, connector=args.connector,
                                  patch_pool=args.patch_pool, **VARIANTS[variant])
    folder = run.replace("/", "_")
    cfg = MultimodalTrainConfig(
        notes=str(data["notes"]), train_pairs=str(data["train_pairs"]), output_dir=str(out / folder),
        model=NoteLLMConfig(backbone=args.backbone, dim=64, max_length=128), multimodal=settings,
        objective="gcl", batch_size=args.batch_size, epochs=1000, max_steps=args.steps, lr=args.lr,
        warmup_ratio=0.05, bf16="false", save_every=0, log_every=max(1, args.steps // 4), seed=args.seed,
        lora={"enabled": args.lora})
    shutil.rmtree(cfg.output_dir, ignore_errors=True)
    pretrained = spec.startswith("dinov2")
    summary = Engine(hard_negative_recipe(args.tower_lr, pretrained)(cfg)).run()
    return {"model_dir": out / folder / "model", "seconds": summary["seconds"], "steps": summary["steps"],
            "loss": summary["last"].get("loss", float("nan")), "images_skipped": summary["images_skipped"]}


def detail_errors(report, rows: dict, vectors: dict) -> dict[str, int]:
    """Over all queries: how often the top-ranked pool note differs from the query in topic (text), shape or
    count (image)."""
    import numpy as np

    queries = [q["query"] for q in report.per_query]
    pool = [q["partner"] for q in report.per_query]
    top = (np.stack([vectors[q] for q in queries]) @ np.stack([vectors[p] for p in pool]).T).argmax(1)
    counts = {"topic": 0, "shape": 0, "count": 0}
    for query, j in zip(queries, top):
        a, b = json.loads(rows[query]["extra"]), json.loads(rows[pool[j]]["extra"])
        for key in counts:
            counts[key] += a[key] != b[key]
    return counts


def evaluate_detail(model_dir: Path, data: dict, ks: list[int]):
    import pyarrow.parquet as pq

    from notellm.data.schema import read_notes
    from notellm.evaluation.recall import evaluate_recall
    from notellm.inference.embed import Embedder

    pairs = pq.read_table(data["test_pairs"])
    ids = sorted(set(pairs["note_a"].to_pylist()) | set(pairs["note_b"].to_pylist()))
    rows = {r["note_id"]: r for r in read_notes(data["notes"]).to_pylist()}
    vectors = Embedder(str(model_dir), bf16=False, batch_size=32).encode([rows[i] for i in ids])
    report = evaluate_recall(None, pairs, (ids, vectors), ks=ks, buckets=False, name=str(model_dir))
    return report, detail_errors(report, rows, dict(zip(ids, vectors)))


def cpu_model() -> str:
    from notellm.device import cpu_model as name

    return name()


def main_detail(args) -> int:
    import numpy as np

    from notellm.data.synthetic_mm_detail import DetailMMConfig, generate_detail_mm
    from notellm.evaluation.regression import bootstrap_indices

    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    for run in runs:
        tower, _, variant = run.partition("/")
        if run != "text" and (tower not in TOWERS or variant not in VARIANTS or variant == "text"):
            raise SystemExit(f"unknown run '{run}': 'text' or tower/variant with tower in {list(TOWERS)} "
                             f"and variant in {[v for v in VARIANTS if v != 'text']}")
    ks = [int(k) for k in args.ks.split(",")] if args.ks != "1,5,10,20" else [1, 5, 12]
    keep = args.out is not None
    out = Path(args.out) if keep else Path(tempfile.mkdtemp(prefix="notellm-mmd-bench-"))
    started, load_start = time.time(), os.getloadavg()
    data = generate_detail_mm(out / "data", DetailMMConfig(seed=args.seed))
    results = {}
    for run in runs:
        trained = train_detail_run(run, data, args, out)
        report, errors = evaluate_detail(trained["model_dir"], data, ks)
        results[run] = (dict(trained, errors=errors), report)
        print(f"{run}: R@1 {report.overall.recall[ks[0]]:.3f}, trained {trained['seconds']:.0f} s", flush=True)
        if not keep:
            shutil.rmtree(trained["model_dir"].parent, ignore_errors=True)
    first = next(iter(results.values()))[1]
    queries = [q["query"] for q in first.per_query]
    ranks = {}
    for run, (_, report) in results.items():
        by_query = {q["query"]: q["rank"] for q in report.per_query}
        ranks[run] = np.array([by_query[q] for q in queries])
    idx = bootstrap_indices(len(queries), args.boot, args.seed)
    print(f"\nNoteLLM-2, synthetic_mm_detail (decisive detail only in the image; pool {first.pool_size}, "
          f"{first.n_queries} queries); backbone {args.backbone} ({'LoRA' if args.lora else 'full fine-tune'}), "
          f"connector {args.connector}, {args.patch_pool}x{args.patch_pool} tokens per image; {args.steps} steps x "
          f"{args.batch_size} pairs (hard-negative batches), lr {args.lr}, pretrained tower lr {args.tower_lr}, "
          f"seed {args.seed}")
    print(f"CPU: {cpu_model()} ({os.cpu_count()} cores visible), {args.threads} threads; load average "
          f"{load_start[0]:.1f} at start, {os.getloadavg()[0]:.1f} at end; total {time.time() - started:.0f} s")
    header = ("| tower | variant | " + " | ".join(f"R@{k} [95% CI]" for k in ks) +
              f" | R@{ks[0]} minus early fusion [95% CI] | top-1 wrong topic / shape / count | train s |")
    print(header)
    print("|" + "---|" * (len(ks) + 5))
    for run, (trained, report) in results.items():
        tower, _, variant = run.partition("/")
        cells = []
        for k in ks:
            boots = (ranks[run][idx] < k).mean(1)
            cells.append(f"{(ranks[run] < k).mean():.3f} [{np.percentile(boots, 2.5):.3f}, "
                         f"{np.percentile(boots, 97.5):.3f}]")
        early = f"{tower}/early"
        diff = "n/a"
        if run != "text" and variant != "early" and early in ranks:
            d = (ranks[run][idx] < ks[0]).mean(1) - (ranks[early][idx] < ks[0]).mean(1)
            point = (ranks[run] < ks[0]).mean() - (ranks[early] < ks[0]).mean()
            diff = f"{point:+.3f} [{np.percentile(d, 2.5):+.3f}, {np.percentile(d, 97.5):+.3f}]"
        wrong = " / ".join(str(trained["errors"][k]) for k in ("topic", "shape", "count"))
        print(f"| {'-' if run == 'text' else tower} | {LABELS[variant if run != 'text' else 'text']} | "
              f"{' | '.join(cells)} | {diff} | {wrong} | {trained['seconds']:.0f} |")
    skipped = sum(t["images_skipped"] for t, _ in results.values())
    print(f"\nChance: a perfect text-only model R@1 ~ 1/12, a perfect image-only one ~ 1/6. Images skipped as "
          f"unreadable: {skipped}.")
    if not keep:
        shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
