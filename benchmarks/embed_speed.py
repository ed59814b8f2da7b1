"""Embedding throughput: `notellm embed` against sentence-transformers `encode`, same backbone, same pooling.

Both embed the same demo-corpus notes with the offline default backbone (Gemma 3 270M), pooling the hidden
state just before `[EMB]` (sentence-transformers: `lasttoken` pooling over the prompt cut right before `[EMB]`,
which is the same position). Prints notes/s, the ratio, and the cosine between the two sets of vectors.

    python benchmarks/embed_speed.py --notes 512
"""

from __future__ import annotations

import argparse
import os
import platform
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch


def demo_notes(n: int) -> list[dict]:
    from notellm.data.demo import generate_demo

    table = generate_demo(n_notes=n, seed=0).notes
    return table.select(["note_id", "title", "content", "hashtags", "category", "image_paths"]).to_pylist()


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--notes", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--backbone", default="gemma-3-270m")
    args = parser.parse_args()

    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    from notellm.inference.embed import Embedder, bf16_supported
    from notellm.models.backbone import resolve_backbone
    from notellm.models.prompts import EMB_TOKEN

    notes = demo_notes(args.notes)
    ours_bf16 = Embedder(f"zero-shot:{args.backbone}", bf16=bf16_supported(), batch_size=args.batch_size)
    ours_fp32 = Embedder(f"zero-shot:{args.backbone}", bf16=False, batch_size=args.batch_size)
    texts = [p.prefix.split(EMB_TOKEN)[0] for p in ours_fp32.model.prompts_for(notes)]

    path = resolve_backbone(args.backbone)
    hidden = ours_fp32.model.dim

    def st_model(dtype):
        transformer = Transformer(path, model_kwargs={"dtype": dtype})
        return SentenceTransformer(modules=[transformer, Pooling(hidden, "lasttoken"), Normalize()], device="cpu")

    st_fp32, st_bf16 = st_model(torch.float32), st_model(torch.bfloat16)
    warm = notes[: args.batch_size]
    for fn in (lambda: ours_bf16.encode(warm), lambda: ours_fp32.encode(warm),
               lambda: st_fp32.encode(texts[: args.batch_size]), lambda: st_bf16.encode(texts[: args.batch_size])):
        fn()  # warm-up (allocations, oneDNN kernels)
    rows = []
    v_ours, t_ours = timed(lambda: ours_bf16.encode(notes))
    v_ours32, t_ours32 = timed(lambda: ours_fp32.encode(notes))
    v_st, t_st = timed(lambda: st_fp32.encode(texts, batch_size=args.batch_size, convert_to_numpy=True))
    v_st16, t_st16 = timed(lambda: st_bf16.encode(texts, batch_size=args.batch_size, convert_to_numpy=True))
    cos = lambda a, b: float(np.min(np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))
    n = len(notes)
    rows = [
        ("sentence-transformers encode (fp32, default)", n / t_st, 1.0, cos(v_st, v_ours32)),
        ("sentence-transformers encode (bf16 weights)", n / t_st16, t_st / t_st16, cos(v_st16, v_ours32)),
        ("notellm embed (fp32)", n / t_ours32, t_st / t_ours32, cos(v_ours32, v_st)),
        (f"notellm embed (bf16={ours_bf16.bf16})", n / t_ours, t_st / t_ours, cos(v_ours, v_st)),
    ]
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}; backbone {args.backbone}; {n} demo notes, batch {args.batch_size}")
    print(f"{'method':48s} {'notes/s':>9s} {'x ST fp32':>10s} {'min cos vs other':>17s}")
    for name, rate, ratio, c in rows:
        print(f"{name:48s} {rate:9.1f} {ratio:10.2f} {c:17.5f}")
    print(f"\nratio notellm embed / sentence-transformers (default): {t_st / t_ours:.2f}x (target >= 1.5x)")


if __name__ == "__main__":
    main()
