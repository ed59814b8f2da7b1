"""Batch embedding of note tables: length-sorted batches, inference mode, bf16 where the hardware has it,
output sharded to disk (resumable after a kill) and merged into one folder that replaces `out_dir` whole:

    out_dir/embeddings.npy   float32 [n, dim], L2-normalised, in note-table order
    out_dir/note_ids.txt     one note id per line, same order
    out_dir/meta.json        model, prompt, pooling, dim, count, the run's fingerprint
    out_dir/shards/          the finished shards (ids, vectors, fingerprint; no pickle), kept for reruns

A shard carries the fingerprint of the run that made it (model content, input rows/ids/bytes, prompt settings,
dtype, shard size); a rerun whose fingerprint differs is refused, naming each change, unless it restarts.

Across processes (`accelerate launch notellm embed ...`), shard k goes to process k % world; the main
process merges when every shard is on disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from notellm.device import bf16_supported
from notellm.errors import ConfigError, DataError, NotellmError
from notellm.fingerprint import describe_changes, file_digest
from notellm.io import atomic_dir, atomic_path, clean_stale_temps

ZERO_SHOT_PREFIX = "zero-shot:"  # `zero-shot:<backbone>[@pooling]`: an untrained NoteLLM (PromptEOL-style)


def embed_notes(model, notes: Sequence[dict[str, Any]], batch_size: int = 32, bf16: bool = False,
                on_batch: Callable[[int], None] | None = None) -> np.ndarray:
    """L2-normalised embeddings of note dicts, computed in length-sorted batches (least padding)."""
    def take(m, batch):
        return m(batch["input_ids"], batch["attention_mask"], batch["emb_pos"])["embeddings"]

    return _note_batches(model, notes, batch_size, bf16, on_batch, take, model.dim)


def _note_batches(model, notes: Sequence[dict[str, Any]], batch_size: int, bf16: bool,
                  on_batch: Callable[[int], None] | None, take: Callable[[Any, dict], torch.Tensor],
                  width: int) -> np.ndarray:
    """`take(model, batch)` for length-sorted batches of the notes' embedding prompts, in note order."""
    rows, labels = model.tokenize(model.prompts_for(notes), with_answers=False)
    order = np.argsort([len(r) for r in rows], kind="stable")
    out = np.zeros((len(notes), width), dtype=np.float32)
    device = model.device
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start: start + batch_size]
            batch = {k: v.to(device) for k, v in model.pad([rows[i] for i in idx], [labels[i] for i in idx]).items()}
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                values = take(model, batch)
            out[idx] = values.float().cpu().numpy().reshape(len(idx), width)
            if on_batch:
                on_batch(len(idx))
    return out


def _head_input(model, batch: dict) -> torch.Tensor:
    hidden = model.hidden_states(batch["input_ids"], batch["attention_mask"])
    return model.standardized(model.pool(hidden, batch["attention_mask"], batch["emb_pos"]))


def head_features(model, notes: Sequence[dict[str, Any]], batch_size: int = 32, bf16: bool = False,
                  on_batch: Callable[[int], None] | None = None) -> np.ndarray:
    """float32 [n, hidden]: the standardized pooled state of each note's embedding prompt, exactly what the
    model's popularity head reads (and what its projection reads before the embedding)."""
    return _note_batches(model, notes, batch_size, bf16, on_batch, _head_input, int(model.feat_mean.numel()))


