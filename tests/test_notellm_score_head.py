"""NoteLLM with a popularity head: one forward gives the embedding and the score, the folder keeps both, the
LM still generates; a folder without the head is unchanged."""

import json

import pytest
import torch

from helpers.toy import toy_notes
from notellm.errors import NotellmError
from notellm.models.notellm import SCORE_HEAD_FILE, NoteLLMConfig, build_notellm, load_notellm


@pytest.fixture(scope="module")
def scored():
    model = build_notellm(NoteLLMConfig(backbone="tiny-qwen3", dim=16, max_length=64))
    model.fit_standardizer(toy_notes()[:6])
    head = model.add_popularity_head(target_mean=3.0, target_std=2.0)
    with torch.no_grad():
        head.linear.weight.copy_(torch.linspace(-1, 1, model.feat_mean.numel())[None, :] / model.feat_mean.numel())
        head.linear.bias.fill_(0.25)
    return model.eval()


def test_one_forward_gives_the_embedding_and_the_score(scored):
    notes = toy_notes()[:4]
    embeddings, scores = scored.embed_and_score(notes)
    # the same embeddings as the embedding-only path, and the score is the head on the standardized pooled state
    torch.testing.assert_close(embeddings, scored.embed_notes(notes))
    batch = scored.encode_prompts(scored.prompts_for(notes), with_answers=False)
    with torch.no_grad():
        hidden = scored.hidden_states(batch["input_ids"], batch["attention_mask"])
        x = (scored.pool(hidden, batch["attention_mask"], batch["emb_pos"]) - scored.feat_mean) / scored.feat_std
    expected = (x @ scored.score_head.linear.weight[0] + 0.25) * 2.0 + 3.0
    torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-5)
    assert scores.shape == (4,) and scores.std() > 0  # one score per note, not a constant


def test_folder_round_trip_keeps_embedding_score_and_generation(scored, tmp_path):
    notes = toy_notes()[:3]
    scored.save(tmp_path / "m")
    card = json.loads((tmp_path / "m" / "notellm.json").read_text())
    assert card["kind"] == "notellm" and card["popularity_head"]["target_mean"] == 3.0
    loaded = load_notellm(tmp_path / "m")
    for got, want in zip(loaded.embed_and_score(notes), scored.embed_and_score(notes)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # the same folder's LM answers a generation prompt (tags / category) greedily, as before saving
    prompt = scored.tokenizer("Hashtags of this note:", return_tensors="pt")
    generated = [m.lm.generate(**prompt, max_new_tokens=4, do_sample=False) for m in (scored, loaded)]
    assert generated[0].shape[1] > prompt["input_ids"].shape[1] and torch.equal(generated[0], generated[1])


def test_folder_without_head_and_a_mismatched_head(tmp_path):
    plain = build_notellm(NoteLLMConfig(backbone="tiny-qwen3", dim=16, max_length=64))
    plain.save(tmp_path / "plain")
    assert not (tmp_path / "plain" / SCORE_HEAD_FILE).exists()
    loaded = load_notellm(tmp_path / "plain")
    card = json.loads((tmp_path / "plain" / "notellm.json").read_text())
    assert loaded.score_head is None and "popularity_head" not in card
    with pytest.raises(ValueError, match="no popularity head"):
        loaded.embed_and_score(toy_notes()[:1])
    loaded.add_popularity_head(target_mean=1.5, target_std=0.5)  # zero weights: the target mean until trained
    assert loaded.embed_and_score(toy_notes()[:2])[1].tolist() == pytest.approx([1.5, 1.5])
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(1, 7), "bias": torch.zeros(1), "target_mean": torch.zeros(1),
               "target_std": torch.ones(1)}, str(tmp_path / "plain" / SCORE_HEAD_FILE))
    with pytest.raises(NotellmError, match="popularity head of shape"):
        load_notellm(tmp_path / "plain")
