"""NoteLLM model: [EMB] token, pooling positions, answer-only labels, save/load round trip."""

import numpy as np
import pytest
import torch

from helpers.toy import toy_notes
from notellm.models.notellm import NoteLLMConfig, build_notellm, load_notellm
from notellm.models.prompts import EMB_TOKEN, PromptConfig, build_prompt


@pytest.fixture(scope="module")
def model():
    return build_notellm(NoteLLMConfig(backbone="tiny-qwen3", dim=16, max_length=64))


def test_emb_token_added_with_mean_init(model):
    emb = model.lm.get_input_embeddings().weight
    assert model.tokenizer.convert_tokens_to_ids(EMB_TOKEN) == model.emb_token_id == emb.shape[0] - 1
    torch.testing.assert_close(emb[model.emb_token_id], emb[:-1].mean(0), rtol=1e-5, atol=1e-6)


def test_labels_cover_answer_only_and_emb_position(model):
    note = toy_notes()[0]
    prompt = build_prompt(note, "category")
    batch = model.encode_prompts([prompt])
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    answer = model.tokenizer(prompt.answer, add_special_tokens=False)["input_ids"] + [model.tokenizer.eos_token_id]
    assert labels[labels != -100].tolist() == answer
    assert ids[batch["emb_pos"][0]].item() == model.emb_token_id
    # the token before [EMB] is the opening quote of the compression sentence
    assert model.tokenizer.decode(ids[batch["emb_pos"][0] - 1]).endswith("“")


def test_pooling_before_emb_is_that_position_hidden_state(model):
    notes = toy_notes()[:3]
    batch = model.encode_prompts(model.prompts_for(notes), with_answers=False)
    with torch.no_grad():
        hidden = model.hidden_states(batch["input_ids"], batch["attention_mask"])
        out = model(batch["input_ids"], batch["attention_mask"], batch["emb_pos"])["embeddings"]
    manual = torch.nn.functional.normalize(model.proj(hidden[1, batch["emb_pos"][1] - 1]), dim=-1)
    torch.testing.assert_close(out[1], manual, rtol=1e-4, atol=1e-5)
    assert torch.allclose(out.norm(dim=-1), torch.ones(3), atol=1e-5)


def test_embedding_ignores_padding_and_what_follows(model):
    """Causal attention: the vector depends only on the prompt up to [EMB], not on the answer or batch mates."""
    note = toy_notes()[0]
    alone = model.embed_notes([note])
    with_long_neighbour = model.embed_notes([note, dict(note, content=note["content"] * 5)])
    torch.testing.assert_close(alone[0], with_long_neighbour[0], rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        b = model.encode_prompts([build_prompt(note, "category")])
        with_answer = model(b["input_ids"], b["attention_mask"], b["emb_pos"])["embeddings"]
    torch.testing.assert_close(alone[0], with_answer[0], rtol=1e-4, atol=1e-5)


def test_long_note_keeps_compression_token(model):
    note = dict(toy_notes()[0], title="长" * 50, content="很长的内容" * 200)
    cfg = PromptConfig(title_chars=200, content_chars=2000)
    batch = model.encode_prompts([build_prompt(note, "category", cfg)])
    assert batch["input_ids"].shape[1] <= model.config.max_length
    assert model.emb_token_id in batch["input_ids"][0].tolist()


def test_save_load_round_trip_gives_same_vectors(tmp_path, model):
    from notellm.models.lora import LoraConfig
    from notellm.training.notellm import add_notellm_lora

    trained = build_notellm(NoteLLMConfig(backbone="tiny-qwen3", dim=16, max_length=64))
    add_notellm_lora(trained, LoraConfig(r=4, alpha=8))
    with torch.no_grad():  # make the adapter non-trivial
        for name, p in trained.lm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    notes = toy_notes()[:4]
    before = trained.eval().embed_notes(notes)  # eval: no LoRA dropout
    trained.save(tmp_path / "m", extra={"backbone_seed": 0})
    after = load_notellm(tmp_path / "m").embed_notes(notes)
    np.testing.assert_allclose(before.numpy(), after.numpy(), atol=1e-5)
