"""Why `--int8` smooths and keeps down_proj in float32 (the experiment behind benchmarks/README.md, issue 19).

Embeds 64 demo notes with zero-shot Gemma 3 270M in float32, then with int8 recipes, and prints each one's
min / mean cosine to float32 and its notes/s in the same run: plain dynamic int8 (one activation scale per
tensor), SmoothQuant-style smoothing folded into the decoder (`quantize.smooth_decoder`, scales from the fixed
calibration notes) at a = .5, .7, .85, a = .5 with down_proj kept in float32 (the earlier recipe), one activation
scale per token without and with smoothing (`INT8_RECIPE`, the default).

    .venv/bin/python benchmarks/int8_outliers.py [--backbone gemma-3-270m] [--notes 64] [--threads 1]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from embed_speed import demo_notes  # noqa: E402

from notellm.device import cpu_model  # noqa: E402
from notellm.inference.embed import Embedder  # noqa: E402
from notellm.inference.quantize import INT8_RECIPE, count_int8_layers, quantize_int8  # noqa: E402

RECIPES = {
    "float32": None,
    "int8, plain": {"smooth_alpha": None, "keep_float": (), "per_token": False},
    "int8, smooth a=.5": {"smooth_alpha": 0.5, "keep_float": (), "per_token": False},
    "int8, smooth a=.7": {"smooth_alpha": 0.7, "keep_float": (), "per_token": False},
    "int8, smooth a=.85": {"smooth_alpha": 0.85, "keep_float": (), "per_token": False},
    "int8, smooth a=.5, down_proj float32": {"smooth_alpha": 0.5, "keep_float": ("down_proj",), "per_token": False},
    "int8, per-token scales, no smoothing": {"smooth_alpha": None, "keep_float": ()},
    "int8, smooth a=.5, per-token scales (default)": {"smooth_alpha": INT8_RECIPE["smooth_alpha"],
                                                      "keep_float": tuple(INT8_RECIPE["keep_float"])},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="gemma-3-270m")
    parser.add_argument("--notes", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    notes = demo_notes(args.notes)
    print(f"CPU: {cpu_model()}; torch {torch.__version__}, {args.threads} thread(s); zero-shot:{args.backbone}, "
          f"{len(notes)} demo notes")
    print("| recipe | int8 layers | min cos | mean cos | notes/s | vs float32 |\n|---|---|---|---|---|---|")
    reference, fp32_rate = None, None
    for label, recipe in RECIPES.items():
        e = Embedder(f"zero-shot:{args.backbone}", bf16=False)
        if recipe is not None:
            quantize_int8(e.model, **recipe)
        e.encode(notes[:8])  # warm-up
        t = time.perf_counter()
        v = e.encode(notes)
        rate = len(notes) / (time.perf_counter() - t)
        reference = v if reference is None else reference
        fp32_rate = fp32_rate or rate
        cos = (v * reference).sum(axis=1)
        print(f"| {label} | {count_int8_layers(e.model)} | {cos.min():.4f} | {cos.mean():.4f} | {rate:.1f} | "
              f"{rate / fp32_rate:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
