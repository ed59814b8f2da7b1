"""Embedding throughput: `notellm embed` (float32, bf16, int8) against sentence-transformers `encode` (float32,
its default, and with bf16 weights), same backbone, same pooling, same notes, in one run.

All embed the same demo-corpus notes with the offline default backbone (Gemma 3 270M), pooling the hidden
state just before `[EMB]` (sentence-transformers: `lasttoken` pooling over the prompt cut right before `[EMB]`,
the same position). Prints the CPU model, notes/s, the ratio to sentence-transformers' fastest form on this
CPU, and the min / mean cosine of each method's vectors to ours in float32. Then `notellm embed --int8` with
1 and with 2 torch threads (what the CPU rewards decides `notellm.device.default_threads`).

    python benchmarks/embed_speed.py --notes 256

Each method is timed `--repeats` times, interleaved (method 1, 2, ..., then again), and its best time is
kept: on a CPU that other jobs share, the best of interleaved repeats is the least disturbed measurement.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch


def demo_notes(n: int) -> list[dict]:
    from notellm.data.demo import generate_demo

    table = generate_demo(n_notes=n, seed=0).notes
    return table.select(["note_id", "title", "content", "hashtags", "category", "image_paths"]).to_pylist()


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def best_times(methods: dict, repeats: int) -> tuple[dict, dict]:
    """Run every method `repeats` times, interleaved; the best wall time and the last vectors of each."""
    best, vectors = {name: float("inf") for name in methods}, {}
    for _ in range(repeats):
        for name, fn in methods.items():
            start = time.perf_counter()
            vectors[name] = fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best, vectors


def with_threads(n: int, fn):
    def run():
        before = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            return fn()
        finally:
            torch.set_num_threads(before)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--notes", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--backbone", default="gemma-3-270m")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip-bf16", action="store_true", help="leave out the bf16 rows (slow without bf16 units)")
    args = parser.parse_args()

    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    from notellm.device import cpu_bf16_works, machine_summary
    from notellm.inference.embed import Embedder
    from notellm.models.backbone import resolve_backbone
    from notellm.models.prompts import EMB_TOKEN

    notes = demo_notes(args.notes)
    spec = f"zero-shot:{args.backbone}"
    ours = {"fp32": Embedder(spec, bf16=False, batch_size=args.batch_size),
            "int8": Embedder(spec, quantize="int8", batch_size=args.batch_size)}
    if not args.skip_bf16:
        ours["bf16"] = Embedder(spec, bf16=True, batch_size=args.batch_size)
    texts = [p.prefix.split(EMB_TOKEN)[0] for p in ours["fp32"].model.prompts_for(notes)]
    path, hidden = resolve_backbone(args.backbone), ours["fp32"].model.dim

    def st_model(dtype):
        transformer = Transformer(path, model_kwargs={"dtype": dtype})
        return SentenceTransformer(modules=[transformer, Pooling(hidden, "lasttoken"), Normalize()], device="cpu")

    st = {"fp32": st_model(torch.float32)}
    if not args.skip_bf16:
        st["bf16"] = st_model(torch.bfloat16)
    methods = {f"sentence-transformers encode ({'fp32, default' if k == 'fp32' else 'bf16 weights'})":
               (lambda m=m: m.encode(texts, batch_size=args.batch_size, convert_to_numpy=True)) for k, m in st.items()}
    methods.update({f"notellm embed ({'--int8' if k == 'int8' else k})": (lambda e=e: e.encode(notes))
                    for k, e in ours.items()})
    threads = torch.get_num_threads()
    if threads > 1:
        methods["notellm embed (--int8), 1 thread"] = with_threads(1, lambda: ours["int8"].encode(notes))
    for e in ours.values():  # warm-up on one batch: allocations, oneDNN / fbgemm kernels
        e.encode(notes[: args.batch_size])
    for m in st.values():
        m.encode(texts[: args.batch_size])
    best, vectors = best_times(methods, args.repeats)

    reference = vectors["notellm embed (fp32)"]
    st_names = [n for n in methods if n.startswith("sentence-transformers")]
    fastest_st = min(st_names, key=lambda n: best[n])
    n = len(notes)
    print(f"\n{machine_summary()}; native bf16: {cpu_bf16_works()}; backbone {args.backbone}; {n} demo notes, "
          f"batch {args.batch_size}; best of {args.repeats} interleaved runs; load average "
          f"{os.getloadavg()[0]:.1f}")
    print(f"| method | notes/s | x {fastest_st.removeprefix('sentence-transformers ')} | min cos | mean cos |")
    print("|---|---|---|---|---|")
    for name in methods:
        c = cosines(vectors[name], reference)
        print(f"| {name} | {n / best[name]:.1f} | {best[fastest_st] / best[name]:.2f} | {c.min():.5f} | "
              f"{c.mean():.5f} |")
    int8_ratio = best[fastest_st] / best["notellm embed (--int8)"]
    print(f"\nint8 / fastest sentence-transformers ({fastest_st}): {int8_ratio:.2f}x (target >= 1.5x); "
          f"min cosine int8 vs fp32 {cosines(vectors['notellm embed (--int8)'], reference).min():.5f} "
          f"(target >= 0.99)")
    if threads > 1:
        print(f"int8 with {threads} threads / 1 thread: "
              f"{best['notellm embed (--int8), 1 thread'] / best['notellm embed (--int8)']:.2f}x")


if __name__ == "__main__":
    main()