def score_notes(model, notes: Sequence[dict[str, Any]], batch_size: int = 32, bf16: bool = False,
                on_batch: Callable[[int], None] | None = None) -> np.ndarray:
    """The popularity head's score of each note (the target's units), from the embedding forward pass."""
    if getattr(model, "score_head", None) is None:
        raise NotellmError("this NoteLLM folder has no popularity head (train one on top of it: `notellm popularity "
                           "train CONFIG model.kind=notellm-head model.backbone=FOLDER`)")

    def take(m, batch):
        return m(batch["input_ids"], batch["attention_mask"], batch["emb_pos"])["score"]

    return _note_batches(model, notes, batch_size, bf16, on_batch, take, 1)[:, 0].astype(float)


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

    def __init__(self, model: str, bf16: bool | None = None, batch_size: int = 32, pooling: str | None = None,
                 quantize: str | None = None):
        from notellm.inference.quantize import INT8_RECIPE, check_quantize, quantize_int8

        self.quantize = check_quantize(quantize)
        if self.quantize == "int8" and bf16:
            raise ConfigError("int8 embedding runs its other layers in float32: drop --bf16 (or --int8)")
        self.bf16 = (bf16_supported() if bf16 is None else bf16) and self.quantize == "none"
        self.model = load_model_for_embedding(model, self.bf16, pooling)
        if self.quantize == "int8":
            quantize_int8(self.model)
        self.batch_size = batch_size
        cfg = self.model.config
        self.meta = {"model": model, "backbone": cfg.backbone, "pooling": cfg.pooling, "dim": self.model.dim,
                     "prompt": vars(cfg.prompt), "max_length": cfg.max_length, "bf16": self.bf16,
                     "quantize": self.quantize}
        if self.quantize == "int8":
            self.meta["int8"] = INT8_RECIPE

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
SHARDS = "shards"
RAY_SHARDS = "ray_shards"  # the Ray engine's Parquet shards (inference/ray_embed.py)
SHARD_FORMAT = 2  # shards of format 1 held ids as pickled objects; they are refused, never unpickled
_OUTPUT_FILES = ("embeddings.npy", "note_ids.txt", "meta.json")


def _shard_path(out_dir: Path, k: int) -> Path:
    return out_dir / SHARDS / f"shard-{k:05d}.npz"


def _positive(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"--{name.replace('_', '-')} must be a whole number of notes >= 1, got {value!r}")
    return value


def _barrier(world: int) -> None:
    if world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def check_output_folder(out: Path) -> None:
    """`out` is replaced whole when the run finishes: refuse a file, or a folder holding anything but an
    earlier embeddings output (so `--out .` cannot delete a project)."""
    if out.is_file():
        raise ConfigError(f"--out {out} is a file; give a folder for the embeddings")
    if out.is_dir():
        foreign = [p.name for p in out.iterdir()
                   if p.name not in (*_OUTPUT_FILES, SHARDS, RAY_SHARDS, "recall.json")]
        if foreign and not (out / "meta.json").is_file():
            raise ConfigError(f"--out {out} is a folder that is not an embeddings output (it holds {foreign[0]!r}); "
                              f"choose a new folder: it is replaced whole when the run finishes")


def _sha256_of(path: str | Path) -> str:
    return "sha256:" + file_digest(path)["sha256"]


def _input_fingerprint(notes_path: str | Path, ids: Sequence[str], known: dict[str, Any] | None) -> dict[str, Any]:
    """Rows, a hash of the ids and of the file's bytes; the file hash is taken from `known` (an earlier run's
    fingerprint) when size and modification time are unchanged, so resuming a big table does not re-hash it."""
    path = Path(notes_path)
    ids_sha = "sha256:" + hashlib.sha256(json.dumps(list(ids), ensure_ascii=False).encode("utf-8")).hexdigest()
    file: dict[str, Any]
    if path.is_file():
        stat = path.stat()
        old = (known or {}).get("file") or {}
        if old.get("bytes") == stat.st_size and old.get("mtime_ns") == stat.st_mtime_ns and old.get("sha256"):
            file = dict(old)
        else:
            file = {"bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": _sha256_of(path)}
    else:  # a folder of Parquet files: its files' content
        file = {"sha256": _sha256_of(path)}
    return {"rows": len(ids), "ids_sha256": ids_sha, "file": file}


