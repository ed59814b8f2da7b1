"""Padding-free forward on CPUs (models/packing.py, used by `NoteLLM.hidden_states`): a right-padded batch runs
as one packed row of its real tokens and gives the padded forward's states, losses and gradients."""

import pytest
import torch

from helpers.dist import make_module
from notellm.models import notellm as notellm_mod
from notellm.models import packing
from test_length_chunks import _loss_and_grads, assert_same_training, batch_of_mixed_lengths


def test_packed_states_are_the_padded_batchs_and_padding_is_zero():
    module = make_module()
    batch = batch_of_mixed_lengths(module)
    decoder = module.model.lm.get_decoder()
    mask = batch["attention_mask"].bool()
    assert (~mask).sum() > 100, "the test batch must hold padding"
    assert packing.can_pack(decoder, batch["attention_mask"])
    padded = decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    packed = packing.packed_forward(decoder, batch["input_ids"], batch["attention_mask"])
    assert packed.shape == padded.shape
    torch.testing.assert_close(packed[mask], padded[mask], rtol=1e-5, atol=1e-5)
    assert packed[~mask].abs().max() == 0
    assert decoder.config._attn_implementation == "sdpa"  # the model's config is never touched


def test_packed_training_gives_the_padded_losses_and_gradients(monkeypatch):
    module = make_module()
    batch = batch_of_mixed_lengths(module)
    calls = []
    real = packing.packed_forward
    monkeypatch.setattr(packing, "packed_forward", lambda *a: calls.append(1) or real(*a))
    packed = _loss_and_grads(module, batch)
    assert calls, "hidden_states must pack a right-padded CPU batch"
    monkeypatch.setattr(packing, "enabled", False)
    monkeypatch.setattr(notellm_mod, "length_chunks", lambda *a, **k: None)  # the whole padded batch
    assert_same_training(packed, _loss_and_grads(module, batch))


def test_what_cannot_be_packed_runs_padded():
    module = make_module()
    decoder = module.model.lm.get_decoder()
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    assert packing.can_pack(decoder, right)
    assert not packing.can_pack(decoder, torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]]))  # left padding
    assert not packing.can_pack(decoder, torch.tensor([[0, 0, 0, 0], [1, 1, 1, 1]]))  # an empty row
    decoder.config.sliding_window = 3  # a row longer than the sliding window
    try:
        assert not packing.can_pack(decoder, right)
    finally:
        decoder.config.sliding_window = None


def test_the_attention_switch_is_undone_when_the_forward_fails():
    module = make_module()
    decoder = module.model.lm.get_decoder()
    ids = torch.full((2, 5), 10**7)  # out of the vocabulary: the embedding lookup raises
    with pytest.raises(IndexError):
        packing.packed_forward(decoder, ids, torch.ones(2, 5, dtype=torch.long))
    assert decoder.config._attn_implementation == "sdpa" and packing._current.get() is None


def test_other_threads_and_models_keep_transformers_sdpa():
    """The "sdpa" entry dispatches on a per-thread context: a padded forward in one thread while another thread
    is inside `packed_forward` gives the plain sdpa result."""
    import threading

    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    module = make_module()
    batch = batch_of_mixed_lengths(module)
    decoder = module.model.lm.get_decoder()
    packing.packed_forward(decoder, batch["input_ids"][:2], batch["attention_mask"][:2])
    assert ALL_ATTENTION_FUNCTIONS["sdpa"] is packing.sdpa_or_packed
    assert packing._transformers_sdpa is sdpa_attention_forward
    with torch.no_grad():
        alone = decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    inside, release = threading.Event(), threading.Event()

    def hold_packing():
        token = packing._current.set(packing.Packing(torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long), 1, 1))
        inside.set()
        release.wait(30)
        packing._current.reset(token)

    other = threading.Thread(target=hold_packing)
    other.start()
    inside.wait(30)
    try:
        with torch.no_grad():
            during = decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    finally:
        release.set()
        other.join()
    torch.testing.assert_close(during, alone, rtol=0, atol=0)
