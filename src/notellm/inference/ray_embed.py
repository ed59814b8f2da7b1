"""`notellm embed --engine ray`: embedding a Note table on a Ray cluster with Ray Data.

The table is cut into the same shards as the local path (`shard_size` rows each, in table order). Ray Data
hands the shards to a pool of model actors (`map_batches` with a callable class: each actor loads the model
once, on its GPU when `gpus_per_worker` > 0); an actor reads its shard's rows from the Note table (Parquet),
embeds them exactly as the local path does (`Embedder`, length-sorted batches within the shard), and writes
`ray_shards/shard-XXXXX.parquet` (note_id, vector) whole, through a temporary name. The driver then merges the
shards into the usual embeddings folder (embeddings.npy, note_ids.txt, meta.json), so every later command
reads a Ray run like a local one.

Resumable: a shard already on disk is not computed again. `ray_shards/run.json` records what made the shards
(the notes' and a model folder's content digests, pooling, precision, quantization, shard and batch size); a
run with other settings in the same folder stops with a one-line error naming what changed.

The Note table must be readable by every worker at the same path (a shared file system), as with any Ray
Data input; on one machine that is always so.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

from notellm.errors import ConfigError, DataError, NotellmError
from notellm.inference.embed import RAY_SHARDS as SHARDS
from notellm.io import atomic_path, write_json

RUN_FILE = "run.json"
META_FILE = "embedder.json"
NOTE_FIELDS = ["note_id", "title", "content", "hashtags", "category", "image_paths"]


def shard_file(out: Path, k: int) -> Path:
    return out / SHARDS / f"shard-{k:05d}.parquet"


class ShardEmbedder:
    """A Ray Data model actor: embeds whole shards of the Note table and writes each as a Parquet file."""

    def __init__(self, notes_path: str, out_dir: str, model: str, shard_size: int, batch_size: int,
                 bf16: bool | None, pooling: str | None, quantize: str | None, threads: int):
        import torch

        from notellm.device import set_threads
        from notellm.inference.embed import Embedder

        set_threads(threads)
        self.notes_path, self.out, self.shard_size = notes_path, Path(out_dir), shard_size
        self.embedder = Embedder(model, bf16=bf16, batch_size=batch_size, pooling=pooling, quantize=quantize)
        if torch.cuda.is_available() and self.embedder.quantize == "none":  # an actor given a GPU uses it
            self.embedder.model.to("cuda")
        meta = self.out / SHARDS / META_FILE
        if not meta.exists():  # what the vectors are (backbone, dim, prompt, precision) for the merged folder
            write_json(self.embedder.meta, meta)
        self._rows: list[dict[str, Any]] | None = None

    def rows(self) -> list[dict[str, Any]]:
        if self._rows is None:  # read once per actor, validated as the local path does
            from notellm.data.schema import read_notes

            self._rows = read_notes(self.notes_path).select(NOTE_FIELDS).to_pylist()
        return self._rows

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        counts = []
        for k in batch["shard"].tolist():
            chunk = self.rows()[k * self.shard_size:(k + 1) * self.shard_size]
            vectors = self.embedder.encode(chunk)
            write_shard(shard_file(self.out, k), [r["note_id"] for r in chunk], vectors)
            counts.append(len(chunk))
        return {"shard": batch["shard"], "count": np.asarray(counts, dtype=np.int64)}


def write_shard(path: Path, ids: list[str], vectors: np.ndarray) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1))
    table = pa.table({"note_id": pa.array(ids, pa.string()),
                      "vector": pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])})
    with atomic_path(path, suffix=".parquet") as tmp:
        pq.write_table(table, tmp)


def read_shard(path: Path) -> tuple[list[str], np.ndarray]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    vectors = table.column("vector").combine_chunks()
    dim = vectors.type.list_size
    return table.column("note_id").to_pylist(), vectors.flatten().to_numpy().reshape(-1, dim)


def run_fingerprint(notes_path: str, model: str, settings: dict[str, Any]) -> dict[str, Any]:
    """What makes the shards: the inputs' content digests and every setting that changes a vector."""
    from notellm.fingerprint import file_digest

    model_digest = file_digest(model)["sha256"] if Path(model).exists() else model
    return {"notes": file_digest(notes_path)["sha256"], "model": model, "model_digest": model_digest, **settings}


