"""Ray embedding throughput next to the local path, on the same notes, in one run (issue 19).

Embeds `--notes` demo-corpus notes with the offline default backbone (zero-shot Gemma 3 270M, float32 unless
the CPU has bf16 units) twice: `notellm embed` (the local path, one process, its chosen torch threads) and
`notellm embed --engine ray` (a local Ray instance, `--workers` model actors of `--cpus-per-worker` CPUs each,
shards of `--shard-size` notes). Ray's own start-up (raylet, GCS) is timed apart from the embedding, which
includes the actors' model loads, as a user's run does. Prints the CPU model, notes/s of both, their ratio
and the largest difference between the two paths' vectors (they must agree).

    .venv/bin/python benchmarks/ray_embed.py --notes 256

On one machine Ray can only split the same cores among actors, so a ratio near 1 is what to expect; Ray's
point is machines beyond this one (`--ray-address` of a cluster), which this script does not measure.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np


def write_demo_notes(n: int, folder: Path) -> Path:
    from notellm.data.demo import generate_demo
    from notellm.data.schema import write_notes

    return write_notes(generate_demo(n_notes=n, seed=0).notes, folder / "notes.parquet")


def read_vectors(folder: Path) -> tuple[list[str], np.ndarray]:
    ids = (folder / "note_ids.txt").read_text(encoding="utf-8").splitlines()
    return ids, np.load(folder / "embeddings.npy", allow_pickle=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--notes", type=int, default=256)
    parser.add_argument("--model", default="zero-shot:gemma-3-270m")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cpus-per-worker", type=float, default=1.0)
    parser.add_argument("--shard-size", type=int, default=64)
    args = parser.parse_args()

    from notellm.device import machine_summary
    from notellm.inference.embed import embed_table
    from notellm.inference.ray_embed import embed_table_ray, ensure_ray

    print(machine_summary(), f"; load average before {os.getloadavg()[0]:.1f}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        notes = str(write_demo_notes(args.notes, tmp))
        start = time.perf_counter()
        embed_table(notes, args.model, str(tmp / "local"), shard_size=args.shard_size, batch_size=args.batch_size)
        local_s = time.perf_counter() - start

        start = time.perf_counter()
        ray = ensure_ray(None, args.workers, args.cpus_per_worker)
        ray_start_s = time.perf_counter() - start
        start = time.perf_counter()
        embed_table_ray(notes, args.model, str(tmp / "ray"), shard_size=args.shard_size,
                        batch_size=args.batch_size, workers=args.workers, cpus_per_worker=args.cpus_per_worker)
        ray_s = time.perf_counter() - start
        ray.shutdown()

        local_ids, local_vectors = read_vectors(tmp / "local")
        ray_ids, ray_vectors = read_vectors(tmp / "ray")
    if local_ids != ray_ids:
        print("the two paths returned different note ids")
        return 1
    diff = float(np.abs(local_vectors - ray_vectors).max())
    n = args.notes
    print(f"\n{n} demo notes, {args.model}, batch {args.batch_size}, shards of {args.shard_size}\n")
    print("| path | seconds | notes/s | ratio |")
    print("|---|---|---|---|")
    print(f"| local `notellm embed` (1 process) | {local_s:.1f} | {n / local_s:.2f} | 1.00 |")
    print(f"| `--engine ray`, {args.workers} actors x {args.cpus_per_worker:g} CPU (embedding, actors' model "
          f"loads included) | {ray_s:.1f} | {n / ray_s:.2f} | {local_s / ray_s:.2f} |")
    print(f"| `--engine ray` with Ray's start-up ({ray_start_s:.1f} s) | {ray_s + ray_start_s:.1f} | "
          f"{n / (ray_s + ray_start_s):.2f} | {local_s / (ray_s + ray_start_s):.2f} |")
    print(f"\nlargest |local - ray| over all vector components: {diff:.2e}", flush=True)
    return 0 if diff < 1e-4 else 1


if __name__ == "__main__":
    raise SystemExit(main())
