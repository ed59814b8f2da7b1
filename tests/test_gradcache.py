"""GradCache gives the same loss and parameter gradients as the plain loss over the whole batch."""

import torch

from helpers import dist as helper
from notellm.training.gradcache import grad_cache_backward


def test_grad_cache_equals_plain_backward():
    module = helper.make_module()
    batch = module.model.encode_prompts(helper.prompts(0, helper.N_PAIRS))
    batch["note_keys"] = helper.KEYS  # repeated notes: the cached loss must mask them as the plain one does
    plain_loss, plain = helper.loss_and_grads(module, 0, helper.N_PAIRS)
    module.zero_grad()
    out = grad_cache_backward(module, batch, chunk_notes=4)
    cached = {n: p.grad for n, p in module.named_parameters() if p.requires_grad and p.grad is not None}
    torch.testing.assert_close(out["loss"], plain_loss, rtol=1e-5, atol=1e-6)
    assert set(cached) == set(plain)
    for name, grad in plain.items():
        torch.testing.assert_close(cached[name], grad, rtol=1e-4, atol=1e-6, msg=name)
