"""`notellm embed`: embed a Note table with a trained model or a zero-shot backbone."""

from __future__ import annotations

import typer

from notellm.cli.common import console, progress

app = typer.Typer()


@app.command("embed")
def embed(
    notes: str = typer.Argument(..., help="Note table (Parquet)"),
    model: str = typer.Option(..., "--model", "-m",
                              help="a trained model folder, or zero-shot:<backbone>[@pooling], e.g. zero-shot:gemma-3-270m@mean"),
    out: str = typer.Option(..., "--out", "-o", help="output folder (embeddings.npy, note_ids.txt, meta.json)"),
    batch_size: int = typer.Option(32, help="notes per forward pass (batches are sorted by length)"),
    shard_size: int = typer.Option(4096, help="notes per on-disk shard; finished shards are skipped on resume"),
    pooling: str = typer.Option(None, help="override pooling: before_emb | emb | last | mean"),
    bf16: bool = typer.Option(None, "--bf16/--fp32", help="default: bf16 where the CPU/GPU supports it"),
    restart: bool = typer.Option(False, "--restart", help="discard the shards of an earlier run in --out and "
                                                           "start fresh"),
    int8: bool = typer.Option(False, "--int8", help="CPU: int8 dynamic quantization of the decoder's Linear layers "
                                                    "(faster; vectors within ~0.99 cosine of float32)"),
    threads: int = typer.Option(0, help="torch CPU threads (0: what this CPU rewards, see notellm.device)"),
    engine: str = typer.Option("local", help="local | ray (Ray Data model actors; Parquet shards)"),
    ray_workers: int = typer.Option(2, help="--engine ray: model actors"),
    ray_cpus: float = typer.Option(1.0, help="--engine ray: CPUs per actor (its torch threads)"),
    ray_gpus: float = typer.Option(0.0, help="--engine ray: GPUs per actor (e.g. 1, or 0.5 to share one)"),
    ray_address: str = typer.Option(None, help="--engine ray: an existing cluster (default: a local instance)"),
) -> None:
    """Embed every note; a killed run started again resumes from its finished shards.

    The shards carry a fingerprint of the model, the note table, the prompt settings, the dtype and the shard
    size: a rerun with any of them changed is refused (use --restart, or another --out). The finished folder
    replaces --out whole.

    On several GPUs: `accelerate launch -m notellm.cli embed ...` (each process takes every world-th shard;
    the main process merges).
    """
    import os

    import torch

    from notellm.inference.embed import embed_table

    from notellm.device import resolve_device, rewarded_threads, set_threads

    if resolve_device("auto") == "cpu":
        set_threads(threads or rewarded_threads())
    quantize = "int8" if int8 else None
    if engine == "ray":
        from notellm.inference.ray_embed import embed_table_ray

        with progress() as bar:
            task = bar.add_task("embed (ray)", total=None)
            result = embed_table_ray(notes, model, out, shard_size=shard_size, batch_size=batch_size, bf16=bf16,
                                     pooling=pooling, quantize=quantize, workers=ray_workers,
                                     cpus_per_worker=ray_cpus, gpus_per_worker=ray_gpus, address=ray_address,
                                     on_shard=lambda n: bar.advance(task, n))
        console.print(f"[green]wrote[/] {result}/embeddings.npy")
        return
    if engine != "local":
        from notellm.errors import ConfigError

        raise ConfigError(f"--engine must be local or ray, not {engine!r}")
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    with progress() as bar:
        result = embed_table(notes, model, out, shard_size=shard_size, batch_size=batch_size, bf16=bf16,
                             pooling=pooling, rank=rank, world=world, progress=bar, restart=restart,
                             quantize=quantize)
    if result is not None:
        console.print(f"[green]wrote[/] {result}/embeddings.npy")