def check_run(out: Path, fingerprint: dict[str, Any]) -> None:
    """Record the run's fingerprint, or refuse a folder whose shards another run made."""
    from notellm.fingerprint import describe_changes

    path = out / SHARDS / RUN_FILE
    if path.exists():
        old = json.loads(path.read_text(encoding="utf-8"))
        if old != fingerprint:
            changes = "; ".join(describe_changes(old, fingerprint))
            raise ConfigError(f"{out}: its Ray shards were made by another run ({changes}); "
                              "use another --out or delete the folder")
        return
    (out / SHARDS).mkdir(parents=True, exist_ok=True)
    write_json(fingerprint, path)


def note_count(notes_path: str) -> int:
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(notes_path).metadata.num_rows
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read as Parquet ({exc})", file=str(notes_path)) from None


def ensure_ray(address: str | None, workers: int, cpus_per_worker: float):
    """A running Ray: the one this process already joined, the cluster at `address`, or a local instance
    with just the CPUs the workers need."""
    try:
        import ray
    except ImportError:
        raise NotellmError("--engine ray needs Ray Data: pip install 'notellm[distributed]'") from None
    if not ray.is_initialized():
        kwargs = {"address": address} if address else {"num_cpus": max(1, int(np.ceil(workers * cpus_per_worker)))}
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False, **kwargs)
    return ray


def embed_table_ray(notes_path: str, model: str, out_dir: str, shard_size: int = 4096, batch_size: int = 32,
                    bf16: bool | None = None, pooling: str | None = None, quantize: str | None = None,
                    workers: int = 2, cpus_per_worker: float = 1.0, gpus_per_worker: float = 0.0,
                    address: str | None = None, on_shard: Callable[[int], None] | None = None) -> Path:
    """Embed a Note table with Ray Data model actors into `out_dir` (the local path's folder format);
    finished shards are kept and skipped when run again. Returns `out_dir`."""
    from notellm.inference.quantize import check_quantize

    if workers < 1 or shard_size < 1 or batch_size < 1 or cpus_per_worker <= 0 or gpus_per_worker < 0:
        raise ConfigError("ray embedding needs workers, shard_size, batch_size >= 1, cpus_per_worker > 0 "
                          "and gpus_per_worker >= 0")
    quantize = check_quantize(quantize)
    out = Path(out_dir)
    n_rows = note_count(notes_path)
    n_shards = max(1, -(-n_rows // shard_size))
    settings = {"pooling": pooling, "bf16": bf16, "quantize": quantize, "shard_size": shard_size,
                "batch_size": batch_size, "rows": n_rows}
    check_run(out, run_fingerprint(notes_path, model, settings))
    todo = [k for k in range(n_shards) if not shard_file(out, k).exists()]
    if todo:
        ray = ensure_ray(address, workers, cpus_per_worker)
        from ray.data import ActorPoolStrategy

        dataset = ray.data.from_items([{"shard": k} for k in todo], override_num_blocks=len(todo))
        embedded = dataset.map_batches(
            ShardEmbedder, batch_size=1, batch_format="numpy",
            compute=ActorPoolStrategy(size=min(workers, len(todo))),
            fn_constructor_kwargs=dict(notes_path=str(Path(notes_path).resolve()), out_dir=str(out.resolve()),
                                       model=model, shard_size=shard_size, batch_size=batch_size, bf16=bf16,
                                       pooling=pooling, quantize=quantize, threads=max(1, int(cpus_per_worker))),
            num_cpus=cpus_per_worker, num_gpus=gpus_per_worker or None)
        try:
            for row in embedded.iter_rows():
                if on_shard:
                    on_shard(int(row["count"]))
        except Exception as exc:  # a worker's DataError arrives wrapped by Ray: give its one line
            cause = getattr(exc, "cause", None) or exc.__cause__
            if isinstance(cause, NotellmError):
                raise cause from None
            raise
    return merge_ray_shards(out, n_shards, {"notes": str(notes_path), "engine": "ray"})


def merge_ray_shards(out: Path, n_shards: int, meta: dict[str, Any]) -> Path:
    from notellm.inference.embed import write_embeddings

    missing = [k for k in range(n_shards) if not shard_file(out, k).exists()]
    if missing:
        raise NotellmError(f"{len(missing)} Ray shard(s) missing in {out / SHARDS} (e.g. {missing[:3]}); run again")
    meta = {**json.loads((out / SHARDS / META_FILE).read_text(encoding="utf-8")), **meta}
    ids: list[str] = []
    parts = []
    for k in range(n_shards):
        shard_ids, vectors = read_shard(shard_file(out, k))
        ids.extend(shard_ids)
        parts.append(vectors)
    kept = sorted(p for p in (out / SHARDS).iterdir() if p.is_file() and not p.name.endswith(".tmp"))
    return write_embeddings(ids, np.concatenate(parts), meta, out, keep_shards=kept, shard_folder=SHARDS)
