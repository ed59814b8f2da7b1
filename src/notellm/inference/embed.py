"""Batch embedding of note tables: length-sorted batches, inference mode, bf16 where the hardware has it,
output sharded to disk (resumable after a kill) and merged into one folder:

    out_dir/embeddings.npy   float32 [n, dim], L2-normalised, in note-table order
    out_dir/note_ids.txt     one note id per line, same order
    out_dir/meta.json        model, prompt, pooling, dim, count

Across processes (`accelerate launch notellm embed ...`), shard k goes to process k % world; the main
process merges when every shard is on disk.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from notellm.device import bf16_supported
from notellm.errors import DataError, NotellmError
from notellm.io import atomic_path, write_json

ZERO_SHOT_PREFIX = "zero-shot:"  # `zero-shot:<backbone>[@pooling]`: an untrained NoteLLM (PromptEOL-style)


def embed_notes(model, notes: Sequence[dict[str, Any]], batch_size: int = 32, bf16: bool = False,
                on_batch: Callable[[int], None] | None = None) -> np.ndarray:
    """L2-normalised embeddings of note dicts, computed in length-sorted batches (least padding)."""
    rows, labels = model.tokenize(model.prompts_for(notes), with_answers=False)
    order = np.argsort([len(r) for r in rows], kind="stable")
    out = np.zeros((len(notes), model.dim), dtype=np.float32)
    device = model.device
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start: start + batch_size]
            batch = model.pad([rows[i] for i in idx], [labels[i] for i in idx])
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                emb = model(batch["input_ids"].to(device), batch["attention_mask"].to(device),
                            batch["emb_pos"].to(device))["embeddings"]
            out[idx] = emb.float().cpu().numpy()
            if on_batch:
                on_batch(len(idx))
    return out


def load_model_for_embedding(model: str, bf16: bool, pooling: str | None = None):
    """A trained model folder, or `zero-shot:<backbone>[@pooling]`: an untrained NoteLLM without projection
    (the PromptEOL-style zero-shot baseline: the hidden state before `[EMB]`, or the mean over the prompt)."""
    from notellm.models.notellm import NoteLLMConfig, build_notellm, load_notellm

    dtype = "bfloat16" if bf16 else "float32"
    if model.startswith(ZERO_SHOT_PREFIX):
        backbone, _, at_pooling = model[len(ZERO_SHOT_PREFIX):].partition("@")
        config = NoteLLMConfig(backbone=backbone, dim=0, pooling=pooling or at_pooling or "before_emb")
        return build_notellm(config, dtype=dtype).eval()
    # NoteLLM-2 (issue 7): a model card with a "multimodal" section loads the image + text model
    from notellm.models.multimodal import is_multimodal_model, load_notellm2

    m = load_notellm2(model, dtype=dtype) if is_multimodal_model(model) else load_notellm(model, dtype=dtype)
    if pooling:
        m.config.pooling = pooling
    return m


class Embedder:
    """Embed notes with a model folder or `zero-shot:<backbone>`; `.meta` describes the vectors."""

    def __init__(self, model: str, bf16: bool | None = None, batch_size: int = 32, pooling: str | None = None):
        self.bf16 = bf16_supported() if bf16 is None else bf16
        self.model = load_model_for_embedding(model, self.bf16, pooling)
        self.batch_size = batch_size
        cfg = self.model.config
        self.meta = {"model": model, "backbone": cfg.backbone, "pooling": cfg.pooling, "dim": self.model.dim,
                     "prompt": vars(cfg.prompt), "max_length": cfg.max_length, "bf16": self.bf16}

    def encode(self, notes: Sequence[dict[str, Any] | str], on_batch=None) -> np.ndarray:
        """Note dicts (Note-table rows) or plain strings (see `as_notes`) -> L2-normalised vectors."""
        return embed_notes(self.model, as_notes(notes), self.batch_size, self.bf16, on_batch)


def as_notes(items: Sequence[dict[str, Any] | str]) -> list[dict[str, Any]]:
    """Note dicts as given; a plain string becomes a note whose content is the string (its inline `#话题#`
    hashtags read into `hashtags`, as `notellm data import` reads a body), with an empty title."""
    from notellm.data.text import parse_hashtags, strip_hashtags

    if isinstance(items, (str, dict)):
        raise TypeError("pass a list of strings or note dicts, not a single one")
    notes = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            notes.append({"note_id": str(i), "title": "", "content": strip_hashtags(item),
                          "hashtags": parse_hashtags(item), "category": []})
        elif isinstance(item, dict):
            notes.append(item if "note_id" in item else {**item, "note_id": str(i)})
        else:
            raise TypeError(f"item {i}: expected a string or a note dict, got {type(item).__name__}")
    return notes


def load_embedder(model_dir: str, **kwargs) -> Embedder:
    return Embedder(model_dir, **kwargs)


# ---- sharded, resumable runs -----------------------------------------------------------------------------
def _shard_path(out_dir: Path, k: int) -> Path:
    return out_dir / "shards" / f"shard-{k:05d}.npz"


def embed_table(notes_path: str, model: str, out_dir: str, shard_size: int = 4096, batch_size: int = 32,
                bf16: bool | None = None, pooling: str | None = None, rank: int = 0, world: int = 1,
                progress=None) -> Path | None:
    """Embed a Note table into `out_dir`; finished shards are kept and skipped when run again."""
    from notellm.data.schema import read_notes

    out = Path(out_dir)
    table = read_notes(notes_path)
    cols = ["note_id", "title", "content", "hashtags", "category", "image_paths"]
    rows = table.select(cols).to_pylist()
    n_shards = max(1, -(-len(rows) // shard_size))
    todo = [k for k in range(n_shards) if k % world == rank and not _shard_path(out, k).exists()]
    embedder = Embedder(model, bf16=bf16, batch_size=batch_size, pooling=pooling)
    (out / "shards").mkdir(parents=True, exist_ok=True)
    task = progress.add_task("embed", total=sum(len(rows[k * shard_size:(k + 1) * shard_size]) for k in todo)) \
        if progress else None
    for k in todo:
        chunk = rows[k * shard_size:(k + 1) * shard_size]
        vectors = embedder.encode(chunk, on_batch=(lambda n: progress.advance(task, n)) if progress else None)
        with atomic_path(_shard_path(out, k), suffix=".npz") as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, ids=np.array([r["note_id"] for r in chunk], dtype=object), vectors=vectors)
    if world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()  # every process, so the main one merges only once all shards are written
    if rank == 0:
        _check_shards(out, n_shards)
        return merge_shards(out, n_shards, {**embedder.meta, "notes": str(notes_path), "count": len(rows)})
    return None


def _check_shards(out: Path, n_shards: int) -> None:
    missing = [k for k in range(n_shards) if not _shard_path(out, k).exists()]
    if missing:
        raise NotellmError(f"{len(missing)} shard(s) missing in {out}/shards (e.g. {missing[:3]}); run again")


def merge_shards(out: Path, n_shards: int, meta: dict[str, Any]) -> Path:
    ids: list[str] = []
    parts = []
    for k in range(n_shards):
        with np.load(_shard_path(out, k), allow_pickle=True) as data:
            ids.extend(str(i) for i in data["ids"])
            parts.append(data["vectors"])
    write_embeddings(ids, np.concatenate(parts), meta, out)
    return out


def write_embeddings(ids: Sequence[str], vectors: np.ndarray, meta: dict[str, Any], out_dir: str | Path) -> Path:
    out = Path(out_dir)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if len(ids) != vectors.shape[0]:
        raise NotellmError(f"{len(ids)} ids but {vectors.shape[0]} vectors")
    with atomic_path(out / "embeddings.npy", suffix=".npy") as tmp:
        with open(tmp, "wb") as f:
            np.save(f, vectors)
    with atomic_path(out / "note_ids.txt") as tmp:
        tmp.write_text("\n".join(ids) + "\n", encoding="utf-8")
    write_json({**meta, "dim": int(vectors.shape[1]), "count": len(ids)}, out / "meta.json")
    return out


def read_embeddings(path: str | Path) -> tuple[list[str], np.ndarray, dict[str, Any]]:
    path = Path(path)
    for name in ("embeddings.npy", "note_ids.txt", "meta.json"):
        if not (path / name).exists():
            raise DataError(f"not an embeddings folder (missing {name})", file=str(path))
    vectors = np.load(path / "embeddings.npy")
    ids = (path / "note_ids.txt").read_text(encoding="utf-8").splitlines()
    meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
    if len(ids) != vectors.shape[0]:
        raise DataError(f"{len(ids)} note ids but {vectors.shape[0]} vectors", file=str(path))
    return ids, vectors, meta
