"""The Python API gives the command line's numbers: embeddings, tags, popularity and cold-start scores."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

import notellm
from helpers.methods import setup
from notellm.cli import app
from notellm.cli.common import run_cli
from notellm.inference.embed import read_embeddings


def _train(name: str, tmp) -> "object":
    command = setup(name, tmp, max_steps=2, save_every=2)
    assert run_cli(app, command.args) == 0
    return command


@pytest.fixture(scope="module")
def notellm_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("api_notellm")
    return tmp, _train("notellm", tmp)


def test_encode_equals_notellm_embed(notellm_run):
    tmp, command = notellm_run
    notes = tmp / "notes.parquet"
    assert run_cli(app, ["embed", str(notes), "--model", str(command.model_dir), "--out", str(tmp / "emb"),
                         "--fp32"]) == 0
    ids, cli_vectors, _ = read_embeddings(tmp / "emb")
    rows = pq.read_table(notes).to_pylist()
    model = notellm.NoteLLM.from_pretrained(command.model_dir, bf16=False)
    vectors = model.encode(rows, batch_size=5)
    assert vectors.dtype == np.float32 and vectors.shape == (len(rows), 16)
    assert [r["note_id"] for r in rows] == ids
    np.testing.assert_allclose(vectors, cli_vectors, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # a string is a note with that content: inline hashtags read as the note's hashtags
    text = "今天吃到一家超好吃的火锅 #美食[话题]#"
    as_note = {"note_id": "x", "title": "", "content": "今天吃到一家超好吃的火锅", "hashtags": ["美食"]}
    np.testing.assert_allclose(model.encode([text]), model.encode([as_note]), atol=1e-6)
    with pytest.raises(TypeError):
        model.encode(text)


def test_embedder_encodes_plain_strings(notellm_run):
    from notellm.inference.embed import Embedder

    _, command = notellm_run
    vectors = Embedder(str(command.model_dir), bf16=False).encode(["some text", "另一条笔记"])
    assert vectors.shape == (2, 16) and not np.allclose(vectors[0], vectors[1])


def test_tag_equals_notellm_tag_and_save_pretrained_round_trips(notellm_run):
    tmp, command = notellm_run
    notes = tmp / "notes.parquet"
    assert run_cli(app, ["tag", "--model", str(command.model_dir), "--notes", str(notes), "--out",
                         str(tmp / "tags.parquet"), "--fp32", "--limit", "4", "--max-new-tokens", "6"]) == 0
    cli = pq.read_table(tmp / "tags.parquet").to_pylist()
    model = notellm.NoteLLM.from_pretrained(command.model_dir, bf16=False)
    rows = pq.read_table(notes).to_pylist()[:4]
    api = model.tag(rows, max_new_tokens=6)
    assert [(r["note_id"], r["tags"], r["category"]) for r in api] == \
        [(r["note_id"], r["tags"], r["category"]) for r in cli]
    assert all(tuple(r["category"]) in {tuple(n["category"]) for n in pq.read_table(notes).to_pylist()}
               for r in api)  # constrained to the training notes' categories, as the CLI
    saved = model.save_pretrained(tmp / "saved")
    again = notellm.NoteLLM.from_pretrained(saved, bf16=False)
    np.testing.assert_allclose(again.encode(rows), model.encode(rows), atol=1e-5)


def test_popularity_predict_equals_cli(tmp_path):
    command = _train("popularity", tmp_path)
    notes = tmp_path / "notes.parquet"
    assert run_cli(app, ["popularity", "predict", str(command.model_dir), "--notes", str(notes), "--out",
                         str(tmp_path / "scores.parquet"), "--bf16", "false"]) == 0
    cli = pq.read_table(tmp_path / "scores.parquet").column("score").to_numpy()
    model = notellm.PopularityModel.from_pretrained(command.model_dir)
    scores = model.predict(pq.read_table(notes).to_pylist(), bf16="false")
    np.testing.assert_allclose(scores, cli, rtol=1e-5, atol=1e-5)
    assert model.target["name"] and np.std(scores) > 0


def test_coldstart_prompt_is_the_training_prompt_and_predict_matches(tmp_path):
    from notellm.data.coldstart import InstructionConfig
    from notellm.inference.coldstart import ColdStartPredictor

    command = _train("sft", tmp_path)
    rows = pq.read_table(tmp_path / "notes.parquet").to_pylist()
    past = [r for r in rows if r["author_id"] == "u0"][:2]
    new = [r for r in rows if r["author_id"] == "u0"][2]
    scores = [float(np.log(p["likes"] + 1)) for p in past]
    prompt = notellm.ColdStartModel.prompt(past, scores, new, user_id="u0",
                                           instructions=InstructionConfig(language="zh", shots=[1, 2]))
    assert past[0]["title"] in prompt and new["title"] in prompt and f"{scores[1]:.2f}" in prompt
    model = notellm.ColdStartModel.from_pretrained(command.model_dir, bf16=False)
    reference = ColdStartPredictor(str(command.model_dir), bf16=False)
    assert model.answers([prompt]) == reference.answers([prompt])
    assert len(model.predict([prompt])) == 1


def test_note_text_is_the_prompt_before_emb():
    note = {"title": "露营", "content": "城市周边露营地推荐", "hashtags": ["周末"]}
    text = notellm.note_text(note)
    assert text == '笔记：{"标题":"露营","话题":"周末","内容":"城市周边露营地推荐"}，压缩为一个词：“'
