"""Training step time with and without the frozen-layer cache (`cache_frozen_layers`), in one run.

Gemma 3 270M with LoRA in the top 6 of 18 layers (as configs/notellm_movielens.yaml), GCL + CSFT, on pairs of
demo notes, two epochs. Epoch 1 fills the cache (every prompt is new); in epoch 2 a prompt recurs when its note
drew the same task, so the cached run skips the bottom 12 layers' forward for those rows. Steps are timed by the
engine's log callback; the first step of each run is left out (oneDNN builds kernels for new shapes).

    python benchmarks/frozen_cache.py --pairs 48 --batch-size 8
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_speed import make_pairs  # noqa: E402  (benchmarks/ is not a package)


def run(notes: str, pairs: str, args, out: Path, cache: bool) -> dict:
    from notellm.models.lora import LoraConfig
    from notellm.models.notellm import NoteLLMConfig
    from notellm.training.engine import Callback, Engine
    from notellm.training.notellm import NoteLLMRecipe, NoteLLMTrainConfig

    cfg = NoteLLMTrainConfig(notes=notes, train_pairs=pairs, output_dir=str(out), batch_size=args.batch_size,
                             epochs=2, model=NoteLLMConfig(backbone=args.backbone, max_length=96), save_every=0,
                             log_every=1, warmup_ratio=0.0, lora=LoraConfig(top_layers=args.top_layers),
                             cache_frozen_layers=cache)
    ends: list[float] = []

    class Timer(Callback):
        def on_log(self, record):
            if "loss" in record and "event" not in record:  # one record per step (log_every 1)
                ends.append(time.perf_counter())

    recipe = NoteLLMRecipe(cfg)
    Engine(recipe, callbacks=[Timer()]).run()
    per_epoch = len(ends) // 2
    epoch1, epoch2 = ends[1:per_epoch], ends[per_epoch:]
    cache_obj = getattr(recipe.model, "frozen_cache", None)
    return {"epoch1_s_per_step": (epoch1[-1] - epoch1[0]) / max(1, len(epoch1) - 1),
            "epoch2_s_per_step": (epoch2[-1] - ends[per_epoch - 1]) / len(epoch2),
            "hit_rate": cache_obj.stats()["cache_hit_rate"] if cache_obj else None}


def main() -> None:
    from notellm.device import machine_summary

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--top-layers", type=int, default=6)
    parser.add_argument("--backbone", default="gemma-3-270m")
    args = parser.parse_args()
    print(machine_summary(), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        notes, pairs, _ = make_pairs(args.pairs * 2, args.pairs, Path(tmp))
        plain = run(notes, pairs, args, Path(tmp) / "plain", cache=False)
        cached = run(notes, pairs, args, Path(tmp) / "cached", cache=True)
    print(f"\n{args.pairs} pairs, batch {args.batch_size}, LoRA in the top {args.top_layers} layers, 2 epochs")
    print("| run | s/step epoch 1 | s/step epoch 2 | cache hit rate (end) |\n|---|---|---|---|")
    for name, r in (("no cache", plain), ("cache_frozen_layers", cached)):
        rate = "-" if r["hit_rate"] is None else f"{r['hit_rate']:.2f}"
        print(f"| {name} | {r['epoch1_s_per_step']:.2f} | {r['epoch2_s_per_step']:.2f} | {rate} |")
    print(f"\nepoch 2 speed-up: {plain['epoch2_s_per_step'] / cached['epoch2_s_per_step']:.2f}x; "
          f"epoch 1 (cache filling): {plain['epoch1_s_per_step'] / cached['epoch1_s_per_step']:.2f}x")


if __name__ == "__main__":
    main()
