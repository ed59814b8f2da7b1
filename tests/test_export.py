"""`notellm export`: sentence-transformers gives `notellm embed`'s vectors; Parquet/Arrow and FAISS round trips."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest

import notellm
from helpers.methods import setup
from notellm.cli import app
from notellm.cli.common import run_cli
from notellm.inference.embed import read_embeddings


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny NoteLLM trained 2 steps (LoRA, dim 16, standardised), its embeddings and a flat index."""
    tmp = tmp_path_factory.mktemp("export")
    command = setup("notellm", tmp, max_steps=2, save_every=2)
    assert run_cli(app, command.args) == 0
    notes = tmp / "notes.parquet"
    assert run_cli(app, ["embed", str(notes), "--model", str(command.model_dir), "--out", str(tmp / "emb"),
                         "--fp32"]) == 0
    assert run_cli(app, ["index", "build", str(tmp / "emb"), "--out", str(tmp / "index"), "--notes", str(notes)]) == 0
    return tmp, command.model_dir, notes


def test_sentence_transformers_folder_gives_notellm_embed_vectors(run):
    from sentence_transformers import SentenceTransformer

    tmp, model_dir, notes = run
    assert json.loads((model_dir / "notellm.json").read_text())["weights"] == "lora"
    out = tmp / "st"
    assert run_cli(app, ["export", "sentence-transformers", str(model_dir), "--out", str(out)]) == 0
    ids, expected, _ = read_embeddings(tmp / "emb")
    rows = {r["note_id"]: r for r in pq.read_table(notes).to_pylist()}
    st = SentenceTransformer(str(out), device="cpu")
    texts = [notellm.note_text(rows[i], out) for i in ids]
    assert texts[0] == notellm.note_text(rows[ids[0]])  # the default zh prompt, cut before [EMB]
    got = st.encode(texts, batch_size=7, convert_to_numpy=True)
    assert got.shape == expected.shape
    cosine = np.sum(got * expected, axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
    assert cosine.min() >= 0.999, cosine.min()
    # a different note gives a different vector (the head was not lost in the export)
    assert np.sum(got[0] * got[-1]) < 0.999


def test_embeddings_to_parquet_and_arrow(run):
    tmp, _, notes = run
    ids, vectors, meta = read_embeddings(tmp / "emb")
    assert run_cli(app, ["export", "embeddings", str(tmp / "emb"), "--notes", str(notes), "--out",
                         str(tmp / "vectors.parquet")]) == 0
    table = pq.read_table(tmp / "vectors.parquet")
    assert table.column("note_id").to_pylist() == ids
    np.testing.assert_array_equal(np.array(table.column("embedding").to_pylist(), dtype=np.float32), vectors)
    titles = {r["note_id"]: r["title"] for r in pq.read_table(notes).to_pylist()}
    assert table.column("title").to_pylist() == [titles[i] for i in ids]
    assert json.loads(table.schema.metadata[b"notellm"])["dim"] == meta["dim"] == 16
    assert run_cli(app, ["export", "embeddings", str(tmp / "emb"), "--out", str(tmp / "vectors.arrow")]) == 0
    arrow = feather.read_table(tmp / "vectors.arrow")
    assert arrow.column_names == ["note_id", "embedding"] and arrow.num_rows == len(ids)


def test_faiss_file_loads_without_notellm(run):
    import faiss

    tmp, _, _ = run
    assert run_cli(app, ["export", "faiss", str(tmp / "index"), "--out", str(tmp / "notes.faiss")]) == 0
    index = faiss.read_index(str(tmp / "notes.faiss"))
    row_ids = (tmp / "notes.faiss.ids.txt").read_text().split()
    ids, vectors, _ = read_embeddings(tmp / "emb")
    assert index.ntotal == len(row_ids) == len(ids)
    _, found = index.search(vectors[:3], 1)
    assert [row_ids[j] for j in found[:, 0]] == ids[:3]  # each note finds itself first


def test_export_errors_are_one_line(run, capsys):
    tmp, _, _ = run
    assert run_cli(app, ["export", "faiss", str(tmp / "emb"), "--out", str(tmp / "x.faiss")]) == 2
    assert "not an index folder" in capsys.readouterr().err