def run_fingerprint(notes_path: str | Path, ids: Sequence[str], model: str, embedder: "Embedder",
                    shard_size: int, known: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the vectors of a shard depend on: the model (its folder's content, or the zero-shot backbone), the
    input, the prompt settings, the dtype and the shard size (which fixes the notes of shard k)."""
    if model.startswith(ZERO_SHOT_PREFIX):
        model_fp: dict[str, Any] = {"zero_shot": model[len(ZERO_SHOT_PREFIX):]}
    else:
        model_fp = {"sha256": _sha256_of(model)}
    meta = embedder.meta
    fingerprint = {
        "format": SHARD_FORMAT, "model": model_fp,
        "input": _input_fingerprint(notes_path, ids, (known or {}).get("input")),
        "prompt": {"backbone": meta["backbone"], "pooling": meta["pooling"], "template": meta["prompt"],
                   "max_length": meta["max_length"]},
        "dtype": "bfloat16" if embedder.bf16 else "float32", "shard_size": shard_size,
    }
    if meta.get("quantize", "none") != "none":  # int8 never mixes with float vectors (absent: older shards match)
        fingerprint["quantize"] = meta["quantize"]
        if "int8" in meta:  # the smoothing recipe changes the vectors too
            fingerprint["int8"] = meta["int8"]
    return json.loads(json.dumps(fingerprint, default=str))  # as a shard stores it (tuples become lists)


def _shard_fingerprint(path: Path) -> dict[str, Any]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return json.loads(str(data["fingerprint"]))
    except Exception as exc:  # noqa: BLE001 - anything unreadable without pickle is a refused shard
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"embedding shard is damaged or not written by this notellm embed (never unpickled: "
                        f"{first}); rerun with --restart to discard the shards", file=str(path)) from None


def _existing_shards(out: Path) -> list[Path]:
    folder = out / SHARDS
    return sorted(folder.glob("shard-*.npz")) if folder.is_dir() else []


def _check_resumable(out: Path, fingerprint: dict[str, Any]) -> None:
    """Every shard already in `out` must have been made by this very run, or the run is refused."""
    for path in _existing_shards(out):
        old = _shard_fingerprint(path)
        changes = describe_changes(old, fingerprint, ignore=("input.file.mtime_ns", "input.file.bytes"))
        if changes:
            raise DataError(f"holds shards of a different embedding run ({'; '.join(changes)}); rerun with "
                            f"--restart to discard them, or use another --out", file=str(out / SHARDS))


def embed_table(notes_path: str, model: str, out_dir: str, shard_size: int = 4096, batch_size: int = 32,
                bf16: bool | None = None, pooling: str | None = None, rank: int = 0, world: int = 1,
                progress=None, restart: bool = False, quantize: str | None = None) -> Path | None:
    """Embed a Note table into `out_dir`. Finished shards are kept and skipped when run again with the same
    model, input, prompt, dtype and shard size (a run with any of them changed is refused unless `restart`,
    which discards them); the merged folder replaces `out_dir` whole."""
    from notellm.data.schema import read_notes

    _positive(shard_size, "shard_size")
    _positive(batch_size, "batch_size")
    out = Path(out_dir)
    if rank == 0:  # killed between the merge's two renames: the previous folder (and its shards) comes back
        clean_stale_temps(out.parent, out.name)
    check_output_folder(out)
    table = read_notes(notes_path)
    cols = ["note_id", "title", "content", "hashtags", "category", "image_paths"]
    rows = table.select(cols).to_pylist()
    ids = [str(r["note_id"]) for r in rows]
    if restart and rank == 0:
        shutil.rmtree(out / SHARDS, ignore_errors=True)
    _barrier(world)
    existing = _existing_shards(out)
    known = _shard_fingerprint(existing[0]) if existing else None  # a planted file is refused before any work
    embedder = Embedder(model, bf16=bf16, batch_size=batch_size, pooling=pooling, quantize=quantize)
    fingerprint = run_fingerprint(notes_path, ids, model, embedder, shard_size, known)
    _check_resumable(out, fingerprint)
    n_shards = max(1, -(-len(rows) // shard_size))
    mine = [k for k in range(n_shards) if k % world == rank]
    (out / SHARDS).mkdir(parents=True, exist_ok=True)
    for k in mine:  # only this process's shards: another process may be writing its own right now
        clean_stale_temps(out / SHARDS, _shard_path(out, k).name)
    todo = [k for k in mine if not _shard_path(out, k).exists()]
    task = progress.add_task("embed", total=sum(len(rows[k * shard_size:(k + 1) * shard_size]) for k in todo)) \
        if progress else None
    encoded_fp = np.array(json.dumps(fingerprint, sort_keys=True))
    for k in todo:
        chunk = rows[k * shard_size:(k + 1) * shard_size]
        vectors = embedder.encode(chunk, on_batch=(lambda n: progress.advance(task, n)) if progress else None)
        with atomic_path(_shard_path(out, k), suffix=".npz") as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, ids=np.array(ids[k * shard_size:(k + 1) * shard_size], dtype=str), vectors=vectors,
                         fingerprint=encoded_fp)
    _barrier(world)  # every process, so the main one merges only once all shards are written
    if rank == 0:
        _check_shards(out, n_shards)
        meta = {**embedder.meta, "notes": str(notes_path), "count": len(rows), "fingerprint": fingerprint}
        return merge_shards(out, n_shards, meta, expected_ids=ids)
    return None


def _check_shards(out: Path, n_shards: int) -> None:
    missing = [k for k in range(n_shards) if not _shard_path(out, k).exists()]
    if missing:
        raise NotellmError(f"{len(missing)} shard(s) missing in {out}/shards (e.g. {missing[:3]}); run again")


def merge_shards(out: Path, n_shards: int, meta: dict[str, Any], expected_ids: Sequence[str] | None = None) -> Path:
    """The shards' vectors in one folder that replaces `out` whole (the shards are kept in it, hard-linked)."""
    ids: list[str] = []
    parts = []
    for k in range(n_shards):
        shard_ids, vectors = read_shard(_shard_path(out, k))
        ids.extend(shard_ids)
        parts.append(vectors)
    if expected_ids is not None and ids != list(expected_ids):
        raise DataError("the shards' note ids are not the note table's (in order); rerun with --restart",
                        file=str(out / SHARDS))
    shards = [_shard_path(out, k) for k in range(n_shards)]
    return write_embeddings(ids, np.concatenate(parts), meta, out, keep_shards=shards)


def read_shard(path: Path) -> tuple[list[str], np.ndarray]:
    """The ids and vectors of one shard, read without unpickling: a planted or damaged file is refused."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return [str(i) for i in data["ids"]], np.asarray(data["vectors"], dtype=np.float32)
    except Exception as exc:  # noqa: BLE001 - anything unreadable without pickle is a refused shard
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"embedding shard is damaged or not written by this notellm embed (never unpickled: "
                        f"{first}); rerun with --restart to discard the shards", file=str(path)) from None


def write_embeddings(ids: Sequence[str], vectors: np.ndarray, meta: dict[str, Any], out_dir: str | Path,
                     keep_shards: Sequence[Path] = (), shard_folder: str = SHARDS) -> Path:
    """Write an embeddings folder whole: it replaces `out_dir` in one rename (a reader sees the old folder or
    the new one). `keep_shards` are hard-linked (copied where links are impossible) into its `shard_folder`
    (`shards/`; the Ray engine keeps its own `ray_shards/`), so a rerun still finds them."""
    out = Path(out_dir)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if len(ids) != vectors.shape[0]:
        raise NotellmError(f"{len(ids)} ids but {vectors.shape[0]} vectors")
    check_output_folder(out)
    with atomic_dir(out) as tmp:
        with open(tmp / "embeddings.npy", "wb") as f:
            np.save(f, vectors, allow_pickle=False)
        (tmp / "note_ids.txt").write_text("\n".join(ids) + "\n", encoding="utf-8")
        (tmp / "meta.json").write_text(json.dumps({**meta, "dim": int(vectors.shape[1]), "count": len(ids)},
                                                  ensure_ascii=False, indent=2, default=str), encoding="utf-8")
        if keep_shards:
            (tmp / shard_folder).mkdir()
            for shard in keep_shards:
                try:
                    os.link(shard, tmp / shard_folder / shard.name)
                except OSError:
                    shutil.copy2(shard, tmp / shard_folder / shard.name)
    return out


def read_embeddings(path: str | Path) -> tuple[list[str], np.ndarray, dict[str, Any]]:
    path = Path(path)
    for name in ("embeddings.npy", "note_ids.txt", "meta.json"):
        if not (path / name).exists():
            raise DataError(f"not an embeddings folder (missing {name})", file=str(path))
    vectors = np.load(path / "embeddings.npy", allow_pickle=False)
    ids = (path / "note_ids.txt").read_text(encoding="utf-8").splitlines()
    meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
    if len(ids) != vectors.shape[0]:
        raise DataError(f"{len(ids)} note ids but {vectors.shape[0]} vectors", file=str(path))
    return ids, vectors, meta
