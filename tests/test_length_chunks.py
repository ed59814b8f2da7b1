"""Length-chunked forward on CPUs (`NoteLLM.hidden_states`): the same losses and gradients as the whole padded
batch, with fewer padding tokens computed; the chunking itself is optimal and only used where it pays."""

import pytest
import torch

from helpers.dist import make_module
from notellm.models import notellm as notellm_mod
from notellm.models.notellm import length_chunks
from notellm.models.prompts import build_prompt


def test_length_chunks_splits_only_when_padding_outweighs_a_call():
    assert length_chunks([50, 49, 50]) is None                   # hardly any padding
    assert length_chunks([100] * 8 + [20] * 8, overhead=10_000) is None
    chunks = length_chunks([100, 20, 100, 20, 21, 99], overhead=10)
    assert chunks == [([0, 2, 5], 100), ([4, 1, 3], 21)]
    # every row once, widths are each chunk's longest row
    rows = [r for part, _ in chunks for r in part]
    assert sorted(rows) == list(range(6))


def _notes():
    short = {"title": "短", "content": "好", "hashtags": ["a"], "category": ["生活"]}
    long = {"title": "很长的标题" * 2, "content": "今天分享一个很好用的东西，" * 6, "hashtags": ["a", "b"],
            "category": ["生活", "好物"]}
    return [dict(long, note_id=f"l{i}") if i % 3 == 0 else dict(short, note_id=f"s{i}") for i in range(12)]


def _loss_and_grads(module, batch):
    module.zero_grad()
    out = module(**batch)
    out["loss"].backward()
    grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    return out, grads


def batch_of_mixed_lengths(module):
    """A training batch of short and long notes (much padding), hashtag and category answers."""
    module.model.config.max_length = 96
    prompts = [build_prompt(n, "category" if i % 2 else "hashtag", tag_target=0) for i, n in enumerate(_notes())]
    batch = module.model.encode_prompts(prompts)
    batch["note_keys"] = torch.arange(len(prompts))
    return batch


def assert_same_training(got, want) -> None:
    """(out, grads) of `_loss_and_grads`: the same loss terms and gradients within float rounding."""
    (out, grads), (whole, whole_grads) = got, want
    for key in ("loss", "contrastive", "generative"):
        assert out[key].item() == pytest.approx(whole[key].item(), rel=1e-5, abs=1e-6)
    assert grads.keys() == whole_grads.keys() and len(whole_grads) > 10
    for name, g in whole_grads.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_chunked_forward_gives_the_whole_batch_losses_and_gradients(monkeypatch):
    """Where packing does not apply (models/packing.py), length chunks do."""
    from notellm.models import packing

    monkeypatch.setattr(packing, "enabled", False)
    module = make_module()
    batch = batch_of_mixed_lengths(module)
    lengths = batch["attention_mask"].sum(1).tolist()
    assert length_chunks(lengths) is not None, "the test batch must be one that gets chunked"

    chunked = _loss_and_grads(module, batch)
    monkeypatch.setattr(notellm_mod, "length_chunks", lambda *a, **k: None)
    assert_same_training(chunked, _loss_and_grads(module, batch))
