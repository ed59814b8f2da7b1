"""Export to the ecosystem: a sentence-transformers folder, embeddings as Parquet/Arrow, an index as a FAISS file.

- `export_sentence_transformers`: the backbone with its LoRA merged (a Transformer module), last-token pooling
  (the last token of `notellm.note_text(note)` is the token NoteLLM pools: the one before `[EMB]`), the
  standardisation and projection folded into one Dense module (y = W (x - m) / s = (W / s) x - W (m / s)) and
  Normalize. `SentenceTransformer(folder).encode(note_text(note))` gives `notellm embed`'s vector.
- `export_embeddings`: one row per note (note_id, embedding as a fixed-size float32 list, the note's metadata
  columns), the embedding meta.json as schema metadata: what a vector database's bulk import reads.
- `export_faiss`: the index's FAISS file and a sidecar with the note id of each FAISS row.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from notellm.errors import DataError, NotellmError

EXPORT_CARD = "notellm_export.json"
METADATA_COLUMNS = ("title", "hashtags", "category", "author_id", "published_at", "likes", "collects", "comments")


def _folded_head(model) -> tuple[np.ndarray, np.ndarray] | None:
    """(weight [dim, hidden], bias [dim]) of standardise-then-project as one affine map; None when it is the
    identity (a zero-shot model without statistics)."""
    import torch

    mean = model.feat_mean.detach().float().cpu()
    std = model.feat_std.detach().float().cpu()
    if not model.config.standardize:
        mean, std = torch.zeros_like(mean), torch.ones_like(std)
    if isinstance(model.proj, torch.nn.Linear):
        weight = model.proj.weight.detach().float().cpu()
    else:
        if torch.all(mean == 0) and torch.all(std == 1):
            return None
        weight = torch.eye(mean.shape[0])
    folded = weight / std[None, :]
    return folded.numpy(), (-(folded @ mean)).numpy()


def export_sentence_transformers(model: str, out_dir: str | Path, max_seq_length: int = 512) -> Path:
    """Write a sentence-transformers folder for a notellm model folder or `zero-shot:<backbone>`."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Transformer

    from notellm.inference.embed import load_model_for_embedding
    from notellm.io import atomic_dir

    nl = load_model_for_embedding(model, bf16=False)  # LoRA merged on load, float32
    if getattr(nl, "kind", "notellm") != "notellm":
        raise NotellmError(f"{model}: only text NoteLLM models export to sentence-transformers (NoteLLM-2's "
                           "image tower has no sentence-transformers module)")
    cfg = nl.config
    hidden = nl.lm.config.get_text_config().hidden_size
    with tempfile.TemporaryDirectory(prefix="notellm-export-") as staging:
        nl.lm.get_decoder().save_pretrained(staging)  # the decoder without the LM head: AutoModel loads it
        nl.tokenizer.save_pretrained(staging)
        # plain text only: with a chat template (Qwen, Gemma) sentence-transformers would otherwise wrap every
        # input in it, and the tokens NoteLLM pools would no longer be the ones the model reads
        text_only = {"text": {"method": "forward", "method_output_name": "last_hidden_state"}}
        modules: list[Any] = [Transformer(staging, max_seq_length=max_seq_length, modality_config=text_only,
                                           module_output_name="token_embeddings")]
        modules.append(Pooling(hidden, pooling_mode="mean" if cfg.pooling == "mean" else "lasttoken"))
        head = _folded_head(nl)
        if head is not None:
            weight, bias = head
            modules.append(Dense(hidden, weight.shape[0], bias=True, activation_function=None,
                                 init_weight=torch.from_numpy(weight), init_bias=torch.from_numpy(bias)))
        modules.append(Normalize())
        st = SentenceTransformer(modules=modules, device="cpu")
        with atomic_dir(out_dir) as tmp:
            st.save(str(tmp))
            from dataclasses import asdict

            card = {"source": str(model), "config": asdict(cfg), "dim": int(nl.dim),
                    "input": "notellm.note_text(note, folder): the note's prompt cut where NoteLLM pools"}
            (tmp / EXPORT_CARD).write_text(json.dumps(card, ensure_ascii=False, indent=2), encoding="utf-8")
    return Path(out_dir)


def embeddings_table(embeddings_dir: str | Path, notes: str | Path | None = None,
                     columns: Sequence[str] = METADATA_COLUMNS):
    """An Arrow table: note_id, embedding (fixed-size float32 list) and, from `notes`, metadata columns."""
    import pyarrow as pa

    from notellm.inference.embed import read_embeddings

    ids, vectors, meta = read_embeddings(embeddings_dir)
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).ravel(), type=pa.float32())
    table = pa.table({"note_id": pa.array(ids, type=pa.string()),
                      "embedding": pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])})
    if notes is not None:
        from notellm.data.schema import read_notes

        source = read_notes(notes)
        row_of = {str(n): i for i, n in enumerate(source.column("note_id").to_pylist())}
        missing = [i for i in ids if i not in row_of]
        if missing:
            raise DataError(f"{len(missing)} embedded note(s) are not in the Note table (e.g. {missing[0]!r})",
                            file=str(notes))
        rows = pa.array([row_of[i] for i in ids], type=pa.int64())
        for name in columns:
            if name in source.column_names:
                table = table.append_column(name, source.column(name).take(rows))
    return table.replace_schema_metadata({"notellm": json.dumps(meta, ensure_ascii=False)})


def export_embeddings(embeddings_dir: str | Path, out: str | Path, notes: str | Path | None = None,
                      fmt: str | None = None) -> Path:
    """Write the embeddings table as Parquet (`.parquet`) or Arrow IPC (`.arrow` / `.feather`)."""
    import pyarrow.feather as feather
    import pyarrow.parquet as pq

    from notellm.io import atomic_path

    out = Path(out)
    fmt = fmt or ("arrow" if out.suffix in (".arrow", ".feather", ".ipc") else "parquet")
    if fmt not in ("parquet", "arrow"):
        raise NotellmError(f"format must be parquet or arrow, not {fmt!r}")
    table = embeddings_table(embeddings_dir, notes)
    with atomic_path(out) as tmp:
        if fmt == "parquet":
            pq.write_table(table, tmp)
        else:
            feather.write_feather(table, tmp, compression="uncompressed")
    return out


def export_faiss(index_dir: str | Path, out: str | Path) -> tuple[Path, Path]:
    """The index as a FAISS file (`faiss.read_index(out)`) and `<out>.ids.txt`: line i is FAISS row i's note."""
    import faiss

    from notellm.inference.index import load_index
    from notellm.io import atomic_path

    index = load_index(index_dir)
    out = Path(out)
    ids_path = out.with_name(out.name + ".ids.txt")
    with atomic_path(out, suffix=".faiss") as tmp:
        faiss.write_index(index.index, str(tmp))
    with atomic_path(ids_path) as tmp:
        tmp.write_text("\n".join(index.ids) + "\n", encoding="utf-8")
    return out, ids_path

