"""Batch embedding: resumes from finished shards, sharded across processes equals unsharded, clear errors."""

import numpy as np
import pytest

from helpers.toy import write_toy
from notellm.errors import DataError
from notellm.inference import embed as embed_mod
from notellm.inference.embed import embed_table, read_embeddings

MODEL = "zero-shot:tiny-qwen3"


@pytest.fixture()
def notes(tmp_path):
    return str(write_toy(tmp_path)["notes"])


def test_embed_writes_normalised_vectors_in_table_order(tmp_path, notes):
    out = embed_table(notes, MODEL, str(tmp_path / "e"), shard_size=10, bf16=False)
    ids, vectors, meta = read_embeddings(out)
    import pyarrow.parquet as pq

    assert ids == pq.read_table(notes)["note_id"].to_pylist()
    assert vectors.shape == (32, 64) and meta["dim"] == 64 and meta["pooling"] == "before_emb"
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_killed_embed_resumes_without_recomputing_finished_shards(tmp_path, notes, monkeypatch):
    out = tmp_path / "e"
    embed_table(notes, MODEL, str(out), shard_size=10, bf16=False)
    _, full, _ = read_embeddings(out)
    # simulate a kill after three of four shards: the last shard and the merged files are missing
    (out / "shards" / "shard-00003.npz").unlink()
    for name in ("embeddings.npy", "note_ids.txt", "meta.json"):
        (out / name).unlink()
    encoded = []
    original = embed_mod.Embedder.encode
    monkeypatch.setattr(embed_mod.Embedder, "encode", lambda self, notes, on_batch=None: encoded.append(len(notes)) or original(self, notes, on_batch))
    embed_table(notes, MODEL, str(out), shard_size=10, bf16=False)
    assert encoded == [2]  # only the 2 notes of the missing shard
    _, resumed, _ = read_embeddings(out)
    np.testing.assert_allclose(resumed, full, atol=1e-6)


def test_sharded_over_two_processes_equals_unsharded(tmp_path, notes):
    _, single, _ = read_embeddings(embed_table(notes, MODEL, str(tmp_path / "one"), shard_size=7, bf16=False))
    assert embed_table(notes, MODEL, str(tmp_path / "two"), shard_size=7, bf16=False, rank=1, world=2) is None
    ids, merged, _ = read_embeddings(embed_table(notes, MODEL, str(tmp_path / "two"), shard_size=7, bf16=False,
                                                 rank=0, world=2))
    np.testing.assert_allclose(merged, single, atol=1e-5)
    assert len(ids) == 32


def test_not_an_embeddings_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="missing embeddings.npy"):
        read_embeddings(tmp_path)
